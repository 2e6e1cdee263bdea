"""The tagger's front ends (factorebm.front_end): the character encoder, the features+chars
tagger (training, the fast tagging path, model files, old files, threads, bad input) and the
command line's --front-end."""
import threading

import numpy as np
import pytest

import factorebm as fe
from factorebm import cli
from factorebm.front_end import CHAR_DEFAULTS, FRONT_ENDS, CharEncoder, CharFrontEnd
from factorebm.modules import Context

SMALL_CHARS = {"char_dim": 8, "widths": [2, 3], "n_filters": 8}


@pytest.fixture(scope="module")
def small_ewt():
    train_s, train_t = fe.datasets.load_ud_english_ewt("train")
    dev_s, dev_t = fe.datasets.load_ud_english_ewt("dev")
    return (train_s[:300], train_t[:300]), (dev_s[:200], dev_t[:200])


@pytest.fixture(scope="module")
def chars_tagger(small_ewt):
    (s, t), _ = small_ewt
    return fe.SequenceTagger(front_end="features+chars", chars=SMALL_CHARS, max_iter=4,
                             verbose=False).fit(s, t)


# ---------------------------------------------------------------------------- the encoder
def test_encoder_spells_each_distinct_word_once_with_markers():
    enc = CharEncoder.fit([["ab", "b"], ["ab"]], min_count=1)
    assert enc.n_chars == 5 + 2                     # reserved ids, then 'a' and 'b'
    x, offsets = enc.encode([["ab", "zb", "ab"], [], ["b"]], window=1)
    np.testing.assert_array_equal(offsets, [0, 3, 3, 4])
    # types: 0 before a sentence, 1 after it, then ab, zb, b in order of first appearance
    words = [x.chars[x.char_offsets[t]:x.char_offsets[t + 1]].tolist()
             for t in range(x.n_types)]
    assert words == [[3], [4], [1, 5, 6, 2], [1, 0, 6, 2], [1, 6, 2]]   # z is unknown: 0
    np.testing.assert_array_equal(x.token_types, [[0, 2, 3], [2, 3, 2], [3, 2, 1],
                                                  [0, 4, 1]])


def test_encoder_keeps_characters_seen_min_count_times():
    enc = CharEncoder.fit([["aab", "é", "😀😀"]], min_count=2)
    assert enc.codepoints.tolist() == [ord("a"), ord("😀")]
    assert enc.char_ids("ba😀é").tolist() == [0, 5, 6, 0]


def test_encoder_refuses_non_string_tokens():
    enc = CharEncoder.fit([["a"]], min_count=1)
    with pytest.raises(ValueError, match="tokens must be strings"):
        enc.encode([["a", 3]])


# ---------------------------------------------------------------------------- the tagger
def test_chars_tagger_learns_and_reports_progress(small_ewt, capsys):
    (s, t), (ds, dt) = small_ewt
    tagger = fe.SequenceTagger(front_end="features+chars", chars=SMALL_CHARS, max_iter=2)
    tagger.fit(s[:100], t[:100], dev=(ds, dt))
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("epoch")]
    assert len(lines) == 2 and all("dev accuracy" in line and "loss" in line for line in lines)
    assert all(h["dev_accuracy"] > 0.5 for h in tagger.history_)


def test_chars_tagger_is_silent_when_asked(small_ewt, capsys):
    (s, t), (ds, dt) = small_ewt
    fe.SequenceTagger(front_end="features+chars", chars=SMALL_CHARS, max_iter=1,
                      verbose=False).fit(s[:30], t[:30], dev=(ds[:10], dt[:10]))
    assert capsys.readouterr().out == ""


def test_chars_tagger_is_as_good_as_the_features_alone(small_ewt, chars_tagger):
    (s, t), (ds, dt) = small_ewt
    features = fe.SequenceTagger(max_iter=4, verbose=False).fit(s, t)
    assert chars_tagger.score(ds, dt) > features.score(ds, dt) - 0.02
    assert chars_tagger.score(ds, dt) > 0.8


def test_fast_tagging_path_equals_the_training_architecture(small_ewt, chars_tagger):
    """energies() adds the branch per word type to FeatureExtractor.emissions; the model the
    learner trained computes the same emission energies through its modules."""
    _, (ds, _) = small_ewt
    unary, transition, start, end, offsets = chars_tagger.energies(ds)
    X, off2 = chars_tagger.feature_extractor_.transform(ds)
    np.testing.assert_array_equal(offsets, off2)
    X = (X, chars_tagger.char_front_end_.encode(ds))
    ref = chars_tagger.model_.unary(chars_tagger.coef_, X)
    np.testing.assert_allclose(unary, ref, rtol=1e-10, atol=1e-10)
    assert chars_tagger.predict(ds) == [
        chars_tagger.labels_[lab].tolist() for lab in np.split(
            chars_tagger.model_.predict(chars_tagger.coef_, X, offsets), offsets[1:-1])]


def test_emission_starts_where_a_plain_sum_would(small_ewt):
    """The emission's lean initialization draws the same numbers as Sum's."""
    from factorebm import modules as nn
    (s, _), _ = small_ewt
    front = CharFrontEnd.fit(s, 6, **SMALL_CHARS)
    emission = front.emission(40)
    plain = nn.Sum(*emission.modules)
    np.testing.assert_array_equal(emission.init_params(3), plain.init_params(3))
    assert repr(emission).startswith("_FeaturesAndChars(Sequential(Select(0), SparseLinear(40")


@pytest.mark.parametrize("opts", [{"window": 1, "hidden": 6},
                                  {"window": 2, "hidden": 0, "highway": True,
                                   "activation": "tanh"}])
