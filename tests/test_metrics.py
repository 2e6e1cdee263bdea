"""fe.metrics: span F1 against hand-worked cases, against conlleval's own counting loop and
against brute-force span sets on random sequences; accuracy; bad input."""
import numpy as np
import pytest

from factorebm import metrics


# --------------------------------------------------------------------------- references
def _split(tag):
    return (tag, "") if tag == "O" else (tag[0], tag[2:])


def _end_of_chunk(prev_tag, tag, prev_type, type_):
    """conlleval's endOfChunk (with S, as the Python ports of conlleval and seqeval have it)."""
    return ((prev_tag in "BI" and tag in "BSO") or prev_tag in "ES"
            or (prev_tag != "O" and prev_type != type_))


def _start_of_chunk(prev_tag, tag, prev_type, type_):
    """conlleval's startOfChunk."""
    return (tag in "BS" or (prev_tag in "ESO" and tag in "EI")
            or (tag != "O" and prev_type != type_))


def conlleval_counts(gold, pred):
    """conlleval.pl's counting loop, token by token: (correct, guessed, gold) span counts per
    type. Sentences are separated by a boundary line, which conlleval reads as tag O."""
    correct, found_guessed, found_correct = {}, {}, {}
    in_correct = False
    last_c = last_g = "O"
    last_ct = last_gt = ""
    stream = []
    for gs, ps in zip(gold, pred):
        stream.extend(zip(gs, ps))
        stream.append(("O", "O"))
    for c_tag, g_tag in stream:
        c, ct = _split(c_tag)
        g, gt = _split(g_tag)
        if in_correct:
            end_c = _end_of_chunk(last_c, c, last_ct, ct)
            end_g = _end_of_chunk(last_g, g, last_gt, gt)
            if end_c and end_g and last_gt == last_ct:
                in_correct = False
                correct[last_ct] = correct.get(last_ct, 0) + 1
            elif end_c != end_g or gt != ct:
                in_correct = False
        start_c = _start_of_chunk(last_c, c, last_ct, ct)
        start_g = _start_of_chunk(last_g, g, last_gt, gt)
        if start_c and start_g and gt == ct:
            in_correct = True
        if start_c:
            found_correct[ct] = found_correct.get(ct, 0) + 1
        if start_g:
            found_guessed[gt] = found_guessed.get(gt, 0) + 1
        last_c, last_g, last_ct, last_gt = c, g, ct, gt
    if in_correct:
        correct[last_ct] = correct.get(last_ct, 0) + 1
    return correct, found_guessed, found_correct


def strict_spans_brute(tags, scheme):
    """Every (type, start, end) that is a well-formed span, by checking all (start, end)."""
    out = set()
    n = len(tags)
    for s in range(n):
        for e in range(s + 1, n + 1):
            run = [_split(t) for t in tags[s:e]]
            (l0, x), ls = run[0], [r[0] for r in run]
            if x == "" or any(r[1] != x for r in run):
                continue
            after = _split(tags[e]) if e < n else ("O", "")
            if scheme == "BIO":
                ok = l0 == "B" and all(v == "I" for v in ls[1:]) and after != ("I", x)
            else:
                ok = ((e == s + 1 and l0 == "S")
                      or (e > s + 1 and l0 == "B" and ls[-1] == "E"
                          and all(v == "I" for v in ls[1:-1])))
            if ok:
                out.add((x, s, e))
    return out


def _random_tags(rng, n_sents, scheme, p_copy=None, gold=None):
    letters = "BI" if scheme == "BIO" else "BIES"
    vocab = ["O"] + [f"{c}-{t}" for c in letters for t in ("X", "Y", "LONG")]
    out = []
    for i in range(n_sents):
        n = len(gold[i]) if gold is not None else int(rng.integers(0, 9))
        seq = [vocab[k] for k in rng.integers(0, len(vocab), n)]
        if gold is not None:
            keep = rng.random(n) < p_copy
            seq = [g if k else s for g, s, k in zip(gold[i], seq, keep)]
        out.append(seq)
    return out


