"""factorebm evaluate --metric / --column and train --column, on the chunking task of
examples/chunking.py (BIO chunks derived from EWT's trees); their bad input."""
import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

import factorebm as fe

EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples" / "chunking.py"


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "factorebm.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def one_line_error(r, text):
    assert r.returncode == 1, r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], r.stderr


def _example():
    spec = importlib.util.spec_from_file_location("chunking", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def chunks(tmp_path_factory):
    d = tmp_path_factory.mktemp("chunks")
    chunking = _example()
    train = chunking.ewt_chunks("train")[:300]
    dev = chunking.ewt_chunks("dev")[:150]
    chunking.write_columns(train, d / "train.txt")
    chunking.write_columns(dev, d / "dev.txt")
    model = d / "chunker.npz"
    r = run_cli("train", "--train", d / "train.txt", "--column", "3", "--max-iter", 3,
                "--model", model, "--quiet")
    assert r.returncode == 0, r.stderr
    return {"dir": d, "model": model, "dev": d / "dev.txt", "gold": [t for _, _, t in dev],
            "sents": [f for f, _, _ in dev], "upos": [u for _, u, _ in dev]}


def test_chunk_tags_of_a_hand_parsed_sentence():
    # "The old man 's dog did not bark at New York"
    words = ["The", "old", "man", "'s", "dog", "did", "not", "bark", "at", "New", "York"]
    upos = ["DET", "ADJ", "NOUN", "PART", "NOUN", "AUX", "PART", "VERB", "ADP", "PROPN",
            "PROPN"]
    heads = [2, 2, 4, 2, 7, 7, 7, -1, 9, 7, 9]
    deprels = ["det", "amod", "nmod:poss", "case", "nsubj", "aux", "advmod", "root", "case",
               "obl", "flat"]
    tags = _example().chunk_tags(upos, heads, deprels)
    assert len(tags) == len(words)
    assert tags == ["B-NP", "I-NP", "I-NP", "I-NP", "B-NP", "B-VP", "I-VP", "I-VP", "B-PP",
                    "B-NP", "I-NP"]


def test_evaluate_span_f1_matches_the_library(chunks):
    r = run_cli("evaluate", "--model", chunks["model"], chunks["dev"], "--column", 3,
                "--metric", "span-f1", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    tagger = fe.SequenceTagger.load(chunks["model"])
    expected = fe.metrics.span_f1(chunks["gold"], tagger.predict(chunks["sents"]))
    for key in ("precision", "recall", "f1", "n_gold", "n_pred", "n_correct", "per_type"):
        assert result[key] == expected[key], key     # JSON keeps floats exactly
    assert set(result["per_type"]) == {"NP", "VP", "PP"}
    assert result["f1"] > 0.6 and result["metric"] == "span-f1"
    text = run_cli("evaluate", "--model", chunks["model"], chunks["dev"], "--column", "-1",
                   "--metric", "SPAN-F1")
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith(f"span F1 {100 * expected['f1']:.2f}% (precision")
    assert "\n  NP  F1" in text.stdout
    strict = json.loads(run_cli("evaluate", "--model", chunks["model"], chunks["dev"],
                                "--column", 3, "--metric", "span-f1", "--strict",
                                "--json").stdout)
    assert strict["n_pred"] <= result["n_pred"] and strict["strict"] is True


def test_evaluate_accuracy_on_a_column_file(chunks):
    r = run_cli("evaluate", "--model", chunks["model"], chunks["dev"], "--column", 3, "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    tagger = fe.SequenceTagger.load(chunks["model"])
    assert result["accuracy"] == pytest.approx(tagger.score(chunks["sents"], chunks["gold"]))
    assert result["metric"] == "accuracy" and result["column"] == "3"


def test_conllu_columns_other_than_upos(chunks, tmp_path):
    # a UPOS model scored on XPOS labels: a different column gives a different figure
    path = fe.datasets.ud_english_ewt_path("dev")
    model = tmp_path / "xpos.npz"
    train = tmp_path / "t.conllu"
    with open(train, "w", encoding="utf-8") as fh:
        for s in fe.datasets.read_conllu(path)[:200]:
            fh.write(s.to_string())
    r = run_cli("train", "--train", train, "--column", "xpos", "--max-iter", 2, "--model",
                model, "--quiet")
    assert r.returncode == 0, r.stderr
    assert "NN" in fe.SequenceTagger.load(model).labels_.tolist()
    r = run_cli("evaluate", "--model", model, train, "--column", "XPOS", "--json")
    assert json.loads(r.stdout)["accuracy"] > 0.8, r.stderr


@pytest.mark.parametrize("args, message", [
    (["--metric", "f2"], "unknown metric 'f2'; known metrics: accuracy, span-f1"),
    (["--metric", "span-f1", "--scheme", "BILOU"], "unknown scheme 'BILOU'"),
    (["--column", "POS"], "unknown CoNLL-U column 'POS'; one of FORM, LEMMA"),
    (["--column", "7"], ":1: no column 7: the line has 3 fields, word first"),
    (["--column", "0"], "column must be a non-zero integer"),
    (["--column", "UPOS"], ":1: expected 10 tab-separated columns, found 1 (--column UPOS "
                           "reads CoNLL-U; for a file of whitespace-separated columns give the "
                           "tag's column number"),
    (["--column", "2", "--metric", "span-f1"], "gold: sentence 0, position 0: tag 'ADP' is "
                                               "not O, B-X, I-X (scheme BIO"),
])
def test_bad_evaluate_options_are_one_line_errors(chunks, args, message):
    one_line_error(run_cli("evaluate", "--model", chunks["model"], chunks["dev"], *args),
                   message)


def test_a_column_number_on_a_conllu_file_is_refused(chunks):
    one_line_error(run_cli("evaluate", "--model", chunks["model"],
                           fe.datasets.ud_english_ewt_path("dev"), "--column", 4),
                   "is CoNLL-U (its first token line has 10 tab-separated columns)")
