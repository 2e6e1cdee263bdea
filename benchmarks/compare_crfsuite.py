"""factorebm against CRFsuite (python-crfsuite) on UD English EWT, side by side in one run.

Both taggers train on the bundled EWT train split and are evaluated on test. Each phase runs in a
fresh child process (spawned, so nothing is shared) and reports its own wall time and peak
resident memory (``ru_maxrss``), so the figures of one system never include the other's.

CRFsuite gets the standard feature set of the sklearn-crfsuite tutorial style: lowercased word,
suffixes 1-4, prefixes 1-3, shape flags, neighbouring words; L-BFGS, 100 iterations, c1 = 0.05,
c2 = 0.01. factorebm has one row per configuration (``--configs``, default: all three):
``features``, its defaults (``factorebm train``); ``features+chars``, plus the character CNN
(``--front-end features+chars``); ``ensemble``, four models of 3 latent substates per tag
decoded by their averaged tag marginals (``--substates 3 --ensemble 4``).

Tagging speed is measured twice. In process: from a CoNLL-U file, read, extract features,
decode (the model already loaded). End to end, process start included, as a user runs it,
for every configuration's model:
``python -m factorebm tag --model M FILE -o OUT`` on 501,880 tokens of CoNLL-U (the EWT test
split 20 times over), against a small script doing the same with CRFsuite in its own process
(``--crfsuite-tag``: read CoNLL-U in plain Python, tag with python-crfsuite, write CoNLL-U with
the UPOS column replaced), in tokens/s; and the latency of one sentence (the first of EWT test,
as CoNLL-U) from process start to exit. Each command runs once untimed first: the file is then
in the page cache and Python's bytecode compiled, as for an installed package
(PYTHONDONTWRITEBYTECODE is dropped from the children's environment).

Each side is given what favours it: CRFsuite's training process reads the CoNLL-U file with a
plain-Python reader (``read_conllu_plain``), so that its peak memory does not include numpy and
scipy, which factorebm's reader would import (about 45 MiB); its tagging process uses
factorebm's compiled reader, the faster one.

Run:  pip install python-crfsuite && python benchmarks/compare_crfsuite.py [--repeats 3]
      [--configs features features+chars ensemble] [--cli-repeats 5]
"""
import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from _machine import describe  # noqa: E402  (benchmarks/_machine.py)

# EWT test (25,094 words) this many times over: 501,880 tokens for the end-to-end timing
E2E_COPIES = 20

def _peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ----------------------------------------------------------------------------- CRFsuite side
def crf_word_features(sent, i):
    w = sent[i]
    lw = w.lower()
    f = {
        "bias": 1.0,
        "w.lower": lw,
        "w[-4:]": lw[-4:], "w[-3:]": lw[-3:], "w[-2:]": lw[-2:], "w[-1:]": lw[-1:],
        "w[:1]": lw[:1], "w[:2]": lw[:2], "w[:3]": lw[:3],
        "w.isupper": w.isupper(), "w.istitle": w.istitle(), "w.isdigit": w.isdigit(),
        "w.hasdigit": any(c.isdigit() for c in w), "w.hashyphen": "-" in w,
    }
    if i > 0:
        p = sent[i - 1]
        f.update({"-1:w.lower": p.lower(), "-1:w.istitle": p.istitle(), "-1:w.isupper": p.isupper()})
    else:
        f["BOS"] = True
    if i < len(sent) - 1:
        n = sent[i + 1]
        f.update({"+1:w.lower": n.lower(), "+1:w.istitle": n.istitle(), "+1:w.isupper": n.isupper()})
    else:
        f["EOS"] = True
    return f


def crf_sent_features(sent):
    return [crf_word_features(sent, i) for i in range(len(sent))]


