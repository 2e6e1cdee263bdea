"""SequenceTagger's marginal decoding and ensembles (issue 11): decode="marginal" takes each
token's most probable tag with the substates summed out; ensemble=M trains M models from
different random starts and averages their tag marginals."""
import itertools
import json
import subprocess
import sys

import numpy as np
import pytest

import factorebm as fe
from factorebm.modelio import load_arrays, save_arrays
from test_tagger_additions import bio_corpus, ewt, valid_bio  # noqa: F401  (ewt: a fixture)


@pytest.fixture(scope="module")
def members(ewt):
    """Three taggers trained alone, seeds 3, 4, 5."""
    (s, t), _ = ewt
    return [fe.SequenceTagger(max_iter=2, n_substates=2, random_state=3 + m,
                              verbose=False).fit(s, t) for m in range(3)]


@pytest.fixture(scope="module")
def ensemble(ewt):
    (s, t), _ = ewt
    return fe.SequenceTagger(max_iter=2, n_substates=2, random_state=3, ensemble=3,
                             verbose=False).fit(s, t)


def test_members_are_the_taggers_trained_alone(members, ensemble):
    assert ensemble.coef_.shape == (3, members[0].coef_.shape[0])
    assert ensemble.coef_.dtype == np.float32         # stored in float32, trained in float64
    for m, alone in enumerate(members):
        np.testing.assert_array_equal(ensemble.coef_[m], alone.coef_.astype(np.float32))
    # different starts make different models (else an ensemble would be pointless)
    assert np.abs(members[0].coef_ - members[1].coef_).max() > 1e-3
    assert {row["member"] for row in ensemble.history_} == {0, 1, 2}


def _as_stored(alone):
    """A copy of a tagger whose float64 weights are those of its float32 copy: what an
    ensemble holds of it."""
    copy = fe.SequenceTagger(**alone.get_params())
    copy.__dict__.update({k: v for k, v in alone.__dict__.items() if k.endswith("_")})
    copy.coef_ = alone.coef_.astype(np.float32).astype(np.float64)
    return copy


def test_ensemble_averages_the_members_marginals_and_takes_the_argmax(ewt, members, ensemble):
    _, (ds, _) = ewt
    # exactly (to the order of the additions) the mean of the members as stored
    mean = np.mean([np.concatenate(_as_stored(m).predict_marginals(ds)) for m in members],
                   axis=0)
    got = np.concatenate(ensemble.predict_marginals(ds))
    np.testing.assert_allclose(got, mean, atol=1e-12)
    pred = sum(ensemble.predict(ds), [])
    assert pred == ensemble.labels_[mean.argmax(axis=1)].tolist()
    # and close to the mean of the float64 members: float32 weights move a marginal by
    # about 1e-7
    exact = np.mean([np.concatenate(m.predict_marginals(ds)) for m in members], axis=0)
    np.testing.assert_allclose(got, exact, atol=1e-5)
    assert 0 < np.abs(got - exact).max()


def test_float64_ensembles_of_older_files_tag_as_before(ewt, ensemble, tmp_path):
    """A file written before ensembles were stored in float32 (float64 coef, no coef_dtype)
    loads as it is and tags with its float64 weights; its float32 rounding tags alike."""
    _, (ds, _) = ewt
    path = tmp_path / "ens.npz"
    ensemble.save(path)
    arrays, metadata = load_arrays(path, kind="SequenceTagger")
    assert metadata["coef_dtype"] == "float32"
    extra = {k: v for k, v in metadata.items()
             if k not in ("format_version", "kind", "arrays", "shapes", "coef_dtype")}
    rng = np.random.default_rng(0)
    # float64 weights that float32 cannot hold, so that the two paths differ
    coef64 = arrays["coef"].astype(np.float64) * (1 + 1e-6 * rng.standard_normal(
        arrays["coef"].shape))
    old = tmp_path / "old.npz"
    save_arrays(old, {**arrays, "coef": coef64}, extra, kind="SequenceTagger")
    loaded = fe.SequenceTagger.load(old)
    assert loaded.coef_.dtype == np.float64
    np.testing.assert_array_equal(loaded.coef_, coef64)
    P64 = np.concatenate(loaded.predict_marginals(ds))
    loaded.coef_ = coef64.astype(np.float32)
    P32 = np.concatenate(loaded.predict_marginals(ds))
    np.testing.assert_allclose(P32, P64, atol=1e-5)
    assert 0 < np.abs(P32 - P64).max()
    # the float64 path is the members' forward-backward, averaged
    fx, model = loaded.feature_extractor_, loaded.model_
    S = model.n_states
    total = 0
    for c in coef64:
        U, offsets = fx.emissions(ds, c[:fx.n_features_ * S].reshape(-1, S))
        _, transition, start, end = model.unpack(c)
        total = total + fe.chain.forward_backward(U, transition, offsets, 1.0, start, end,
                                                  state_label=model.state_label)[0]
    np.testing.assert_allclose(P64, total / len(coef64), atol=1e-12)


