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


def _run_quick(name):
    r = subprocess.run([sys.executable, str(EXAMPLES / name), "--quick"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def _percent(line, after):
    return float(line.split(after)[1].split("%")[0])


def test_denoising_grid_crf_beats_the_per_pixel_classifier():
    lines = _run_quick("denoising.py")
    pixel = [_percent(ln, "pixel error") for ln in lines if "per-pixel classifier" in ln]
    crf = [_percent(ln, "pixel error") for ln in lines if "grid CRF" in ln]
    assert len(pixel) == len(crf) == 2              # binary and multi-label
    assert all(c < p - 5.0 for c, p in zip(crf, pixel)), (crf, pixel)


def test_skip_chain_labels_the_uncued_mentions_the_plain_chain_cannot():
    lines = _run_quick("skip_chain.py")
    plain = next(ln for ln in lines if "plain chain" in ln)
    skip = next(ln for ln in lines if "skip chain" in ln and "accuracy" in ln)
    assert _percent(plain, "uncued mentions") < 65.0
    assert _percent(skip, "uncued mentions") > 95.0
    assert _percent(skip, "token accuracy") > _percent(plain, "token accuracy")
