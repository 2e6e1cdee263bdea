"""Feature extraction: content against an independent per-token reference, CSR layout, save/load."""
import itertools
import json
import unicodedata

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings, strategies as st

import factorebm as fe
from factorebm import _features
from factorebm.features import FeatureExtractor, default_templates
from factorebm.modelio import load_arrays, save_arrays

TRAIN = [
    ["The", "running", "dog", "barks", "."],
    ["Dogs", "ran", "in", "1999", "to", "New-York", "!"],
    ["I", "saw", "the", "USA", "'s", "dogs", "running", "."],
    [],
    ["OK"],
]


# ------------------------------------------------------------------------------ reference
# Written from the definitions in the features module docstring, one token at a time, sharing
# no code with the library.

def _ref_class(c):
    if c.isupper():
        return "X"
    if c.isalpha():
        return "x"
    if c.isdigit():
        return "d"
    return c


def _ref_shape(w, cut):
    return "".join(k * min(len(list(run)), cut) for k, run in
                   itertools.groupby(_ref_class(c) for c in w))


def _ref_word_features(w, names, tag):
    lw = w.lower()
    out = set()
    for name in names:
        if name == "bias":
            out.add("bias" + tag)
        elif name == "word":
            out.add(f"word{tag}={w}")
        elif name == "lower":
            out.add(f"lower{tag}={lw}")
        elif name.startswith(("prefix", "suffix")):
            n = int(name[6:])
            if len(lw) >= n:
                out.add(f"{name}{tag}={lw[:n] if name[0] == 'p' else lw[len(lw) - n:]}")
        elif name == "shape":
            out.add(f"shape{tag}={_ref_shape(w, 4)}")
        elif name == "short_shape":
            out.add(f"short_shape{tag}={_ref_shape(w, 1)}")
        else:
            holds = {
                "has_digit": any(c.isdigit() for c in w),
                "has_hyphen": "-" in w,
                "all_caps": w.isupper(),
                "title": w.istitle(),
                "init_cap": w[:1].isupper(),
                "punct": bool(w) and all(_is_ps(c) for c in w),
            }[name]
            if holds:
                out.add(name + tag)
    return out


def _is_ps(c):
    return unicodedata.category(c) in ("Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po",
                                       "Sm", "Sc", "Sk", "So")


def _ref_token_features(sent, t, templates):
    out = set()
    for offset, names in templates.items():
        tag = "" if offset == 0 else f"[{offset:+d}]"
        j = t + offset
        if j < 0:
            out.add("BOS" + tag)
        elif j >= len(sent):
            out.add("EOS" + tag)
        else:
            out |= _ref_word_features(sent[j], names, tag)
    return out


def _row_names(fx, X, r):
    names = fx.feature_names_
    return {names[j] for j in X.indices[X.indptr[r]:X.indptr[r + 1]]}


def _check_against_reference(fx, train, sents, templates):
    vocab = set()
    for s in train:
        for t in range(len(s)):
            vocab |= _ref_token_features(s, t, templates)
    assert set(fx.feature_names_) == vocab
    X, offsets = fx.transform(sents)
    for i, s in enumerate(sents):
        for t in range(len(s)):
            assert _row_names(fx, X, offsets[i] + t) == _ref_token_features(s, t, templates) & vocab


# ------------------------------------------------------------------------------ content


