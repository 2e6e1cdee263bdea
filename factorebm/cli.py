"""The ``factorebm`` command line: train, evaluate and run a part-of-speech tagger.

    factorebm train --model PATH [--train FILE] [--dev FILE] [--test FILE] [--loss NAME]
                    [--column UPOS|N] [--plot IMAGE] [--quiet] ...
    factorebm evaluate --model PATH [FILE] [--metric accuracy|span-f1] [--column UPOS|N]
                       [--json] [--threads N]
    factorebm tag --model PATH [FILE|-] [--format auto|conllu|text] [--output FILE] [--threads N]
    factorebm --version
    factorebm tag --model PATH FILE... -o OUTDIR [--scheduler ADDRESS|local[:N]]

``--scheduler`` trains or tags on a Dask cluster (``pip install factorebm[dask]``).

``python -m factorebm`` is the same command line. With no data files, ``train`` uses the
bundled UD English EWT (train; dev and test are reported) and ``evaluate`` the bundled EWT test
split. Errors print one line and exit with status 1; a closed output pipe
(``factorebm tag ... | head``) ends quietly with status 141, as a program killed by SIGPIPE does.
"""
import argparse
import json
import os
import sys
import time

from . import __version__, datasets
from .checks import FRONT_ENDS
from .modelio import write_atomic
from .tagger import (DECODES, OPTIMIZERS, TAGGER_LOSSES, SequenceTagger, comments_only,
                     tag_document)

DESCRIPTION = __doc__.splitlines()[0].replace("``", "")     # --help shows no RST markup
EXIT_BROKEN_PIPE = 128 + 13     # the shell's status for a process killed by SIGPIPE
# SequenceTagger parameter -> the option that sets it, for error messages
_OPTIONS = {"l1": "--l1", "l2": "--l2", "max_iter": "--max-iter", "batch_size": "--batch-size",
            "learning_rate": "--learning-rate", "min_count": "--min-count",
            "n_substates": "--substates", "n_threads": "--threads", "optimizer": "--optimizer",
            "loss": "--loss", "front_end": "--front-end", "ensemble": "--ensemble"}


def _load_gold(path, column="UPOS"):
    """Forms and gold labels of a data file: CoNLL-U when ``column`` names a column (UPOS,
    XPOS, ...), a plain file of whitespace-separated columns (word ... tag) when it is a
    number; refuse one with nothing to train or score."""
    number = _column_number(column)
    if number is None:
        try:
            sents, tags = datasets.load_conllu(path, column=column)
        except datasets.ConlluSyntaxError as exc:
            raise ValueError(f"{exc} (--column {column} reads CoNLL-U; for a file of "
                             "whitespace-separated columns give the tag's column number, "
                             "such as --column 2)") from None
    else:
        sents, tags = datasets.load_conll(path, column=number)
    if not any(sents):
        raise ValueError(f"{path}: zero tokens (no sentence with a word line)")
    if all(t == "_" for ts in tags for t in ts):
        what, where = (column, f"{column} column") if number is None else (
            f"column {number}", f"column {number}")
        raise ValueError(f"no gold {what} tags in {path} (its {where} is all '_')")
    return sents, tags


def _column_number(column):
    """The number of a ``--column`` given as one, else None (a CoNLL-U column name)."""
    try:
        return int(column)
    except ValueError:
        return None


