"""What `import factorebm` and `factorebm tag` load: nothing heavy on the way to the first
tagged sentence (the one-sentence latency of the command line is mostly imports)."""
import json
import subprocess
import sys

import pytest

import factorebm as fe

HEAVY = ("scipy", "networkx", "matplotlib", "dask", "numpy.ma", "secrets")


def modules_after(code):
    r = subprocess.run([sys.executable, "-c", code + "\nimport sys, json\n"
                        "print(json.dumps(sorted(sys.modules)))"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return set(json.loads(r.stdout.splitlines()[-1]))


def test_import_factorebm_imports_no_submodule_until_used():
    loaded = modules_after("import factorebm")
    assert not {m for m in loaded if m.startswith("factorebm.")}
    assert "numpy" not in loaded


def test_every_public_name_resolves():
    for name in fe.__all__:
        assert getattr(fe, name) is not None, name
        assert name in dir(fe)
    assert fe.exhaustive.__name__ == "factorebm.exhaustive"     # any submodule, as before
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        fe.no_such_name
    with pytest.raises(AttributeError):
        fe._private


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    sents, tags = fe.datasets.load_ud_english_ewt("dev")
    path = tmp_path_factory.mktemp("startup") / "m.npz"
    fe.SequenceTagger(max_iter=1, verbose=False, n_substates=1).fit(sents[:100],
                                                                    tags[:100]).save(path)
    return path


def test_tagging_a_sentence_loads_nothing_heavy(model, tmp_path):
    text = tmp_path / "one.txt"
    text.write_text("The cat sat on the mat .\n", encoding="utf-8")
    loaded = modules_after(f"from factorebm.cli import main\n"
                           f"main(['tag', '--model', {str(model)!r}, {str(text)!r}])")
    assert not [m for m in loaded if m.split(".")[0] in HEAVY or m in HEAVY]
    # the factor-graph side and the learner are not needed to tag
    assert not loaded & {"factorebm.graph", "factorebm.inference", "factorebm._bp",
                         "factorebm.optimize", "factorebm.energies.graph"}