def test_hand_checked_features():
    fx = FeatureExtractor().fit(TRAIN)
    X, offsets = fx.transform([["The", "running", "dog", "."]])
    the, running, dog, stop = (_row_names(fx, X, r) for r in range(4))
    # "running": suffix3 "ing", prefix4 "runn", its neighbours' lowercase forms.
    assert {"word=running", "lower=running", "suffix3=ing", "suffix1=g", "prefix4=runn",
            "shape=xxxx", "short_shape=x", "lower[-1]=the", "lower[+1]=dog",
            "lower[+2]=.", "suffix3[+1]=dog", "bias"} <= running
    assert "title" not in running and "BOS[-1]" not in running
    assert {"word=The", "lower=the", "title", "init_cap", "shape=Xxx", "short_shape=Xx",
            "BOS[-1]", "BOS[-2]"} <= the
    assert {"EOS[+1]", "EOS[+2]", "punct", "word=.", "lower[-1]=dog"} <= stop
    assert "EOS[+2]" in dog and "EOS[+1]" not in dog
    row = _row_names(fx, fx.transform([["1999"]])[0], 0)
    assert {"has_digit", "shape=dddd", "short_shape=d"} <= row
    row = _row_names(fx, fx.transform([["New-York"]])[0], 0)
    assert {"has_hyphen", "title", "shape=Xxx-Xxxx", "short_shape=Xx-Xx"} <= row
    row = _row_names(fx, fx.transform([["USA"]])[0], 0)
    assert {"all_caps", "shape=XXX", "prefix3=usa"} <= row and "title" not in row


def test_matches_reference_on_training_and_unseen_words():
    templates = default_templates()
    fx = FeatureExtractor().fit(TRAIN)
    unseen = [["Zorbing", "dogs", "in", "2024", "!"], ["the"], []]
    _check_against_reference(fx, TRAIN, TRAIN + unseen, templates)


def test_unseen_word_keeps_affix_and_shape_features():
    fx = FeatureExtractor().fit(TRAIN)
    row = _row_names(fx, fx.transform([["the", "blorfing", "dog"]])[0], 1)
    assert {"suffix3=ing", "suffix2=ng", "suffix1=g", "shape=xxxx", "bias",
            "lower[-1]=the", "lower[+1]=dog"} <= row
    assert not any("blorf" in f for f in row)


def test_min_count_counts_tokens():
    fx = FeatureExtractor().fit(TRAIN, min_count=2)
    counts = {}
    for s in TRAIN:
        for t in range(len(s)):
            for f in _ref_token_features(s, t, default_templates()):
                counts[f] = counts.get(f, 0) + 1
    assert set(fx.feature_names_) == {f for f, c in counts.items() if c >= 2}
    assert "lower=running" in fx.vocabulary_ and "lower=barks" not in fx.vocabulary_


_word = st.text(st.sampled_from("aAbBzZ09-.'!éÉß"), min_size=1, max_size=7)
_sents = st.lists(st.lists(_word, max_size=6), max_size=5)


@settings(max_examples=40, deadline=None)
@given(train=_sents.filter(lambda ss: any(ss)), test=_sents,
       window=st.integers(0, 3), min_count=st.integers(1, 2))
def test_random_sentences_match_reference(train, test, window, min_count):
    templates = default_templates(window)
    templates[0] = templates[0] + ("prefix6",)
    fx = FeatureExtractor(templates=templates).fit(train, min_count=min_count)
    X, offsets = fx.transform(test + train)
    counts = {}
    for s in train:
        for t in range(len(s)):
            for f in _ref_token_features(s, t, templates):
                counts[f] = counts.get(f, 0) + 1
    vocab = {f for f, c in counts.items() if c >= min_count}
    assert set(fx.feature_names_) == vocab
    for i, s in enumerate(test + train):
        for t in range(len(s)):
            assert _row_names(fx, X, offsets[i] + t) == _ref_token_features(s, t, templates) & vocab
    _check_layout(fx, X, offsets, test + train)


# ------------------------------------------------------------------------------ layout


def _check_layout(fx, X, offsets, sents):
    assert isinstance(X, sp.csr_matrix)
    assert X.shape == (sum(map(len, sents)), fx.n_features_)
    assert X.dtype == np.float64 and X.indices.dtype == np.int32
    assert np.all(X.data == 1.0)
    assert offsets.dtype == np.int64
    assert offsets.tolist() == [0] + list(itertools.accumulate(map(len, sents)))
    for r in range(X.shape[0]):
        row = X.indices[X.indptr[r]:X.indptr[r + 1]]
        assert np.all(np.diff(row) > 0)          # sorted, no duplicates
    assert X.has_sorted_indices
    if X.nnz:
        assert X.indices.min() >= 0 and X.indices.max() < fx.n_features_


