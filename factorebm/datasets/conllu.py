"""CoNLL-U reading and writing.

CoNLL-U (https://universaldependencies.org/format.html) stores one token per line in ten
tab-separated columns ``ID FORM LEMMA UPOS XPOS FEATS HEAD DEPREL DEPS MISC``; sentences are
separated by blank lines and may be preceded by ``#`` comment lines. Besides ordinary word lines
(integer ID) a sentence may hold multiword-token ranges (ID ``1-2``) and empty nodes (ID ``1.1``);
neither is a word that gets a part-of-speech tag.

Three readers serve three jobs:

* :func:`load_conllu` is the fast path for training and evaluation: it returns only the word
  forms and their labels (UPOS tags, or any other column), as plain lists of strings.
* :class:`ConlluDocument` (:func:`read_document`) keeps a file as its bytes with the places of
  its word lines, and writes it back with the UPOS column replaced and every other byte as it
  was. This is what ``factorebm tag`` uses to fill in tags while leaving the rest of a user's
  file untouched.
* :func:`read_conllu` keeps everything (all ten columns, comments, multiword ranges, empty nodes,
  blank lines and line endings) in :class:`Sentence` objects, to read or change any column;
  :func:`write_conllu` writes them back byte for byte, optionally with new UPOS tags.

The first two are one compiled scan over the file's bytes (``src_cython/_conllu.pyx``); the
Python parsers here are its slow twins, which accept exactly the same files and name the file
and line of any error (the compiled scan hands every file it refuses to them).

All accept plain or gzip-compressed input; compression is recognised by the gzip magic bytes,
not by the file name. Input must be UTF-8 (a leading byte-order mark is allowed).
"""
import io
import itertools
import os

import numpy as np

from .textio import (BOM, decode_utf8, gc_paused, is_binary, read_bytes, read_text, write_bytes,
                     write_pieces)

__all__ = [
    "Sentence", "load_conllu", "read_conllu", "write_conllu", "sentences_from_text",
    "read_sentences", "looks_like_conllu", "ConlluSyntaxError", "ConlluDocument",
    "read_document", "column_index", "COLUMNS",
]

N_COLUMNS = 10
UPOS_COLUMN = 3
# The column names of the format, in order.
COLUMNS = ("ID", "FORM", "LEMMA", "UPOS", "XPOS", "FEATS", "HEAD", "DEPREL", "DEPS", "MISC")
_BOM_BYTES = BOM.encode("utf-8")
# Words per piece of tagged output (ConlluDocument.write_codes): about 3 MB of EWT's CoNLL-U
_WORDS_PER_PIECE = 65536
# Word IDs as strings, so the "IDs are 1, 2, 3, ..." check is a string comparison, not an int().
_ID_STRINGS = [str(i) for i in range(512)]


# --------------------------------------------------------------------------------------------
# Input


class ConlluSyntaxError(ValueError):
    """A line that breaks the CoNLL-U format; the message starts ``file:line:``."""


def _error(name, lineno, message):
    return ConlluSyntaxError(f"{name}:{lineno}: {message}")


def _check_non_word_id(name, lineno, token_id):
    """Validate a multiword range ``a-b`` or an empty node ``a.b``; raise on anything else."""
    for sep in ("-", "."):
        if sep in token_id:
            left, _, right = token_id.partition(sep)
            if left.isdecimal() and right.isdecimal() and left.isascii() and right.isascii():
                return
            break
    raise _error(name, lineno, f"bad token ID {token_id!r} (expected an integer, a range "
                               "such as 1-2 or an empty node such as 1.1)")


def _check_word_id(name, lineno, token_id, n_words):
    expected = n_words + 1
    if token_id.isdecimal() and token_id.isascii():
        raise _error(name, lineno, f"word ID {token_id} out of sequence: expected {expected} "
                                   "(missing blank line between sentences?)")
    _check_non_word_id(name, lineno, token_id)


def _column_count_error(name, lineno, cols):
    return _error(name, lineno, f"expected {N_COLUMNS} tab-separated columns, found "
                                f"{len(cols)}")