def test_fast_branch_path_matches_the_module_for_every_setting(small_ewt, opts):
    (s, _), (ds, _) = small_ewt
    front = CharFrontEnd.fit(s, 6, **{**SMALL_CHARS, **opts})
    w = front.branch.init_params(0) + np.random.default_rng(0).normal(0, 0.1, front.n_params)
    ref = front.emission_branch.forward(w, front.encode(ds), Context(keep=False))
    np.testing.assert_allclose(front.unary(w, ds), ref, rtol=1e-10, atol=1e-12)
    direct = front.branch.forward(w * front.options["step_scale"], front.encode(ds),
                                  Context(keep=False))
    np.testing.assert_allclose(direct, ref, rtol=1e-12, atol=1e-14)
    assert front.unary(w, []).shape == (0, 6)


def test_model_file_round_trip(tmp_path, small_ewt, chars_tagger):
    _, (ds, _) = small_ewt
    path = tmp_path / "chars.npz"
    chars_tagger.save(path)
    loaded = fe.SequenceTagger.load(path)
    assert loaded.front_end == "features+chars" and loaded.chars == SMALL_CHARS
    assert loaded.predict(ds) == chars_tagger.predict(ds)
    np.testing.assert_array_equal(loaded.energies(ds)[0], chars_tagger.energies(ds)[0])
    with np.load(path, allow_pickle=False) as z:      # plain arrays only
        assert "chars.codepoints" in z.files


@pytest.mark.parametrize("damage", ["no codepoints", "bad options", "wrong state count"])
def test_damaged_chars_model_files_are_refused(tmp_path, chars_tagger, damage):
    from factorebm.modelio import load_arrays, save_arrays
    chars_tagger.save(tmp_path / "good.npz")
    arrays, metadata = load_arrays(tmp_path / "good.npz", kind="SequenceTagger")
    metadata = {k: v for k, v in metadata.items()
                if k not in ("format_version", "kind", "arrays", "shapes")}
    if damage == "no codepoints":
        del arrays["chars.codepoints"]
    elif damage == "bad options":
        metadata["char_config"]["options"]["window"] = -1
    else:
        metadata["char_config"]["n_states"] += 1
    save_arrays(tmp_path / "bad.npz", arrays, metadata, kind="SequenceTagger")
    with pytest.raises(ValueError, match="not a valid SequenceTagger model"):
        fe.SequenceTagger.load(tmp_path / "bad.npz")


def test_model_files_written_before_front_ends_still_load(tmp_path, small_ewt, monkeypatch):
    """A features model whose saved settings have no front_end or chars, as the code before
    this change wrote them, loads as a features tagger."""
    (s, t), (ds, _) = small_ewt
    tagger = fe.SequenceTagger(max_iter=1, verbose=False).fit(s[:50], t[:50])
    params = tagger.get_params()
    del params["front_end"], params["chars"]
    monkeypatch.setattr(tagger, "get_params", lambda deep=True: dict(params))
    tagger.save(tmp_path / "old.npz")
    loaded = fe.SequenceTagger.load(tmp_path / "old.npz")
    assert loaded.front_end == "features" and loaded.chars is None
    assert loaded.predict(ds) == tagger.predict(ds)


def test_threads_tag_with_one_chars_tagger_at_once(small_ewt, chars_tagger):
    _, (ds, _) = small_ewt
    parts = [ds[i::4] for i in range(4)]
    refs = [chars_tagger.predict(p) for p in parts]
    results, errors = [], []

    def work(i):
        try:
            for _ in range(3):
                results.append(chars_tagger.predict(parts[i]) == refs[i])
        except Exception as exc:     # pragma: no cover - reported below
            errors.append(exc)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors and len(results) == 12 and all(results)


def test_unknown_front_end_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="unknown front_end 'chars'; use one of 'features', "
                                         "'features\\+chars'"):
        fe.SequenceTagger(front_end="chars", verbose=False).fit([["a"]], [["X"]])
    assert FRONT_ENDS == ("features", "features+chars")


@pytest.mark.parametrize("chars, match", [
    ({"hiden": 3}, "unknown character front-end setting"),
    ({"hidden": -1}, "hidden"),
    ({"activation": "sigmoid"}, "activation"),
    ({"widths": [0]}, "widths"),
    ({"min_count": 0}, "min_count"),
    ({"step_scale": 0}, "scale must be"),
])
def test_bad_char_settings_are_refused(chars, match):
    with pytest.raises(ValueError, match=match):
        fe.SequenceTagger(front_end="features+chars", chars=chars, verbose=False).fit(
            [["a", "b"]], [["X", "Y"]])


def test_defaults_are_documented_settings():
    assert set(CHAR_DEFAULTS) == {"char_dim", "widths", "n_filters", "activation", "highway",
                                  "window", "hidden", "min_count", "step_scale"}


# ---------------------------------------------------------------------------- command line
def test_cli_trains_a_chars_tagger(tmp_path, small_ewt, capsys):
    (s, t), _ = small_ewt
    path = tmp_path / "train.conllu"
    _write_conllu(path, s[:60], t[:60])
    model = tmp_path / "m.npz"
    assert cli.main(["train", "--model", str(model), "--train", str(path), "--test", str(path),
                     "--front-end", "features+chars", "--max-iter", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out
    assert fe.SequenceTagger.load(model).front_end == "features+chars"
    with pytest.raises(SystemExit):
        cli.main(["train", "--model", str(model), "--front-end", "chars"])
    assert "invalid choice: 'chars'" in capsys.readouterr().err


def _write_conllu(path, sents, tags):
    with open(path, "w", encoding="utf-8") as fh:
        for forms, upos in zip(sents, tags):
            for i, (w, u) in enumerate(zip(forms, upos), 1):
                fh.write(f"{i}\t{w}\t_\t{u}\t_\t_\t_\t_\t_\t_\n")
            fh.write("\n")