def test_a_file_whose_coef_dtype_does_not_match_its_weights_is_refused(ensemble, tmp_path):
    path = tmp_path / "ens.npz"
    ensemble.save(path)
    arrays, metadata = load_arrays(path, kind="SequenceTagger")
    bad = tmp_path / "bad.npz"
    extra = {k: v for k, v in metadata.items() if k not in ("format_version", "kind",
                                                            "arrays", "shapes")}
    for coef, dtype in ((arrays["coef"].astype(np.float64), "float32"),
                        (arrays["coef"], "float64"), (arrays["coef"], "float16"),
                        (arrays["coef"].astype(np.float16), "float16"), (arrays["coef"], 32)):
        save_arrays(bad, {**arrays, "coef": coef}, {**extra, "coef_dtype": dtype},
                    kind="SequenceTagger")
        with pytest.raises(ValueError, match="bad.npz.*coef"):
            fe.SequenceTagger.load(bad)
    # one model: float64 only, whatever the metadata says
    one = tmp_path / "one.npz"
    save_arrays(one, {**arrays, "coef": arrays["coef"][0]},
                {**extra, "params": {**extra["params"], "ensemble": 1}}, kind="SequenceTagger")
    with pytest.raises(ValueError, match="one.npz.*coef"):
        fe.SequenceTagger.load(one)


def test_member_emissions_are_each_members_emissions(ewt, ensemble):
    _, (ds, _) = ewt
    fx, S = ensemble.feature_extractor_, ensemble.model_.n_states
    coef32 = ensemble.coef_
    coef64 = coef32.astype(np.float64) + 1e-9        # not float32 numbers
    for coef in (coef32, coef64):
        for nt in (1, 2):
            U, offsets = fx.member_emissions(ds + [[]], coef, S, n_threads=nt)
            assert U.shape == (3, offsets[-1], S) and U.dtype == np.float64
            for m in range(3):
                # float64 weights: emissions()'s values bit for bit; float32: those of the
                # weights widened to float64 (the sums are float64 either way)
                W = coef[m, :fx.n_features_ * S].astype(np.float64).reshape(-1, S)
                want, want_offsets = fx.emissions(ds + [[]], W, n_threads=nt)
                np.testing.assert_array_equal(offsets, want_offsets)
                np.testing.assert_array_equal(U[m], want)
    U, _ = fx.member_emissions([], coef32, S)
    assert U.shape == (3, 0, S)
    for bad in (coef32[:, ::2], coef32.astype(np.float16), coef32[0], coef32[:, :10],
                coef32.tolist()):
        with pytest.raises(ValueError, match="coef"):
            fx.member_emissions(ds, bad, S)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="n_states"):
            fx.member_emissions(ds, coef32, bad)


def _random_chains(rng, M, S, lengths, spread=3.0):
    N = int(sum(lengths))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return (rng.normal(0, spread, (M, N, S)), rng.normal(0, spread, (M, S, S)), offsets,
            rng.normal(0, 1, (M, S)), rng.normal(0, 1, (M, S)))


