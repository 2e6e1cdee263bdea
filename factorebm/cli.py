"""The ``factorebm`` command line: train, evaluate and run a part-of-speech tagger.

    factorebm train --model PATH [--train FILE] [--dev FILE] [--test FILE] [--loss NAME] ...
    factorebm evaluate --model PATH [FILE] [--json] [--threads N]
    factorebm tag --model PATH [FILE|-] [--format auto|conllu|text] [--output FILE] [--threads N]
    factorebm tag --model PATH FILE... -o OUTDIR [--scheduler ADDRESS|local[:N]]

``--scheduler`` trains or tags on a Dask cluster (``pip install factorebm[dask]``).

With no data files, ``train`` uses the bundled UD English EWT (train; dev and test are reported)
and ``evaluate`` the bundled EWT test split. Errors print one line and exit with status 1; a
closed output pipe (``factorebm tag ... | head``) ends quietly with status 141, as a program
killed by SIGPIPE does.
"""
import argparse
import json
import os
import sys
import time

from . import datasets
from .tagger import TAGGER_LOSSES, SequenceTagger

DESCRIPTION = __doc__.splitlines()[0].replace("``", "")     # --help shows no RST markup
EXIT_BROKEN_PIPE = 128 + 13     # the shell's status for a process killed by SIGPIPE


def _load_gold(path):
    """Forms and gold UPOS tags of a CoNLL-U file; refuse one with nothing to train or score."""
    sents, tags = datasets.load_conllu(path)
    if not any(sents):
        raise ValueError(f"{path}: zero tokens (no sentence with a word line)")
    if all(t == "_" for ts in tags for t in ts):
        raise ValueError(f"no gold UPOS tags in {path} (its UPOS column is all '_')")
    return sents, tags