def _check_model_target(path, option="--model", example="model.npz"):
    """Fail before training, not after, when the model file (or ``option``'s file) cannot be
    written at ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"{option} {path}: is a directory; give a file name such as "
                         f"{os.path.join(path, example)}")
    if not os.path.exists(folder):
        raise ValueError(f"{option} {path}: folder {folder} does not exist")
    if not os.path.isdir(folder):
        raise ValueError(f"{option} {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path}: folder {folder} is not writable")


def _load_model(args):
    """The tagger of ``--model``, with ``--threads`` (when given) replacing the saved setting."""
    overrides = {} if args.threads is None else {"n_threads": args.threads}
    if getattr(args, "decode", None) is not None:
        overrides["decode"] = args.decode
    return SequenceTagger.load(args.model, **overrides)


def _new_tagger(args):
    """The SequenceTagger the train options describe; a bad value is refused here, before any
    data is read, in the words of the option that gave it."""
    params = {"loss": args.loss, "verbose": not args.quiet, "n_threads": args.threads}
    for name in ("optimizer", "l1", "l2", "max_iter", "batch_size", "learning_rate", "min_count",
                 "n_substates", "front_end", "decode", "ensemble"):
        value = getattr(args, name)
        if value is not None:
            params[name] = value
    try:
        return SequenceTagger(**params)
    except ValueError as exc:
        msg = str(exc)
        name = msg.split(" ", 1)[0]
        if name in _OPTIONS:
            msg = _OPTIONS[name] + msg[len(name):].replace(" must be None or ", " must be ", 1)
        raise ValueError(msg) from None


def _cmd_train(args):
    tagger = _new_tagger(args)
    _check_model_target(args.model)
    if args.plot:
        # The target first: a mistyped folder is worth reporting even on a
        # machine that has not installed matplotlib yet.
        _check_model_target(args.plot, "--plot", "curve.png")
        from .plotting import require_matplotlib
        require_matplotlib("--plot")
    if args.scheduler:
        from .distributed import require_dask
        require_dask("--scheduler")         # before the data is read, not after
    bundled = args.train is None
    train_path = args.train or datasets.ud_english_ewt_path("train")
    dev_path = args.dev or (datasets.ud_english_ewt_path("dev") if bundled else None)
    test_path = args.test or (datasets.ud_english_ewt_path("test") if bundled else None)
    t0 = time.perf_counter()
    sents, tags = _load_gold(train_path, args.column)
    dev = _load_gold(dev_path, args.column) if dev_path else None
    test = _load_gold(test_path, args.column) if test_path else None
    with _cluster(args) as client:
        tagger.client = client
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
    if args.plot:
        from .plotting import training_curve
        training_curve(tagger.history_, args.plot,
                       title=f"{os.path.basename(train_path)}, loss {tagger.loss}")
        print(f"training curve (loss{' and dev accuracy' if dev else ''} per epoch) "
              f"written to {args.plot}")
    return 0


def _cmd_evaluate(args):
    from . import metrics
    metric = metrics.get(args.metric)       # an unknown name fails before the model loads
    if metric is metrics.span_f1:
        args.scheme = metrics.check_scheme(args.scheme)     # and an unknown scheme
    tagger = _load_model(args)
    path = args.file or datasets.ud_english_ewt_path("test")
    sents, tags = _load_gold(path, args.column)
    t0 = time.perf_counter()
    pred = tagger.predict(sents)
    dt = time.perf_counter() - t0
    n_tokens = sum(len(s) for s in sents)
    accuracy = metrics.accuracy(tags, pred)
    result = {"file": str(path), "column": args.column, "sentences": len(sents),
              "tokens": n_tokens, "accuracy": accuracy, "seconds": dt,
              "tokens_per_s": n_tokens / dt if dt else None}
    if metric is metrics.span_f1:
        spans = metrics.span_f1(tags, pred, scheme=args.scheme, strict=args.strict)
        result.update({"metric": "span-f1", "scheme": args.scheme, "strict": args.strict},
                      **spans)
    else:
        result["metric"] = "accuracy"
    if args.json:
        print(json.dumps(result))
    elif metric is metrics.span_f1:
        print(f"span F1 {100 * spans['f1']:.2f}% (precision {100 * spans['precision']:.2f}%, "
              f"recall {100 * spans['recall']:.2f}%; {spans['n_gold']} gold spans, "
              f"{spans['n_pred']} predicted, {spans['n_correct']} correct) in {len(sents)} "
              f"sentences of {path}; token accuracy {100 * accuracy:.2f}%")
        width = max(map(len, spans["per_type"]), default=4)
        for name, row in spans["per_type"].items():
            print(f"  {name:<{width}}  F1 {100 * row['f1']:6.2f}%  precision "
                  f"{100 * row['precision']:6.2f}%  recall {100 * row['recall']:6.2f}%  "
                  f"support {row['support']}")
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


def warn_comments_only(name):
    print(f"factorebm tag: warning: {name} has only comment lines, written back untagged; "
          "use --format text to tag it as plain text", file=sys.stderr)


def _cmd_tag(args):
    if args.scheduler or args.more_files:
        return _cmd_tag_files(args)
    from_stdin = args.file in (None, "-")
    # A closed descriptor (``factorebm tag <&-``) leaves sys.stdin / sys.stdout None.
    if from_stdin and sys.stdin is None:
        raise ValueError("standard input is closed; give an input FILE")
    if not args.output and sys.stdout is None:
        raise ValueError("standard output is closed; give --output FILE")
    tagger = _load_model(args)
    # Bytes in and out keep the input's line endings (CRLF stays CRLF) byte for byte.
    source = sys.stdin.buffer if from_stdin else args.file
    document, codes, labels = tag_document(tagger, source, args.format)
    if comments_only(document, args.format):
        name = "<stdin>" if from_stdin else args.file
        warn_comments_only(name)
    if args.output:
        # whole or absent after a crash, as models are; not fsynced: it can be made again
        write_atomic(args.output, lambda out: document.write_codes(out, codes, labels),
                     durable=False)
    else:
        sys.stdout.flush()
        document.write_codes(sys.stdout.buffer, codes, labels)
        sys.stdout.buffer.flush()
    return 0


def _add_column(parser):
    parser.add_argument("--column", default="UPOS",
                        help="where the gold labels are: a CoNLL-U column name (UPOS, the "
                             "default; XPOS, DEPREL, MISC, ...), or the number of the tag's "
                             "column in a file of whitespace-separated columns, word first "
                             "(2, 3, ...; -1 the last), as CoNLL-2000 and 2003 write them")


def _add_decode(parser, default="viterbi"):
    parser.add_argument("--decode", choices=DECODES,
                        help="viterbi: the tags of the best (tags, substates) path; marginal: "
                             "each token's most probable tag, substates summed out (slower, "
                             f"more accurate; default: {default})")


def _add_threads(parser, default="all cores"):
    parser.add_argument("--threads", type=int,
                        help=f"kernel threads, an integer >= 1; more than the cores are clamped "
                             f"to them (default: {default})")


def _add_scheduler(parser, what):
    parser.add_argument("--scheduler", metavar="ADDRESS|local[:N]",
                        help=f"{what} on a Dask cluster: a scheduler address, or local:N for "
                             "N worker processes on this machine (default N: one per core); "
                             "needs pip install factorebm[dask]")


def build_parser():
    p = argparse.ArgumentParser(prog="factorebm", description=DESCRIPTION)
    p.add_argument("--version", action="version", version=f"factorebm {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a tagger (defaults: bundled UD English EWT)",
                       description="Train a tagger on a CoNLL-U file and print dev and test "
                                   "accuracy (defaults: the bundled UD English EWT).")
    t.add_argument("--model", required=True, help="where to write the model (.npz)")
    t.add_argument("--train", help="training CoNLL-U file (default: bundled EWT train)")
    t.add_argument("--dev", help="dev CoNLL-U file reported during training")
    t.add_argument("--test", help="test CoNLL-U file whose accuracy is printed at the end")
    t.add_argument("--loss", default="nll", choices=TAGGER_LOSSES, help="default: nll (a CRF)")
    t.add_argument("--optimizer", choices=OPTIMIZERS,
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
    t.add_argument("--front-end", dest="front_end", choices=FRONT_ENDS,
                   help="what turns words into emission energies: sparse features alone "
                        "(default) or plus a trained character CNN (features+chars)")
    _add_decode(t)
    t.add_argument("--ensemble", type=int, metavar="M",
                   help="train M models from different random starts and tag with the "
                        "average of their tag marginals (default: 1; M times the training "
                        "and tagging time and the model size, for about +0.4 point on EWT "
                        "with --substates 3 --ensemble 4)")
    _add_column(t)
    _add_threads(t)
    _add_scheduler(t, "train")
    t.add_argument("--quiet", action="store_true", help="no progress lines")
    t.add_argument("--plot", metavar="IMAGE",
                   help="save the training curve (loss and dev accuracy per epoch) to this "
                        "image, e.g. curve.png; needs matplotlib (pip install "
                        "'factorebm[plot]')")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("evaluate", help="token accuracy or span F1 of a model on a labelled file",
                       description="Token accuracy or span F1 (chunks, named entities) of a "
                                   "model on a file with gold labels: CoNLL-U (gold UPOS by "
                                   "default) or whitespace-separated columns.")
    e.add_argument("--model", required=True)
    e.add_argument("file", nargs="?", help="data file (default: bundled EWT test)")
    e.add_argument("--metric", default="accuracy",
                   help="accuracy (of tokens, the default) or span-f1 (of labelled spans, "
                        "as the CoNLL evaluation script conlleval counts them)")
    e.add_argument("--scheme", default="BIO",
                   help="tag scheme of span-f1: BIO (B-X, I-X, O; the default) or BIOES "
                        "(also E-X, S-X)")
    e.add_argument("--strict", action="store_true",
                   help="span-f1 counts well-formed spans only (an I-X without its B-X "
                        "starts no span; by default it starts one, as in conlleval)")
    _add_decode(e, "the model's saved setting")
    _add_column(e)
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
    _add_decode(g, "the model's saved setting")
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
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"--threads must be an integer >= 1 (default: all cores), got "
                             f"{args.threads}")
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
    from .__main__ import run
    run()
