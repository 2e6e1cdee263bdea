"""Model files: numpy ``.npz`` archives plus JSON metadata, written atomically, read without pickle.

A model file is a zip archive in numpy's ``.npz`` format whose members are plain numeric or
fixed-width string arrays, plus one member ``__metadata__``: a uint8 array holding UTF-8 JSON with
at least ``format_version`` (int) and ``kind`` (str, e.g. ``"SequenceTagger"``) and the list of
array names the writer stored.

Loading uses ``np.load(..., allow_pickle=False)``, so an untrusted file can never run code;
every way a file can be wrong (not a zip archive, no metadata, another kind of model, a newer
format, a missing array, a member holding pickled Python objects, a truncated archive) becomes
a ``ValueError`` that names the file.

Saving writes a temporary file in the target's folder, flushes and fsyncs it, then renames it
over the target with ``os.replace`` (atomic on POSIX and Windows), so a crash leaves either the
old file or the new one, never half of one.
"""
import json
import os
import secrets
import zipfile

import numpy as np

__all__ = ["save_arrays", "load_arrays", "write_atomic", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_METADATA_KEY = "__metadata__"
_ZIP_MAGIC = b"PK\x03\x04"


def _library_version():
    try:
        from importlib.metadata import version
        return version("factorebm")
    except Exception:   # not installed (running from a source tree): not worth failing a save
        return "unknown"


def save_arrays(path, arrays, metadata, kind):
    """Write arrays and JSON metadata to ``path`` atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Target file; written exactly there (no ``.npz`` is appended). An existing file is
        replaced only once the new one is completely on disk.
    arrays : dict of str -> array_like
        The model's arrays. Object dtypes (which would need pickle) are refused.
    metadata : dict
        JSON-serializable settings. ``format_version``, ``kind`` and ``arrays`` are added
        (and must not be given).
    kind : str
        What the file holds, e.g. ``"SequenceTagger"``; :func:`load_arrays` checks it.

    Raises
    ------
    ValueError
        On an object array, a bad array name, metadata that is not JSON-serializable or that
        uses a reserved key.
    OSError
        When the file cannot be written (missing or read-only folder, ``path`` a directory, a
        full disk); the error names ``path``, not the temporary file.
    """
    path = os.fspath(path)
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"kind must be a non-empty string, got {kind!r}")
    if not isinstance(metadata, dict):
        raise ValueError(f"metadata must be a dict, got {type(metadata).__name__}")
    for key in ("format_version", "kind", "arrays"):
        if key in metadata:
            raise ValueError(f"metadata key {key!r} is reserved (save_arrays sets it)")
    checked = {}
    for name, value in arrays.items():
        if not isinstance(name, str) or not name or name == _METADATA_KEY or "/" in name:
            raise ValueError(f"bad array name {name!r}: a non-empty string without '/', "
                             f"not {_METADATA_KEY!r}")
        a = np.asarray(value)
        if a.dtype.hasobject:
            raise ValueError(f"array {name!r} has dtype {a.dtype} (Python objects), which "
                             "cannot be stored without pickle; convert it to a numeric or "
                             "fixed-width string array")
        checked[name] = a
    meta = dict(metadata)
    meta["format_version"] = FORMAT_VERSION
    meta["kind"] = kind
    meta["arrays"] = sorted(checked)
    meta.setdefault("library_version", _library_version())
    try:
        text = json.dumps(meta, sort_keys=True, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metadata is not JSON-serializable: {exc}") from None
    checked[_METADATA_KEY] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    write_atomic(path, lambda fh: _write_npz(fh, checked))


def write_atomic(path, content):
    """Write a file so that ``path`` holds either its old content or all of the new one.

    A temporary file beside ``path`` is written, flushed and fsynced, then renamed over
    ``path`` (``os.replace``: atomic on POSIX and Windows); on any error it is removed.

    Parameters
    ----------
    path : str or os.PathLike
    content : bytes or callable
        The bytes, or ``content(fh)`` writing them to the binary file object ``fh``.

    Raises
    ------
    OSError
        Naming ``path`` (not the temporary file) when it cannot be written.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    try:
        fd, tmp = _create_temp(folder, base)
    except OSError as exc:
        raise _naming_target(exc, path) from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(content):
                content(fh)
            else:
                fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise _naming_target(exc, path) from exc
        raise
    _fsync_dir(folder)


def _write_npz(fh, arrays):
    """What ``np.savez(fh, **arrays)`` writes (an uncompressed zip of .npy members, read by
    ``np.load``), with each array's bytes written straight from its buffer: np.savez copies
    them in chunks of up to 16 MiB first, which showed in the peak memory of training."""
    import zipfile
    fmt = np.lib.format
    with zipfile.ZipFile(fh, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, a in arrays.items():
            a = a if a.flags.c_contiguous else np.array(a, order="C")   # 0-d stays 0-d
            with zf.open(name + ".npy", mode="w", force_zip64=True) as member:
                fmt.write_array_header_1_0(member, fmt.header_data_from_array_1_0(a))
                if a.size:
                    member.write(memoryview(a.reshape(-1)).cast("B"))


def _naming_target(exc, path):
    """The OSError ``exc`` (about the temporary file) restated about the target ``path``."""
    if exc.errno is None:
        return OSError(f"cannot write {path}: {exc}")
    return type(exc)(exc.errno, exc.strerror, path)


def _create_temp(folder, base):
    """Open a new, uniquely named file beside the target; created with the usual permissions
    (``0o666`` minus the umask), unlike ``tempfile.mkstemp``'s owner-only ``0o600``."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(folder, f".{base}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file in {folder}")


def _fsync_dir(folder):
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_arrays(path, kind, required=()):
    """Read a file written by :func:`save_arrays`, never unpickling anything.

    Parameters
    ----------
    path : str or os.PathLike
    kind : str
        The expected ``kind``.
    required : iterable of str
        Array names that must be present (besides every name the metadata lists).

    Returns
    -------
    arrays : dict of str -> ndarray
        Every stored array, fully read into memory.
    metadata : dict
        The JSON metadata, including ``format_version``, ``kind`` and ``arrays``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        Naming the file: not a model file, a different ``kind``, a newer format version, a
        missing array, or an array holding pickled Python objects.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except FileNotFoundError:
        raise FileNotFoundError(f"model file not found: {path}") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a directory, not a model file") from None
    if magic != _ZIP_MAGIC:
        raise ValueError(f"{path}: not a factorebm model file (not an .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if _METADATA_KEY not in npz.files:
                raise ValueError(f"{path}: not a factorebm model file (no {_METADATA_KEY})")
            metadata = _read_metadata(path, _read_member(path, npz, _METADATA_KEY))
            _check_header(path, metadata, kind)
            names = [n for n in npz.files if n != _METADATA_KEY]
            arrays = {name: _read_member(path, npz, name) for name in names}
    except ValueError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, KeyError, RuntimeError) as exc:
        raise ValueError(f"{path}: corrupt or truncated model file ({exc})") from None
    missing = [n for n in list(metadata["arrays"]) + list(required) if n not in arrays]
    if missing:
        raise ValueError(f"{path}: model file is missing array(s) {', '.join(missing)}")
    return arrays, metadata


def _read_member(path, npz, name):
    try:
        a = npz[name]
    except ValueError as exc:
        if "pickle" in str(exc).lower() or "object" in str(exc).lower():
            raise ValueError(f"{path}: array {name!r} holds pickled Python objects; refusing "
                             "to load it (model files never need pickle)") from None
        raise ValueError(f"{path}: array {name!r} is unreadable ({exc})") from None
    except (zipfile.BadZipFile, OSError, EOFError, KeyError, RuntimeError) as exc:
        raise ValueError(f"{path}: array {name!r} is unreadable ({exc})") from None
    if not isinstance(a, np.ndarray):
        # np.load returns the raw bytes of a member that is not in .npy format.
        raise ValueError(f"{path}: member {name!r} is not a numpy array")
    if a.dtype.hasobject:   # defensive: allow_pickle=False already refuses these
        raise ValueError(f"{path}: array {name!r} holds Python objects; refusing to load it")
    return a


def _read_metadata(path, raw):
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise ValueError(f"{path}: {_METADATA_KEY} must be a 1-D uint8 array, got "
                         f"{raw.ndim}-D {raw.dtype}")
    try:
        metadata = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path}: metadata is not valid UTF-8 JSON ({exc})") from None
    if not isinstance(metadata, dict):
        raise ValueError(f"{path}: metadata is not a JSON object")
    return metadata


def _check_header(path, metadata, kind):
    version = metadata.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"{path}: metadata has no valid format_version ({version!r})")
    if version > FORMAT_VERSION:
        raise ValueError(f"{path}: written by a newer factorebm (model format version "
                         f"{version}; this version reads up to {FORMAT_VERSION}); upgrade "
                         "factorebm to load it")
    found = metadata.get("kind")
    if found != kind:
        raise ValueError(f"{path}: holds a {found!r} model, expected {kind!r}")
    names = metadata.get("arrays")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{path}: metadata has no valid list of arrays")
