"""Model files: atomic writes, round trips, and refusal of anything that is not a clean model."""
import io
import json
import os
import pickle
import zipfile

import numpy as np
import pytest

from factorebm import modelio
from factorebm.modelio import FORMAT_VERSION, load_arrays, save_arrays

UNPICKLED = []


def _record_unpickling(tag):
    """Called only if an object array is ever unpickled."""
    UNPICKLED.append(tag)
    return tag


class _Trap:
    def __reduce__(self):
        return (_record_unpickling, ("trap",))


def _arrays():
    return {
        "weights": np.arange(12, dtype=np.float64).reshape(3, 4) / 7,
        "ids": np.array([3, -1, 7], dtype=np.int32),
        "buffer": np.frombuffer("héllo\x1fwörld".encode(), dtype=np.uint8),
        "labels": np.array(["NOUN", "VERB", "X"]),          # fixed-width unicode, not object
        "mask": np.array([True, False]),
        "empty": np.zeros((0, 5)),
        "inf": np.array([np.inf, -np.inf, 0.0]),
    }


def test_round_trip(tmp_path):
    path = tmp_path / "model.npz"
    meta = {"loss": "nll", "c2": 0.01, "templates": [[0, ["word"]]], "nested": {"a": [1, 2]}}
    save_arrays(path, _arrays(), meta, kind="SequenceTagger")
    arrays, loaded = load_arrays(path, kind="SequenceTagger")
    expected = _arrays()
    assert set(arrays) == set(expected)
    for k, v in expected.items():
        assert arrays[k].dtype == v.dtype and arrays[k].shape == v.shape
        assert np.array_equal(arrays[k], v)
    for k, v in meta.items():
        assert loaded[k] == v
    assert loaded["format_version"] == FORMAT_VERSION and loaded["kind"] == "SequenceTagger"
    assert loaded["arrays"] == sorted(expected)


def test_written_exactly_at_path_with_no_temp_files_left(tmp_path):
    path = tmp_path / "model.bin"                  # no .npz appended
    save_arrays(path, _arrays(), {}, kind="K")
    save_arrays(path, {"x": np.ones(3)}, {"v": 2}, kind="K")    # overwrite
    assert sorted(os.listdir(tmp_path)) == ["model.bin"]
    arrays, meta = load_arrays(path, kind="K")
    assert list(arrays) == ["x"] and meta["v"] == 2


def test_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    save_arrays(path, {"x": np.ones(3)}, {"v": 1}, kind="K")
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(modelio, "_write_npz", crash)
    with pytest.raises(OSError, match="disk full"):
        save_arrays(path, {"x": np.zeros(3)}, {"v": 2}, kind="K")
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]
    assert path.read_bytes() == before


def test_unwritable_targets_are_named_not_the_temp_file(tmp_path, monkeypatch):
    missing = tmp_path / "no_such_folder" / "model.npz"
    with pytest.raises(FileNotFoundError) as info:
        save_arrays(missing, {"x": np.ones(3)}, {}, kind="K")
    assert info.value.filename == str(missing) and ".tmp" not in str(info.value)

    folder = tmp_path / "a_folder"
    folder.mkdir()
    with pytest.raises(IsADirectoryError) as info:
        save_arrays(folder, {"x": np.ones(3)}, {}, kind="K")
    assert info.value.filename == str(folder) and ".tmp" not in str(info.value)
    assert os.listdir(folder) == [] and sorted(os.listdir(tmp_path)) == ["a_folder"]

    def read_only(folder, base):    # what a read-only folder does (the tests may run as root)
        raise PermissionError(13, "Permission denied", os.path.join(folder, f".{base}.1.tmp"))

    monkeypatch.setattr(modelio, "_create_temp", read_only)
    path = tmp_path / "model.npz"
    with pytest.raises(PermissionError, match="Permission denied") as info:
        save_arrays(path, {"x": np.ones(3)}, {}, kind="K")
    assert info.value.filename == str(path) and ".tmp" not in str(info.value)


