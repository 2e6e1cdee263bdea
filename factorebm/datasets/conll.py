"""Plain column files of the CoNLL shared tasks: chunking (CoNLL-2000), NER (CoNLL-2003).

One token per line, its fields separated by whitespace (``word ... tag``: ``Confidence NN
B-NP``), sentences separated by blank lines; ``-DOCSTART-`` lines (document breaks of
CoNLL-2003) are skipped. The first field is the word; the labels are read from one other
field, counted from 1 as ``cut`` and ``awk`` count them, or from the end with a negative
number (-1, the default, is the last field).
"""
from .conllu import looks_like_conllu
from .textio import gc_paused, read_text

__all__ = ["load_conll"]


def load_conll(path, column=-1):
    """Read words and labels from a whitespace-separated column file.

    Parameters
    ----------
    path : str, os.PathLike or file object
        Plain or gzip-compressed (recognised by its magic bytes); UTF-8.
    column : int, default -1
        The field that holds the labels: 1 is the word, 2 the next field, ...; -1 the last
        field of each line, -2 the one before it.

    Returns
    -------
    sents, tags : list of list of str
        Words and labels, one list per sentence.

    Raises
    ------
    ValueError
        On a column of 0 or not an integer, on a line that has no such column (naming the
        file and the 1-based line number), and on a CoNLL-U file.
    """
    if isinstance(column, bool) or not isinstance(column, int) or column == 0:
        raise ValueError(f"column must be a non-zero integer (1 is the first field, -1 the "
                         f"last), got {column!r}")
    index = column - 1 if column > 0 else column
    need = column if column > 0 else -column
    text, name = read_text(path)
    if "\t" in text and looks_like_conllu(text):
        raise ValueError(f"{name} is CoNLL-U (its first token line has 10 tab-separated "
                         "columns): read it with load_conllu, by column name")
    sents, tags, words, labels = [], [], [], []
    with gc_paused():
        for lineno, line in enumerate(text.split("\n"), 1):
            fields = line.split()
            if not fields or fields[0] == "-DOCSTART-":
                if words:
                    sents.append(words)
                    tags.append(labels)
                    words, labels = [], []
                continue
            if len(fields) < need or (column < 0 and len(fields) < 2):
                what = f"column {column}" if column > 0 else f"column {column} (from the end)"
                raise ValueError(f"{name}:{lineno}: no {what}: the line has {len(fields)} "
                                 f"field{'s' if len(fields) != 1 else ''}, word first")
            words.append(fields[0])
            labels.append(fields[index])
    if words:
        sents.append(words)
        tags.append(labels)
    return sents, tags
