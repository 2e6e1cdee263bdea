"""Model files: numpy ``.npz`` archives plus JSON metadata, written atomically, read without pickle.

A model file is a zip archive in numpy's ``.npz`` format whose members are plain numeric or
fixed-width string arrays, plus one member ``__metadata__``: a uint8 array holding UTF-8 JSON with
at least ``format_version`` (int) and ``kind`` (str, e.g. ``"SequenceTagger"``) and the list of
array names the writer stored.

Loading reads every member with ``allow_pickle=False``, so an untrusted file can never run
code; every way a file can be wrong (not a zip archive, no metadata, another kind of model, a
newer format, a missing array, a member holding pickled Python objects, a truncated or
bit-flipped archive) becomes a ``ValueError`` that names the file. Nothing is read before its
declared size is checked: the zip directory's sizes against the file's own size (a stored
member holds what it declares, a compressed one inflates at most ``MAX_COMPRESSION_RATIO``
times, and the members together fit in the file), and each ``.npy`` header's shape times item
size against its member's size and against the shapes the metadata lists. So a hostile file
makes the loader allocate at most ``MAX_COMPRESSION_RATIO`` times its own size, and a file
written by :func:`save_arrays`, which never compresses, no more than its own size.

Saving writes a temporary file ``.NAME.<12 hex digits>.tmp`` in the target's folder, flushes
and fsyncs it, then renames it over the target with ``os.replace`` (atomic on POSIX and
Windows), so a crash leaves either the old file or the new one, never half of one. A save
holds a lock on its temporary file (POSIX ``flock``) while it writes, and removes the
unlocked temporary files of its own naming that a killed save left beside the same target.
Re-saving keeps the existing file's permission bits, and saving to a symbolic link writes
the file the link points to (the link stays a link).
"""
import contextlib
import json
import os
import re
import stat
import struct
import zlib

import numpy as np

try:
    import fcntl
except ImportError:     # Windows: an open file cannot be removed there, which is the lock
    fcntl = None

__all__ = ["save_arrays", "load_arrays", "write_atomic", "FORMAT_VERSION",
           "MAX_COMPRESSION_RATIO"]