def test_csr_layout_and_empty_sentences():
    fx = FeatureExtractor().fit(TRAIN)
    sents = [[], ["dog"], [], ["The", "dog"], []]
    X, offsets = fx.transform(sents)
    assert offsets.tolist() == [0, 0, 1, 1, 3, 3]
    _check_layout(fx, X, offsets, sents)
    X, offsets = fx.transform([])
    assert X.shape == (0, fx.n_features_) and offsets.tolist() == [0]


def test_fit_transform_equals_fit_then_transform():
    X1, off1 = FeatureExtractor().fit_transform(TRAIN)
    fx = FeatureExtractor().fit(TRAIN)
    X2, off2 = fx.transform(TRAIN)
    assert np.array_equal(off1, off2)
    assert (X1 != X2).nnz == 0 and np.array_equal(X1.indices, X2.indices)


def test_chunked_vocabulary_building_and_binary_output_change_nothing(monkeypatch):
    sents, _ = fe.datasets.load_ud_english_ewt("dev")
    sents = sents[:300]
    fx_ref = FeatureExtractor()
    X_ref, off_ref = fx_ref.fit_transform(sents)
    # fit numbers the feature strings a few word types at a time: the chunk size must not
    # matter, down to one type per chunk
    monkeypatch.setattr(fe.features, "_FIT_CHUNK_TYPES", 3)
    fx = FeatureExtractor()
    X, off = fx._fit_transform(sents, binary=True)
    assert fx.feature_names_ == fx_ref.feature_names_
    assert np.array_equal(off, off_ref)
    assert np.array_equal(X.indptr, X_ref.indptr) and np.array_equal(X.indices, X_ref.indices)
    # binary output: the same matrix, its ones a read-only view taking no memory
    assert X.data.strides == (0,) and not X.data.flags.writeable
    assert (X != X_ref).nnz == 0
    assert np.array_equal(X_ref.data, np.ones(X_ref.nnz)) and X_ref.data.flags.writeable


def test_cache_trimming_does_not_change_output():
    fx = FeatureExtractor(cache_size=0).fit(TRAIN)
    fresh = FeatureExtractor().fit(TRAIN)
    for batch in ([["zz1", "dog"]], [["zz2", "zz3"]], [["zz1"], ["the"]]):
        X, _ = fx.transform(batch)
        Y, _ = fresh.transform(batch)
        assert np.array_equal(X.indptr, Y.indptr) and np.array_equal(X.indices, Y.indices)
    assert fx._cache.n_types - fx._n_fit_types <= 2


def test_ewt_dev_slice():
    sents, _ = fe.datasets.load_ud_english_ewt("dev")
    fx = FeatureExtractor().fit(sents[:300])
    X, offsets = fx.transform(sents[300:400])
    _check_layout(fx, X, offsets, sents[300:400])
    _check_against_reference(fx, sents[:300], sents[300:320], default_templates())


# ------------------------------------------------------------------------------ save / load


def _same_output(fx1, fx2, sents):
    X1, o1 = fx1.transform(sents)
    X2, o2 = fx2.transform(sents)
    return (X1.shape == X2.shape and np.array_equal(o1, o2)
            and np.array_equal(X1.indptr, X2.indptr) and np.array_equal(X1.indices, X2.indices)
            and np.array_equal(X1.data, X2.data))


def test_round_trip_through_config_and_arrays():
    templates = {-1: ["lower", "suffix2"], 0: ["bias", "word", "suffix3", "shape"], 3: ["word"]}
    train = TRAIN + [["we\x1fird", "x\x1f"]]           # the separator inside a word
    fx = FeatureExtractor(templates=templates).fit(train, min_count=1)
    config = json.loads(json.dumps(fx.get_config()))
    arrays = fx.to_arrays()
    assert all(a.dtype != object and a.dtype.kind in "iuf" for a in arrays.values())
    fx2 = FeatureExtractor.from_config_and_arrays(config, arrays)
    assert fx2.templates == fx.templates and fx2.feature_names_ == fx.feature_names_
    sents = train + [["unseen", "Words", "we\x1fird"], []]
    assert _same_output(fx, fx2, sents)