@pytest.mark.parametrize("case", ["plain", "labels", "mask", "forbidden", "lossy"])
def test_ensemble_marginals_are_the_mean_of_the_members(case):
    rng = np.random.default_rng(7)
    M, S = 3, 6
    lengths = [3, 0, 1, 7, 12, 2] * 60         # more sequences than the kernel's 256 blocks
    U, tr, offsets, start, end = _random_chains(rng, M, S, lengths)
    kw = {}
    if case in ("labels", "mask", "forbidden"):
        kw["state_label"] = np.arange(S) // 2
    if case == "mask":
        kw["mask"] = rng.random((offsets[-1], S)) < 0.7
        kw["mask"][:, 0] = True
    if case == "forbidden":
        tr[1, 0, 1:] = np.inf
        U[2, 5, 3] = np.inf
    if case == "lossy":
        tr[0, 0, 1] = 900.0      # beyond the scaled recursion's range: the exact one runs
        U[1, ::5, 2] = 800.0     # the same for single tokens
    want = 0
    frees = []
    for m in range(M):
        P, F = fe.chain.forward_backward(U[m], tr[m], offsets, 0.7, start[m], end[m], **kw)
        want = want + P
        frees.append(F)
    for nt in (1, 2, None):
        got, free = fe.chain.ensemble_marginals(U, tr, offsets, 0.7, start, end,
                                                n_threads=nt, **kw)
        np.testing.assert_allclose(got, want / M, atol=1e-12)
        np.testing.assert_allclose(free, np.array(frees), rtol=1e-12)
    np.testing.assert_allclose(got.sum(axis=1), 1.0)


def test_ensemble_marginals_refuse_bad_input():
    rng = np.random.default_rng(1)
    U, tr, offsets, start, end = _random_chains(rng, 2, 4, [2, 3])
    good = dict(unary=U, transition=tr, offsets=offsets, start=start, end=end)
    bads = [
        ({"unary": U[0]}, "unary"), ({"unary": U[:0]}, "member"),
        ({"transition": tr[:1]}, "transition"), ({"transition": tr[:, :3]}, "transition"),
        ({"start": start[:1]}, "start"), ({"end": end[:, :2]}, "end"),
        ({"offsets": np.array([0, 2, 4])}, "offsets"),
        ({"offsets": np.array([0, 3, 2, 5])}, "offsets"),
        ({"unary": np.where(U == U.max(), np.nan, U)}, "NaN"),
        ({"transition": np.where(tr == tr.min(), -np.inf, tr)}, "-inf"),
        ({"unary": U * 1e299}, "too large"),
    ]
    for change, match in bads:
        with pytest.raises(ValueError, match=match):
            fe.chain.ensemble_marginals(**{**good, **change})
    with pytest.raises(ValueError, match="state_label|label"):
        fe.chain.ensemble_marginals(**good, state_label=np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="mask"):
        fe.chain.ensemble_marginals(**good, mask=np.ones((5, 3), bool))


def test_an_ensemble_tags_from_several_threads_at_once(ewt, ensemble):
    from concurrent.futures import ThreadPoolExecutor
    _, (ds, _) = ewt

    def tag(_):
        return ensemble.predict(ds), np.concatenate(ensemble.predict_marginals(ds))
    want_tags, want_p = tag(None)
    with ThreadPoolExecutor(4) as pool:
        for got_tags, got_p in pool.map(tag, range(12)):
            assert got_tags == want_tags
            np.testing.assert_array_equal(got_p, want_p)


def test_marginal_decoding_takes_each_tokens_most_probable_tag(ewt, members):
    _, (ds, dt) = ewt
    alone = members[0]
    alone.set_params(decode="marginal")
    try:
        P = np.concatenate(alone.predict_marginals(ds))
        pred = sum(alone.predict(ds), [])
        assert pred == alone.labels_[P.argmax(axis=1)].tolist()
        acc_marginal = alone.score(ds, dt)
    finally:
        alone.set_params(decode="viterbi")
    viterbi = sum(alone.predict(ds), [])
    assert viterbi != pred          # with latent substates the two answers differ somewhere
    assert abs(acc_marginal - alone.score(ds, dt)) < 0.05