def read_conllu_plain(path):
    """FORM and UPOS of the word lines of a gzipped CoNLL-U file, in plain Python (no numpy):
    the same sentences as factorebm.datasets.load_conllu (comments, multiword ranges and empty
    nodes skipped)."""
    import gzip
    sents, tags, forms, upos = [], [], [], []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            line = line.rstrip("\r\n")
            if not line:
                if forms:
                    sents.append(forms)
                    tags.append(upos)
                    forms, upos = [], []
                continue
            if line.startswith("#"):
                continue
            cols = line.split("\t")
            if "-" in cols[0] or "." in cols[0]:
                continue
            forms.append(cols[1])
            upos.append(cols[3])
    if forms:
        sents.append(forms)
        tags.append(upos)
    return sents, tags


def crf_train(model_path, train_path):
    import pycrfsuite
    t0 = time.perf_counter()
    sents, tags = read_conllu_plain(train_path)
    trainer = pycrfsuite.Trainer(verbose=False)
    for s, t in zip(sents, tags):
        trainer.append(crf_sent_features(s), t)
    trainer.set_params({"c1": 0.05, "c2": 0.01, "max_iterations": 100,
                        "feature.possible_transitions": True})
    trainer.train(model_path)
    return {"train_s": time.perf_counter() - t0, "peak_mib": _peak_mib()}


def crf_tag(model_path, conllu_path):
    import pycrfsuite
    import factorebm as fe
    tagger = pycrfsuite.Tagger()
    tagger.open(model_path)
    t0 = time.perf_counter()
    sents, gold = fe.datasets.load_conllu(conllu_path)
    pred = [tagger.tag(crf_sent_features(s)) for s in sents]
    dt = time.perf_counter() - t0
    n = sum(len(s) for s in sents)
    correct = sum(p == g for ps, gs in zip(pred, gold) for p, g in zip(ps, gs))
    return {"tag_s": dt, "tokens": n, "accuracy": correct / n, "peak_mib": _peak_mib()}


def crfsuite_tag_file(model_path, in_path, out_path):
    """What ``factorebm tag`` does, done with CRFsuite in plain Python: read a CoNLL-U file,
    tag the words of each sentence, write the file with their UPOS column replaced and every
    other byte kept. Run as ``compare_crfsuite.py --crfsuite-tag MODEL IN OUT`` (a process of
    its own: nothing but the standard library and pycrfsuite is imported)."""
    import pycrfsuite
    tagger = pycrfsuite.Tagger()
    tagger.open(model_path)
    with open(in_path, "rb") as fh:
        lines = fh.read().decode("utf-8").split("\n")
    words, forms = [], []       # line index and form of each word of the current sentence

    def flush():
        if words:
            for i, tag in zip(words, tagger.tag(crf_sent_features(forms))):
                cols = lines[i].split("\t")
                cols[3] = tag
                lines[i] = "\t".join(cols)
        words.clear()
        forms.clear()

    for i, line in enumerate(lines):
        if not line.strip():
            flush()
        elif line[0] != "#":
            cols = line.split("\t", 2)
            if cols[0].isdigit():
                words.append(i)
                forms.append(cols[1])
    flush()
    with open(out_path, "wb") as fh:
        fh.write("\n".join(lines).encode("utf-8"))


# ----------------------------------------------------------------------------- factorebm side
# factorebm's rows: SequenceTagger settings over its defaults
CONFIGS = {
    "features": {},
    "features+chars": {"front_end": "features+chars"},
    "ensemble": {"n_substates": 3, "ensemble": 4},
}


def fe_train(model_path, train_path, config="features"):
    import factorebm as fe
    t0 = time.perf_counter()
    sents, tags = fe.datasets.load_conllu(train_path)
    tagger = fe.SequenceTagger(verbose=False, **CONFIGS[config])
    tagger.fit(sents, tags)
    tagger.save(model_path)
    return {"train_s": time.perf_counter() - t0, "peak_mib": _peak_mib()}


def fe_tag(model_path, conllu_path):
    import factorebm as fe
    tagger = fe.SequenceTagger.load(model_path)
    t0 = time.perf_counter()
    sents, gold = fe.datasets.load_conllu(conllu_path)
    pred = tagger.predict(sents)
    dt = time.perf_counter() - t0
    n = sum(len(s) for s in sents)
    correct = sum(p == g for ps, gs in zip(pred, gold) for p, g in zip(ps, gs))
    return {"tag_s": dt, "tokens": n, "accuracy": correct / n, "peak_mib": _peak_mib()}