def test_round_trip_through_model_file(tmp_path):
    sents, _ = fe.datasets.load_ud_english_ewt("test")
    fx = FeatureExtractor().fit(sents[:500])
    arrays = {f"features.{k}": v for k, v in fx.to_arrays().items()}
    save_arrays(tmp_path / "fx.npz", arrays, {"features": fx.get_config()}, kind="Features")
    loaded, meta = load_arrays(tmp_path / "fx.npz", kind="Features")
    fx2 = FeatureExtractor.from_config_and_arrays(
        meta["features"], {k[len("features."):]: v for k, v in loaded.items()})
    assert _same_output(fx, fx2, sents[400:700])


@pytest.mark.parametrize("odd_word", ["naïve", "we\x1fird"])   # a name holding the separator
def test_compiled_string_lookup_agrees_with_the_vocabulary(odd_word):
    fx = FeatureExtractor().fit(TRAIN + [["日本", odd_word]])
    queries = fx.feature_names_[::3] + ["lower=zzz", "", "word=naïve", "word=naïv",
                                        "suffix2=本", "lower=we\x1fird"]
    queries = queries + [q + "x" for q in queries]
    loaded = FeatureExtractor.from_config_and_arrays(fx.get_config(), fx.to_arrays())
    plain = [q for q in queries if "\x1f" not in q]
    for extractor in (fx, loaded):
        for batch in (queries, plain):     # with a separator inside: the dict path
            expected = [extractor.vocabulary_.get(q, -1) for q in batch]
            assert extractor._lookup(batch).tolist() == expected
    assert max(loaded._lookup(plain).tolist()) > 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(min_size=0, max_size=12), min_size=0, max_size=20),
       st.sampled_from([None, {0: ("bias", "prefix2", "suffix5", "has_digit", "punct"),
                               -1: ("title", "word"), 2: ("shape", "init_cap")}]))
