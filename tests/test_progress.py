"""Training progress: the tagger's per-epoch line, --quiet, and factorebm train --plot (with
matplotlib and without it)."""
import re
import subprocess
import sys

import pytest

import factorebm as fe


@pytest.fixture(scope="module")
def corpus():
    sents, tags = fe.datasets.load_ud_english_ewt("dev")
    return sents[:120], tags[:120], (sents[120:160], tags[120:160])


def test_one_line_per_epoch_with_loss_dev_accuracy_and_time(corpus, capsys):
    sents, tags, dev = corpus
    tagger = fe.SequenceTagger(max_iter=3, n_substates=1).fit(sents, tags, dev=dev)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("epoch")]
    assert len(lines) == 3
    for k, (line, row) in enumerate(zip(lines, tagger.history_), 1):
        m = re.fullmatch(r"epoch (\d)/3  loss (\S+)  dev accuracy (\S+)%  (\S+) s", line)
        assert m, line
        assert int(m[1]) == k == row["epoch"]
        assert float(m[2]) == pytest.approx(row["loss"], rel=1e-3)
        assert float(m[3]) == pytest.approx(100 * row["dev_accuracy"], abs=0.006)
    fe.SequenceTagger(max_iter=2, optimizer="lbfgs", n_substates=1).fit(sents, tags)
    assert re.search(r"^iteration 1/2  loss \S+  \S+ s$", capsys.readouterr().out, re.M)


def test_verbose_false_prints_nothing(corpus, capsys):
    sents, tags, dev = corpus
    fe.SequenceTagger(max_iter=2, n_substates=1, verbose=False).fit(sents, tags, dev=dev)
    assert capsys.readouterr().out == ""


def run_cli(*args, hide_matplotlib=False):
    prelude = "import sys\n" + ("sys.modules['matplotlib'] = None\n" if hide_matplotlib else "")
    code = prelude + f"from factorebm.cli import main\nsys.exit(main({list(map(str, args))!r}))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def files(tmp_path_factory, corpus):
    d = tmp_path_factory.mktemp("progress")
    sents, tags, dev = corpus
    for name, (ss, ts) in (("train", (sents, tags)), ("dev", dev)):
        with open(d / f"{name}.txt", "w", encoding="utf-8") as fh:
            for s, t in zip(ss, ts):
                fh.writelines(f"{w} {x}\n" for w, x in zip(s, t))
                fh.write("\n")
    return d


def test_train_plot_saves_the_curve(files):
    pytest.importorskip("matplotlib")
    curve = files / "curve.png"
    r = run_cli("train", "--train", files / "train.txt", "--dev", files / "dev.txt",
                "--column", 2, "--max-iter", 2, "--substates", 1, "--model", files / "m.npz",
                "--plot", curve)
    assert r.returncode == 0, r.stderr
    assert [ln[:9] for ln in r.stdout.splitlines() if ln.startswith("epoch")] == [
        "epoch 1/2", "epoch 2/2"]
    assert f"training curve (loss and dev accuracy per epoch) written to {curve}" in r.stdout
    assert curve.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = run_cli("train", "--train", files / "train.txt", "--column", 2, "--max-iter", 1,
                "--substates", 1, "--model", files / "q.npz", "--quiet", "--plot",
                files / "q.svg")
    assert r.returncode == 0, r.stderr
    assert "epoch 1" not in r.stdout and "fit_chain" not in r.stdout
    assert b"<svg" in (files / "q.svg").read_bytes()


def test_train_plot_without_matplotlib_is_one_line_before_training(files):
    r = run_cli("train", "--train", files / "train.txt", "--column", 2, "--model",
                files / "none.npz", "--plot", files / "none.png", hide_matplotlib=True)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip() == ("factorebm train: error: --plot needs matplotlib, which is not "
                                "installed: pip install 'factorebm[plot]' (or pip install "
                                "matplotlib)")
    assert not (files / "none.npz").exists() and not (files / "none.png").exists()


def test_plot_target_checked_before_training(files):
    r = run_cli("train", "--train", files / "train.txt", "--column", 2, "--model",
                files / "x.npz", "--plot", files / "no" / "such" / "dir.png")
    assert r.returncode == 1 and "--plot " in r.stderr and "does not exist" in r.stderr
    assert not (files / "x.npz").exists()


def test_training_curve_needs_a_history(tmp_path):
    pytest.importorskip("matplotlib")
    from factorebm.plotting import training_curve
    with pytest.raises(ValueError, match="history is empty"):
        training_curve([], tmp_path / "c.png")
