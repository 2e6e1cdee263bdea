"""ConlluDocument (compiled CoNLL-U reading and writing) against its Python twin, read_conllu and
write_conllu; load_conllu's columns; load_conll's plain column files."""
import gzip
import io

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import factorebm as fe
from factorebm import _conllu
from factorebm.datasets import (ConlluDocument, ConlluSyntaxError, load_conll, load_conllu,
                                read_conllu, read_document, write_conllu)
from factorebm.datasets import conllu

SPACES = [chr(c) for c in range(0x110000) if chr(c).isspace() and chr(c) not in "\n"]


def python_twin(data, upos=None):
    """What the Python reader and writer give: (forms, bytes written), or the error."""
    sentences = read_conllu(io.BytesIO(data))
    out = io.BytesIO()
    write_conllu(sentences, out, upos=upos)
    return [s.forms for s in sentences], out.getvalue()


def replace_upos(data, upos):
    """The bytes with the UPOS field of each word line replaced, line by line (every line
    ending kept as it is, mixed or not)."""
    tags = iter(t.encode("utf-8") for s in upos for t in s)
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        cols = line.split(b"\t")
        word_id = cols[0].removeprefix(b"\xef\xbb\xbf") if i == 0 else cols[0]
        if len(cols) == 10 and line[:1] != b"#" and word_id.isdigit():
            cols[3] = next(tags)
            lines[i] = b"\t".join(cols)
    assert next(tags, None) is None
    return b"\n".join(lines)


def fake_tags(forms):
    return [[f"T{len(w) % 3}é" if i % 2 else "X" for i, w in enumerate(s)] for s in forms]


# Lines of every kind the reader meets: words (W, in sequence or with a bad ID), ranges, empty
# nodes, comments, blank and whitespace-only lines (every character str.isspace accepts), bad
# column counts, IDs that are not numbers.
_LINES = st.sampled_from([
    "", "", "\r", " ", "\t", " \t ", "# c", "#", "#\t#", "1-2\ta\t_\t_\t_\t_\t_\t_\t_\t_",
    "1.1\tb\t_\t_\t_\t_\t_\t_\t_\t_", "1-x\ta\t_\t_\t_\t_\t_\t_\t_\t_",
    "1.2.3\ta\t_\t_\t_\t_\t_\t_\t_\t_", "-1\ta\t_\t_\t_\t_\t_\t_\t_\t_",
    "\ta\t_\t_\t_\t_\t_\t_\t_\t_", "1\t\t_\tX\t_\t_\t_\t_\t_\t_", "1\ta\t_\tX\t_", "W", "W",
    "W", "W\r", "W0", "W+", "Wlong", "Wempty", "2\tb\t_\tY\t_\t_\t_\t_\t_\t_\t_",
    "\u0661\tz\t_\tX\t_\t_\t_\t_\t_\t_", "x\u00a0", "\t" * 9,
] + SPACES)


def _render_lines(lines, newline):
    out, n = [], 0
    for line in lines:
        if line in ("", "\r") or (line and line.isspace() and line.count("\t") != 9):
            n = 0
        if line.startswith("W"):    # the next word line in sequence, or one that is odd
            n += 1
            kind = line.rstrip("\r")
            word_id = {"W0": "0" + str(n), "W+": "+" + str(n),
                       "Wlong": "1" + "0" * 25}.get(kind, str(n))
            upos = "" if kind == "Wempty" else f"T{n % 3}"
            line = (f"{word_id}\tw{n}é\tlemma\t{upos}\t_\t_\t_\t_\t_\tM{n}"
                    + line[len(kind):])
        out.append(line)
    return newline.join(out)


@settings(max_examples=300, deadline=None)
@given(st.lists(_LINES, max_size=25), st.sampled_from(["\n", "\r\n"]), st.booleans(),
       st.booleans())
def test_document_equals_python_reader_and_writer(lines, newline, final_newline, bom):
    text = ("\ufeff" if bom else "") + _render_lines(lines, newline) + (
        newline if final_newline else "")
    data = text.encode("utf-8")
    try:
        forms, written = python_twin(data)
    except ValueError as exc:
        with pytest.raises(ValueError) as got:
            ConlluDocument(data, "f")
        assert str(got.value).split(":", 2)[2] == str(exc).split(":", 2)[2]
        return
    doc = ConlluDocument(data, "f")
    assert doc.forms == forms
    assert doc.to_bytes() == data
    assert doc.n_words == sum(map(len, forms))
    tags = fake_tags(forms)
    assert doc.to_bytes(tags) == replace_upos(data, tags)
    if written == data:
        # (the Python writer gives each sentence one line ending, the first of its lines')
        assert doc.to_bytes(tags) == python_twin(data, tags)[1]