def test_batch_strings_match_per_word_strings(words, templates):
    # Unseen word types get their strings template by template for the whole batch; each
    # word must get exactly the strings of the per-word definition, in its own groups.
    fx = FeatureExtractor(templates=templates)
    words = list(dict.fromkeys(words))
    flat, key = fx._batch_strings(words)
    n_groups = len(fx._groups)
    assert len(flat) == key.shape[0]
    joined, joined_key = fx._batch_strings(words, joined=True)
    assert joined == "\x1f".join(flat) and np.array_equal(joined_key, key)
    got = {}
    for string, k in zip(flat, key.tolist()):
        got.setdefault((k // n_groups, k % n_groups), []).append(string)
    expected = {(i, g): strings for i, word in enumerate(words)
                for g, strings in enumerate(fx._type_strings(word)) if strings}
    assert {k: sorted(v) for k, v in got.items()} == {k: sorted(v) for k, v in
                                                       expected.items()}


def test_unseen_types_after_load_match_the_fitted_extractor():
    # A loaded extractor builds unseen types' rows batch-wise through the compiled table;
    # the extractor that was fitted must give the same rows.
    sents = fe.datasets.load_ud_english_ewt("dev")[0]
    fx = FeatureExtractor().fit(sents[:600])
    loaded = FeatureExtractor.from_config_and_arrays(fx.get_config(), fx.to_arrays())
    test = sents[600:900] + [["we\x1fird", "naïve", "", "Ünïcode-42"]]
    assert _same_output(fx, loaded, test)
    X, _ = loaded.transform(test)
    assert X.nnz > 0 and X.has_sorted_indices


def test_tampered_arrays_are_refused():
    fx = FeatureExtractor().fit(TRAIN)
    config = fx.get_config()
    good = fx.to_arrays()
    bad_ids = dict(good, type_ids=good["type_ids"] + fx.n_features_)
    with pytest.raises(ValueError, match="type_ids"):
        FeatureExtractor.from_config_and_arrays(config, bad_ids)
    seg = good["type_seg"].copy()
    seg[3, 1] = 10**9
    with pytest.raises(ValueError, match="type_seg"):
        FeatureExtractor.from_config_and_arrays(config, dict(good, type_seg=seg))
    swapped = good["type_ids"].copy()
    seg = good["type_seg"]
    row = next(t for t in range(seg.shape[0]) if seg[t, 2] - seg[t, 1] >= 2)  # 2+ ids, group 1
    a = seg[row, 1]
    swapped[a], swapped[a + 1] = swapped[a + 1], swapped[a]
    with pytest.raises(ValueError, match="out of order"):
        FeatureExtractor.from_config_and_arrays(config, dict(good, type_ids=swapped))
    moved = good["type_ids"].copy()
    moved[seg[row, 1]] = good["group_bounds"][0]      # an id from group 0's range in group 1
    with pytest.raises(ValueError, match="outside"):
        FeatureExtractor.from_config_and_arrays(config, dict(good, type_ids=moved))
    with pytest.raises(ValueError, match="missing 'type_ids'"):
        FeatureExtractor.from_config_and_arrays(
            config, {k: v for k, v in good.items() if k != "type_ids"})
    with pytest.raises(ValueError, match="feature_names"):
        FeatureExtractor.from_config_and_arrays(
            config, dict(good, feature_names=good["feature_names"].astype(np.int64)))
    with pytest.raises(ValueError, match="feature_name_lengths"):
        FeatureExtractor.from_config_and_arrays(
            config, dict(good, feature_names=good["feature_names"][:-3]))
    with pytest.raises(ValueError, match="newer"):
        FeatureExtractor.from_config_and_arrays(dict(config, format_version=99), good)


# ------------------------------------------------------------------------------ errors


def test_bad_input_is_refused_clearly():
    with pytest.raises(ValueError, match="not fitted"):
        FeatureExtractor().transform([["a"]])
    fx = FeatureExtractor().fit(TRAIN)
    with pytest.raises(ValueError, match="not a list of strings"):
        fx.transform(["The", "dog"])
    with pytest.raises(ValueError, match="single string"):
        fx.transform("The dog")
    with pytest.raises(ValueError, match="tokens must be strings, found int"):
        fx.transform([["dog", 3]])
    with pytest.raises(ValueError, match="tokens must be strings, found list"):
        fx.transform([["dog", ["x"]]])
    # A refused batch leaves the extractor as it was.
    assert _same_output(fx, FeatureExtractor().fit(TRAIN), TRAIN)
    with pytest.raises(ValueError, match="unknown feature template 'suffix'"):
        FeatureExtractor(templates={0: ["suffix"]})
    with pytest.raises(ValueError, match="duplicate"):
        FeatureExtractor(templates={0: ["word", "word"]})
    assert FeatureExtractor(window=1).templates == default_templates(1)
    assert sorted(FeatureExtractor(window=0).templates) == [0]
    with pytest.raises(ValueError, match="either templates or window"):
        FeatureExtractor(templates={0: ["word"]}, window=1)
    with pytest.raises(ValueError, match="window"):
        FeatureExtractor(window=-1)
    with pytest.raises(ValueError, match="min_count"):
        FeatureExtractor().fit(TRAIN, min_count=0)
    with pytest.raises(ValueError, match="no tokens"):
        FeatureExtractor().fit([[], []])


def test_list_and_other_sequences_map_alike():
    # Lists of lists take a compiled token mapping, other sequences the generic one.
    fx = FeatureExtractor().fit(TRAIN)
    sents = [["The", "unseen", "dog"], [], ["runs", "unseen", "zzz"]]
    X1, o1 = fx.transform(sents)
    fx2 = FeatureExtractor().fit(TRAIN)
    X2, o2 = fx2.transform(tuple(tuple(s) for s in sents))
    assert np.array_equal(o1, o2) and np.array_equal(X1.indptr, X2.indptr)
    assert np.array_equal(X1.indices, X2.indices)
    cache = fx._cache
    with pytest.raises(ValueError, match="tokens must be strings, found list"):
        fx.transform([["new1", "new2", ["x"]]])
    assert fx._cache is cache and "new1" not in cache.index     # nothing half-cached
    assert np.array_equal(fx.transform(sents)[0].indices, X1.indices)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.sampled_from(["The", "dog", "barks", ".", "unseen", "Ünï-42", "",
                                          "1999", "we\x1fird", "New-York", "zzz"]),
                         max_size=7), max_size=8),
       st.integers(1, 5), st.integers(0, 10**6), st.sampled_from([1, 2]))