def test_object_arrays_refused_on_save(tmp_path):
    with pytest.raises(ValueError, match="'bad'.*object"):
        save_arrays(tmp_path / "m.npz", {"bad": np.array([{"a": 1}], dtype=object)}, {}, "K")
    assert os.listdir(tmp_path) == []


def test_pickled_object_array_refused_without_running_code(tmp_path):
    path = tmp_path / "evil.npz"
    meta = json.dumps({"format_version": 1, "kind": "K", "arrays": ["x"]}).encode()
    np.savez(path, __metadata__=np.frombuffer(meta, dtype=np.uint8),
             x=np.array([_Trap()], dtype=object))
    UNPICKLED.clear()
    with pytest.raises(ValueError, match=r"evil\.npz.*'x'.*pickle"):
        load_arrays(path, kind="K")
    assert UNPICKLED == []
    # The same file loaded with pickle allowed really would run the code: the trap is armed.
    with np.load(path, allow_pickle=True) as npz:
        npz["x"]
    assert UNPICKLED == ["trap"]


def test_whole_file_pickle_refused(tmp_path):
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps({"x": _Trap()}))
    UNPICKLED.clear()
    with pytest.raises(ValueError, match=r"model\.pkl: not a factorebm model file"):
        load_arrays(path, kind="K")
    assert UNPICKLED == []


def test_wrong_kind_refused(tmp_path):
    path = tmp_path / "m.npz"
    save_arrays(path, {"x": np.ones(2)}, {}, kind="ChainCRF")
    with pytest.raises(ValueError, match=r"m\.npz: holds a 'ChainCRF' model, expected "
                                         r"'SequenceTagger'"):
        load_arrays(path, kind="SequenceTagger")


def _raw_model(path, meta, **arrays):
    np.savez(path, __metadata__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
             **arrays)


def test_newer_format_version_refused(tmp_path):
    path = tmp_path / "m.npz"
    _raw_model(path, {"format_version": FORMAT_VERSION + 1, "kind": "K", "arrays": []})
    with pytest.raises(ValueError, match=r"m\.npz: written by a newer factorebm"):
        load_arrays(path, kind="K")


def test_missing_arrays_refused(tmp_path):
    path = tmp_path / "m.npz"
    _raw_model(path, {"format_version": 1, "kind": "K", "arrays": ["w", "b"]}, w=np.ones(2))
    with pytest.raises(ValueError, match=r"m\.npz: model file is missing array\(s\) b"):
        load_arrays(path, kind="K")
    save_arrays(path, {"w": np.ones(2)}, {}, kind="K")
    with pytest.raises(ValueError, match=r"missing array\(s\) labels"):
        load_arrays(path, kind="K", required=["w", "labels"])


@pytest.mark.parametrize("content", [
    b"",
    b"hello, I am a text file\n",
    b"PK\x03\x04 but not really a zip file",
])
def test_not_a_model_file(tmp_path, content):
    path = tmp_path / "junk.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"junk\.npz: (not a factorebm model|corrupt)"):
        load_arrays(path, kind="K")


def test_npz_without_metadata_npy_file_and_non_npy_member(tmp_path):
    np.savez(tmp_path / "plain.npz", x=np.ones(3))
    with pytest.raises(ValueError, match=r"plain\.npz: not a factorebm model file"):
        load_arrays(tmp_path / "plain.npz", kind="K")
    np.save(tmp_path / "one.npy", np.ones(3))
    with pytest.raises(ValueError, match=r"one\.npy: not a factorebm model file"):
        load_arrays(tmp_path / "one.npy", kind="K")
    path = tmp_path / "odd.npz"
    meta = json.dumps({"format_version": 1, "kind": "K", "arrays": ["x"]}).encode()
    with zipfile.ZipFile(path, "w") as zf:
        buf = io.BytesIO()
        np.save(buf, np.frombuffer(meta, dtype=np.uint8))
        zf.writestr("__metadata__.npy", buf.getvalue())
        zf.writestr("x.npy", b"not npy data")
    with pytest.raises(ValueError, match=r"odd\.npz: .*'x'"):
        load_arrays(path, kind="K")


