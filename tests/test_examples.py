"""The runnable examples run and say what they claim (the fast ones; pos_tagging.py trains on
all of EWT and is exercised through the tagger and CLI tests instead)."""
import pathlib
import subprocess
import sys

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def run(name):
    r = subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_factor_graph_basics_prints_each_result():
    out = run("factor_graph_basics.py")
    for what in ["MAP answer", "marginal P(", "free energy F", "most offending incorrect answer"]:
        assert what in out


def test_gradient_check_finds_every_gradient_right():
    rows = [line.split() for line in run("gradient_check.py").splitlines()[1:-1]]
    import factorebm as fe
    assert sorted(r[0] for r in rows) == fe.losses.available()
    for name, *errors in rows:
        assert all(float(e) < 1e-6 for e in errors), (name, errors)


def test_multimodule_learns_xor_only_with_a_hidden_layer():
    lines = run("multimodule.py").splitlines()

    def acc(name):
        line = next(ln for ln in lines if ln.strip().startswith(name))
        return float(line.split("accuracy")[1].split()[0])
    assert acc("linear energy") < 0.7 and acc("two-layer network") > 0.95
    assert acc("linear emission") < 0.7 and acc("MLP emission") > 0.98