def test_emissions_equal_the_sparse_product(sents, n_states, seed, n_threads):
    # The tagging fast path sums W rows per (word type, group) and then per token; it must
    # give what building X and multiplying does, for seen and unseen words and empty sentences.
    templates = {-2: ["lower"], -1: ["lower", "suffix2"], 0: ["bias", "word", "suffix3", "shape",
                                                             "has_digit"], 1: ["short_shape"]}
    fx = FeatureExtractor(templates=templates).fit(TRAIN)
    W = np.random.default_rng(seed).normal(size=(fx.n_features_, n_states))
    U, offsets = fx.emissions(sents, W, n_threads=n_threads)
    X, offsets_ref = FeatureExtractor.from_config_and_arrays(fx.get_config(),
                                                             fx.to_arrays()).transform(sents)
    assert np.array_equal(offsets, offsets_ref)
    assert U.shape == (X.shape[0], n_states)
    np.testing.assert_allclose(U, X @ W, rtol=1e-12, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.sampled_from(["The", "dog", "barks", ".", "unseen", "Ünï-42", "",
                                          "1999", "zzz"]), max_size=7), max_size=8),
       st.integers(1, 12), st.integers(0, 10**6), st.sampled_from([1, 2]))
def test_emission_blocks_cover_the_batch_with_what_emissions_give(sents, block_tokens, seed,
                                                                   n_threads):
    # Tagging a large document sums the per-token rows a block of whole sentences at a time,
    # into one reused buffer: blocks must tile the sentences in order, hold at most
    # block_tokens tokens unless one sentence is longer, and carry exactly emissions' rows.
    fx = FeatureExtractor().fit(TRAIN)
    W = np.random.default_rng(seed).normal(size=(fx.n_features_, 3))
    ref, offsets_ref = fx.emissions(sents, W, n_threads=n_threads)
    offsets, blocks = fx.emission_blocks(sents, W, block_tokens=block_tokens,
                                         n_threads=n_threads)
    assert np.array_equal(offsets, offsets_ref)
    for a, b, U in _check_tiling(blocks, offsets, len(sents), block_tokens):
        assert np.array_equal(U, ref[a:b])      # same sums in the same order: bit for bit


def _check_tiling(blocks, offsets, n_sents, block_tokens):
    """Yield each block's token range and energies ``(a, b, U)`` while checking that the
    blocks tile the sentences in order, hold at most block_tokens tokens unless one sentence
    is longer, and are views of one buffer."""
    expected_first, buffers = 0, set()
    for first, last, U in blocks:
        assert first == expected_first and last > first
        a, b = offsets[first], offsets[last]
        assert b - a <= block_tokens or last == first + 1
        yield a, b, U
        buffers.add(U.base.__array_interface__["data"][0] if U.base is not None else None)
        expected_first = last
    assert expected_first == n_sents
    assert len(buffers) <= 1                    # one buffer for every block


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.sampled_from(["The", "dog", "barks", ".", "unseen", "Ünï-42", "",
                                          "1999", "zzz"]), max_size=7), max_size=8),
       st.integers(1, 12), st.integers(1, 3), st.sampled_from([np.float32, np.float64]),
       st.integers(0, 10**6), st.sampled_from([1, 2]))