FORMAT_VERSION = 1
_METADATA_KEY = "__metadata__"
_ZIP_MAGIC = b"PK\x03\x04"
# A compressed member may declare at most this many bytes per compressed byte. save_arrays
# never compresses; np.savez_compressed of model arrays (weights, ids, names) stays far below
# it, while a zip bomb needs hundreds to a thousand.
MAX_COMPRESSION_RATIO = 50
_MAX_MEMBERS = 4096
_MAX_METADATA_BYTES = 16 << 20
_MAX_HEADER_BYTES = 1 << 16
# dtype kinds a model array may have: booleans, integers, floats, complex, strings (no
# objects, structured records, sub-arrays or datetimes)
_ARRAY_KINDS = "biufcSU"


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
        JSON-serializable settings (numpy scalars are written as Python numbers).
        ``format_version``, ``kind``, ``arrays`` (the sorted names) and ``shapes`` (name ->
        ``[dtype string, shape]``, which :func:`load_arrays` holds every member to) are added
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

    Notes
    -----
    An existing file keeps its permission bits; a symbolic link keeps pointing where it did,
    at the new contents.
    """
    path = os.fspath(path)
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"kind must be a non-empty string, got {kind!r}")
    if not isinstance(metadata, dict):
        raise ValueError(f"metadata must be a dict, got {type(metadata).__name__}")
    for key in _RESERVED:
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
    meta["shapes"] = {name: [a.dtype.str, list(a.shape)] for name, a in checked.items()}
    meta.setdefault("library_version", _library_version())
    try:
        text = json.dumps(meta, sort_keys=True, allow_nan=True, default=_json_scalar)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metadata is not JSON-serializable: {exc}") from None
    checked[_METADATA_KEY] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    write_atomic(path, lambda fh: _write_npz(fh, checked))


def _json_scalar(value):
    """A numpy scalar (np.int64, np.bool_, ...) as the Python number JSON writes: settings
    validated as integers must save, and load back as plain ints."""
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return value.item()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def write_atomic(path, content, durable=True):
    """Write a file so that ``path`` holds either its old content or all of the new one.

    A temporary file beside the target is written, flushed and fsynced, then renamed over it
    (``os.replace``: atomic on POSIX and Windows); on any error it is removed. A symbolic link
    is written through (the link stays a link), an existing file keeps its mode, and stale
    temporary files of a killed earlier write to the same target are removed. An existing
    target that is not a regular file (a device such as ``/dev/stdout``, a named pipe) cannot
    be replaced: it is written straight.

    Parameters
    ----------
    path : str or os.PathLike
    content : bytes or callable
        The bytes, or ``content(fh)`` writing them to the binary file object ``fh``.
    durable : bool
        fsync the file and its folder, so that the new content survives a power loss (model
        files). False still never leaves a half-written ``path`` when the process dies; it
        suits output that can be made again (tagged text), where the two fsyncs cost more
        than writing it (20 ms for 30 MB).

    Raises
    ------
    OSError
        Naming ``path`` (not the temporary file) when it cannot be written.
    """
    path = os.fspath(path)
    write = content if callable(content) else (lambda fh: fh.write(content))
    # Through a symbolic link to the file it names: replacing the link itself would cut it.
    target = os.path.realpath(path) if os.path.islink(path) else os.path.abspath(path)
    folder = os.path.dirname(target)
    base = os.path.basename(target)
    try:
        mode = os.stat(path).st_mode        # through links (/dev/stdout -> a pipe)
    except OSError:
        mode = None         # a new file: 0o666 minus the umask, as open() makes it
    if mode is not None and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        try:
            with open(path, "wb") as fh:
                write(fh)
        except OSError as exc:
            raise _naming_target(exc, path) from exc
        return
    mode = stat.S_IMODE(mode) if mode is not None else None
    try:
        fd, tmp = _create_temp(folder, base)
    except OSError as exc:
        raise _naming_target(exc, path) from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            if mode is not None:
                _chmod(fh.fileno(), tmp, mode)
            _remove_stale_temps(folder, base, tmp)
            write(fh)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
            if fcntl is not None:
                # renamed while still open and locked: a concurrent save's clean-up must
                # not take a finished file for a killed save's leftover
                os.replace(tmp, target)
        if fcntl is None:
            os.replace(tmp, target)     # Windows renames only closed files
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise _naming_target(exc, path) from exc
        raise
    if durable:
        _fsync_dir(folder)


_RESERVED = ("format_version", "kind", "arrays", "shapes")


def _chmod(fd, path, mode):
    try:
        os.fchmod(fd, mode)
    except AttributeError:      # no fchmod (Windows)
        os.chmod(path, mode)


def _temp_pattern(base):
    """The names :func:`_create_temp` gives temporary files for target ``base``."""
    return re.compile(r"\." + re.escape(base) + r"\.[0-9a-f]{12}\.tmp\Z")


def _remove_stale_temps(folder, base, own):
    """Remove the temporary files of ``base`` that no save is writing any more.

    Only files of our own naming (``.BASE.<12 hex>.tmp``) are candidates, and of those only
    the ones no live save holds: a save keeps its temporary file locked until it is renamed,
    and a killed process's locks die with it. Where there is no ``flock`` (Windows), an open
    file cannot be removed, which serves the same end.
    """
    pattern = _temp_pattern(base)
    try:
        names = os.listdir(folder)
    except OSError:
        return
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    for name in names:
        candidate = os.path.join(folder, name)
        if not pattern.match(name) or candidate == own:
            continue
        try:
            fd = os.open(candidate, flags)
        except OSError:
            continue
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue        # a save in progress
                os.unlink(candidate)
        except OSError:
            continue
        finally:
            os.close(fd)
        if fcntl is None:
            try:
                os.unlink(candidate)
            except OSError:
                pass


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
    """Open a new, uniquely named file beside the target, locked (see
    :func:`_remove_stale_temps`); created with the usual permissions (``0o666`` minus the
    umask), unlike ``tempfile.mkstemp``'s owner-only ``0o600``."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(folder, f".{base}.{os.urandom(6).hex()}.tmp")
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        if fcntl is None:
            return fd, tmp
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            # Another save's clean-up may have taken the file between its creation and the
            # lock: then the name is gone (or another file's), and a new one is needed.
            if os.stat(tmp).st_ino == os.fstat(fd).st_ino:
                return fd, tmp
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
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


