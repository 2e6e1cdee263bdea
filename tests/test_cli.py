"""The factorebm command line on a small slice of EWT: train, evaluate, tag, errors."""
import gzip
import json
import subprocess
import sys

import pytest

import factorebm as fe


def run_cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "factorebm.cli", *map(str, args)],
                          input=stdin, capture_output=True, text=True, timeout=300)


def slice_conllu(src, dst, n_sentences):
    """Copy the first n sentences of a (gzipped) CoNLL-U file, byte for byte."""
    out, count = [], 0
    with gzip.open(src, "rt", encoding="utf-8") as fh:
        for line in fh:
            out.append(line)
            if line.strip() == "":
                count += 1
                if count == n_sentences:
                    break
    dst.write_text("".join(out), encoding="utf-8")
    return dst


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    train = slice_conllu(fe.datasets.ud_english_ewt_path("train"), d / "train.conllu", 300)
    dev = slice_conllu(fe.datasets.ud_english_ewt_path("dev"), d / "dev.conllu", 100)
    model = d / "m.npz"
    r = run_cli("train", "--model", model, "--train", train, "--dev", dev, "--test", dev,
                "--max-iter", 6)
    assert r.returncode == 0, r.stderr
    return {"dir": d, "train": train, "dev": dev, "model": model, "train_out": r.stdout}


def test_train_prints_accuracies(files):
    assert "dev accuracy" in files["train_out"] and "test accuracy" in files["train_out"]
    assert files["model"].exists()


def test_evaluate_json_matches_library(files):
    r = run_cli("evaluate", "--model", files["model"], files["dev"], "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    tagger = fe.SequenceTagger.load(files["model"])
    assert result["accuracy"] == pytest.approx(tagger.score(*fe.datasets.load_conllu(files["dev"])))
    assert result["tokens"] == sum(len(s) for s in fe.datasets.load_conllu(files["dev"])[0])


def test_tag_conllu_fills_upos_and_keeps_the_rest(files):
    src = files["dev"].read_text(encoding="utf-8")
    r = run_cli("tag", "--model", files["model"], files["dev"])
    assert r.returncode == 0, r.stderr
    out_lines, src_lines = r.stdout.splitlines(), src.splitlines()
    assert len(out_lines) == len(src_lines)
    tagger = fe.SequenceTagger.load(files["model"])
    sents, _ = fe.datasets.load_conllu(files["dev"])
    expected = iter(t for ts in tagger.predict(sents) for t in ts)
    for a, b in zip(src_lines, out_lines):
        ca, cb = a.split("\t"), b.split("\t")
        if len(ca) == 10 and ca[0].isdigit():
            assert cb[3] == next(expected)
            assert ca[:3] + ca[4:] == cb[:3] + cb[4:]
        else:
            assert a == b


def test_tag_plain_text_from_stdin(files):
    r = run_cli("tag", "--model", files["model"], "-", stdin="The dog barks .\nI saw her\n")
    assert r.returncode == 0, r.stderr
    rows = [line.split("\t") for line in r.stdout.splitlines() if line and not line.startswith("#")]
    assert [row[1] for row in rows] == ["The", "dog", "barks", ".", "I", "saw", "her"]
    assert all(len(row) == 10 and row[3] != "_" for row in rows)


def test_errors_are_one_line_without_traceback(files, tmp_path):
    bad = tmp_path / "bad.conllu"
    bad.write_text("1\tThe\tthe\tDET\n", encoding="utf-8")
    for args in [("evaluate", "--model", files["model"], bad),
                 ("evaluate", "--model", tmp_path / "missing.npz"),
                 ("train", "--model", tmp_path / "x.npz", "--train", tmp_path / "nope.conllu")]:
        r = run_cli(*args)
        assert r.returncode != 0
        assert "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = run_cli("evaluate", "--model", files["model"], bad)
    assert "bad.conllu:1:" in r.stderr  # file:line: message, as compilers print it