def test_truncated_file_refused(tmp_path):
    path = tmp_path / "m.npz"
    save_arrays(path, {"w": np.random.default_rng(0).normal(size=(200, 50))}, {}, kind="K")
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 100):
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=r"m\.npz: "):
            load_arrays(path, kind="K")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_arrays(tmp_path / "nope.npz", kind="K")


def test_bad_save_arguments(tmp_path):
    path = tmp_path / "m.npz"
    with pytest.raises(ValueError, match="reserved"):
        save_arrays(path, {}, {"kind": "X"}, kind="K")
    with pytest.raises(ValueError, match="JSON"):
        save_arrays(path, {}, {"f": object()}, kind="K")
    with pytest.raises(ValueError, match="array name"):
        save_arrays(path, {"__metadata__": np.ones(1)}, {}, kind="K")
    with pytest.raises(ValueError, match="kind"):
        save_arrays(path, {}, {}, kind="")
    assert os.listdir(tmp_path) == []


def test_files_are_what_np_savez_writes(tmp_path):
    # the writer streams each array's buffer; np.load must read back every dtype and shape,
    # 0-d and empty arrays and Fortran-ordered ones included
    arrays = {"x": np.arange(10.0).reshape(2, 5), "s": np.array(["ab", "c"]),
              "e": np.zeros((0, 3)), "f": np.asfortranarray(np.arange(6).reshape(2, 3)),
              "b": np.array(True), "i": np.arange(5, dtype=np.int32)[::2]}
    save_arrays(tmp_path / "m.npz", arrays, {}, kind="K")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as z:
        for name, a in arrays.items():
            assert z[name].dtype == a.dtype and z[name].shape == a.shape
            np.testing.assert_array_equal(z[name], a)


# ----------------------------------------------------------------------------- hostile sizes

def _npy_bytes(header, data=b""):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + data


def _archive(path, members, meta=None):
    """A zip of raw members {name: (bytes, compress_type)} plus valid metadata."""
    meta = meta or {"format_version": 1, "kind": "K", "arrays": sorted(members)}
    raw = json.dumps(meta).encode()
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("__metadata__.npy", _npy_bytes(
            {"descr": "|u1", "fortran_order": False, "shape": (len(raw),)}, raw))
        for name, (data, method) in members.items():
            zf.writestr(name + ".npy", data, compress_type=method)
    return path


def test_zip_bomb_member_is_refused_before_it_is_inflated(tmp_path):
    # 64 MB of zeros deflate to about 64 KB: the member declares a thousand times its size
    import tracemalloc
    n = 8 << 20
    data = _npy_bytes({"descr": "<f8", "fortran_order": False, "shape": (n,)},
                      bytes(8 * n))
    path = _archive(tmp_path / "bomb.npz", {"x": (data, zipfile.ZIP_DEFLATED)})
    del data
    assert path.stat().st_size < (1 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"bomb\.npz: member 'x' declares \d+ bytes from "
                                             r"\d+ compressed.*zip bomb"):
            load_arrays(path, kind="K")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < (4 << 20)


def test_moderately_compressed_members_still_load(tmp_path):
    # np.savez_compressed of ordinary model arrays stays well within the ratio limit
    a = np.random.default_rng(0).normal(size=1000)
    path = tmp_path / "c.npz"
    meta = json.dumps({"format_version": 1, "kind": "K", "arrays": ["a"]}).encode()
    np.savez_compressed(path, __metadata__=np.frombuffer(meta, dtype=np.uint8), a=a)
    arrays, _ = load_arrays(path, kind="K")
    assert np.array_equal(arrays["a"], a)


