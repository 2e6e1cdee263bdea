"""The ``factorebm`` command line: train, evaluate and run a part-of-speech tagger.

    factorebm train --model PATH [--train FILE] [--dev FILE] [--test FILE] [--loss NAME] ...
    factorebm evaluate --model PATH [FILE] [--json]
    factorebm tag --model PATH [FILE|-] [--format auto|conllu|text] [--output FILE]

With no data files, ``train`` uses the bundled UD English EWT (train; dev and test are reported)
and ``evaluate`` the bundled EWT test split. Errors print one line and exit with status 1.
"""
import argparse
import json
import sys
import time

from . import datasets
from .tagger import TAGGER_LOSSES, SequenceTagger


def _load(path):
    return datasets.load_conllu(path)


def _cmd_train(args):
    bundled = args.train is None
    train_path = args.train or datasets.ud_english_ewt_path("train")
    dev_path = args.dev or (datasets.ud_english_ewt_path("dev") if bundled else None)
    test_path = args.test or (datasets.ud_english_ewt_path("test") if bundled else None)
    t0 = time.perf_counter()
    sents, tags = _load(train_path)
    dev = _load(dev_path) if dev_path else None
    params = {"loss": args.loss, "verbose": not args.quiet, "n_threads": args.threads}
    for name in ("optimizer", "l1", "l2", "max_iter", "batch_size", "learning_rate", "min_count"):
        value = getattr(args, name)
        if value is not None:
            params[name] = value
    tagger = SequenceTagger(**params)
    tagger.fit(sents, tags, dev=dev)
    tagger.save(args.model)
    train_s = time.perf_counter() - t0
    n_tokens = sum(len(s) for s in sents)
    print(f"trained on {len(sents)} sentences ({n_tokens} tokens) from {train_path} "
          f"in {train_s:.1f} s; model written to {args.model}")
    if dev is not None:
        print(f"dev accuracy:  {100 * tagger.score(*dev):.2f}%  ({dev_path})")
    if test_path:
        print(f"test accuracy: {100 * tagger.score(*_load(test_path)):.2f}%  ({test_path})")
    return 0


def _cmd_evaluate(args):
    tagger = SequenceTagger.load(args.model)
    path = args.file or datasets.ud_english_ewt_path("test")
    sents, tags = _load(path)
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


def _cmd_tag(args):
    tagger = SequenceTagger.load(args.model)
    # Bytes in and out keep the input's line endings (CRLF stays CRLF) byte for byte.
    source = sys.stdin.buffer if args.file in (None, "-") else args.file
    sentences = datasets.read_sentences(source, format=args.format)
    tags = tagger.predict([s.forms for s in sentences])
    if args.output:
        with open(args.output, "wb") as out:
            datasets.write_conllu(sentences, out, upos=tags)
    else:
        sys.stdout.flush()
        datasets.write_conllu(sentences, sys.stdout.buffer, upos=tags)
        sys.stdout.buffer.flush()
    return 0


def build_parser():
    p = argparse.ArgumentParser(prog="factorebm", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a tagger (defaults: bundled UD English EWT)")
    t.add_argument("--model", required=True, help="where to write the model (.npz)")
    t.add_argument("--train", help="training CoNLL-U file (default: bundled EWT train)")
    t.add_argument("--dev", help="dev CoNLL-U file reported during training")
    t.add_argument("--test", help="test CoNLL-U file whose accuracy is printed at the end")
    t.add_argument("--loss", default="nll", choices=TAGGER_LOSSES)
    t.add_argument("--optimizer", choices=["lbfgs", "sgd", "adagrad", "perceptron"])
    t.add_argument("--l1", type=float)
    t.add_argument("--l2", type=float)
    t.add_argument("--max-iter", type=int, dest="max_iter", help="L-BFGS iterations or epochs")
    t.add_argument("--batch-size", type=int, dest="batch_size")
    t.add_argument("--learning-rate", type=float, dest="learning_rate")
    t.add_argument("--min-count", type=int, dest="min_count")
    t.add_argument("--threads", type=int, help="kernel threads (default: all cores)")
    t.add_argument("--quiet", action="store_true", help="no progress lines")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("evaluate", help="token accuracy of a model on a CoNLL-U file")
    e.add_argument("--model", required=True)
    e.add_argument("file", nargs="?", help="CoNLL-U file (default: bundled EWT test)")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.set_defaults(func=_cmd_evaluate)

    g = sub.add_parser("tag", help="tag CoNLL-U or plain text; writes CoNLL-U with UPOS filled")
    g.add_argument("--model", required=True)
    g.add_argument("file", nargs="?", default="-", help="input file, or - for stdin (default)")
    g.add_argument("--format", choices=["auto", "conllu", "text"], default="auto",
                   help="input format; text is one whitespace-tokenized sentence per line")
    g.add_argument("--output", "-o", help="output file (default: stdout)")
    g.set_defaults(func=_cmd_tag)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, KeyError, OSError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"factorebm {args.command}: error: {msg}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        print("factorebm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