@settings(max_examples=200, deadline=None)
@given(st.lists(_LINES, max_size=25), st.sampled_from(["\n", "\r\n"]), st.booleans(),
       st.booleans(), st.integers(1, 4))
def test_tagged_output_written_piece_by_piece_is_the_whole(lines, newline, final_newline, bom,
                                                          words_per_piece):
    # write_codes writes a few thousand words at a time from one reused buffer: the pieces
    # must join into exactly the document's bytes (comments, text after the last word, a
    # document without words), one piece per words_per_piece words
    text = ("\ufeff" if bom else "") + _render_lines(lines, newline) + (
        newline if final_newline else "")
    try:
        doc = ConlluDocument(text.encode("utf-8"), "f")
    except ValueError:
        return
    tags = fake_tags(doc.forms)
    labels = sorted({t for ts in tags for t in ts}) or ["X"]
    codes = np.array([labels.index(t) for ts in tags for t in ts], dtype=np.int64)
    pieces = [bytes(p) for p in doc._pieces(codes, labels, words_per_piece)]
    assert b"".join(pieces) == doc.to_bytes(tags)
    assert len(pieces) == max(1, -(-doc.n_words // words_per_piece))


def test_write_codes_in_pieces_to_every_kind_of_target(tmp_path, monkeypatch):
    data = "".join(f"{i}\tw{i}\t_\tX\t_\t_\t_\t_\t_\t_\n" for i in range(1, 8)) + "\n# end\n"
    doc = ConlluDocument(data.encode("utf-8"))
    labels = ["NOUN", "VERB"]
    codes = np.arange(7) % 2
    whole = doc.to_bytes([[labels[c] for c in codes], []])     # "# end": words-free
    monkeypatch.setattr(conllu, "_WORDS_PER_PIECE", 3)
    doc.write_codes(tmp_path / "out.conllu", codes, labels)
    doc.write_codes(tmp_path / "out.conllu.gz", codes, labels)
    text = io.StringIO()
    doc.write_codes(text, codes, labels)
    raw = io.BytesIO()
    doc.write_codes(raw, codes, labels)
    assert (tmp_path / "out.conllu").read_bytes() == whole == raw.getvalue()
    assert gzip.decompress((tmp_path / "out.conllu.gz").read_bytes()) == whole
    assert text.getvalue() == whole.decode("utf-8")


@pytest.mark.parametrize("split", ["dev", "test"])
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_document_equals_python_twin_on_ewt(split, newline):
    with gzip.open(fe.datasets.ud_english_ewt_path(split), "rb") as fh:
        data = fh.read().replace(b"\n", newline.encode())
    doc = ConlluDocument(data)
    forms, _ = python_twin(data)
    assert doc.forms == forms
    tags = fake_tags(forms)
    assert doc.to_bytes(tags) == python_twin(data, tags)[1]
    assert doc.n_comment_lines == data.count(b"\n#") + data.startswith(b"#")
    # one str object per distinct form
    flat = [w for s in doc.forms for w in s]
    assert len({id(w) for w in flat}) == len(set(flat))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=12) | st.lists(st.sampled_from(
    [b"a", b"\x80", b"\xc2\xa0", b"\xe0\xa0\x80", b"\xe0\x9f\xbf", b"\xed\xa0\x80",
     b"\xed\x9f\xbf", b"\xf0\x90\x80\x80", b"\xf0\x8f\xbf\xbf", b"\xf4\x8f\xbf\xbf",
     b"\xf4\x90\x80\x80", b"\xc1\xbf", b"\xf5\x80\x80\x80", b"\xe2\x82", b"abcdefgh"]),
    max_size=6).map(b"".join))
def test_utf8_check_equals_python_decoder(data):
    try:
        data.decode("utf-8")
        expected = -1
    except UnicodeDecodeError as exc:
        expected = exc.start
    assert _conllu.utf8_error_index(data) == expected
    # the character count a model load checks its feature names with, without decoding
    assert _conllu.utf8_length(data) == (len(data.decode("utf-8")) if expected < 0 else -1)