def column_index(column):
    """The 0-based index of a CoNLL-U column given by name (``"UPOS"``, ``"xpos"``, ...).

    Raises
    ------
    ValueError
        For a name that is not one of ``FORM LEMMA UPOS XPOS FEATS HEAD DEPREL DEPS MISC``
        (``ID`` is no label).
    """
    key = column.strip().upper() if isinstance(column, str) else None
    if key not in COLUMNS[1:]:
        raise ValueError(f"unknown CoNLL-U column {column!r}; one of "
                         f"{', '.join(COLUMNS[1:])}")
    return COLUMNS.index(key)


def load_conllu(path, column="UPOS"):
    """Read word forms and their labels (by default UPOS tags) from a CoNLL-U file.

    Parameters
    ----------
    path : str, os.PathLike or file object
        A ``.conllu`` file, plain or gzip-compressed (recognised by its magic bytes), or an open
        file (text or binary).
    column : str, default "UPOS"
        The column that holds the labels: ``FORM``, ``LEMMA``, ``UPOS``, ``XPOS``, ``FEATS``,
        ``HEAD``, ``DEPREL``, ``DEPS`` or ``MISC`` (any case); its whole field is the label.

    Returns
    -------
    sents : list of list of str
        ``sents[i][t]`` is the FORM of word ``t`` of sentence ``i``.
    tags : list of list of str
        ``tags[i][t]`` is its label (``"_"`` where the file leaves it unspecified).

    Comments, multiword-token ranges (``1-2``) and empty nodes (``1.1``) are skipped; a
    sentence without words is dropped. CRLF line endings and a missing final blank line are
    accepted.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        On an unknown column name, or on a malformed line, naming the file and the 1-based
        line number: a column count other than 10, a bad or out-of-sequence ID, an empty FORM
        or label (a :class:`ConlluSyntaxError`), or bytes that are not UTF-8.
    """
    index = column_index(column)
    data, name = read_bytes(path)
    if isinstance(data, str):
        data = _encode_text(data, name)
    with gc_paused():
        # The compiled pass handles well-formed files; it returns None on any line it leaves
        # to the Python parser, which then gives the error naming the line.
        parsed = _fast_parse_forms_and_labels(data, index)
        if parsed is not None:
            return parsed
        text = decode_utf8(data, name)
        return _parse_forms_and_labels(text[1:] if text.startswith(BOM) else text, name,
                                       index)


def _encode_text(text, name):
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{name}: not valid Unicode text ({exc.reason})") from None


def _scan(data, column):
    """The compiled scan of CoNLL-U bytes (BOM skipped): ``(spans, word_offsets, stats)``
    (see ``_conllu.scan_document``), or None when the Python parser must decide."""
    from .._conllu import count_lines, scan_document
    begin = len(_BOM_BYTES) if data.startswith(_BOM_BYTES) else 0
    # room for one word and one sentence per line
    n_lines = count_lines(data, begin)
    spans = np.empty((n_lines, 4), dtype=np.int64)
    word_offsets = np.empty(n_lines + 1, dtype=np.int64)
    stats = np.zeros(4, dtype=np.int64)      # words, sentences, comments, blank lines
    if scan_document(data, begin, column, spans, word_offsets, stats) != 1:
        return None
    return spans[:stats[0]], word_offsets[:stats[1] + 1], stats


def _fast_parse_forms_and_labels(data, column=UPOS_COLUMN):
    """What :func:`_parse_forms_and_labels` gives for the UTF-8 bytes ``data``, or None when
    the Python parser must decide (a malformed line; an empty label)."""
    from .._conllu import document_strings
    scanned = _scan(data, column)
    if scanned is None:
        return None
    spans, word_offsets, stats = scanned
    if np.any(spans[:, 2] == spans[:, 3]):
        return None         # an empty label
    n_sents = int(stats[1])
    return (document_strings(data, spans, word_offsets, n_sents, 0, True),
            document_strings(data, spans, word_offsets, n_sents, 1, True))