def _prf(c, p, g):
    pr = c / p if p else 0.0
    rc = c / g if g else 0.0
    return pr, rc, (2 * pr * rc / (pr + rc) if pr + rc else 0.0)


# --------------------------------------------------------------------------- hand-worked
def test_span_f1_hand_worked_bio():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "I-ORG", "I-ORG"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["O", "B-ORG", "I-ORG", "O"]]
    # gold: PER 0-2, LOC 3-4, ORG 1-4; pred: PER 0-2, ORG 3-4, ORG 1-3: one of three right
    r = metrics.span_f1(gold, pred)
    assert (r["n_gold"], r["n_pred"], r["n_correct"]) == (3, 3, 1)
    assert r["precision"] == pytest.approx(1 / 3) and r["recall"] == pytest.approx(1 / 3)
    assert r["f1"] == pytest.approx(1 / 3)
    assert r["per_type"]["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert r["per_type"]["ORG"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert r["per_type"]["LOC"]["support"] == 1 and r["per_type"]["LOC"]["f1"] == 0.0
    assert list(r["per_type"]) == ["LOC", "ORG", "PER"]


def test_i_without_b_starts_a_span_as_conlleval_does():
    tags = [["O", "I-PER", "I-PER", "B-PER", "I-LOC", "O"], ["I-X"]]
    assert metrics.spans(tags) == [[("PER", 1, 3), ("PER", 3, 4), ("LOC", 4, 5)],
                                   [("X", 0, 1)]]
    # so a prediction with I- instead of B- still matches the span
    r = metrics.span_f1([["B-PER", "I-PER", "O"]], [["I-PER", "I-PER", "O"]])
    assert r["f1"] == 1.0
    # strict: only well-formed spans
    assert metrics.spans(tags, strict=True) == [[("PER", 3, 4)], []]
    r = metrics.span_f1([["B-PER", "I-PER", "O"]], [["I-PER", "I-PER", "O"]], strict=True)
    assert (r["n_pred"], r["n_correct"], r["f1"]) == (0, 0, 0.0)


def test_bioes_spans_hand_worked():
    tags = [["S-X", "B-Y", "I-Y", "E-Y", "E-Y", "I-X", "B-X", "O", "B-Z"]]
    assert metrics.spans(tags, "BIOES") == [[("X", 0, 1), ("Y", 1, 4), ("Y", 4, 5),
                                             ("X", 5, 6), ("X", 6, 7), ("Z", 8, 9)]]
    # strict BIOES: a B closed by O or the sentence's end is no span, nor an E or I alone
    assert metrics.spans(tags, "BIOES", strict=True) == [[("X", 0, 1), ("Y", 1, 4)]]
    assert metrics.spans([["B-X", "E-X", "S-X"]], "IOBES") == [[("X", 0, 2), ("X", 2, 3)]]


def test_spans_do_not_cross_sentences():
    tags = [["B-X", "I-X"], ["I-X", "I-X"], [], ["O"]]
    assert metrics.spans(tags) == [[("X", 0, 2)], [("X", 0, 2)], [], []]


def test_empty_and_all_o():
    r = metrics.span_f1([["O", "O"], []], [["O", "O"], []])
    assert (r["precision"], r["recall"], r["f1"], r["per_type"]) == (0.0, 0.0, 0.0, {})
    r = metrics.span_f1([["B-X"]], [["O"]])
    assert (r["recall"], r["precision"], r["n_gold"]) == (0.0, 0.0, 1)


def test_accuracy():
    assert metrics.accuracy([["A", "B"], ["C"]], [["A", "C"], ["C"]]) == pytest.approx(2 / 3)
    assert metrics.get("accuracy") is metrics.accuracy
    assert metrics.get("span-f1") is metrics.span_f1 is metrics.get("SPAN_F1")


# --------------------------------------------------------------------------- against references
@pytest.mark.parametrize("scheme", ["BIO", "BIOES"])
def test_span_f1_matches_conlleval_counting_loop(scheme):
    rng = np.random.default_rng(15)
    for trial in range(150):
        gold = _random_tags(rng, int(rng.integers(1, 6)), scheme)
        pred = _random_tags(rng, len(gold), scheme, p_copy=rng.random(), gold=gold)
        correct, guessed, found = conlleval_counts(gold, pred)
        r = metrics.span_f1(gold, pred, scheme)
        assert r["n_correct"] == sum(correct.values()), (gold, pred)
        assert r["n_pred"] == sum(guessed.values()) and r["n_gold"] == sum(found.values())
        p, rc, f = _prf(sum(correct.values()), sum(guessed.values()), sum(found.values()))
        assert (r["precision"], r["recall"], r["f1"]) == pytest.approx((p, rc, f))
        for t, row in r["per_type"].items():
            c, g, s = correct.get(t, 0), guessed.get(t, 0), found.get(t, 0)
            assert row["support"] == s
            assert (row["precision"], row["recall"], row["f1"]) == pytest.approx(_prf(c, g, s))
        assert set(r["per_type"]) == {t for t in set(guessed) | set(found)}


@pytest.mark.parametrize("scheme", ["BIO", "BIOES"])
def test_strict_spans_match_brute_force_sets(scheme):
    rng = np.random.default_rng(16)
    for trial in range(150):
        gold = _random_tags(rng, int(rng.integers(1, 5)), scheme)
        pred = _random_tags(rng, len(gold), scheme, p_copy=rng.random(), gold=gold)
        g_sets = [strict_spans_brute(s, scheme) for s in gold]
        p_sets = [strict_spans_brute(s, scheme) for s in pred]
        assert [set(s) for s in metrics.spans(gold, scheme, strict=True)] == g_sets
        n_correct = sum(len(g & p) for g, p in zip(g_sets, p_sets))
        r = metrics.span_f1(gold, pred, scheme, strict=True)
        assert (r["n_correct"], r["n_pred"], r["n_gold"]) == (
            n_correct, sum(map(len, p_sets)), sum(map(len, g_sets)))


def test_lenient_and_strict_agree_on_well_formed_bio():
    rng = np.random.default_rng(17)
    for trial in range(50):
        tags = _random_tags(rng, 4, "BIO")
        spans = metrics.spans(tags)
        # rewrite every span's first tag as B-: then the sequence is well formed
        fixed = [list(s) for s in tags]
        for i, sent in enumerate(spans):
            for x, a, b in sent:
                fixed[i][a] = "B-" + x
        assert metrics.spans(fixed, strict=True) == metrics.spans(fixed) == spans


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("bad, where", [
    ("E-X", "position 1"), ("S-X", "position 1"), ("B-", "position 1"), ("BX", "position 1"),
    ("b-X", "position 1"), ("", "position 1"), (None, "position 1"), ("o", "position 1")])
def test_malformed_bio_tag_names_sentence_and_position(bad, where):
    gold = [["O", "O"], ["B-X", bad, "O"]]
    with pytest.raises(ValueError, match=f"gold: sentence 1, {where}: tag {bad!r:.5}"):
        metrics.span_f1(gold, [["O", "O"], ["O", "O", "O"]])
    with pytest.raises(ValueError, match="pred: sentence 1, position 1"):
        metrics.span_f1([["O", "O"], ["O", "O", "O"]], gold)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown scheme 'BILUO'"):
        metrics.span_f1([["O"]], [["O"]], scheme="BILUO")
    with pytest.raises(ValueError, match="sentence 0: gold has 2 tags but pred has 1"):
        metrics.span_f1([["O", "O"]], [["O"]])
    with pytest.raises(ValueError, match="gold has 1 sentences but pred has 2"):
        metrics.accuracy([["O"]], [["O"], ["O"]])
    with pytest.raises(ValueError, match=r"gold\[0\] must be a sequence of tags"):
        metrics.span_f1(["O", "B-X"], [["O"], ["B-X"]])
    with pytest.raises(ValueError, match="zero tokens"):
        metrics.accuracy([[]], [[]])
    with pytest.raises(ValueError, match="unknown metric 'f2'; known metrics: accuracy, "
                                         "span-f1"):
        metrics.get("f2")