def test_whitespace_only_lines_are_blank_for_every_space_character():
    word = "1\tw\t_\tX\t_\t_\t_\t_\t_\t_"
    for space in SPACES:
        data = f"{word}\n{space}\n{word}\n".encode("utf-8")
        doc = ConlluDocument(data)
        assert doc.forms == [["w"], ["w"]] == python_twin(data)[0], repr(space)


def test_errors_name_file_and_line(tmp_path):
    path = tmp_path / "bad.conllu"
    path.write_bytes(b"1\ta\t_\tX\t_\t_\t_\t_\t_\t_\n3\tb\t_\tX\t_\t_\t_\t_\t_\t_\n")
    with pytest.raises(ConlluSyntaxError, match=r"bad.conllu:2: word ID 3 out of sequence"):
        ConlluDocument.read(path)
    path.write_bytes(b"1\ta\t_\tX\t_\t_\t_\t_\t_\t_\n\n1\t\xff\t_\tX\t_\t_\t_\t_\t_\t_\n")
    with pytest.raises(ValueError, match=r"bad.conllu:3: not valid UTF-8"):
        read_document(path)


def test_read_document_formats_gzip_and_text(tmp_path):
    path = tmp_path / "t.txt.gz"
    path.write_bytes(gzip.compress(b"Hello world .\n\n# not a comment\n"))
    doc = read_document(path)
    assert doc.forms == [["Hello", "world", "."], ["#", "not", "a", "comment"]]
    out = doc.to_bytes([["A", "B", "C"], ["D", "E", "F", "G"]]).decode()
    assert "# sent_id = 1\n# text = Hello world .\n1\tHello\t_\tA\t" in out
    assert "# sent_id = 3\n" in out
    assert read_document(io.BytesIO(b"1\ta\t_\t_\t_\t_\t_\t_\t_\t_\n")).forms == [["a"]]
    assert read_document(io.BytesIO(b""), format="conllu").forms == []
    assert read_document(io.BytesIO(b"\n\n"), format="conllu").forms == [[]]
    with pytest.raises(ValueError, match="format must be"):
        read_document(io.BytesIO(b""), format="xml")


def test_write_to_files(tmp_path):
    data = "1\tä\t_\tX\t_\t_\t_\t_\t_\t_\r\n".encode("utf-8")
    doc = ConlluDocument(data)
    doc.write(tmp_path / "o.conllu.gz", upos=[["Y"]])
    assert gzip.decompress((tmp_path / "o.conllu.gz").read_bytes()) == data.replace(b"X", b"Y")
    text = io.StringIO()
    doc.write(text, upos=[["Y"]])
    assert text.getvalue() == data.replace(b"X", b"Y").decode("utf-8")


@pytest.mark.parametrize("upos, message", [
    ([["A"]], r"upos: expected tags for 2 sentences, got 1"),
    ("AB", r"upos: expected one sequence of tags per sentence, got str"),
    ([["A"], ["B"]], r"upos\[1\]: expected 2 UPOS tags, one per word, got 1 tags"),
    ([["A"], "BC"], r"upos\[1\]: expected 2 UPOS tags, one per word, got a string"),
    ([["A"], ["B", None]], r"upos\[1\]: bad UPOS tag None"),
    ([["A"], ["B", "C\tD"]], r"bad UPOS tag 'C\\tD'"),
    ([["A"], ["B", ""]], r"bad UPOS tag ''"),
    ([["A"], ["B", ["C"]]], r"bad UPOS tag \['C'\]"),
])
def test_bad_tags_are_refused(upos, message):
    doc = ConlluDocument(b"1\ta\t_\tX\t_\t_\t_\t_\t_\t_\n\n1\tb\t_\tX\t_\t_\t_\t_\t_\t_\n"
                         b"2\tc\t_\tX\t_\t_\t_\t_\t_\t_\n")
    with pytest.raises(ValueError, match=message):
        doc.to_bytes(upos)


def test_a_sequence_whose_len_lies_is_refused():
    class Liar(list):
        def __len__(self):
            return 1
    doc = ConlluDocument(b"1\ta\t_\tX\t_\t_\t_\t_\t_\t_\n")
    with pytest.raises(ValueError, match=r"upos\[0\]"):
        doc.to_bytes([Liar(["A", "B", "C"])])


def test_scan_refuses_outputs_too_small():
    data = b"1\ta\t_\tX\t_\t_\t_\t_\t_\t_\n2\tb\t_\tX\t_\t_\t_\t_\t_\t_\n"
    stats = np.zeros(4, dtype=np.int64)
    assert _conllu.scan_document(data, 0, 3, np.empty((1, 4), np.int64), np.empty(3, np.int64),
                                 stats) == -1
    assert _conllu.count_lines(data) == 3