def _parse_forms_and_labels(text, name, column=UPOS_COLUMN):
    sents = []
    tags = []
    forms = []
    upos = []
    ids = _ID_STRINGS
    n_ids = len(ids)
    # Split off the columns up to the label only; counting the rest's tabs is cheaper than
    # building more strings per line.
    n_split = min(column + 1, N_COLUMNS - 1)
    n_rest_tabs = N_COLUMNS - 1 - n_split
    last = column == N_COLUMNS - 1
    # One string object per distinct form and tag: a corpus repeats them many times over
    # (EWT train: 204,577 tokens, 20,000 forms, 17 tags), and separate copies would cost
    # several times the memory of the rest of the returned lists.
    shared = {}
    share = shared.setdefault
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line or line == "\r":
            if forms:
                sents.append(forms)
                tags.append(upos)
                forms = []
                upos = []
            continue
        if line[0] == "#":
            continue
        cols = line.split("\t", n_split)
        if len(cols) != n_split + 1 or cols[-1].count("\t") != n_rest_tabs:
            if line.isspace():
                if forms:
                    sents.append(forms)
                    tags.append(upos)
                    forms = []
                    upos = []
                continue
            raise _column_count_error(name, lineno, line.split("\t"))
        token_id = cols[0]
        n = len(forms) + 1
        if token_id == (ids[n] if n < n_ids else str(n)):
            form = cols[1]
            tag = cols[column]
            if last and tag[-1:] == "\r":      # a CRLF line's terminator is no part of MISC
                tag = tag[:-1]
            if not form or not tag:
                raise _error(name, lineno,
                             "empty FORM" if not form else f"empty {COLUMNS[column]}")
            forms.append(share(form, form))
            upos.append(share(tag, tag))
        else:
            _check_word_id(name, lineno, token_id, len(forms))
    if forms:
        sents.append(forms)
        tags.append(upos)
    return sents, tags


# --------------------------------------------------------------------------------------------
# Full sentences, written back byte-identically


class Sentence:
    """One CoNLL-U sentence, kept verbatim so that it can be written back unchanged.

    Attributes
    ----------
    lines : list of str
        The sentence's lines in file order, exactly as read but without line terminators:
        comment lines (starting with ``#``) and token lines (10 tab-separated columns: words,
        multiword ranges and empty nodes).
    newline : str
        The line terminator of the sentence's lines, ``"\\n"`` or ``"\\r\\n"``.
    blank_before : list of str
        Blank (empty or whitespace-only) lines before the sentence; only the first sentence
        of a file can have them.
    blank_after : list of str
        Blank lines after the sentence, normally ``[""]``; empty when the file ends right after
        the sentence's last line.
    final_newline : bool
        False only when the file ends without a terminator after this sentence's last line.
    bom : bool
        True when the file started with a UTF-8 byte-order mark (first sentence only).

    Word lines are the token lines with an integer ID; multiword ranges and empty nodes carry
    no UPOS to predict. Columns are split on demand, so reading and writing stay cheap.
    """

    __slots__ = ("lines", "newline", "blank_before", "blank_after", "final_newline", "bom")

    def __init__(self, lines=None, newline="\n", blank_before=None, blank_after=None,
                 final_newline=True, bom=False):
        self.lines = [] if lines is None else lines
        self.newline = newline
        self.blank_before = [] if blank_before is None else blank_before
        self.blank_after = [""] if blank_after is None else blank_after
        self.final_newline = final_newline
        self.bom = bom

    @classmethod
    def from_tokens(cls, tokens, sent_id=None, text=None):
        """A new sentence with one word line per token and every other column ``_``.

        Parameters
        ----------
        tokens : sequence of str
            The word forms; each must be non-empty and free of tabs and line breaks.
        sent_id, text : str, optional
            Written as ``# sent_id = ...`` and ``# text = ...`` comments when given.
        """
        lines = []
        if sent_id is not None:
            lines.append(f"# sent_id = {sent_id}")
        if text is not None:
            lines.append(f"# text = {text}")
        for i, tok in enumerate(tokens, 1):
            if not isinstance(tok, str) or not tok or any(c in tok for c in "\t\n\r"):
                raise ValueError(f"token {i} ({tok!r}): a CoNLL-U FORM must be a non-empty "
                                 "string without tabs or line breaks")
            lines.append(f"{i}\t{tok}\t_\t_\t_\t_\t_\t_\t_\t_")
        return cls(lines)

    def _word_positions(self):
        """Indices into ``lines`` of the word lines."""
        return [i for i, line in enumerate(self.lines)
                if line[:1] != "#" and line.partition("\t")[0].isdecimal()]

    @property
    def comments(self):
        """list of str: the comment lines, in order (with their leading ``#``)."""
        return [line for line in self.lines if line[:1] == "#"]

    @property
    def tokens(self):
        """list of list of str: the 10 columns of every token line (words, ranges, empty nodes)."""
        return [line.split("\t") for line in self.lines if line[:1] != "#"]

    @property
    def words(self):
        """list of list of str: the 10 columns of every word line (integer ID), in order."""
        lines = self.lines
        return [lines[i].split("\t") for i in self._word_positions()]

    @property
    def forms(self):
        """list of str: FORM of every word line."""
        out = []
        for line in self.lines:
            if line[:1] != "#":
                cols = line.split("\t", 2)
                if cols[0].isdecimal():
                    out.append(cols[1])
        return out

    @property
    def upos(self):
        """list of str: UPOS of every word line."""
        lines = self.lines
        return [lines[i].split("\t", UPOS_COLUMN + 1)[UPOS_COLUMN]
                for i in self._word_positions()]

    def __len__(self):
        """Number of words (word lines)."""
        return len(self._word_positions())

    def set_upos(self, tags):
        """Replace the UPOS column of the word lines, in place.

        Parameters
        ----------
        tags : sequence of str
            One tag per word line, in order; non-empty, without tabs or line breaks.
        """
        positions = self._word_positions()
        _check_tags(tags, len(positions), "sentence")
        lines = self.lines
        for i, tag in zip(positions, tags):
            lines[i] = _with_upos(lines[i], tag)

    def to_string(self, upos=None):
        """The sentence as CoNLL-U text, exactly as it was read (optionally with new UPOS tags).

        Parameters
        ----------
        upos : sequence of str, optional
            Tags to write in the UPOS column of the word lines instead of the stored ones.
        """
        if upos is not None:
            _check_tags(upos, len(self), "sentence")
        parts = []
        _render(self, upos, parts)
        return "".join(parts)

    def __repr__(self):
        return f"Sentence({' '.join(self.forms)!r})"


