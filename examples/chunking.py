"""Chunking with span F1: a BIO task built from the dependency trees of UD English EWT.

CoNLL-2000 chunking (base NP, VP and PP chunks) comes from the Penn Treebank, which may not be
redistributed. So this example derives a chunking task of the same kind from the trees of the
bundled UD English EWT (CC BY-SA 4.0, so the derived files are CC BY-SA 4.0 too):

* NP: a noun, proper noun, pronoun or number heading a phrase, with the pre-modifiers to its
  left that hang from it (det, det:predet, amod, nummod, compound, a possessive pronoun,
  and an advmod inside them: "the very old house"), and the flat / fixed parts of a name and
  a possessive 's to its right ("New York", "the company 's"). Compounds and possessors are
  chunks of their own only when they are not inside another: "[the company 's] [chief
  executive]", as CoNLL-2000 cuts them.
* VP: a run of adjacent verbs and auxiliaries, with "to" and "not" between or before them
  ("did not go", "to be taken").
* PP: a preposition (ADP, deprel case) that is not inside an NP.

Everything else is O. The example writes train, dev and test in the plain column format of
CoNLL-2000 (``word UPOS chunk``), then trains and evaluates with the command line::

    factorebm train --train train.txt --dev dev.txt --column 3 --model chunker.npz
    factorebm evaluate --model chunker.npz test.txt --column 3 --metric span-f1

Run:  python examples/chunking.py [--out DIR] [--max-iter N] [--train-sentences N]
"""
import argparse
import os
import subprocess
import sys
import tempfile

import factorebm as fe

NP_HEADS = {"NOUN", "PROPN", "PRON", "NUM"}
LEFT_MODIFIERS = {"det", "det:predet", "amod", "nummod", "compound", "advmod", "nmod:poss"}
RIGHT_PARTS = {"flat", "fixed", "case"}
VERB_GROUP = {"AUX", "VERB"}


def chunk_tags(upos, heads, deprels):
    """BIO chunk tags (NP, VP, PP) of one sentence from its dependency tree.

    Parameters
    ----------
    upos : list of str
    heads : list of int
        The head of each word as a 0-based position, -1 for the root.
    deprels : list of str

    Returns
    -------
    list of str
        ``B-NP``, ``I-VP``, ``O``, ... one per word; chunks never overlap.
    """
    n = len(upos)
    chunk = [None] * n          # (type, start) of the chunk holding each word

    def inside(j, start, stop):
        return start <= heads[j] < stop

    for h in range(n):
        if upos[h] not in NP_HEADS or chunk[h] is not None:
            continue
        if deprels[h] in ("compound", "flat", "fixed") and heads[h] > h:
            continue        # a modifier of the noun to its right, inside that one's chunk
        if (upos[h] == "NUM" and deprels[h] == "nummod") or (
                deprels[h] == "nmod:poss" and upos[h] == "PRON" and heads[h] > h):
            continue        # a number or possessive pronoun inside the next noun's chunk
        start, stop = h, h + 1
        while start > 0 and chunk[start - 1] is None and inside(start - 1, start, stop):
            j = start - 1
            poss_pronoun = deprels[j] == "nmod:poss" and upos[j] in ("PRON", "DET")
            if deprels[j] not in LEFT_MODIFIERS or (deprels[j] == "nmod:poss"
                                                    and not poss_pronoun):
                break
            start = j
        while stop < n and chunk[stop] is None and heads[stop] in range(start, stop) \
                and deprels[stop] in RIGHT_PARTS:
            if deprels[stop] == "case" and not (deprels[h] == "nmod:poss"
                                                and upos[stop] == "PART"):
                break       # only a possessive 's, not a postposition
            stop += 1
        for j in range(start, stop):
            chunk[j] = ("NP", start)
    t = 0
    while t < n:
        if chunk[t] is None and upos[t] in VERB_GROUP | {"PART"}:
            stop = t
            while stop < n and chunk[stop] is None and (
                    upos[stop] in VERB_GROUP
                    or (upos[stop] == "PART" and deprels[stop] in ("mark", "advmod"))
                    or (upos[stop] == "ADV" and deprels[stop] == "advmod" and stop > t)):
                stop += 1
            # a group holds a verb or auxiliary and ends with one
            while stop > t and upos[stop - 1] not in VERB_GROUP:
                stop -= 1
            if stop > t:
                for j in range(t, stop):
                    chunk[j] = ("VP", t)
                t = stop
                continue
        if chunk[t] is None and upos[t] == "ADP" and deprels[t] == "case":
            chunk[t] = ("PP", t)
        t += 1
    return ["O" if c is None else ("B-" if c[1] == j else "I-") + c[0]
            for j, c in enumerate(chunk)]


def ewt_chunks(split):
    """Words, UPOS and chunk tags of every sentence of a bundled EWT split."""
    out = []
    for sentence in fe.datasets.read_conllu(fe.datasets.ud_english_ewt_path(split)):
        words = sentence.words
        if not words:
            continue
        forms = [w[1] for w in words]
        upos = [w[3] for w in words]
        heads = [int(w[6]) - 1 if w[6].isdigit() else -1 for w in words]
        deprels = [w[7] for w in words]
        out.append((forms, upos, chunk_tags(upos, heads, deprels)))
    return out


def write_columns(sentences, path):
    """``word UPOS chunk`` lines, a blank line after each sentence (CoNLL-2000's layout)."""
    with open(path, "w", encoding="utf-8") as fh:
        for forms, upos, tags in sentences:
            fh.writelines(f"{w} {p} {t}\n" for w, p, t in zip(forms, upos, tags))
            fh.write("\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="folder for the data files and the model (default: a "
                                  "temporary one)")
    ap.add_argument("--max-iter", type=int, default=4, help="training epochs")
    ap.add_argument("--train-sentences", type=int, help="use only this many (default: all)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or tmp
        os.makedirs(out, exist_ok=True)
        paths = {}
        for split in ("train", "dev", "test"):
            sentences = ewt_chunks(split)
            if split == "train" and args.train_sentences:
                sentences = sentences[:args.train_sentences]
            paths[split] = os.path.join(out, f"ewt-chunks-{split}.txt")
            write_columns(sentences, paths[split])
            n_chunks = sum(t.startswith("B-") for _, _, ts in sentences for t in ts)
            print(f"{split}: {len(sentences)} sentences, {n_chunks} chunks -> {paths[split]}")
        model = os.path.join(out, "chunker.npz")
        commands = [
            ["train", "--train", paths["train"], "--dev", paths["dev"], "--column", "3",
             "--max-iter", str(args.max_iter), "--model", model, "--quiet"],
            ["evaluate", "--model", model, paths["test"], "--column", "3", "--metric",
             "span-f1"],
        ]
        for command in commands:
            print("$ factorebm " + " ".join(command), flush=True)
            r = subprocess.run([sys.executable, "-m", "factorebm", *command])
            if r.returncode:
                return r.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