class _FileError(ValueError):
    """A ValueError that already names the file (not to be wrapped again)."""


def _corrupt(exc):
    """True for what a damaged archive makes zipfile, zlib, struct or numpy's header parser
    raise (BadZipFile, zlib.error, struct.error, tokenize.TokenError, EOFError, ...): every
    exception but ours and MemoryError, which the size checks leave to honest large files."""
    return not isinstance(exc, (_FileError, MemoryError))


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
        missing array, an array holding pickled Python objects, or sizes that do not add up
        (checked before anything is read, see the module docstring).
    """
    path = os.fspath(path)
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"model file not found: {path}") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a directory, not a model file") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    with fh:
        try:
            if fh.read(4) != _ZIP_MAGIC:
                raise _FileError(f"{path}: not a factorebm model file (not an .npz archive)")
            archive = _Archive(path, fh, os.fstat(fh.fileno()).st_size)
            try:
                arrays, metadata = _read_archive(archive, kind)
            finally:
                archive.close()
        except Exception as exc:
            if not _corrupt(exc):
                raise
            raise ValueError(f"{path}: corrupt or truncated model file ({exc})") from None
    missing = [n for n in list(metadata["arrays"]) + list(required) if n not in arrays]
    if missing:
        raise ValueError(f"{path}: model file is missing array(s) {', '.join(missing)}")
    return arrays, metadata


# The zip format's records (APPNOTE.TXT 4.3): end of central directory, its zip64 locator and
# record, and a central directory entry.
_END = struct.Struct("<4s4H2LH")
_END64_LOCATOR = struct.Struct("<4sLQL")
_END64 = struct.Struct("<4sQ2H2L4Q")
_CENTRAL = struct.Struct("<4s6H3L5H2L")
_MAX_COMMENT = 0xFFFF
_STORED, _DEFLATED = 0, 8       # compression methods


class _Member:
    """One archive member as the central directory declares it (the ``zipfile.ZipInfo``
    fields the loader reads)."""

    __slots__ = ("filename", "raw_name", "flag_bits", "compress_type", "CRC", "compress_size",
                 "file_size", "header_offset", "data_offset")


class _Archive:
    """An open model file's zip directory, read without :mod:`zipfile`: the loader reads
    stored members itself, so the directory is all it needs, and importing zipfile (pathlib,
    shutil, urllib, ipaddress) cost a twentieth of ``factorebm tag``'s time on one sentence.
    A deflated member (``np.savez_compressed``) is read through zipfile, opened then."""

    def __init__(self, path, fh, file_size):
        self.path = path
        self.fh = fh
        self.file_size = file_size
        self.members = self._directory()
        self._zip = None

    def _directory(self):
        """The members of the central directory, in order; _FileError for a directory that
        is not where the end record says, or entries that overrun it."""
        path, fh, size = self.path, self.fh, self.file_size
        tail_start = max(0, size - (_MAX_COMMENT + _END.size + _END64_LOCATOR.size
                                    + _END64.size))
        fh.seek(tail_start)
        tail = fh.read()
        end = len(tail)
        while True:     # the last end record whose comment fits in the file
            end = tail.rfind(b"PK\x05\x06", 0, end)
            if end < 0 or end + _END.size > len(tail):
                raise _FileError(f"{path}: not a factorebm model file (no zip directory)")
            record = _END.unpack_from(tail, end)
            if end + _END.size + record[7] <= len(tail):
                break
        _, disk, cd_disk, _, n_members, cd_size, cd_offset, _ = record
        cd_end = tail_start + end
        locator = end - _END64_LOCATOR.size
        if locator >= 0 and tail[locator:locator + 4] == b"PK\x06\x07":
            if locator < _END64.size:
                raise _FileError(f"{path}: truncated zip64 directory record")
            record64 = _END64.unpack_from(tail, locator - _END64.size)
            if record64[0] != b"PK\x06\x06":
                raise _FileError(f"{path}: bad zip64 directory record")
            _, record_disk, _, n_disks = _END64_LOCATOR.unpack_from(tail, locator)
            if record_disk or n_disks > 1:
                raise _FileError(f"{path}: a zip archive spanning several disks")
            disk, cd_disk, _, n_members, cd_size, cd_offset = record64[4:]
            cd_end = tail_start + locator - _END64.size
        if disk or cd_disk:
            raise _FileError(f"{path}: a zip archive spanning several disks")
        if n_members > _MAX_MEMBERS:
            raise _FileError(f"{path}: {n_members} archive members, more than any model has")
        if cd_offset + cd_size != cd_end:
            raise _FileError(f"{path}: the zip directory is not where its end record says")
        fh.seek(cd_offset)
        directory = fh.read(cd_size)
        if len(directory) != cd_size:
            raise _FileError(f"{path}: truncated zip directory")
        members = []
        at = 0
        for _ in range(n_members):
            if at + _CENTRAL.size > cd_size:
                raise _FileError(f"{path}: truncated zip directory")
            (sig, _, _, flags, method, _, _, crc, compress_size, file_size, n_name, n_extra,
             n_comment, _, _, _, offset) = _CENTRAL.unpack_from(directory, at)
            at += _CENTRAL.size
            if sig != b"PK\x01\x02" or at + n_name + n_extra + n_comment > cd_size:
                raise _FileError(f"{path}: bad zip directory entry")
            m = _Member()
            m.raw_name = directory[at:at + n_name]
            extra = directory[at + n_name:at + n_name + n_extra]
            at += n_name + n_extra + n_comment
            try:
                m.filename = m.raw_name.decode("utf-8" if flags & 0x800 else "cp437")
            except UnicodeDecodeError:
                raise _FileError(f"{path}: a member's name is not valid UTF-8") from None
            if "\x00" in m.filename:
                raise _FileError(f"{path}: a member's name holds a NUL character")
            m.file_size, m.compress_size, m.header_offset = _zip64_sizes(
                path, extra, file_size, compress_size, offset)
            m.flag_bits, m.compress_type, m.CRC = flags, method, crc
            m.data_offset = None
            members.append(m)
        if at != cd_size:
            raise _FileError(f"{path}: the zip directory holds more than its entries")
        return members

    def data_offset(self, info, name):
        """Where a member's bytes start in the file, once its local header is checked
        against the directory entry."""
        if info.data_offset is None:
            fh = self.fh
            fh.seek(info.header_offset)
            local = fh.read(30)
            if len(local) != 30 or local[:4] != _ZIP_MAGIC:
                raise _FileError(f"{self.path}: array {name!r} has no local file header")
            n_name = int.from_bytes(local[26:28], "little")
            n_extra = int.from_bytes(local[28:30], "little")
            if fh.read(n_name) != info.raw_name:
                raise _FileError(f"{self.path}: array {name!r}: the names of its directory "
                                 "entry and its local header differ")
            info.data_offset = info.header_offset + 30 + n_name + n_extra
        return info.data_offset

    def open_deflated(self, info):
        """A reader of a deflated member's inflated bytes (zipfile checks its CRC-32 at the
        end)."""
        if self._zip is None:
            import zipfile
            self._zip = zipfile.ZipFile(self.fh)
        return self._zip.open(self._zip.getinfo(info.filename))

    def close(self):
        if self._zip is not None:
            self._zip.close()


def _zip64_sizes(path, extra, file_size, compress_size, offset):
    """``(file_size, compress_size, header_offset)`` of a directory entry: the 32-bit fields,
    those that hold 0xFFFFFFFF replaced, in that order, from the zip64 extra field."""
    wanted = [v == 0xFFFFFFFF for v in (file_size, compress_size, offset)]
    if not any(wanted):
        return file_size, compress_size, offset
    values = [file_size, compress_size, offset]
    at = 0
    while at + 4 <= len(extra):
        kind, n = struct.unpack_from("<2H", extra, at)
        if kind == 1:
            field = extra[at + 4:at + 4 + n]
            k = 0
            for i, want in enumerate(wanted):
                if want:
                    if k + 8 > len(field):
                        break
                    values[i] = int.from_bytes(field[k:k + 8], "little")
                    wanted[i] = False
                    k += 8
            break
        at += 4 + n
    if any(wanted):
        raise _FileError(f"{path}: a zip64 directory entry without its sizes")
    return tuple(values)


def _read_archive(archive, kind):
    """The arrays and metadata of an open archive, every size checked before it is read."""
    path = archive.path
    members = _check_directory(path, archive.members, archive.file_size)
    if _METADATA_KEY not in members:
        raise _FileError(f"{path}: not a factorebm model file (no {_METADATA_KEY})")
    info = members[_METADATA_KEY]
    header = _read_header(archive, info, _METADATA_KEY)
    dtype, shape = header[:2]
    if dtype != np.uint8 or len(shape) != 1:
        raise _FileError(f"{path}: {_METADATA_KEY} must be a 1-D uint8 array, got "
                         f"{len(shape)}-D {dtype}")
    if shape[0] > _MAX_METADATA_BYTES:
        raise _FileError(f"{path}: metadata of {shape[0]} bytes is implausibly large")
    metadata = _read_metadata(path, _read_member(archive, info, _METADATA_KEY, header))
    _check_header(path, metadata, kind)
    declared = metadata.get("shapes")
    if declared is not None and not isinstance(declared, dict):
        raise _FileError(f"{path}: metadata 'shapes' is not a JSON object")
    headers = {}
    for name, info in members.items():
        if name == _METADATA_KEY:
            continue
        headers[name] = _read_header(archive, info, name)
        dtype, shape = headers[name][:2]
        if declared is not None:
            want = declared.get(name)
            if (not isinstance(want, list) or len(want) != 2
                    or want[0] != dtype.str or want[1] != list(shape)):
                raise _FileError(f"{path}: array {name!r} is {dtype.str} of shape {shape}, "
                                 f"but the metadata lists {want!r}")
    arrays = {name: _read_member(archive, info, name, headers[name])
              for name, info in members.items() if name != _METADATA_KEY}
    return arrays, metadata


def _check_directory(path, infos, file_size):
    """name -> member of every member (:attr:`_Archive.members`, at most _MAX_MEMBERS), once
    its declared sizes are checked against the file's size: no member may make the reader
    allocate more than its share of the file (times MAX_COMPRESSION_RATIO when compressed)."""
    members = {}
    stored_total = 0
    for info in infos:
        name = info.filename
        if not name.endswith(".npy"):
            raise _FileError(f"{path}: member {name!r} is not a numpy array (.npy)")
        name = name[:-len(".npy")]
        if name in members:
            raise _FileError(f"{path}: member {name!r} appears twice")
        if info.flag_bits & 0x1:
            raise _FileError(f"{path}: member {name!r} is encrypted")
        if info.compress_type == _STORED:
            if info.file_size != info.compress_size:
                raise _FileError(f"{path}: member {name!r} is stored but declares "
                                 f"{info.file_size} bytes in {info.compress_size}")
        elif info.compress_type == _DEFLATED:
            if info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
                raise _FileError(f"{path}: member {name!r} declares {info.file_size} bytes "
                                 f"from {info.compress_size} compressed (more than "
                                 f"{MAX_COMPRESSION_RATIO} times): refusing a likely zip bomb")
        else:
            raise _FileError(f"{path}: member {name!r} uses compression method "
                             f"{info.compress_type}; model files are stored or deflated")
        if info.header_offset + info.compress_size > file_size:
            raise _FileError(f"{path}: member {name!r} declares {info.compress_size} bytes "
                             f"at {info.header_offset}, past the file's {file_size}")
        stored_total += info.compress_size
        members[name] = info
    if stored_total > file_size:
        raise _FileError(f"{path}: the archive's members declare {stored_total} bytes, more "
                         f"than the file's {file_size}")
    return members


def _read_header(archive, info, name):
    """``(dtype, shape, fortran_order, data_start)`` of a member's .npy header, read alone,
    once the shape times the item size is known to be exactly the member's size past the
    header (which ends at ``data_start``)."""
    path = archive.path
    fmt = np.lib.format
    try:
        if info.compress_type == _STORED:
            fp = contextlib.nullcontext(archive.fh)
            archive.fh.seek(archive.data_offset(info, name))
        else:
            fp = archive.open_deflated(info)
        with fp as fp:
            begin = fp.tell()
            version = fmt.read_magic(fp)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(fp)
            elif version == (2, 0):
                shape, fortran, dtype = fmt.read_array_header_2_0(fp)
            else:
                raise _FileError(f"{path}: array {name!r} has .npy format version "
                                 f"{version}, not 1.0 or 2.0")
            data_start = fp.tell() - begin
    except Exception as exc:
        if not _corrupt(exc):
            raise
        raise _FileError(f"{path}: array {name!r} is unreadable ({exc})") from None
    if dtype.hasobject:
        raise _FileError(f"{path}: array {name!r} holds pickled Python objects; refusing "
                         "to load it (model files never need pickle)")
    if (dtype.kind not in _ARRAY_KINDS or dtype.fields is not None
            or dtype.subdtype is not None or dtype.itemsize == 0):
        raise _FileError(f"{path}: array {name!r} has dtype {dtype}, not a plain number or "
                         "string type")
    if any(not isinstance(n, int) or n < 0 for n in shape):
        raise _FileError(f"{path}: array {name!r} has a bad shape {shape}")
    n_bytes = dtype.itemsize
    for n in shape:
        n_bytes *= n            # Python integers: no overflow
    if n_bytes != info.file_size - data_start:
        raise _FileError(f"{path}: array {name!r} declares shape {shape} of {dtype} "
                         f"({n_bytes} bytes), but its member holds "
                         f"{info.file_size - data_start}")
    return dtype, shape, fortran, data_start


def _read_member(archive, info, name, header):
    """The array of one member, its ``header`` (:func:`_read_header`) already checked.

    A stored member (what :func:`save_arrays` writes) is read from the file in one call
    straight into the buffer that becomes the array's memory, and its CRC-32 checked: numpy's
    ``read_array`` reads a zip member in chunks of 256 Ki elements through zipfile, each chunk
    read, checked and copied twice, which took most of a model's loading time."""
    path = archive.path
    dtype, shape, fortran, data_start = header
    try:
        if info.compress_type == _STORED:
            buf = _read_stored(archive, info, name)
        else:
            buf = np.empty(info.file_size, dtype=np.uint8)
            with archive.open_deflated(info) as fp:
                # reaching the end makes zipfile compare the member's CRC-32
                if fp.readinto(buf) != info.file_size or fp.read(1):
                    raise _FileError(f"{path}: array {name!r} does not hold the "
                                     f"{info.file_size} bytes its directory entry declares")
    except Exception as exc:
        if not _corrupt(exc):
            raise
        raise _FileError(f"{path}: array {name!r} is unreadable ({exc})") from None
    count = 1
    for k in shape:
        count *= k
    a = np.frombuffer(buf, dtype=dtype, count=count, offset=data_start)
    if not a.flags.aligned:
        a = a.copy()    # a header of odd length: kernels assume aligned items
    return a.reshape(shape, order="F" if fortran else "C")