def _check_model_target(path):
    """Fail before training, not after, when the model file cannot be written at ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"--model {path}: is a directory; give a file name such as "
                         f"{os.path.join(path, 'model.npz')}")
    if not os.path.exists(folder):
        raise ValueError(f"--model {path}: folder {folder} does not exist")
    if not os.path.isdir(folder):
        raise ValueError(f"--model {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"--model {path}: folder {folder} is not writable")


def _load_model(args):
    """The tagger of ``--model``, with ``--threads`` (when given) replacing the saved setting."""
    overrides = {} if args.threads is None else {"n_threads": args.threads}
    return SequenceTagger.load(args.model, **overrides)


def _cmd_train(args):
    _check_model_target(args.model)
    if args.scheduler:
        from .distributed import require_dask
        require_dask("--scheduler")         # before the data is read, not after
    bundled = args.train is None
    train_path = args.train or datasets.ud_english_ewt_path("train")
    dev_path = args.dev or (datasets.ud_english_ewt_path("dev") if bundled else None)
    test_path = args.test or (datasets.ud_english_ewt_path("test") if bundled else None)
    t0 = time.perf_counter()
    sents, tags = _load_gold(train_path)
    dev = _load_gold(dev_path) if dev_path else None
    test = _load_gold(test_path) if test_path else None
    params = {"loss": args.loss, "verbose": not args.quiet, "n_threads": args.threads}
    for name in ("optimizer", "l1", "l2", "max_iter", "batch_size", "learning_rate", "min_count",
                 "n_substates"):
        value = getattr(args, name)
        if value is not None:
            params[name] = value
    with _cluster(args) as client:
        tagger = SequenceTagger(**params, client=client)
        tagger.fit(sents, tags, dev=dev)
    tagger.client = None
    tagger.save(args.model)
    train_s = time.perf_counter() - t0
    n_tokens = sum(len(s) for s in sents)
    print(f"trained on {len(sents)} sentences ({n_tokens} tokens) from {train_path} "
          f"in {train_s:.1f} s; model written to {args.model}")
    if dev is not None:
        print(f"dev accuracy:  {100 * tagger.score(*dev):.2f}%  ({dev_path})")
    if test is not None:
        print(f"test accuracy: {100 * tagger.score(*test):.2f}%  ({test_path})")
    return 0


def _cmd_evaluate(args):
    tagger = _load_model(args)
    path = args.file or datasets.ud_english_ewt_path("test")
    sents, tags = _load_gold(path)
    t0 = time.perf_counter()
    accuracy = tagger.score(sents, tags)
    dt = time.perf_counter() - t0
    n_tokens = sum(len(s) for s in sents)
    result = {"file": str(path), "sentences": len(sents), "tokens": n_tokens,
              "accuracy": accuracy, "seconds": dt, "tokens_per_s": n_tokens / dt if dt else None}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"token accuracy {100 * accuracy:.2f}% on {n_tokens} tokens in {len(sents)} "
              f"sentences of {path}")
    return 0


def _cluster(args):
    """A Dask client for ``--scheduler`` (closed on exit), or a context giving None."""
    import contextlib
    if not args.scheduler:
        return contextlib.nullcontext()
    from .distributed import connect
    return connect(args.scheduler)


def _cmd_tag_files(args):
    """``tag FILE... -o OUTDIR``: every file tagged into OUTDIR, across a cluster with
    ``--scheduler``."""
    from .distributed import tag_files
    files = [args.file] + args.more_files
    if not args.output:
        raise ValueError("tagging several files or with --scheduler writes one output per "
                         "input file: give the output folder with -o OUTDIR")
    if "-" in files:
        raise ValueError("give the input files by name: stdin (-) is tagged alone, without "
                         "--scheduler")
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise ValueError(f"-o {args.output}: not a folder (with several files or "
                         "--scheduler, -o names the output folder)")
    tagger = _load_model(args)
    os.makedirs(args.output, exist_ok=True)
    with _cluster(args) as client:
        outputs = tag_files(tagger, files, args.output, format=args.format, client=client)
    print(f"tagged {len(outputs)} files into {args.output}", file=sys.stderr)
    return 0


def _cmd_tag(args):
    if args.scheduler or args.more_files:
        return _cmd_tag_files(args)
    tagger = _load_model(args)
    # Bytes in and out keep the input's line endings (CRLF stays CRLF) byte for byte.
    source = sys.stdin.buffer if args.file in (None, "-") else args.file
    try:
        sentences = datasets.read_sentences(source, format=args.format)
    except datasets.ConlluSyntaxError as exc:
        if args.format != "auto":
            raise
        raise ValueError(f"{exc} (read as CoNLL-U because its first token line has 10 "
                         "tab-separated columns; use --format text for plain text)") from None
    forms = [s.forms for s in sentences]
    if args.format == "auto" and not any(forms) and any(s.comments for s in sentences):
        name = "<stdin>" if source is sys.stdin.buffer else args.file
        print(f"factorebm tag: warning: {name} has only comment lines, written back untagged; "
              "use --format text to tag it as plain text", file=sys.stderr)
    tags = tagger.predict(forms)
    if args.output:
        with open(args.output, "wb") as out:
            datasets.write_conllu(sentences, out, upos=tags)
    else:
        sys.stdout.flush()
        datasets.write_conllu(sentences, sys.stdout.buffer, upos=tags)
        sys.stdout.buffer.flush()
    return 0


def _add_threads(parser, default="all cores"):
    parser.add_argument("--threads", type=int, help=f"kernel threads (default: {default})")


def _add_scheduler(parser, what):
    parser.add_argument("--scheduler", metavar="ADDRESS|local[:N]",
                        help=f"{what} on a Dask cluster: a scheduler address, or local:N for "
                             "N worker processes on this machine (default N: one per core); "
                             "needs pip install factorebm[dask]")


def build_parser():
    p = argparse.ArgumentParser(prog="factorebm", description=DESCRIPTION)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a tagger (defaults: bundled UD English EWT)",
                       description="Train a tagger on a CoNLL-U file and print dev and test "
                                   "accuracy (defaults: the bundled UD English EWT).")
    t.add_argument("--model", required=True, help="where to write the model (.npz)")
    t.add_argument("--train", help="training CoNLL-U file (default: bundled EWT train)")
    t.add_argument("--dev", help="dev CoNLL-U file reported during training")
    t.add_argument("--test", help="test CoNLL-U file whose accuracy is printed at the end")
    t.add_argument("--loss", default="nll", choices=TAGGER_LOSSES, help="default: nll (a CRF)")
    t.add_argument("--optimizer", choices=["lbfgs", "sgd", "adagrad", "perceptron"],
                   help="default: perceptron for --loss perceptron, adagrad otherwise; "
                        "lbfgs takes only --loss nll")
    t.add_argument("--l1", type=float, help="L1 regularization strength (default: 0)")
    t.add_argument("--l2", type=float, help="L2 regularization strength (default: 1e-5 "
                                            "with adagrad, 1e-4 with lbfgs and sgd, 0 with "
                                            "the perceptron)")
    t.add_argument("--max-iter", type=int, dest="max_iter",
                   help="epochs (default: 4 with adagrad, 6 with sgd and the perceptron), "
                        "or L-BFGS iterations (default: 100)")
    t.add_argument("--batch-size", type=int, dest="batch_size",
                   help="sentences per mini-batch (default: 4 for the perceptron, 32 otherwise)")
    t.add_argument("--learning-rate", type=float, dest="learning_rate",
                   help="step size (default: 0.2 with adagrad, 0.1 with sgd, 1 with the "
                        "perceptron)")
    t.add_argument("--min-count", type=int, dest="min_count",
                   help="keep features seen at least this often (default: 2)")
    t.add_argument("--substates", type=int, dest="n_substates",
                   help="latent substates per tag (default: 2; 1 is a plain CRF, 3 is more "
                        "accurate and slower)")
    _add_threads(t)
    _add_scheduler(t, "train")
    t.add_argument("--quiet", action="store_true", help="no progress lines")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("evaluate", help="token accuracy of a model on a CoNLL-U file",
                       description="Token accuracy of a model on a CoNLL-U file with gold UPOS.")
    e.add_argument("--model", required=True)
    e.add_argument("file", nargs="?", help="CoNLL-U file (default: bundled EWT test)")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    _add_threads(e, default="the model's saved setting, else all cores")
    e.set_defaults(func=_cmd_evaluate)

    g = sub.add_parser("tag", help="tag CoNLL-U or plain text; writes CoNLL-U with UPOS filled",
                       description="Tag CoNLL-U or plain text and write CoNLL-U with the UPOS "
                                   "column filled; every other byte of CoNLL-U input is kept.")
    g.add_argument("--model", required=True)
    g.add_argument("file", nargs="?", default="-", help="input file, or - for stdin (default)")
    g.add_argument("more_files", nargs="*", metavar="FILE",
                   help="more input files: each is written to OUTDIR (-o) under its own name, "
                        "ending .conllu")
    g.add_argument("--format", choices=["auto", "conllu", "text"], default="auto",
                   help="input format (default: auto, CoNLL-U when the first line that is not "
                        "blank or a # comment has 10 tab-separated columns); text is one "
                        "whitespace-tokenized sentence per line, blank lines skipped, and "
                        "'# sent_id = N' gives the input line number N")
    g.add_argument("--output", "-o", help="output file (default: stdout); the output folder "
                                            "with several files or --scheduler")
    _add_threads(g, default="the model's saved setting, else all cores")
    _add_scheduler(g, "tag the files")
    g.set_defaults(func=_cmd_tag)
    return p


def _quiet_broken_pipe():
    """After EPIPE on stdout: send what is still buffered to devnull (so the interpreter's
    final flush raises nothing) and exit as a program killed by SIGPIPE does. This is the
    recipe of the Python docs (signal module, "Note on SIGPIPE") with the shell's status."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:     # an OSError: handled before the clause below
        return _quiet_broken_pipe()
    except (ValueError, KeyError, OSError, ImportError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"factorebm {args.command}: error: {msg}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("factorebm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
