"""Build the Cython kernels in ``src_cython/`` into the ``factorebm`` package.

Every ``src_cython/NAME.pyx`` becomes the extension module ``factorebm.NAME``.
Cython directives are set once here (scikit-learn style); set
``FACTOREBM_CYTHON_DEBUG=1`` to turn bounds and initialization checks back on.
OpenMP (``-fopenmp``) is used when the compiler accepts it; otherwise the
``prange`` loops compile to serial loops.
During development ``FACTOREBM_BUILD_ONLY=_chain,_bp`` limits a
``python setup.py build_ext --inplace`` to the named modules.

The modules in ``V3_MODULES`` are built a second time for x86-64-v3 (AVX2, FMA) as
``factorebm.NAME_v3`` where the compiler accepts ``-march=x86-64-v3``; ``factorebm._isa``
imports that build on CPUs that have those instructions, the portable one elsewhere.
``FACTOREBM_NO_V3=1`` skips the second build.
"""
import os
import platform
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from Cython.Build import cythonize

HERE = Path(__file__).parent
DEBUG = os.environ.get("FACTOREBM_CYTHON_DEBUG", "") not in ("", "0")


def _compiler_accepts(flag, src="#include <omp.h>\nint main(void){return omp_get_max_threads() > 0 ? 0 : 1;}\n"):
    """True when the C compiler builds and links the tiny program ``src`` with ``flag``
    (by default an OpenMP one)."""
    cc = (sysconfig.get_config_var("CC") or "cc").split()
    with tempfile.TemporaryDirectory() as tmp:
        c_file = os.path.join(tmp, "t.c")
        with open(c_file, "w") as fh:
            fh.write(src)
        try:
            res = subprocess.run(cc + [flag, c_file, "-o", os.path.join(tmp, "t")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError:
            return False
        return res.returncode == 0


OPENMP = [] if os.environ.get("FACTOREBM_NO_OPENMP") else (
    ["-fopenmp"] if sys.platform != "win32" and _compiler_accepts("-fopenmp") else [])

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": not DEBUG,
    "nonecheck": DEBUG,
    "embedsignature": True,
}

# Kernels whose every loop gains from AVX2 + FMA, measured on an AMD EPYC: _chain
# (bench_chain.py, K = 17, 2 threads: forward-backward 6.2 -> 9.0 M tokens/s, Viterbi 16.5 ->
# 20.0) and _optim (the AdaGrad rows: sqrt and division per weight). _bp and _sparse gain
# nothing: their hot loops are C functions with target_clones already.
V3_MODULES = {"_chain", "_optim"}
V3 = (["-march=x86-64-v3"] if platform.machine().lower() in ("x86_64", "amd64")
      and sys.platform != "win32" and not os.environ.get("FACTOREBM_NO_V3")
      and _compiler_accepts("-march=x86-64-v3", "int main(void){return 0;}\n") else [])

only = {s.strip() for s in os.environ.get("FACTOREBM_BUILD_ONLY", "").split(",") if s.strip()}
extensions = []


def _extension(name, source, flags=()):
    return Extension(
        "factorebm." + name,
        [source],
        include_dirs=["src_cython"],
        # -fno-trapping-math: no kernel reads floating-point exception flags, and without it
        # GCC refuses to if-convert the selects in the batched exp/log loops of _bp.pyx, so
        # on AVX2 (no AVX-512 masking) they ran scalar: 4x slower sum-product BP.
        # -fno-math-errno: nor errno; with it sqrt is a branch to libm for negative input,
        # which kept the AdaGrad row loops of _optim.pyx from vectorizing.
        extra_compile_args=["-O3", "-fno-trapping-math", "-fno-math-errno"] + OPENMP + list(flags),
        extra_link_args=OPENMP,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )


for pyx in sorted((HERE / "src_cython").glob("*.pyx")):
    if only and pyx.stem not in only:
        continue
    extensions.append(_extension(pyx.stem, str(pyx.relative_to(HERE))))
    if not V3:
        # a wide build left by an earlier build would be picked (factorebm._isa) over the
        # portable one just built, and run stale code
        for stale in (HERE / "factorebm").glob(f"{pyx.stem}_v3.*"):
            stale.unlink()
    elif pyx.stem in V3_MODULES:
        # the same source under another module name: a one-line stub that includes it
        stub = HERE / "build" / "v3" / f"{pyx.stem}_v3.pyx"
        stub.parent.mkdir(parents=True, exist_ok=True)
        text = f'include "{pyx.name}"\n'
        if not stub.exists() or stub.read_text() != text:
            stub.write_text(text)
        extensions.append(_extension(pyx.stem + "_v3", str(stub.relative_to(HERE)), V3))

class BuildExtWithNotice(build_ext):
    """build_ext that says, before the compiler's silence, that the build takes a while (pip
    shows it with ``-v``; ``python setup.py build_ext`` always)."""

    def run(self):
        print(f"factorebm: compiling the Cython kernels ({len(self.extensions)} modules; a "
              "full build takes about two minutes)", file=sys.stderr, flush=True)
        super().run()


setup(
    ext_modules=cythonize(extensions, compiler_directives=directives,
                          build_dir="build/cython", include_path=["src_cython"]),
    cmdclass={"build_ext": BuildExtWithNotice},
)