def _brute_force_allowed(P, allowed):
    """The tag sequence of highest summed log-marginals whose transitions ``allowed`` permits."""
    T, K = P.shape
    best, arg = -np.inf, None
    with np.errstate(divide="ignore"):
        logp = np.log(P)
    for seq in itertools.product(range(K), repeat=T):
        ok = allowed[K, seq[0]] and allowed[seq[-1], K] and all(
            allowed[a, b] for a, b in zip(seq, seq[1:]))
        score = logp[np.arange(T), seq].sum() if ok else -np.inf
        if score > best:
            best, arg = score, seq
    return arg


def test_marginal_decoding_keeps_to_the_observed_transitions():
    rng = np.random.default_rng(0)
    s, t = bio_corpus(rng, 300)
    tagger = fe.SequenceTagger(max_iter=3, verbose=False, transitions="observed",
                               decode="marginal", ensemble=2).fit(s, t)
    words = ["jr", "smith", "the", "paris", "went", "lee", "ann", "oslo"]
    test = [[str(w) for w in rng.choice(words, size=int(rng.integers(1, 5)))]
            for _ in range(40)]
    pred = tagger.predict(test)
    assert all(valid_bio(p) for p in pred)
    # against brute force over every allowed tag sequence (BIO over 2 types: K = 5)
    marginals = tagger.predict_marginals(test)
    labels = tagger.labels_
    for words_, p, P in zip(test, pred, marginals):
        best = _brute_force_allowed(P, tagger.allowed_transitions_)
        assert p == labels[list(best)].tolist(), words_
    # on marginals whose per-token argmax breaks the rule (so that the check can fail): the
    # decoder's pass over allowed sequences against brute force
    K = len(labels)
    sents = [["w"] * int(T) for T in rng.integers(1, 6, size=30)]
    offsets = np.cumsum([0] + [len(x) for x in sents])
    P = rng.dirichlet(np.full(K, 0.3), size=offsets[-1])
    tagger._marginal_blocks = lambda *args: (offsets, iter([(0, len(sents), P)]), labels)
    pred = tagger.predict(sents)
    argmax = [labels[P[a:b].argmax(axis=1)].tolist() for a, b in zip(offsets, offsets[1:])]
    assert not all(valid_bio(p) for p in argmax)
    for p, a, b in zip(pred, offsets, offsets[1:]):
        assert valid_bio(p)
        assert p == labels[list(_brute_force_allowed(P[a:b], tagger.allowed_transitions_))].tolist()


def test_marginal_decoding_obeys_constraints(ensemble):
    sents = [["I", "can", "fly"], ["the", "dog", "barks", "."]]
    cons = [{1: "NOUN"}, {0: {"PRON", "PROPN"}, 3: "X"}]
    pred = ensemble.predict(sents, constraints=cons)
    assert pred[0][1] == "NOUN" and pred[1][0] in {"PRON", "PROPN"} and pred[1][3] == "X"
    with pytest.raises(ValueError, match="unknown|not a tag|tag"):
        ensemble.predict(sents[:1], constraints=[{0: "NOT-A-TAG"}])


def test_an_ensemble_has_no_single_energy(ensemble):
    for call in (lambda: ensemble.energies([["a"]]), lambda: ensemble.explain(["a"]),
                 lambda: ensemble.predict_kbest([["a"]], 2)):
        with pytest.raises(ValueError, match="ensemble"):
            call()


def test_bad_settings_are_refused():
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="ensemble"):
            fe.SequenceTagger(ensemble=bad)
    with pytest.raises(ValueError, match="decode"):
        fe.SequenceTagger(decode="mbr")
    with pytest.raises(ValueError, match="warm_start"):
        fe.SequenceTagger(ensemble=2, warm_start=True)


def test_warm_start_refuses_a_fitted_ensemble(ewt, ensemble):
    (s, t), _ = ewt
    params = ensemble.get_params()
    params.update(ensemble=1, warm_start=True)
    warm = fe.SequenceTagger(**params)
    warm.coef_, warm.labels_ = ensemble.coef_, ensemble.labels_
    warm.feature_extractor_, warm.model_ = ensemble.feature_extractor_, ensemble.model_
    with pytest.raises(ValueError, match="ensemble"):
        warm.fit(s[:20], t[:20])


