"""Reading and writing data files: paths or open files, plain or gzip-compressed, UTF-8.

Shared by the readers of :mod:`factorebm.datasets` (CoNLL-U, plain column files). Errors name
the file, and for text that is not UTF-8 the line.
"""
import contextlib
import errno
import gc
import gzip
import io
import os
import zlib

__all__ = ["read_bytes", "read_text", "decode_utf8", "write_bytes", "is_binary", "gc_paused",
           "BOM"]

BOM = "\ufeff"
_GZIP_MAGIC = b"\x1f\x8b"


def source_name(source):
    """The name errors give ``source``: a path as a str, an open file's ``name``."""
    if isinstance(source, (str, bytes, os.PathLike)):
        return os.fsdecode(source)
    return str(getattr(source, "name", "<stream>"))


def read_text(source, keep_bom=False):
    """Read a path or an open file (text or binary, plain or gzipped) into ``(text, name)``.

    A leading UTF-8 byte-order mark is removed unless ``keep_bom``.

    Errors name the file: a missing path raises FileNotFoundError, undecodable bytes or a broken
    gzip stream raise ValueError with the line number where decoding failed.
    """
    data, name = read_bytes(source)
    text = data if isinstance(data, str) else decode_utf8(data, name)
    if text.startswith(BOM) and not keep_bom:
        text = text[1:]
    return text, name


def read_bytes(source):
    """``(data, name)``: the bytes of a path or an open binary file, decompressed when they
    are gzipped; an open text file's str as it is."""
    name = source_name(source)
    if isinstance(source, (str, bytes, os.PathLike)):
        try:
            with open(source, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, "data file not found", name) from None
        except IsADirectoryError:
            raise IsADirectoryError(errno.EISDIR, "expected a data file, got a directory",
                                    name) from None
    else:
        data = source.read()
        if isinstance(data, str):
            return data, name
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ValueError(f"{name}: read() returned {type(data).__name__}, "
                             "expected str or bytes")
        data = bytes(data)
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"{name}: corrupt gzip data ({exc})") from None
    return data, name


def decode_utf8(data, name):
    """``data`` decoded as UTF-8; ValueError naming the file and line where it is not."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ValueError(f"{name}:{line}: not valid UTF-8 ({exc.reason} at byte "
                         f"{exc.start})") from None


@contextlib.contextmanager
def gc_paused():
    """Pause the cyclic garbage collector while building many small lists.

    The parsers create hundreds of thousands of lists that can never form reference cycles;
    left on, the collector rescans them over and over and triples the reading time.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def is_binary(file):
    """True for an open file that takes bytes."""
    return isinstance(file, (io.RawIOBase, io.BufferedIOBase)) or "b" in getattr(file, "mode", "")


def write_bytes(data, file):
    """Write the UTF-8 bytes ``data`` (any buffer) to a path (gzip-compressed when the name ends
    in ``.gz``) or to an open binary or text file."""
    if isinstance(file, (str, bytes, os.PathLike)):
        if os.fsdecode(file).endswith(".gz"):
            data = gzip.compress(data)
        with open(file, "wb") as fh:
            fh.write(data)
    elif isinstance(file, io.RawIOBase):
        _write_all(file, data)
    elif is_binary(file):
        file.write(data)
    else:
        file.write(bytes(data).decode("utf-8"))


def write_pieces(pieces, file):
    """:func:`write_bytes` of data given piece by piece: ``pieces`` an iterable of buffers,
    each written before the next is asked for (so they may share memory). A gzip-compressed
    path gets them joined and compressed at once, as :func:`write_bytes` writes it."""
    if isinstance(file, (str, bytes, os.PathLike)):
        if os.fsdecode(file).endswith(".gz"):
            write_bytes(b"".join(bytes(p) for p in pieces), file)
            return
        with open(file, "wb") as fh:
            for piece in pieces:
                fh.write(piece)
    else:
        for piece in pieces:
            write_bytes(piece, file)


def _write_all(raw, data):
    """Write ``data`` to an unbuffered binary file, which may take only part of it per call
    (``sys.stdout.buffer`` under ``python -u`` or PYTHONUNBUFFERED is a raw FileIO: a pipe
    whose reader leaves takes part of the data, and only the next call raises EPIPE)."""
    view = memoryview(data)
    while view:
        n = raw.write(view)
        if n is None:       # a non-blocking file that is not ready: fail rather than drop data
            raise BlockingIOError(errno.EAGAIN, "output not ready (non-blocking file)")
        view = view[n:]
