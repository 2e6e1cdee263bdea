"""The ``factorebm`` program (and ``python -m factorebm``): :func:`factorebm.cli.main` run as
a process of its own, with the two process-wide settings that importing the library must not
make."""
import atexit
import os
import sys

# Commands that load no learner: no BLAS call in them is worth a team of threads.
_TAGGING_COMMANDS = ("tag", "evaluate")


def run():
    """Run the command line, then exit without tearing the interpreter down.

    - For ``tag`` and ``evaluate``, which make no BLAS call worth a thread (their kernels
      run on OpenMP threads of their own), OpenBLAS starts no threads
      (``OPENBLAS_NUM_THREADS=1``), and any the user asks for sleep as soon as they are idle
      (``OPENBLAS_THREAD_TIMEOUT``), each unless set already. Otherwise numpy's import starts
      a thread per core, which spin for about 2^28 cycles: on two cores, 70 ms of CPU time
      (twice the import's own) that tagging one sentence would share with them.
    - The teardown frees every module and object and joins the BLAS threads, tens of
      milliseconds once ``main`` has returned with its files written and closed. Exit
      handlers (:mod:`atexit`) still run. With other Python threads alive (a Dask
      client's) or standard output that cannot be flushed, the exit is the usual one.
    """
    if sys.argv[1:2] and sys.argv[1] in _TAGGING_COMMANDS:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")   # the library's minimum
    from .cli import main
    status = main()
    if "threading" in sys.modules and sys.modules["threading"].active_count() > 1:
        sys.exit(status)
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except (OSError, ValueError):
        sys.exit(status)        # the usual exit reports what cannot be flushed
    if run_exit_handlers is None:
        sys.exit(status)
    run_exit_handlers()
    os._exit(status or 0)


if __name__ == "__main__":
    run()
