"""The C heap's housekeeping during training (glibc only; a no-op elsewhere).

Training a tagger allocates a few arrays of tens of megabytes (the weights, AdaGrad's sums,
the feature tables) and many short-lived ones of a few. Left to its defaults, glibc's malloc
counts against the process memory that it has already given back to Python:

* after a large block that it mapped separately is freed, it raises its threshold for mapping
  blocks separately to that block's size (up to 32 MiB). Every later block below it comes
  from the heap instead, and a freed heap block stays resident until the heap is trimmed;
* ``calloc`` (``np.zeros``) on reused heap memory writes every byte, where a fresh mapping
  costs nothing until the pages are used.

On EWT with 3 substates this held 20-28 MB of freed memory at the peak of each training.
:func:`release_free_heap` gives the free memory back at the points where a phase of training
has just dropped its large arrays, and :func:`keep_large_blocks_mapped` fixes the threshold so
that blocks of 2 MiB and more are always mapped separately, and returned when freed. (Fixing it
lower, at 256 KiB, saved 8 MB more but made training three times slower: every mini-batch's
temporaries were then fresh pages.)
"""
import os
import threading

# glibc's mallopt parameter for the mmap threshold (malloc.h: M_MMAP_THRESHOLD)
_M_MMAP_THRESHOLD = -3
# the blocks that keep_large_blocks_mapped maps separately: this many bytes and more
LARGE_BLOCK_BYTES = 2 << 20
# the environment variables by which a user sets glibc's malloc: if one is set, their choice
# stands and keep_large_blocks_mapped changes nothing
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
                  "MALLOC_MMAP_MAX_")


def _user_set_malloc():
    return (any(name in os.environ for name in _USER_SETTINGS)
            or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""))

_lock = threading.Lock()
_libc = None            # glibc once looked up; False where the C library is not glibc
_threshold_fixed = False


def _glibc():
    global _libc
    with _lock:
        if _libc is None:
            _libc = False
            try:
                import ctypes
                import ctypes.util
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                libc.malloc_trim.argtypes = [ctypes.c_size_t]
                libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
                _libc = libc
            except (OSError, AttributeError):
                pass
        return _libc


def release_free_heap():
    """Give the C heap's free memory back to the operating system (``malloc_trim(0)``)."""
    libc = _glibc()
    if libc:
        libc.malloc_trim(0)


def keep_large_blocks_mapped():
    """From now on, map every block of :data:`LARGE_BLOCK_BYTES` or more separately, so that
    freeing it returns its memory (``mallopt(M_MMAP_THRESHOLD, ...)``, once per process).

    A process-wide setting, made by training (:meth:`SequenceTagger.fit`): blocks of 2 MiB and
    more are mapped separately, as glibc itself does for blocks of 128 KiB and more until the
    first such block is freed. Nothing is changed where a ``MALLOC_*_`` environment variable
    or a ``glibc.malloc`` tunable (``GLIBC_TUNABLES``) is set, since the user's setting
    stands, or where the C library is not glibc.
    """
    global _threshold_fixed
    if _threshold_fixed or _user_set_malloc():
        return
    libc = _glibc()
    with _lock:
        if libc and not _threshold_fixed:
            libc.mallopt(_M_MMAP_THRESHOLD, LARGE_BLOCK_BYTES)
            _threshold_fixed = True