@pytest.mark.parametrize("shape, descr", [((10**12,), "<f8"), ((2**62, 2**62), "<f8"),
                                          ((3,), "<f8"), ((5, -1), "<i4")])
def test_npy_header_sizes_must_match_the_member(tmp_path, shape, descr):
    # a header claiming 8 TB (or an overflowing or negative shape) over 8 bytes of data is
    # refused from the header alone: no MemoryError, no OverflowError
    data = _npy_bytes({"descr": descr, "fortran_order": False, "shape": shape}, bytes(16))
    path = _archive(tmp_path / "huge.npz", {"x": (data, zipfile.ZIP_STORED)})
    with pytest.raises(ValueError, match=r"huge\.npz: .*'x'"):
        load_arrays(path, kind="K")


@pytest.mark.parametrize("descr", ["|O", "|V8", "<M8[s]", [("a", "<f8")], ("<f8", (2,))])
def test_only_plain_number_and_string_dtypes_load(tmp_path, descr):
    dtype = np.dtype(descr) if not isinstance(descr, str) or descr != "|O" else np.dtype(object)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
              "shape": (1,)}
    path = _archive(tmp_path / "odd.npz",
                    {"x": (_npy_bytes(header, bytes(dtype.itemsize)), zipfile.ZIP_STORED)})
    with pytest.raises(ValueError, match=r"odd\.npz: array 'x'"):
        load_arrays(path, kind="K")


def test_array_shapes_must_match_the_metadata(tmp_path):
    path = tmp_path / "m.npz"
    save_arrays(path, {"w": np.ones(3), "v": np.zeros((2, 2), dtype=np.int32)}, {}, kind="K")
    _, meta = load_arrays(path, kind="K")
    assert meta["shapes"] == {"w": ["<f8", [3]], "v": ["<i4", [2, 2]]}
    meta["shapes"]["w"] = ["<f8", [4]]
    _raw_model(path, meta, w=np.ones(3), v=np.zeros((2, 2), dtype=np.int32))
    with pytest.raises(ValueError, match=r"m\.npz: array 'w' is <f8 of shape \(3,\), but the "
                                         r"metadata lists"):
        load_arrays(path, kind="K")


def test_duplicate_and_foreign_members_are_refused(tmp_path):
    path = tmp_path / "dup.npz"
    ok = _npy_bytes({"descr": "<f8", "fortran_order": False, "shape": (1,)}, bytes(8))
    _archive(path, {"x": (ok, zipfile.ZIP_STORED)})
    with pytest.warns(UserWarning, match="Duplicate name"):
        with zipfile.ZipFile(path, "a") as zf:
            zf.writestr("x.npy", ok)
    with pytest.raises(ValueError, match=r"dup\.npz: member 'x' appears twice"):
        load_arrays(path, kind="K")
    _archive(path, {"x": (ok, zipfile.ZIP_BZIP2)})
    with pytest.raises(ValueError, match=r"dup\.npz: member 'x' uses compression method"):
        load_arrays(path, kind="K")


# ----------------------------------------------------------------------------- saving