def test_member_emission_blocks_cover_the_batch_with_what_member_emissions_give(
        sents, block_tokens, n_members, dtype, seed, n_threads):
    # An ensemble tags a large document a block of whole sentences at a time: the blocks tile
    # the sentences in order, respect the size, hold every member's rows of member_emissions
    # bit for bit, C-contiguous (the forward-backward kernel takes them as they are), in one
    # reused buffer.
    fx = FeatureExtractor().fit(TRAIN)
    S = 3
    coef = np.random.default_rng(seed).normal(size=(n_members, fx.n_features_ * S + 5))
    coef = coef.astype(dtype)
    ref, offsets_ref = fx.member_emissions(sents, coef, S, n_threads=n_threads)
    offsets, blocks = fx.member_emission_blocks(sents, coef, S, block_tokens=block_tokens,
                                                n_threads=n_threads)
    assert np.array_equal(offsets, offsets_ref)
    for a, b, U in _check_tiling(blocks, offsets, len(sents), block_tokens):
        assert U.shape == (n_members, b - a, S) and U.flags.c_contiguous
        assert np.array_equal(U, ref[:, a:b])


def test_member_emission_blocks_refuse_bad_arguments_before_any_block():
    fx = FeatureExtractor().fit(TRAIN)
    coef = np.zeros((2, fx.n_features_ * 3))
    for bad in (0, -3, 2.5, True, "8"):
        with pytest.raises(ValueError, match="block_tokens"):
            fx.member_emission_blocks(TRAIN, coef, 3, block_tokens=bad)
    with pytest.raises(ValueError, match="cannot hold"):
        fx.member_emission_blocks(TRAIN, coef, 4)
    with pytest.raises(ValueError, match="C-contiguous 2-D"):
        fx.member_emission_blocks(TRAIN, coef[:, ::2], 3)
    with pytest.raises(ValueError, match="tokens must be strings"):
        fx.member_emission_blocks([["a", 3]], coef, 3)


def test_a_documents_interned_forms_map_as_its_tokens_do_and_only_while_they_are_its_own():
    # factorebm tag looks each distinct word of a document up once, through the document's
    # distinct forms and each token's index among them; the types must be the ones mapping
    # every token gives (unseen words numbered by first appearance), and changed sentences
    # must never be mapped by stale indices
    from factorebm.datasets import ConlluDocument
    words = [["The", "zorp", "barks", "."], ["zorp", "the", "The", "quux"], [], ["quux", "."]]
    data = "\n".join("".join(f"{i}\t{w}\t_\tX\t_\t_\t_\t_\t_\t_\n"
                             for i, w in enumerate(s, 1)) for s in words if s) + "\n"
    doc = ConlluDocument(data.encode("utf-8"))
    fitted = FeatureExtractor().fit(TRAIN)

    def fresh():
        return FeatureExtractor.from_config_and_arrays(fitted.get_config(), fitted.to_arrays())

    def types(fx, forms, interned=None):
        tok_type, offsets, _ = fx._map_batch(forms, interned)
        return tok_type.tolist(), offsets.tolist()

    def interned_path_taken(forms):
        fx = fresh()
        out = np.empty(sum(map(len, forms)), dtype=np.int32)
        return _features.map_interned(forms, *doc._interned, fx._cache.index,
                                      fx._cache.n_types, {}, out)

    assert interned_path_taken(doc.forms)
    assert types(fresh(), doc.forms, doc._interned) == types(fresh(), doc.forms)
    changed = [list(s) for s in doc.forms]
    changed[0][0] = "".join(["T", "he"])          # equal, but not the interned object
    changed[1][1] = "zebra"                       # another word
    for forms in (changed, changed[:1], doc.forms[:2]):
        assert not interned_path_taken(forms)
        assert types(fresh(), forms, doc._interned) == types(fresh(), forms)


def test_emission_blocks_refuse_bad_arguments_before_any_block():
    fx = FeatureExtractor().fit(TRAIN)
    W = np.zeros((fx.n_features_, 3))
    for bad in (0, -3, 2.5, True, "8"):
        with pytest.raises(ValueError, match="block_tokens"):
            fx.emission_blocks(TRAIN, W, block_tokens=bad)
    with pytest.raises(ValueError, match=r"W must have shape"):
        fx.emission_blocks(TRAIN, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="tokens must be strings"):
        fx.emission_blocks([["a", 3]], W)


