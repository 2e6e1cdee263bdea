"""Default tagger training on UD English EWT with 1 thread and with every core.

Trains ``fe.SequenceTagger()`` (its defaults: sparse features, NLL, AdaGrad mini-batches) on the
bundled EWT train split, alternately with ``n_threads=1`` and ``n_threads=None`` (all cores),
each run in a fresh child process so that no cache or warm thread pool is shared. Reports per
setting the median wall time, the median CPU time (all threads together: the gap to wall time
is what the extra threads cost), dev accuracy, and the wall-time ratio.

    python benchmarks/bench_train_threads.py [--repeats 5]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

from _machine import describe  # noqa: E402  (benchmarks/_machine.py)

CHILD = r"""
import json, resource, sys, time
import factorebm as fe
train = fe.datasets.load_ud_english_ewt("train")
dev = fe.datasets.load_ud_english_ewt("dev")
n_threads = None if sys.argv[1] == "all" else int(sys.argv[1])
r0 = resource.getrusage(resource.RUSAGE_SELF)
t0 = time.perf_counter()
tagger = fe.SequenceTagger(n_threads=n_threads, verbose=False).fit(*train)
wall = time.perf_counter() - t0
r1 = resource.getrusage(resource.RUSAGE_SELF)
cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
print(json.dumps({"wall": wall, "cpu": cpu, "dev": tagger.score(*dev)}))
"""


def run(setting):
    out = subprocess.run([sys.executable, "-c", CHILD, setting], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print(describe())
    settings = ["1", "all"]
    runs = {s: [] for s in settings}
    for _ in range(args.repeats):           # alternate, so that drift hits both alike
        for s in settings:
            runs[s].append(run(s))
    med = {}
    for s in settings:
        wall = statistics.median(r["wall"] for r in runs[s])
        cpu = statistics.median(r["cpu"] for r in runs[s])
        med[s] = wall
        print(f"n_threads={'None (%d cores)' % os.cpu_count() if s == 'all' else s:<16} "
              f"wall {wall:6.2f} s   cpu {cpu:6.2f} s   dev {runs[s][0]['dev']:.4f}   "
              f"(walls: {', '.join('%.2f' % r['wall'] for r in runs[s])})")
    print(f"speed-up of all cores over one: {med['1'] / med['all']:.2f}x")


if __name__ == "__main__":
    main()