def test_stale_temp_file_of_a_killed_save_is_removed_by_the_next_save(tmp_path):
    # A save killed (SIGKILL) in the middle of writing leaves its hidden temp file; the next
    # save to the same target removes it, and leaves alone what is not a dead save's.
    import subprocess
    import sys
    import textwrap
    path = tmp_path / "model.npz"
    script = textwrap.dedent(f"""
        import os, signal
        import numpy as np
        from factorebm import modelio
        def killed(fh, arrays):
            fh.write(b"half a model")
            fh.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        modelio._write_npz = killed
        modelio.save_arrays({str(path)!r}, {{"x": np.ones(3)}}, {{}}, kind="K")
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert r.returncode == -9
    stale = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert len(stale) == 1 and stale[0].startswith(".model.npz.")
    # not ours to remove: another target's temp file, another naming, and one a live save holds
    others = [".other.npz.0123456789ab.tmp", ".model.npz.tmp", ".model.npz.0123456789ab.tmp"]
    for name in others:
        (tmp_path / name).write_bytes(b"")
    import fcntl
    with open(tmp_path / others[2], "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        save_arrays(path, {"x": np.zeros(2)}, {}, kind="K")
        assert sorted(os.listdir(tmp_path)) == sorted(others + ["model.npz"])
    save_arrays(path, {"x": np.zeros(2)}, {}, kind="K")     # now the held one is stale too
    assert sorted(os.listdir(tmp_path)) == sorted(others[:2] + ["model.npz"])
    assert np.array_equal(load_arrays(path, kind="K")[0]["x"], np.zeros(2))


def test_resaving_keeps_the_file_mode(tmp_path):
    path = tmp_path / "m.npz"
    save_arrays(path, {"x": np.ones(2)}, {}, kind="K")
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask     # a new file: as open() makes it
    for mode in (0o600, 0o640, 0o444):
        os.chmod(path, mode)
        save_arrays(path, {"x": np.zeros(2)}, {}, kind="K")
        assert os.stat(path).st_mode & 0o777 == mode


def test_saving_to_a_symlink_writes_through_it(tmp_path):
    real_dir = tmp_path / "store"
    real_dir.mkdir()
    target = real_dir / "model.npz"
    save_arrays(target, {"x": np.ones(2)}, {}, kind="K")
    link = tmp_path / "current.npz"
    link.symlink_to(target)
    save_arrays(link, {"x": np.full(2, 7.0)}, {"v": 2}, kind="K")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert np.array_equal(load_arrays(target, kind="K")[0]["x"], np.full(2, 7.0))
    assert sorted(os.listdir(tmp_path)) == ["current.npz", "store"]
    assert os.listdir(real_dir) == ["model.npz"]
    dangling = tmp_path / "next.npz"
    dangling.symlink_to(real_dir / "new.npz")       # a link to a file not written yet
    save_arrays(dangling, {"x": np.ones(1)}, {}, kind="K")
    assert dangling.is_symlink() and (real_dir / "new.npz").is_file()


def test_a_device_or_pipe_target_is_written_straight_not_replaced(tmp_path):
    # a temporary file beside /dev/null could not be made, nor may /dev/null be renamed over;
    # a named pipe is written into, not replaced by a file
    import stat
    import threading
    from factorebm.modelio import write_atomic
    write_atomic("/dev/null", b"discarded")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()))
    reader.start()
    write_atomic(fifo, lambda fh: fh.write(b"through the pipe"))
    reader.join(10)
    assert got == [b"through the pipe"] and stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_fast_crc32_equals_zlib():
    # every length around the 16- and 64-byte folding steps, from several starting CRCs
    import zlib

    from factorebm._crc32 import crc32
    rng = np.random.default_rng(0)
    for n in list(range(0, 200)) + [255, 256, 257, 1023, 4096, 65536 + 13, 1_000_003]:
        data = rng.integers(0, 256, n, dtype=np.uint8)
        for start in (0, 1, 0x12345678, 0xFFFFFFFF):
            assert crc32(data, start) == zlib.crc32(data.tobytes(), start), (n, start)
    assert crc32(b"") == 0 and crc32(b"123456789") == 0xCBF43926   # the CRC-32 check value


# ----------------------------------------------------------------------------- zip directory

def _directory_as_zipfile_reads_it(path):
    with open(path, "rb") as fh, zipfile.ZipFile(fh) as zf:
        want = [(i.filename, i.flag_bits, i.compress_type, i.CRC, i.compress_size, i.file_size,
                 i.header_offset) for i in zf.infolist()]
    with open(path, "rb") as fh:
        archive = modelio._Archive(str(path), fh, os.fstat(fh.fileno()).st_size)
        got = [(m.filename, m.flag_bits, m.compress_type, m.CRC, m.compress_size, m.file_size,
                m.header_offset) for m in archive.members]
        archive.close()
    return got, want


@pytest.mark.parametrize("writer", ["save_arrays", "savez", "savez_compressed", "comment",
                                    "zip64"])
def test_zip_directory_is_read_as_zipfile_reads_it(tmp_path, writer, monkeypatch):
    # the loader's own reader of the central directory (zipfile is not imported to load)
    path = tmp_path / "m.npz"
    arrays = _arrays()
    if writer == "save_arrays":
        save_arrays(path, arrays, {}, kind="K")
    elif writer == "savez":
        np.savez(path, **arrays)
    elif writer == "savez_compressed":
        np.savez_compressed(path, **arrays)
    else:
        if writer == "zip64":
            # zip64 sizes, offsets and end records, as a file past 4 GiB would have them
            monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 64)
            monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 2)
        with zipfile.ZipFile(path, "w") as zf:
            for name, a in arrays.items():
                buf = io.BytesIO()
                np.save(buf, a)
                zf.writestr(name + ".npy", buf.getvalue())
            if writer == "comment":
                zf.comment = b"a comment after the directory"
    got, want = _directory_as_zipfile_reads_it(path)
    assert got == want and len(got) == len(arrays) + (writer == "save_arrays")   # metadata
    if writer == "zip64":
        assert b"PK\x06\x06" in path.read_bytes() and 0xFFFFFFFF not in [g[6] for g in got]
    if writer != "save_arrays":
        monkeypatch.undo()
        with open(path, "rb") as fh:
            archive = modelio._Archive(str(path), fh, os.fstat(fh.fileno()).st_size)
            members = modelio._check_directory(str(path), archive.members,
                                               archive.file_size)
            for name, a in arrays.items():
                header = modelio._read_header(archive, members[name], name)
                np.testing.assert_array_equal(
                    modelio._read_member(archive, members[name], name, header), a)
            archive.close()


def test_loading_reads_no_zip_directory_but_its_own(tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    save_arrays(path, _arrays(), {}, kind="K")

    def no_zipfile(*args, **kwargs):
        raise AssertionError("zipfile opened to load a stored archive")

    monkeypatch.setattr(zipfile, "ZipFile", no_zipfile)
    arrays, _ = load_arrays(path, kind="K")
    np.testing.assert_array_equal(arrays["weights"], _arrays()["weights"])


@pytest.mark.parametrize("damage", ["no end record", "directory moved", "entry overruns",
                                    "spans disks", "member past the end", "bad entry",
                                    "too many members"])
def test_a_damaged_zip_directory_is_refused_naming_the_file(tmp_path, damage):
    path = tmp_path / "m.npz"
    save_arrays(path, _arrays(), {}, kind="K")
    data = bytearray(path.read_bytes())
    end = data.rfind(b"PK\x05\x06")
    cd = data.find(b"PK\x01\x02")
    if damage == "no end record":
        data[end:end + 4] = b"PK\x00\x00"
    elif damage == "directory moved":
        data[end + 16:end + 20] = (cd - 1).to_bytes(4, "little")
    elif damage == "entry overruns":
        data[cd + 28:cd + 30] = (5000).to_bytes(2, "little")      # name length
    elif damage == "spans disks":
        data[end + 4:end + 6] = (1).to_bytes(2, "little")
    elif damage == "member past the end":
        data[cd + 42:cd + 46] = (len(data) - 10).to_bytes(4, "little")     # its offset
    elif damage == "too many members":
        data[end + 10:end + 12] = (5000).to_bytes(2, "little")
    else:
        data[cd:cd + 4] = b"PK\x01\x03"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"m\.npz: " + (
            "5000 archive members" if damage == "too many members" else "")):
        load_arrays(path, kind="K")
