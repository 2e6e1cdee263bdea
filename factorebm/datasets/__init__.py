"""Data for sequence tagging: CoNLL-U reading and writing, and the bundled UD English EWT.

The Universal Dependencies English Web Treebank (UD_English-EWT, CC BY-SA 4.0; see
``data/ud-english-ewt/LICENSE.txt`` and ``SOURCE.md``) ships with the package as gzipped
CoNLL-U, split into train (12,544 sentences, 204,577 words), dev and test.
"""
import os

from .conll import load_conll
from .conllu import (COLUMNS, ConlluDocument, ConlluSyntaxError, Sentence, column_index,
                     load_conllu, looks_like_conllu, read_conllu, read_document, read_sentences,
                     sentences_from_text, write_conllu)

__all__ = [
    "load_conllu", "read_conllu", "write_conllu", "read_sentences", "sentences_from_text",
    "looks_like_conllu", "Sentence", "load_ud_english_ewt", "ud_english_ewt_path",
    "UD_ENGLISH_EWT_SPLITS", "ConlluSyntaxError", "ConlluDocument", "read_document",
    "column_index", "COLUMNS", "load_conll",
]

UD_ENGLISH_EWT_SPLITS = ("train", "dev", "test")
_EWT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "ud-english-ewt")


def ud_english_ewt_path(split):
    """Path of the bundled UD English EWT file for ``split`` ("train", "dev" or "test").

    Returns
    -------
    str
        Absolute path of ``en_ewt-ud-{split}.conllu.gz`` inside the installed package.
    """
    if split not in UD_ENGLISH_EWT_SPLITS:
        raise ValueError(f"split must be one of 'train', 'dev', 'test'; got {split!r}")
    path = os.path.join(_EWT_DIR, f"en_ewt-ud-{split}.conllu.gz")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"bundled UD English EWT file missing: {path} "
                                "(is the package installed with its data files?)")
    return path


def load_ud_english_ewt(split):
    """Word forms and UPOS tags of one split of the bundled UD English EWT.

    Parameters
    ----------
    split : {"train", "dev", "test"}

    Returns
    -------
    sents, tags : list of list of str
        As :func:`load_conllu`: forms and UPOS tags, one list per sentence.
    """
    return load_conllu(ud_english_ewt_path(split))