def _child(fn_name, args, conn):
    conn.send(globals()[fn_name](*args))
    conn.close()


def in_child(fn_name, *args):
    """Run one phase in a fresh spawned interpreter; return its dict (timings, peak memory).

    Raises RuntimeError with the child's exit code when it dies before sending its result.
    """
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child, args=(fn_name, args, child))
    p.start()
    # Only the child may hold the write end: with the parent's copy open too, recv() would
    # wait forever for a child that died without sending, instead of seeing end of file.
    child.close()
    try:
        out = parent.recv()
    except EOFError:
        out = None
    finally:
        parent.close()
    p.join()
    if out is None or p.exitcode != 0:
        raise RuntimeError(f"{fn_name} failed in the child process (exit {p.exitcode}; its "
                           "traceback is above)")
    return out


# ----------------------------------------------------------------------------- end to end
def _child_env(tmp):
    """The environment of the timed commands: this factorebm first on the path, and bytecode
    written (an installed package has it compiled), into ``tmp`` rather than the sources."""
    import factorebm
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = os.path.join(tmp, "pycache")
    root = os.path.dirname(os.path.dirname(os.path.abspath(factorebm.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def time_command(command, env, repeats, cwd):
    """Median wall time of a command, process start to exit, after one untimed run (page
    cache, bytecode). RuntimeError with its stderr when it fails."""
    times = []
    for k in range(repeats + 1):
        t0 = time.perf_counter()
        # run in cwd (a folder without a factorebm package): `python -m` looks there first
        r = subprocess.run(command, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True, cwd=cwd)
        dt = time.perf_counter() - t0
        if r.returncode:
            raise RuntimeError(f"{' '.join(command)} failed (exit {r.returncode}): {r.stderr}")
        if k:
            times.append(dt)
    return statistics.median(times)


def end_to_end(tmp, models, repeats):
    """Tokens/s of tagging E2E_COPIES copies of EWT test, and one-sentence latency, from
    process start to exit: ``factorebm tag`` against :func:`crfsuite_tag_file`."""
    import gzip
    with gzip.open(fe_test_path(), "rb") as fh:
        test = fh.read()
    big = os.path.join(tmp, "ewt-test-x20.conllu")
    with open(big, "wb") as fh:
        fh.write(test * E2E_COPIES)
    one = os.path.join(tmp, "one-sentence.conllu")
    with open(one, "wb") as fh:
        fh.write(test[:test.index(b"\n\n") + 2])
    n_tokens = E2E_COPIES * sum(len(s) for s in read_conllu_plain(fe_test_path())[0])
    env = _child_env(tmp)
    out = os.path.join(tmp, "tagged.conllu")
    commands = {
        "crfsuite": lambda src: [sys.executable, os.path.abspath(__file__), "--crfsuite-tag",
                                 models["crfsuite"], src, out],
    }
    for name, path in models.items():       # every factorebm configuration's model
        if name != "crfsuite":
            commands[name] = lambda src, path=path: [
                sys.executable, "-m", "factorebm", "tag", "--model", path, src, "-o", out]
    results = {}
    for name, command in commands.items():
        seconds = time_command(command(big), env, repeats, tmp)
        with open(out, "rb") as fh:
            written = fh.read()
        n_lines = written.count(b"\n")
        if n_lines != test.count(b"\n") * E2E_COPIES:
            raise RuntimeError(f"{name} wrote {n_lines} lines, not the input's")
        latency = time_command(command(one), env, repeats, tmp)
        results[name] = {"e2e_tokens": n_tokens, "e2e_s": seconds,
                         "e2e_tokens_per_s": n_tokens / seconds, "one_sentence_s": latency}
        print(f"{name:>24}: end to end {n_tokens / seconds:,.0f} tokens/s ({n_tokens:,} tokens "
              f"in {seconds:.2f} s, process start included); one sentence "
              f"{latency:.3f} s from process start", flush=True)
    return results


def fe_test_path():
    import factorebm as fe
    return str(fe.datasets.ud_english_ewt_path("test"))


def _check_crfsuite():
    """Fail at once, with the fix, when the optional peer is not installed."""
    try:
        import pycrfsuite  # noqa: F401
    except ImportError:
        return ("python-crfsuite is not installed; this benchmark times it side by side: "
                "pip install python-crfsuite  (or pip install -e '.[bench]')")
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="repeats of the tagging timing")
    ap.add_argument("--train-repeats", type=int, default=1, help="repeats of each training run")
    ap.add_argument("--cli-repeats", type=int, default=5,
                    help="repeats of each end-to-end command (median)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS),
                    help="factorebm configurations, one row each (default: all)")
    ap.add_argument("--crfsuite-tag", nargs=3, metavar=("MODEL", "IN", "OUT"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.crfsuite_tag:
        crfsuite_tag_file(*args.crfsuite_tag)
        return 0
    problem = _check_crfsuite()
    if problem:
        print(f"compare_crfsuite: error: {problem}", file=sys.stderr)
        return 1

    import factorebm as fe
    test_path = str(fe.datasets.ud_english_ewt_path("test"))
    train_path = str(fe.datasets.ud_english_ewt_path("train"))
    # the plain reader CRFsuite trains with must see what factorebm's reader sees
    if read_conllu_plain(train_path) != fe.datasets.load_conllu(train_path):
        raise RuntimeError("read_conllu_plain and factorebm.datasets.load_conllu disagree")
    print(f"machine: {describe()}")
    results = {}
    models = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = [("crfsuite", "crf_train", "crf_tag", os.path.join(tmp, "ewt.crfsuite"), ())]
        for i, config in enumerate(args.configs):
            name = "factorebm" if config == "features" else f"factorebm {config}"
            runs.append((name, "fe_train", "fe_tag", os.path.join(tmp, f"ewt{i}.npz"), (config,)))
        for name, train_fn, tag_fn, path, extra in runs:
            models[name] = path
            trains = [in_child(train_fn, path, train_path, *extra)
                      for _ in range(args.train_repeats)]
            tags = [in_child(tag_fn, path, test_path) for _ in range(args.repeats)]
            results[name] = {
                "train_s": statistics.median(t["train_s"] for t in trains),
                "train_peak_mib": max(t["peak_mib"] for t in trains),
                "test_accuracy": tags[0]["accuracy"],
                "tag_tokens_per_s": statistics.median(t["tokens"] / t["tag_s"] for t in tags),
                "tag_peak_mib": max(t["peak_mib"] for t in tags),
            }
            r = results[name]
            print(f"{name:>24}: test accuracy {100 * r['test_accuracy']:.2f}%  "
                  f"train {r['train_s']:.1f} s (peak {r['train_peak_mib']:.0f} MiB)  "
                  f"tag {r['tag_tokens_per_s']:,.0f} tokens/s in process "
                  f"(peak {r['tag_peak_mib']:.0f} MiB)", flush=True)
        if len(models) > 1:              # end to end: every configuration's model
            for name, row in end_to_end(tmp, models, args.cli_repeats).items():
                results[name].update(row)
    c = results["crfsuite"]
    for name, f in results.items():
        if name == "crfsuite":
            continue
        line = (f"ratios {name} / crfsuite: "
                f"accuracy {100 * (f['test_accuracy'] - c['test_accuracy']):+.2f} points, "
                f"training time x{f['train_s'] / c['train_s']:.2f}, "
                f"tagging speed x{f['tag_tokens_per_s'] / c['tag_tokens_per_s']:.2f}, "
                f"training peak memory x{f['train_peak_mib'] / c['train_peak_mib']:.2f}")
        if "e2e_tokens_per_s" in f:
            line += (f"; end to end tokens/s x{f['e2e_tokens_per_s'] / c['e2e_tokens_per_s']:.2f}"
                     f", one-sentence latency x{f['one_sentence_s'] / c['one_sentence_s']:.2f}")
        print(line)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": describe(), "results": results}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