# ------------------------------------------------------------------------------ columns
@pytest.mark.parametrize("column", conllu.COLUMNS[1:])
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_load_conllu_column_equals_python_parser(column, newline):
    with gzip.open(fe.datasets.ud_english_ewt_path("dev"), "rt", encoding="utf-8") as fh:
        text = fh.read()[:200_000].rsplit("\n\n", 1)[0].replace("\n", newline)
    index = conllu.column_index(column)
    expected = conllu._parse_forms_and_labels(text, "f", index)
    assert conllu._fast_parse_forms_and_labels(text.encode("utf-8"), index) == expected
    sents, labels = load_conllu(io.StringIO(text), column=column.lower())
    assert (sents, labels) == expected
    rows = [ln.split("\t") for ln in text.replace("\r", "").split("\n")
            if ln and ln[0] != "#" and ln.split("\t", 1)[0].isdigit()]
    assert [w for s in labels for w in s] == [r[index] for r in rows]


def test_load_conllu_bad_column_and_empty_label():
    with pytest.raises(ValueError, match="unknown CoNLL-U column 'POS'; one of FORM, LEMMA, "
                                         "UPOS, XPOS"):
        load_conllu(io.StringIO(""), column="POS")
    with pytest.raises(ValueError, match="unknown CoNLL-U column 'ID'"):
        load_conllu(io.StringIO(""), column="ID")
    text = "1\ta\t_\tX\t_\t_\t_\t_\t_\t\n"
    with pytest.raises(ConlluSyntaxError, match=":1: empty MISC"):
        load_conllu(io.StringIO(text), column="MISC")
    with pytest.raises(ConlluSyntaxError, match=":1: empty MISC"):
        load_conllu(io.StringIO(text.replace("\n", "\r\n")), column="MISC")
    assert load_conllu(io.StringIO(text), column="UPOS") == ([["a"]], [["X"]])


def test_load_conll_columns(tmp_path):
    path = tmp_path / "chunks.txt"
    path.write_text("-DOCSTART- -X- O O\n\nConfidence NN B-NP\nin IN B-PP\n\n\n"
                    "the DT B-NP\npound NN I-NP\n", encoding="utf-8")
    assert load_conll(path) == ([["Confidence", "in"], ["the", "pound"]],
                                [["B-NP", "B-PP"], ["B-NP", "I-NP"]])
    assert load_conll(path, column=2)[1] == [["NN", "IN"], ["DT", "NN"]]
    assert load_conll(path, column=-2) == load_conll(path, column=2)
    with pytest.raises(ValueError, match=r"chunks.txt:3: no column 4: the line has 3 fields"):
        load_conll(path, column=4)
    with pytest.raises(ValueError, match="column must be a non-zero integer"):
        load_conll(path, column=0)
    path.write_text("word\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r":1: no column -1 \(from the end\): the line has 1 "
                                         "field,"):
        load_conll(path)


def test_write_codes_is_write_with_flat_tag_ids():
    data = (b"# c\n1\ta\t_\tX\t_\t_\t_\t_\t_\t_\n\n1-2\tbc\t_\t_\t_\t_\t_\t_\t_\t_\n"
            b"1\tb\t_\tX\t_\t_\t_\t_\t_\t_\n2\tc\t_\tX\t_\t_\t_\t_\t_\t_\n")
    doc = ConlluDocument(data)
    labels = ["NOUN", "DET", "\u00e9t\u00e9"]
    codes = np.array([2, 0, 1])
    out = io.BytesIO()
    doc.write_codes(out, codes, labels)
    assert out.getvalue() == doc.to_bytes([[labels[2]], [labels[0], labels[1]]])
    for bad_codes, labels_, message in (
            (np.array([0, 1]), labels, r"codes: expected one per word \(3\)"),
            (np.array([0, 1, 3]), labels, r"codes: expected values in range\(3\)"),
            (np.array([0, -1, 1]), labels, r"codes: expected values in range\(3\)"),
            (codes, ["NOUN", "D\tET", "X"], r"labels: bad UPOS tag"),
            (codes, ["NOUN", "", "X"], r"labels: bad UPOS tag")):
        with pytest.raises(ValueError, match=message):
            doc.write_codes(io.BytesIO(), bad_codes, labels_)
