"""factorebm._heap: training's housekeeping of glibc's heap (issue 11, peak memory)."""
import pytest

from factorebm import _heap


class FakeLibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad):
        self.calls.append(("malloc_trim", pad))
        return 1


@pytest.fixture
def libc(monkeypatch):
    fake = FakeLibc()
    monkeypatch.setattr(_heap, "_glibc", lambda: fake)
    monkeypatch.setattr(_heap, "_threshold_fixed", False)
    for name in _heap._USER_SETTINGS + ("GLIBC_TUNABLES",):
        monkeypatch.delenv(name, raising=False)
    return fake


def test_the_threshold_is_fixed_once_per_process(libc):
    _heap.keep_large_blocks_mapped()
    _heap.keep_large_blocks_mapped()
    assert libc.calls == [("mallopt", -3, _heap.LARGE_BLOCK_BYTES)]
    assert _heap.LARGE_BLOCK_BYTES == 2 << 20


@pytest.mark.parametrize("name,value", [("MALLOC_MMAP_THRESHOLD_", "65536"),
                                        ("MALLOC_TOP_PAD_", "0"),
                                        ("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=4096")])
def test_a_users_malloc_setting_stands(libc, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    _heap.keep_large_blocks_mapped()
    assert libc.calls == []


def test_tunables_of_something_else_do_not_count(libc, monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.cpu.hwcaps=-AVX512F")
    _heap.keep_large_blocks_mapped()
    assert len(libc.calls) == 1


def test_without_glibc_nothing_happens(monkeypatch):
    monkeypatch.setattr(_heap, "_glibc", lambda: False)
    monkeypatch.setattr(_heap, "_threshold_fixed", False)
    _heap.keep_large_blocks_mapped()
    _heap.release_free_heap()
    assert _heap._threshold_fixed is False


def test_fit_fixes_the_threshold(libc):
    import factorebm as fe
    fe.SequenceTagger(max_iter=1, verbose=False).fit([["a", "b"]], [["X", "Y"]])
    assert ("mallopt", -3, _heap.LARGE_BLOCK_BYTES) in libc.calls


def test_the_real_calls_run():
    _heap.release_free_heap()          # on glibc: malloc_trim(0); elsewhere nothing
    assert _heap._glibc() is False or callable(_heap._glibc().malloc_trim)
