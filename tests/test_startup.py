"""What `import factorebm` and `factorebm tag` load: nothing heavy on the way to the first
tagged sentence (the one-sentence latency of the command line is mostly imports)."""
import json
import subprocess
import sys

import pytest

import factorebm as fe

# Not needed to tag: heavy optional libraries, numpy.ma (np.unique imports it: 40 ms), and
# secrets (hmac, hashlib), which only saving a model uses.
NOT_NEEDED = ("scipy", "networkx", "matplotlib", "dask", "numpy.ma", "secrets")
# Not imported to tag unless the interpreter's start-up did: zipfile (pathlib, shutil,
# urllib, ipaddress), which only saving and deflated members use.
NOT_IMPORTED = ("zipfile", "pathlib")


def modules_after(code):
    r = subprocess.run([sys.executable, "-c", code + "\nimport sys, json\n"
                        "print(json.dumps(sorted(sys.modules)))"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return set(json.loads(r.stdout.splitlines()[-1]))


def test_import_factorebm_imports_no_submodule_until_used():
    loaded = modules_after("import factorebm")
    assert not {m for m in loaded if m.startswith("factorebm.")}
    assert "numpy" not in loaded


def test_every_public_name_resolves():
    for name in fe.__all__:
        assert getattr(fe, name) is not None, name
        assert name in dir(fe)
    assert fe.exhaustive.__name__ == "factorebm.exhaustive"     # any submodule, as before
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        fe.no_such_name
    with pytest.raises(AttributeError):
        fe._private


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    sents, tags = fe.datasets.load_ud_english_ewt("dev")
    path = tmp_path_factory.mktemp("startup") / "m.npz"
    fe.SequenceTagger(max_iter=1, verbose=False, n_substates=1).fit(sents[:100],
                                                                    tags[:100]).save(path)
    return path


def test_tagging_a_sentence_loads_nothing_heavy(model, tmp_path):
    text = tmp_path / "one.txt"
    text.write_text("The cat sat on the mat .\n", encoding="utf-8")
    loaded = modules_after(f"from factorebm.cli import main\n"
                           f"main(['tag', '--model', {str(model)!r}, {str(text)!r}])")
    assert not [m for m in loaded if m.split(".")[0] in NOT_NEEDED or m in NOT_NEEDED]
    assert not (loaded - modules_after("")) & set(NOT_IMPORTED)
    # the factor-graph side and the learner are not needed to tag
    assert not loaded & {"factorebm.graph", "factorebm.inference", "factorebm._bp",
                         "factorebm.optimize", "factorebm.energies.graph"}


def test_model_arrays_are_read_whole_checked_and_aligned(tmp_path):
    import zipfile
    import numpy as np
    from factorebm.modelio import load_arrays, save_arrays
    x = np.arange(5, dtype=np.float64) / 3
    path = tmp_path / "m.npz"
    save_arrays(path, {"x": x, "y": np.arange(3, dtype=np.int32)}, {}, kind="K")
    arrays, _ = load_arrays(path, kind="K")
    assert np.array_equal(arrays["x"], x) and arrays["x"].flags.writeable
    # an .npy header of odd length leaves the data unaligned in its member: it is copied
    header = b"{'descr': '<f8', 'fortran_order': False, 'shape': (5,), }"
    header += b" " * (75 - 10 - len(header) - 1) + b"\n"
    npy = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + x.tobytes()
    odd = tmp_path / "odd.npz"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(odd, "w") as dst:
        for info in src.infolist():
            data = npy if info.filename == "x.npy" else src.read(info)
            dst.writestr(info.filename, data)
    arrays, _ = load_arrays(odd, kind="K")
    assert arrays["x"].flags.aligned and np.array_equal(arrays["x"], x)
    # a flipped bit in a stored member fails its CRC-32 (a member larger than zipfile reads
    # at once with the header)
    big = np.arange(5000, dtype=np.float64)
    save_arrays(path, {"x": big}, {}, kind="K")
    raw = bytearray(path.read_bytes())
    raw[raw.index(big.tobytes()) + 20_000] ^= 1
    bad = tmp_path / "bad.npz"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"bad\.npz: array 'x' is corrupt \(bad CRC-32\)"):
        load_arrays(bad, kind="K")


def test_the_tagger_lists_the_learners_optimizers():
    from factorebm import optimize, tagger
    assert tagger.OPTIMIZERS == optimize.OPTIMIZERS