def _with_upos(line, tag):
    cols = line.split("\t", UPOS_COLUMN + 1)
    cols[UPOS_COLUMN] = tag
    return "\t".join(cols)


def _check_tags(tags, n_words, where):
    if isinstance(tags, str) or len(tags) != n_words:
        got = "a string" if isinstance(tags, str) else f"{len(tags)} tags"
        raise ValueError(f"{where}: expected {n_words} UPOS tags, one per word, got {got}")
    _check_tag_values(tags, where)


def _check_tag_values(tags, where):
    """Each distinct tag once: a non-empty str without tabs or line breaks."""
    try:
        distinct = set(tags)
    except TypeError:
        distinct = tags
    for tag in distinct:
        if not isinstance(tag, str) or not tag or "\t" in tag or "\n" in tag or "\r" in tag:
            raise ValueError(f"{where}: bad UPOS tag {tag!r} (must be a non-empty string "
                             "without tabs or line breaks)")


def _render(sent, upos, parts, where="sentence"):
    """Append the text of ``sent`` to ``parts`` (a list of str).

    ``upos``: tags for the word lines (their values already checked); a count that does not
    match the word lines raises ValueError mentioning ``where``.
    """
    nl = sent.newline
    if sent.bom:
        parts.append(BOM)
    for blank in sent.blank_before:
        parts.append(blank)
        parts.append(nl)
    if upos is None:
        for line in sent.lines:
            parts.append(line)
            parts.append(nl)
    else:
        if isinstance(upos, str):
            raise ValueError(f"{where}: expected a sequence of UPOS tags, got a string")
        tags = iter(upos)
        for line in sent.lines:
            if line[:1] != "#":
                # Splitting off only the columns up to UPOS is the cheapest way to swap it.
                cols = line.split("\t", UPOS_COLUMN + 1)
                if cols[0].isdecimal():
                    cols[UPOS_COLUMN] = tag = next(tags, None)
                    if tag is None:     # fewer tags than words
                        _check_tags(upos, len(sent), where)
                    line = "\t".join(cols)
            parts.append(line)
            parts.append(nl)
        if next(tags, None) is not None:    # more tags than words
            _check_tags(upos, len(sent), where)
    for blank in sent.blank_after:
        parts.append(blank)
        parts.append(nl)
    if not sent.final_newline and parts and parts[-1] == nl:
        parts.pop()