def _crc32(buf):
    """zlib.crc32 of a uint8 array; with the carry-less multiply where the CPU has it
    (``_crc32``: 5x faster than zlib here, which took a quarter of a model's loading time)."""
    from ._crc32 import FAST, crc32
    return crc32(buf) if FAST else zlib.crc32(buf)


def _read_stored(archive, info, name):
    """The bytes of a stored (uncompressed) member, as a uint8 array, CRC-32 checked."""
    fh = archive.fh
    fh.seek(archive.data_offset(info, name))
    # np.empty, not bytearray: no zero-filling, and numpy asks for huge pages
    buf = np.empty(info.file_size, dtype=np.uint8)
    if fh.readinto(memoryview(buf)) != info.file_size:
        raise _FileError(f"{archive.path}: array {name!r} is truncated")
    if _crc32(buf) != info.CRC:
        raise _FileError(f"{archive.path}: array {name!r} is corrupt (bad CRC-32)")
    return buf


def _read_metadata(path, raw):
    try:
        metadata = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _FileError(f"{path}: metadata is not valid UTF-8 JSON ({exc})") from None
    if not isinstance(metadata, dict):
        raise _FileError(f"{path}: metadata is not a JSON object")
    return metadata


def _check_header(path, metadata, kind):
    version = metadata.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _FileError(f"{path}: metadata has no valid format_version ({version!r})")
    if version > FORMAT_VERSION:
        raise _FileError(f"{path}: written by a newer factorebm (model format version "
                         f"{version}; this version reads up to {FORMAT_VERSION}); upgrade "
                         "factorebm to load it")
    found = metadata.get("kind")
    if found != kind:
        raise _FileError(f"{path}: holds a {found!r} model, expected {kind!r}")
    names = metadata.get("arrays")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _FileError(f"{path}: metadata has no valid list of arrays")