def test_ensemble_round_trips_and_decode_is_a_runtime_setting(ewt, ensemble, members, tmp_path):
    _, (ds, _) = ewt
    path = tmp_path / "ens.npz"
    ensemble.save(path)
    loaded = fe.SequenceTagger.load(path)
    assert loaded.ensemble == 3
    np.testing.assert_array_equal(loaded.coef_, ensemble.coef_)
    assert loaded.predict(ds) == ensemble.predict(ds)
    members[0].save(tmp_path / "one.npz")
    one = fe.SequenceTagger.load(tmp_path / "one.npz", decode="marginal")
    assert one.decode == "marginal"
    P = np.concatenate(one.predict_marginals(ds))
    assert sum(one.predict(ds), []) == one.labels_[P.argmax(axis=1)].tolist()


def test_a_file_whose_weights_do_not_match_its_ensemble_is_refused(ensemble, tmp_path):
    path = tmp_path / "ens.npz"
    ensemble.save(path)
    arrays, metadata = load_arrays(path, kind="SequenceTagger")
    bad = tmp_path / "bad.npz"
    for coef, ens in ((arrays["coef"][0], 3), (arrays["coef"][:2], 3), (arrays["coef"], 1)):
        md = json.loads(json.dumps(metadata))
        md["params"]["ensemble"] = ens
        extra = {k: v for k, v in md.items() if k not in ("format_version", "kind", "arrays",
                                                          "shapes")}
        save_arrays(bad, {**arrays, "coef": coef}, extra, kind="SequenceTagger")
        with pytest.raises(ValueError, match="bad.npz"):
            fe.SequenceTagger.load(bad)


def test_command_line_trains_and_tags_an_ensemble(tmp_path):
    train = tmp_path / "train.conllu"
    rows = []
    s, t = fe.datasets.load_ud_english_ewt("train")
    for i, (words, tags) in enumerate(zip(s[:120], t[:120])):
        rows.append(f"# sent_id = {i}")
        rows += [f"{k + 1}\t{w}\t_\t{tag}\t_\t_\t_\t_\t_\t_" for k, (w, tag) in
                 enumerate(zip(words, tags))]
        rows.append("")
    train.write_text("\n".join(rows) + "\n", encoding="utf-8")
    model = tmp_path / "m.npz"
    run = lambda *a: subprocess.run([sys.executable, "-m", "factorebm", *a],  # noqa: E731
                                    capture_output=True, text=True)
    r = run("train", "--model", str(model), "--train", str(train), "--dev", str(train),
            "--test", str(train), "--ensemble", "2", "--max-iter", "1", "--quiet")
    assert r.returncode == 0, r.stderr
    assert fe.SequenceTagger.load(model).coef_.shape[0] == 2
    for decode in ("viterbi", "marginal"):
        r = run("evaluate", "--model", str(model), str(train), "--decode", decode, "--json")
        assert r.returncode == 0, r.stderr
    r = run("train", "--model", str(model), "--ensemble", "0")
    assert r.returncode != 0 and "--ensemble" in r.stderr


def test_finished_members_wait_in_a_temporary_file_that_is_closed_even_when_fit_stops(
        ewt, monkeypatch):
    """While member m trains, members 0..m-1 wait in a temporary file (not in memory). A fit
    interrupted there (Ctrl-C in the third member) closes the file and leaves the tagger as it
    was; an uninterrupted one reads every member back."""
    import tempfile

    import factorebm.optimize as optimize
    (s, t), _ = ewt
    files = []
    real_temporary_file = tempfile.TemporaryFile

    def recorded(*args, **kwargs):
        files.append(real_temporary_file(*args, **kwargs))
        return files[-1]
    monkeypatch.setattr(tempfile, "TemporaryFile", recorded)
    real_fit_chain = optimize.fit_chain
    calls = []

    def fit_chain(*args, **kwargs):
        calls.append(files[0].tell() if files else None)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_fit_chain(*args, **kwargs)
    monkeypatch.setattr(optimize, "fit_chain", fit_chain)
    tagger = fe.SequenceTagger(max_iter=1, n_substates=2, random_state=3, ensemble=3,
                               verbose=False)
    with pytest.raises(KeyboardInterrupt):
        tagger.fit(s, t)
    assert not hasattr(tagger, "coef_") and len(files) == 1 and files[0].closed
    # the first member was on file (float32) when the second started, both when the third did
    assert calls[0] == 0 and calls[2] == 2 * calls[1] > 0

    files.clear()
    monkeypatch.setattr(optimize, "fit_chain", real_fit_chain)
    tagger.set_params(ensemble=2).fit(s[:300], t[:300])
    assert len(files) == 1 and files[0].closed
    alone = fe.SequenceTagger(max_iter=1, n_substates=2, random_state=4,
                              verbose=False).fit(s[:300], t[:300])
    np.testing.assert_array_equal(tagger.coef_[1], alone.coef_.astype(np.float32))