def read_conllu(path_or_file):
    """Read a CoNLL-U file into :class:`Sentence` objects that keep every byte of it.

    Parameters
    ----------
    path_or_file : str, os.PathLike or file object
        Plain or gzip-compressed CoNLL-U; an open file may be text or binary (a file opened in
        text mode has already had its CRLF line endings translated by Python, so open it in
        binary mode to keep them).

    Returns
    -------
    list of Sentence
        In file order. ``write_conllu(read_conllu(f), out)`` reproduces ``f`` byte for byte
        (after decompression), provided each sentence uses one line-ending style.

    Raises
    ------
    FileNotFoundError
        If the path does not exist.
    ValueError
        On a malformed line (column count other than 10, bad or out-of-sequence ID, empty FORM:
        a :class:`ConlluSyntaxError`), naming the file and the 1-based line number. UPOS may
        be ``_`` or anything non-tab: this reader also serves untagged input.
    """
    text, name = read_text(path_or_file, keep_bom=True)
    with gc_paused():
        return _parse_sentences(text, name)


def _parse_sentences(text, name):
    bom = text.startswith(BOM)
    if bom:
        text = text[1:]
    sentences = []
    raw_lines = text.split("\n")
    # A terminated last line leaves one empty string after the final "\n".
    ends_with_newline = raw_lines[-1] == ""
    if ends_with_newline:
        raw_lines.pop()
    has_cr = "\r" in text
    # Blank lines go to the list of the previous sentence's blank_after, or to the first
    # sentence's blank_before at the start of the file.
    blanks = []
    lines = None            # the current sentence's lines; None between sentences
    n_words = 0
    ids = _ID_STRINGS
    n_ids = len(ids)
    for lineno, line in enumerate(raw_lines, 1):
        newline = "\n"
        if has_cr and line and line[-1] == "\r":
            line = line[:-1]
            newline = "\r\n"
        is_comment = line[:1] == "#"
        if not is_comment and line.count("\t") != N_COLUMNS - 1:
            if line and not line.isspace():
                raise _column_count_error(name, lineno, line.split("\t"))
            if lines is not None:
                blanks = sentences[-1].blank_after
                lines = None
            blanks.append(line)
            continue
        if lines is None:
            lines = []
            sent = Sentence(lines, newline=newline, blank_after=[])
            if not sentences:
                sent.blank_before = blanks
            sentences.append(sent)
            n_words = 0
        lines.append(line)
        if is_comment:
            continue
        token_id, _, rest = line.partition("\t")
        n = n_words + 1
        if token_id == (ids[n] if n < n_ids else str(n)):
            if rest[0] == "\t":
                raise _error(name, lineno, "empty FORM")
            n_words = n
        else:
            _check_word_id(name, lineno, token_id, n_words)
    if not sentences and (blanks or bom):
        # A file of blank lines only: keep them so that writing reproduces the file.
        sentences.append(Sentence([], blank_before=blanks, blank_after=[]))
    if sentences:
        sentences[-1].final_newline = ends_with_newline
        sentences[0].bom = bom
    return sentences


def write_conllu(sentences, file, upos=None):
    """Write sentences as CoNLL-U, byte-identical to what :func:`read_conllu` read.

    Parameters
    ----------
    sentences : iterable of Sentence
    file : str, os.PathLike or file object
        A path (written as UTF-8; gzip-compressed when the name ends in ``.gz``), or an open
        text or binary file.
    upos : sequence of sequence of str, optional
        ``upos[i]`` replaces the UPOS column of the word lines of sentence ``i`` (one tag per
        word line); the sentences themselves are not modified.
    """
    sentences = list(sentences)
    if upos is not None:
        if len(upos) != len(sentences):
            raise ValueError(f"upos: expected tags for {len(sentences)} sentences, got "
                             f"{len(upos)}")
        if any(isinstance(tags, str) for tags in upos):
            raise ValueError("upos: expected one sequence of tags per sentence, got a string")
        _check_tag_values(itertools.chain.from_iterable(upos), "upos")
    parts = []
    for i, sent in enumerate(sentences):
        if not isinstance(sent, Sentence):
            raise ValueError(f"sentences[{i}]: expected a Sentence, got {type(sent).__name__}")
        _render(sent, None if upos is None else upos[i], parts, f"upos[{i}]")
    text = "".join(parts)
    if isinstance(file, (str, bytes, os.PathLike)) or is_binary(file):
        write_bytes(text.encode("utf-8"), file)
    else:
        file.write(text)


# --------------------------------------------------------------------------------------------
# Plain text and format detection


