"""Pick the fastest build of a kernel module that this CPU can run.

setup.py builds some kernel modules twice (``V3_MODULES``): portable (``factorebm._chain``) and
for x86-64-v3, AVX2 with FMA (``factorebm._chain_v3``), from the same Cython source. Distributed
builds cannot assume the CPU of the machine they run on, so the choice is made here, at import
time, from the instruction sets the operating system reports. ``FACTOREBM_ISA=baseline`` forces
the portable build (to compare the two, or to rule the wider one out).
"""
import functools
import importlib
import os
import platform

__all__ = ["kernel_module", "has_x86_64_v3"]

# What -march=x86-64-v3 may use, as Linux names it in /proc/cpuinfo (abm: LZCNT).
_X86_64_V3 = frozenset(["avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"])


@functools.lru_cache(maxsize=None)
def has_x86_64_v3():
    """True when this is an x86-64 CPU (and OS) with every x86-64-v3 instruction set (read
    once per process)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return _X86_64_V3 <= set(line.partition(":")[2].split())
    except OSError:
        pass
    return False


def kernel_module(name):
    """``factorebm.<name>_v3`` where it was built and the CPU runs it, else ``factorebm.<name>``."""
    if os.environ.get("FACTOREBM_ISA", "").lower() != "baseline" and has_x86_64_v3():
        try:
            return importlib.import_module(f"factorebm.{name}_v3")
        except ImportError:
            pass
    return importlib.import_module(f"factorebm.{name}")