def test_a_cut_short_member_file_is_an_error_not_garbage_weights():
    from factorebm.tagger import ENSEMBLE_DTYPE, _MemberFile
    with _MemberFile() as finished:
        finished.append(np.arange(10.0))
        finished.append(-np.arange(10.0))
        out = np.empty((2, 10), ENSEMBLE_DTYPE)
        finished.read_into(out)
        np.testing.assert_array_equal(out, [np.arange(10.0), -np.arange(10.0)])
        finished._file.truncate(60)
        with pytest.raises(OSError, match="cut short"):
            finished.read_into(out)
    assert finished._file.closed


@pytest.mark.parametrize("block_tokens", [1, 7, 40])
def test_an_ensemble_tags_block_by_block_as_in_one_block(ewt, ensemble, monkeypatch,
                                                          block_tokens):
    """An ensemble decodes a block of sentences at a time (about VITERBI_BLOCK_TOKENS / M
    tokens): the same tags, marginals and constrained tags as one block of everything, and an
    infeasible sentence in a later block is named by its index in the batch."""
    import factorebm.tagger as tagger_module
    _, (ds, _) = ewt
    ds = ds[:60]
    cons = [None] * len(ds)
    cons[5] = {0: ensemble.labels_[3]}
    cons[37] = {1: set(ensemble.labels_[:2].tolist())}
    whole = (ensemble.predict(ds), ensemble.predict(ds, constraints=cons),
             np.concatenate(ensemble.predict_marginals(ds)))
    monkeypatch.setattr(tagger_module, "VITERBI_BLOCK_TOKENS", block_tokens * 3)
    seen = []
    real = fe.chain.ensemble_marginals

    def counted(unary, *args, **kwargs):
        seen.append(unary.shape[1])
        return real(unary, *args, **kwargs)
    monkeypatch.setattr(fe.chain, "ensemble_marginals", counted)
    assert ensemble.predict(ds) == whole[0]
    assert max(seen) <= max(block_tokens, max(map(len, ds))) and len(seen) > 1
    assert ensemble.predict(ds, constraints=cons) == whole[1]
    np.testing.assert_array_equal(np.concatenate(ensemble.predict_marginals(ds)), whole[2])
    # member 1 forbids starting in the first tag, and sentence 41 (a later block) is told to
    # start with it: no tagging of finite energy for that member, and the error says which
    import copy
    model = ensemble.model_
    forbidding = copy.deepcopy(ensemble)
    S = model.n_states
    start = model.n_emit + S * S
    forbidding.coef_[1, start:start + S][model.state_label == 0] = np.inf
    assert np.isinf(model.chain_params(forbidding.coef_[1])[1][model.state_label == 0]).all()
    forced = [None] * len(ds)
    forced[41] = {0: ensemble.labels_[0]}
    with pytest.raises(ValueError, match="sentence 41 .* no tagging of finite energy"):
        forbidding.predict(ds, constraints=forced)


def test_no_room_for_the_members_file_is_a_clear_error(ewt, monkeypatch):
    import errno
    import tempfile
    (s, t), _ = ewt

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(tempfile, "TemporaryFile", full)
    tagger = fe.SequenceTagger(max_iter=1, n_substates=2, ensemble=2, verbose=False)
    with pytest.raises(OSError,
                       match=r"temporary file in .*\(No space left on device\); set TMPDIR"):
        tagger.fit(s[:50], t[:50])
    assert not hasattr(tagger, "coef_")
    # one model needs no file
    fe.SequenceTagger(max_iter=1, verbose=False).fit(s[:50], t[:50])