def sentences_from_text(text):
    """Turn plain text, one whitespace-tokenized sentence per line, into :class:`Sentence` objects.

    Parameters
    ----------
    text : str or iterable of str
        The whole text, or its lines.

    Returns
    -------
    list of Sentence
        One per non-blank line. Each has the comments ``# sent_id = N``, where ``N`` is the
        1-based number of its input line, and ``# text = <its tokens>``, then one word line
        per token with every column but ID and FORM set to ``_``. Blank lines make no sentence
        but keep their place in the numbering, so ``sent_id`` always points back to the input
        line.

    Notes
    -----
    Lines end at ``"\n"`` only (a ``"\r\n"`` line's ``"\r"`` is whitespace), as ``wc -l``,
    ``sed`` and editors count them; not at every character ``str.splitlines`` breaks on: a
    form feed (pdftotext's page break), ``"\v"``, ``"\x1c"``-``"\x1e"``, ``"\x85"`` or
    ``"\u2028"`` inside a line separates tokens, like any whitespace, and leaves the
    numbering alone.
    """
    lines = text.split("\n") if isinstance(text, str) else text
    out = []
    for lineno, line in enumerate(lines, 1):
        tokens = line.split()
        if tokens:
            out.append(Sentence.from_tokens(tokens, sent_id=lineno, text=" ".join(tokens)))
    return out


def _conllu_from_text(text):
    """What ``write_conllu(sentences_from_text(text))`` writes, without a Sentence per line
    (tagging plain text read it twice as slowly as it tagged): the tokens of ``str.split``
    are never empty and hold no tab or line break, so they need no check."""
    parts = []
    for lineno, line in enumerate(text.split("\n"), 1):
        tokens = line.split()
        if tokens:
            parts.append(f"# sent_id = {lineno}\n# text = {' '.join(tokens)}\n")
            parts.extend([f"{i}\t{tok}\t_\t_\t_\t_\t_\t_\t_\t_\n"
                          for i, tok in enumerate(tokens, 1)])
            parts.append("\n")
    return "".join(parts)


def looks_like_conllu(text):
    """True when ``text`` reads as CoNLL-U rather than plain text.

    The format is decided on the first line that is neither blank nor a ``#`` comment: CoNLL-U
    when it is a token line (10 tab-separated columns, the first starting with a digit). Plain
    text may start with ``#`` (a hashtag, a numbered list); a text of comment lines only, with
    nothing to tag, counts as CoNLL-U so that it is written back unchanged.

    ``text`` is a str, or UTF-8 bytes of which only the lines looked at are decoded.
    """
    binary = not isinstance(text, str)
    bom, nl = (_BOM_BYTES, b"\n") if binary else (BOM, "\n")
    start, size = (len(bom) if text[:len(bom)] == bom else 0), len(text)
    seen_comment = False
    while start < size:
        end = text.find(nl, start)
        if end < 0:
            end = size
        line = text[start:end]
        line = (line.decode("utf-8", "replace") if binary else line).rstrip("\r")
        start = end + 1
        if not line or line.isspace():
            continue
        if line[0] == "#":
            seen_comment = True
            continue
        cols = line.split("\t")
        return len(cols) == N_COLUMNS and cols[0][:1].isdecimal()
    return seen_comment


def read_sentences(path_or_file, format="auto"):
    """Read CoNLL-U or plain text (one whitespace-tokenized sentence per line) into Sentences.

    Parameters
    ----------
    path_or_file : str, os.PathLike or file object
        Plain or gzip-compressed.
    format : {"auto", "conllu", "text"}
        ``"auto"`` picks CoNLL-U when :func:`looks_like_conllu` says so, plain text otherwise.

    Returns
    -------
    list of Sentence
    """
    if format not in ("auto", "conllu", "text"):
        raise ValueError(f"format must be 'auto', 'conllu' or 'text', got {format!r}")
    text, name = read_text(path_or_file, keep_bom=True)
    if format == "conllu" or (format == "auto" and looks_like_conllu(text)):
        with gc_paused():
            return _parse_sentences(text, name)
    return sentences_from_text(text[1:] if text.startswith(BOM) else text)