def test_emissions_refuse_a_wrong_weight_shape():
    fx = FeatureExtractor().fit(TRAIN)
    with pytest.raises(ValueError, match=r"W must have shape \(\d+, S\)"):
        fx.emissions(TRAIN, np.zeros((fx.n_features_ + 1, 3)))
    with pytest.raises(ValueError, match="not fitted"):
        FeatureExtractor().emissions(TRAIN, np.zeros((1, 3)))


def test_emissions_take_threads_by_the_package_rule():
    # refused before anything is cached, clamped to the cores above them (400 aborted in
    # libgomp and 10**6 crashed before the rule)
    fx = FeatureExtractor().fit(TRAIN)
    W = np.random.default_rng(0).normal(size=(fx.n_features_, 3))
    cache = fx._cache
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="n_threads"):
            fx.emissions([["brandnew"]], W, n_threads=bad)
    assert fx._cache is cache
    ref, _ = fx.emissions(TRAIN, W, n_threads=1)
    for n in (None, 2, 400, 10**6):
        U, _ = fx.emissions(TRAIN, W, n_threads=n)
        assert np.array_equal(U, ref)


def test_template_offsets_are_bounded():
    # an offset of 2**70 in a model file was a raw OverflowError
    with pytest.raises(ValueError, match="offset 1180591620717411303424 is out of range"):
        FeatureExtractor(templates={0: ["word"], 2**70: ["lower"]})
    with pytest.raises(ValueError, match="out of range"):
        FeatureExtractor(templates=[[-(2**17), ["lower"]]])
    assert FeatureExtractor(templates={-(2**16): ["lower"], 0: ["word"]}).fit(TRAIN)
    with pytest.raises(ValueError, match="cache_size"):
        FeatureExtractor(cache_size=float("inf"))


def test_a_fitted_extractor_copies_with_its_own_lock():
    import copy
    import pickle
    fx = FeatureExtractor().fit(TRAIN)
    fx.transform([["brandnew", "dog"]])
    for twin in (copy.deepcopy(fx), pickle.loads(pickle.dumps(fx))):
        assert twin._lock is not fx._lock
        X, _ = twin.transform([["brandnew", "dog"], ["other"]])
        Y, _ = fx.transform([["brandnew", "dog"], ["other"]])
        assert np.array_equal(X.indices, Y.indices) and np.array_equal(X.indptr, Y.indptr)


def _is_segment_table(seg, n_ids):
    """What a model load asks of its type_seg, in numpy: the compiled check's reference."""
    if seg.shape[0] == 0 or seg.shape[1] == 0:
        return False
    flat = np.concatenate([seg[:, :-1].ravel(), seg[-1:, -1]])
    return bool(flat[0] == 0 and not np.any(np.diff(flat) < 0) and flat[-1] == n_ids
                and np.array_equal(seg[:-1, -1], seg[1:, 0]))


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 4), st.integers(1, 4), st.data())
def test_segment_table_check_equals_its_numpy_reference(n_types, width, data):
    # mostly valid tables (cumulative lengths), then one entry nudged or the total changed
    lengths = data.draw(st.lists(st.integers(0, 3), min_size=n_types * (width - 1),
                                 max_size=n_types * (width - 1)))
    flat = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)
    seg = np.zeros((n_types, width), dtype=np.int64)
    for ty in range(n_types):
        seg[ty] = flat[ty * (width - 1):ty * (width - 1) + width]
    n_ids = int(flat[-1])
    if n_types and data.draw(st.booleans()):
        ty, g = data.draw(st.integers(0, n_types - 1)), data.draw(st.integers(0, width - 1))
        seg[ty, g] += data.draw(st.sampled_from([-1, 1, 5]))
    if data.draw(st.booleans()):
        n_ids += data.draw(st.sampled_from([-1, 1]))
    assert _features.is_segment_table(seg, n_ids) == _is_segment_table(seg, n_ids)
