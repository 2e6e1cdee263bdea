"""Data-parallel training and tagging on a Dask LocalCluster (factorebm.distributed).

One cluster of two worker processes serves the whole module. The distributed objective,
gradient and trained weights must equal the local ones to rounding (1e-9 relative); a
worker killed mid-training must not change the model; a lost connection must raise.
"""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

import factorebm as fe
from factorebm.learning import (ChainObjective, GraphObjective, LinearChainEnergy,
                                ParametricGraph)
from factorebm.optimize import fit_chain, fit_graphs, minimize

RTOL = 1e-9


def _rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-300))


def _corpus(seed=0, n=48, n_features=30, K=3, density=0.2):
    """Random sparse features; lengths 0..7 (empty sequences included)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 8, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    N = int(offsets[-1])
    X = sp.random(N, n_features, density=density, random_state=seed, format="csr")
    return X, offsets, rng.integers(0, K, N), LinearChainEnergy(n_features, K, n_substates=2)


def _graph_samples(seed=0, n=10, n_weights=6):
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        g = fe.FactorGraph()
        for v in "abc":
            g.add_variable(v, 3)
        g.add_factor(["a"], np.zeros(3))
        g.add_factor(["a", "b"], np.zeros((3, 3)))
        g.add_factor(["b", "c"], np.zeros((3, 3)))
        phi = sp.random(21, n_weights, density=0.5, random_state=seed * 100 + i)
        samples.append((ParametricGraph(g, phi), {v: int(rng.integers(3)) for v in "abc"}))
    return samples


@pytest.fixture(scope="module")
def client():
    pytest.importorskip("distributed")
    from factorebm.distributed import connect
    omp = os.environ.get("OMP_NUM_THREADS")
    with connect("local:2") as c:
        c.wait_for_workers(2, timeout=60)
        yield c
    # regression: Dask's nannies wrote OMP_NUM_THREADS=1 into this process (every later
    # kernel here on one thread)
    assert os.environ.get("OMP_NUM_THREADS") == omp


def _kill_a_worker(client):
    """SIGKILL one worker process; returns its address."""
    pids = client.run(os.getpid)
    address, pid = min(pids.items(), key=lambda item: item[1])
    os.kill(pid, signal.SIGKILL)
    return address


# ---------------------------------------------------------------------------- objectives
def test_distributed_objective_and_gradients_equal_the_local_ones(client):
    from factorebm.distributed import DistributedObjective
    X, offsets, y, model = _corpus(n_features=3000, density=0.002)   # few features a token
    w = model.init_weights(0) + np.random.default_rng(1).standard_normal(model.n_weights)
    for loss in ("nll", "hinge"):
        local = ChainObjective(model, X, offsets, y, loss)
        with DistributedObjective(client, local, n_shards=3) as dist:
            assert dist.n_shards == 3 and dist.bounds[-1] == local.n_units
            v0, g0 = local.value_and_grad(w)
            v1, g1 = dist.value_and_grad(w)
            assert abs(v1 - v0) <= RTOL * abs(v0) and _rel(g0, g1) <= RTOL
            units = np.array([40, 2, 17, 33, 5])        # spans the shards, out of order
            v0, g0 = local.unit_value_and_grad(w, units)
            v1, g1 = dist.unit_value_and_grad(w, units)
            assert abs(v1 - v0) <= RTOL * abs(v0) and _rel(g0, g1) <= RTOL
            # a step sends only the dense parameters and the batch's rows, not all of w
            st = dist.stats["step"]
            assert 0 < st["bytes_sent"] < w.nbytes / 10
            # the shards stay on the workers: an evaluation sends w and nothing else
            st = dist.stats["value_and_grad"]
            assert st["bytes_sent"] == st["rounds"] * dist.n_shards * w.nbytes
        if loss == "hinge":
            # one round trip per epoch fetches the rows of all its steps
            with DistributedObjective(client, local) as dist:
                minimize(dist, optimizer="adagrad", max_iter=2, batch_size=8, verbose=False)
                assert dist.stats["rows"]["rounds"] == 2
                assert dist.stats["step"]["rounds"] == 2 * -(-local.n_units // 8)
    graphs = _graph_samples()
    local = GraphObjective(graphs, "nll")
    with DistributedObjective(client, local) as dist:
        w = np.random.default_rng(2).standard_normal(local.n_params)
        v0, g0 = local.value_and_grad(w)
        v1, g1 = dist.value_and_grad(w)
        assert abs(v1 - v0) <= RTOL * abs(v0) and _rel(g0, g1) <= RTOL
    # the inference options travel with the shards (the loss-augmented E- differs from the
    # most offending answer's, so dropping them would change the value)
    options = {"e_minus": "loss_augmented", "hamming": 2.0}
    local = GraphObjective(graphs, "hinge", inference_options=options)
    plain = GraphObjective(graphs, "hinge")
    assert abs(local.value_and_grad(w)[0] - plain.value_and_grad(w)[0]) > 1e-6
    with DistributedObjective(client, local) as dist:
        v0, g0 = local.value_and_grad(w)
        v1, g1 = dist.value_and_grad(w)
        assert abs(v1 - v0) <= RTOL * abs(v0) and _rel(g0, g1) <= RTOL


def test_an_error_in_a_shard_names_the_sample_by_its_number_in_the_whole_set(client):
    # a shard's objective numbered its samples from 0: the infeasible sample 8 of 10 was
    # reported as "sample 3" by the second of two shards
    from factorebm.distributed import DistributedObjective
    graphs = _graph_samples()
    pg, target = graphs[8]
    offset = np.zeros(pg.table_offset[-1])
    offset[:3] = np.inf                         # every state of variable a forbidden
    graphs[8] = (ParametricGraph(pg.graph, pg.phi, offset), target)
    local = GraphObjective(graphs, "hinge")
    w = np.ones(local.n_params)
    with pytest.raises(ValueError, match="^sample 8: no assignment has finite energy"):
        local.value_and_grad(w)
    with DistributedObjective(client, local, n_shards=2) as dist:
        assert dist.bounds[1] <= 8
        with pytest.raises(ValueError, match="^sample 8: no assignment has finite energy"):
            dist.value_and_grad(w)


@pytest.mark.parametrize("optimizer", ["lbfgs", "adagrad"])
def test_training_through_the_client_gives_the_local_weights(client, optimizer):
    X, offsets, y, model = _corpus(seed=3)
    kw = dict(optimizer=optimizer, max_iter=5, batch_size=6, random_state=4, verbose=False)
    w0, h0 = fit_chain(model, X, offsets, y, **kw)
    w1, h1 = fit_chain(model, X, offsets, y, client=client, **kw)
    assert len(h1) == len(h0)
    assert _rel(w0, w1) <= RTOL
    # the graphs' learner too (L-BFGS, few iterations)
    graphs = _graph_samples(seed=5)
    g0, _ = fit_graphs(graphs, optimizer=optimizer, max_iter=3, batch_size=3, random_state=0,
                       verbose=False)
    g1, _ = fit_graphs(graphs, optimizer=optimizer, max_iter=3, batch_size=3, random_state=0,
                       verbose=False, client=client)
    assert _rel(g0, g1) <= RTOL


# ---------------------------------------------------------------------------- failures
@pytest.mark.parametrize("optimizer", ["lbfgs", "adagrad"])
def test_a_worker_killed_during_training_leaves_the_same_model(client, optimizer):
    from factorebm.distributed import DistributedObjective
    X, offsets, y, model = _corpus(seed=6)
    kw = dict(optimizer=optimizer, max_iter=5, batch_size=5, random_state=1, verbose=False)
    local = ChainObjective(model, X, offsets, y, "nll")
    w0, h0 = minimize(local, **kw)

    killed = []

    def kill_after_the_second_iteration(w, epoch):
        if epoch == 2:
            killed.append(_kill_a_worker(client))

    try:
        with DistributedObjective(client, local) as dist:
            w1, h1 = minimize(dist, callback=kill_after_the_second_iteration, **kw)
            assert dist.stats["recoveries"] >= 1
            # no shard is left on the dead worker (the survivor, or the worker the nanny
            # restarted meanwhile, under a new address, holds it)
            assert killed and killed[0] not in {s.worker for s in dist._shards}
    finally:
        client.wait_for_workers(2, timeout=120)                 # the nanny restarts it
    assert [r["epoch"] for r in h1] == [r["epoch"] for r in h0]
    assert _rel(w0, w1) <= RTOL


def test_losing_the_connection_raises_instead_of_returning_a_partial_model(client):
    import distributed
    X, offsets, y, model = _corpus(seed=7)
    other = distributed.Client(client.scheduler.address)

    def disconnect(w, epoch):
        if epoch == 2:
            other.close()

    with pytest.raises(ConnectionError, match="lost the connection to the Dask scheduler"):
        fit_chain(model, X, offsets, y, optimizer="lbfgs", max_iter=6, verbose=False,
                  client=other, callback=disconnect)


def test_without_dask_client_raises_an_importerror_naming_the_extra(monkeypatch, capsys):
    X, offsets, y, model = _corpus()
    monkeypatch.setitem(sys.modules, "dask", None)          # import dask -> ImportError
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r"pip install factorebm\[dask\]"):
        fit_chain(model, X, offsets, y, max_iter=1, verbose=False, client=object())
    from factorebm.distributed import connect
    with pytest.raises(ImportError, match=r"factorebm\[dask\]"):
        with connect("local:2"):
            pass
    from factorebm.cli import main
    capsys.readouterr()
    assert main(["train", "--model", "m.npz", "--scheduler", "local:2"]) == 1
    assert "pip install factorebm[dask]" in capsys.readouterr().err


def test_the_library_imports_and_trains_without_dask_installed():
    code = ("import sys; sys.modules['dask'] = None; sys.modules['distributed'] = None\n"
            "import numpy as np, scipy.sparse as sp\n"
            "import factorebm, factorebm.distributed, factorebm.cli\n"
            "from factorebm.learning import LinearChainEnergy\n"
            "from factorebm.optimize import fit_chain\n"
            "X = sp.random(12, 5, density=0.5, random_state=0, format='csr')\n"
            "w, h = fit_chain(LinearChainEnergy(5, 2), X, np.array([0, 5, 12]),\n"
            "                 np.arange(12) % 2, max_iter=2, verbose=False)\n"
            "assert np.isfinite(w).all()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------------------- command line
def test_cli_trains_on_local_2_and_tags_many_files_across_the_cluster(tmp_path, client,
                                                                      capsys):
    from factorebm.cli import main
    sents, _ = fe.datasets.load_ud_english_ewt("dev")
    train = tmp_path / "train.conllu"
    fe.datasets.write_conllu(
        fe.datasets.read_conllu(fe.datasets.ud_english_ewt_path("dev"))[:120], str(train))
    model = tmp_path / "m.npz"
    assert main(["train", "--model", str(model), "--train", str(train), "--max-iter", "1",
                 "--scheduler", "local:2", "--quiet"]) == 0
    tagger = fe.SequenceTagger.load(model)
    inputs = []
    for i, chunk in enumerate((sents[200:230], sents[230:235], [])):
        p = tmp_path / f"in{i}.txt"
        p.write_text("".join(" ".join(s) + "\n" for s in chunk), encoding="utf-8")
        inputs.append(p)
    out = tmp_path / "out"
    assert main(["tag", "--model", str(model), *map(str, inputs), "-o", str(out),
                 "--scheduler", client.scheduler.address]) == 0
    assert sorted(os.listdir(out)) == ["in0.txt.conllu", "in1.txt.conllu", "in2.txt.conllu"]
    for i, chunk in enumerate((sents[200:230], sents[230:235], [])):
        got = fe.datasets.load_conllu(out / f"in{i}.txt.conllu")
        assert got == (chunk, tagger.predict(chunk))
    capsys.readouterr()
    assert main(["tag", "--model", str(model), str(inputs[0]), str(inputs[1])]) == 1
    assert "-o OUTDIR" in capsys.readouterr().err