def read_document(path_or_file, format="auto"):
    """Read CoNLL-U or plain text into a :class:`ConlluDocument`, to tag and write back.

    Parameters
    ----------
    path_or_file : str, os.PathLike or file object
        Plain or gzip-compressed.
    format : {"auto", "conllu", "text"}
        As :func:`read_sentences`: plain text (one whitespace-tokenized sentence per line)
        becomes the CoNLL-U document of :func:`sentences_from_text`.

    Returns
    -------
    ConlluDocument
    """
    if format not in ("auto", "conllu", "text"):
        raise ValueError(f"format must be 'auto', 'conllu' or 'text', got {format!r}")
    data, name = read_bytes(path_or_file)
    if format == "conllu" or (format == "auto" and looks_like_conllu(data)):
        return ConlluDocument(data, name)
    text = data if isinstance(data, str) else decode_utf8(data, name)
    return ConlluDocument(_conllu_from_text(text[1:] if text.startswith(BOM) else text)
                          .encode("utf-8"))


# --------------------------------------------------------------------------------------------
# Documents: a file kept as its bytes


class ConlluDocument:
    """A CoNLL-U file kept as its bytes, with the places of its word lines: read and written
    back, with the UPOS column replaced, by compiled passes.

    What :func:`read_conllu` and :func:`write_conllu` do through :class:`Sentence` objects,
    without a Python object per line: ``ConlluDocument(data).to_bytes(upos)`` equals
    ``write_conllu(read_conllu(data), out, upos)``'s output byte for byte, and ``forms``
    equals ``[s.forms for s in read_conllu(data)]``. This is what ``factorebm tag`` uses.

    Parameters
    ----------
    data : bytes or str
        The file's contents: UTF-8 bytes (a leading byte-order mark is kept), or text.
    name : str
        Named in error messages.

    Attributes
    ----------
    forms : list of list of str
        FORM of the word lines (integer ID) of each sentence, a sentence being a run of
        comment and token lines between blank lines (so a sentence of comments only has no
        forms).
    n_words : int
        Word lines in all.
    n_comment_lines : int

    Raises
    ------
    ValueError
        As :func:`read_conllu`, naming the file and line: a malformed line (a
        :class:`ConlluSyntaxError`) or bytes that are not UTF-8.
    """

    __slots__ = ("_data", "_spans", "_word_offsets", "forms", "n_words", "n_comment_lines",
                 "_interned")

    def __init__(self, data, name="<bytes>"):
        data = _encode_text(data, name) if isinstance(data, str) else bytes(data)
        from .._conllu import document_strings
        scanned = _scan(data, UPOS_COLUMN)
        if scanned is None:
            # The Python parser names the line (or the byte that is not UTF-8).
            _parse_sentences(decode_utf8(data, name), name)
            raise AssertionError(f"{name}: the compiled CoNLL-U scan refused what the "
                                 "Python parser accepts")
        spans, word_offsets, stats = scanned
        n_words, n_sents = int(stats[0]), int(stats[1])
        # the distinct forms and each word's, for a tagger to map each distinct one once
        distinct, form_ids = [], np.empty(n_words, dtype=np.int32)
        with gc_paused():
            forms = document_strings(data, spans, word_offsets, n_sents, 0, False, distinct,
                                     form_ids)
        if not forms and (stats[3] or data.startswith(_BOM_BYTES)):
            # blank lines only: one sentence without lines, as read_conllu gives
            forms = [[]]
            word_offsets = np.zeros(2, dtype=np.int64)
        spans.flags.writeable = False
        word_offsets.flags.writeable = False
        self._data = data
        self._spans = spans
        self._word_offsets = word_offsets
        self.forms = forms
        self.n_words = n_words
        self.n_comment_lines = int(stats[2])
        form_ids.flags.writeable = False
        self._interned = (distinct, form_ids)

    @classmethod
    def read(cls, path_or_file):
        """A CoNLL-U file (path or open file, plain or gzip-compressed) as a document."""
        data, name = read_bytes(path_or_file)
        return cls(data, name)

    @classmethod
    def from_sentences(cls, sentences):
        """The document that :func:`write_conllu` writes for ``sentences``."""
        buf = io.BytesIO()
        write_conllu(sentences, buf)
        return cls(buf.getvalue())

    def __len__(self):
        """Number of sentences."""
        return len(self.forms)

    def _encode(self, upos):
        """The bytes of the document with ``upos`` in the UPOS column, as a uint8 array."""
        from .._conllu import label_codes
        if isinstance(upos, str) or not hasattr(upos, "__len__"):
            raise ValueError("upos: expected one sequence of tags per sentence, got "
                             f"{type(upos).__name__}")
        if len(upos) != len(self.forms):
            raise ValueError(f"upos: expected tags for {len(self.forms)} sentences, got "
                             f"{len(upos)}")
        offsets = self._word_offsets
        codes = np.empty(self.n_words, dtype=np.int64)
        index = {}
        bad = label_codes(upos, index, offsets, codes)
        if bad >= 0:
            where = f"upos[{bad}]"
            _check_tags(upos[bad], int(offsets[bad + 1] - offsets[bad]), where)
            raise ValueError(f"{where}: expected a sequence of UPOS tags")  # len() lied
        return self._encode_codes(codes, list(index))

    def _encode_codes(self, codes, labels):
        """The bytes of the document with ``labels[codes[w]]`` in the UPOS column of word w,
        as a uint8 array (``codes`` (n_words,) int64 in range, labels valid tags: checked by
        the caller)."""
        return next(self._pieces(codes, labels, max(self.n_words, 1)))

    def _pieces(self, codes, labels, words_per_piece):
        """:meth:`_encode_codes`'s bytes piece by piece, ``words_per_piece`` words each: uint8
        arrays viewing one buffer that the next piece overwrites (write each before asking
        for the next)."""
        from .._conllu import write_document
        encoded = [tag.encode("utf-8") for tag in labels]
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        label_offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(lengths, out=label_offsets[1:])
        table = np.frombuffer(b"".join(encoded), np.uint8)
        spans, data, n = self._spans, self._data, self.n_words
        longest = int(lengths.max()) if len(encoded) else 0
        buf = np.empty(0, dtype=np.uint8)
        first = 0
        while True:
            last = min(first + words_per_piece, n)
            begin = spans[first - 1, 3] if first else 0
            end = len(data) if last == n else spans[last - 1, 3]
            # room enough: the piece's bytes with every replaced field as long as the longest
            # label (write_document counts the exact size, and refuses too small a buffer)
            room = int(end - begin) + (last - first) * longest
            if buf.shape[0] < room:
                buf = np.empty(room + room // 4 if last < n else room, dtype=np.uint8)
            written = write_document(data, spans, codes, table, label_offsets, buf, first,
                                     last)
            yield buf[:written]
            first = last
            if first >= n:
                return

    def to_bytes(self, upos=None):
        """The document as bytes: exactly as read, or with ``upos[i]`` (one tag per word) in
        the UPOS column of the word lines of sentence ``i``.

        Raises
        ------
        ValueError
            On a tag count that does not match the words (naming the sentence) or a tag that
            is not a non-empty string without tabs or line breaks.
        """
        return self._data if upos is None else self._encode(upos).tobytes()

    def write(self, file, upos=None):
        """Write :meth:`to_bytes` to a path (gzip-compressed when it ends in ``.gz``) or an
        open binary or text file."""
        write_bytes(self._data if upos is None else self._encode(upos), file)

    def write_codes(self, file, codes, labels):
        """:meth:`write` with tag ``labels[codes[w]]`` for word ``w`` (words numbered through
        the document): a tagger's flat output, without a list of tags per sentence.

        Parameters
        ----------
        file : as :meth:`write`
        codes : (n_words,) int array, each in ``range(len(labels))``
        labels : sequence of str, each a non-empty tag without tabs or line breaks

        Raises ValueError on a code out of range, a count that is not the words' or a bad
        label.
        """
        codes = np.ascontiguousarray(codes, dtype=np.int64)
        if codes.shape != (self.n_words,):
            raise ValueError(f"codes: expected one per word ({self.n_words}), got shape "
                             f"{codes.shape}")
        labels = list(labels)
        _check_tag_values(labels, "labels")
        if codes.size and (int(codes.min()) < 0 or int(codes.max()) >= len(labels)):
            raise ValueError(f"codes: expected values in range({len(labels)})")
        # Written a piece at a time from one reused buffer, not as one array of the whole
        # output: first-touching that much fresh memory costs more than filling it.
        write_pieces(self._pieces(codes, labels, _WORDS_PER_PIECE), file)

    def __repr__(self):
        return (f"ConlluDocument({len(self.forms)} sentences, {self.n_words} words, "
                f"{len(self._data)} bytes)")
