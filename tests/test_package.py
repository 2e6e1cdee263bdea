import ast
import contextlib
import io
import pathlib
import re

import factorebm as fe


def test_public_names_exist():
    for name in ["FactorGraph", "min_sum", "sum_product", "free_energy", "most_offending",
                 "chain", "losses", "datasets", "SequenceTagger"]:
        assert hasattr(fe, name), name



ROOT = pathlib.Path(__file__).resolve().parent.parent


def _top_level_imports(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:      # module level only: imports inside functions are the point
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module


def test_tagging_modules_import_no_scipy_at_module_level():
    # `factorebm tag` and `import factorebm.cli` must not pay for scipy (about 0.2 s)
    package = ROOT / "factorebm"
    paths = [package / "features.py", package / "cli.py", package / "tagger.py",
             package / "modelio.py", package / "__main__.py",
             *sorted((package / "datasets").glob("*.py"))]
    for path in paths:
        heavy = [m for m in _top_level_imports(path)
                 if m.split(".")[0] in ("scipy", "networkx", "matplotlib", "dask")]
        assert not heavy, (path.name, heavy)


def test_readme_factor_graph_example_prints_what_its_comments_say():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## A factor graph in ten lines", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    expected = [line.split("#", 1)[1].strip() for line in code.splitlines()
                if line.startswith("print(") and "#" in line]
    assert len(expected) == 3
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    assert [re.sub(r"\s+", " ", line) for line in out.getvalue().splitlines()] == expected
