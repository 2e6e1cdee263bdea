"""CoNLL-U reading and writing, and the bundled UD English EWT."""
import gzip
import io

import pytest
from hypothesis import given, settings, strategies as st

import factorebm as fe
from factorebm.datasets import (Sentence, load_conllu, looks_like_conllu, read_conllu,
                                read_sentences, sentences_from_text, write_conllu)

# Comments, a multiword token (3-4 "don't" = do + n't), an empty node (4.1), two sentences.
SAMPLE = (
    "# newdoc id = d1\n"
    "# sent_id = s1\n"
    "# text = I don't know.\n"
    "1\tI\tI\tPRON\tPRP\tCase=Nom\t3\tnsubj\t3:nsubj\t_\n"
    "2-3\tdon't\t_\t_\t_\t_\t_\t_\t_\t_\n"
    "2\tdo\tdo\tAUX\tVBP\t_\t3\taux\t3:aux\t_\n"
    "3\tn't\tnot\tPART\tRB\t_\t4\tadvmod\t4:advmod\t_\n"
    "3.1\tknow\tknow\tVERB\tVB\t_\t_\t_\t0:root\t_\n"
    "4\tknow\tknow\tVERB\tVB\t_\t0\troot\t0:root\tSpaceAfter=No\n"
    "5\t.\t.\tPUNCT\t.\t_\t4\tpunct\t4:punct\t_\n"
    "\n"
    "# sent_id = s2\n"
    "1\tHello\thello\tINTJ\tUH\t_\t0\troot\t0:root\t_\n"
    "2\t!\t!\tPUNCT\t.\t_\t1\tpunct\t1:punct\t_\n"
    "\n"
)
SAMPLE_SENTS = [["I", "do", "n't", "know", "."], ["Hello", "!"]]
SAMPLE_TAGS = [["PRON", "AUX", "PART", "VERB", "PUNCT"], ["INTJ", "PUNCT"]]


def _write(tmp_path, name, text, gz=False):
    path = tmp_path / name
    data = text.encode("utf-8")
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def _line(n, form, upos="NOUN"):
    return f"{n}\t{form}\t_\t{upos}\t_\t_\t_\t_\t_\t_\n"


# ------------------------------------------------------------------------------ load_conllu


def test_load_skips_comments_ranges_and_empty_nodes(tmp_path):
    sents, tags = load_conllu(_write(tmp_path, "a.conllu", SAMPLE))
    assert sents == SAMPLE_SENTS
    assert tags == SAMPLE_TAGS


def test_gzip_recognised_by_magic_bytes_not_name(tmp_path):
    plain = load_conllu(_write(tmp_path, "a.conllu", SAMPLE))
    assert load_conllu(_write(tmp_path, "b.conllu.gz", SAMPLE, gz=True)) == plain
    assert load_conllu(_write(tmp_path, "c.conllu", SAMPLE, gz=True)) == plain   # gz, no .gz
    assert load_conllu(_write(tmp_path, "d.conllu.gz", SAMPLE)) == plain         # plain, .gz


def test_file_objects_text_and_binary():
    expected = (SAMPLE_SENTS, SAMPLE_TAGS)
    assert load_conllu(io.StringIO(SAMPLE)) == expected
    assert load_conllu(io.BytesIO(SAMPLE.encode())) == expected
    assert load_conllu(io.BytesIO(gzip.compress(SAMPLE.encode()))) == expected


@pytest.mark.parametrize("ending", ["", "\n", "\n\n\n", "\n  \n"])
def test_final_blank_line_optional(tmp_path, ending):
    text = SAMPLE.rstrip("\n") + ending
    assert load_conllu(_write(tmp_path, "a.conllu", text)) == (SAMPLE_SENTS, SAMPLE_TAGS)


def test_crlf_line_endings(tmp_path):
    path = _write(tmp_path, "a.conllu", SAMPLE.replace("\n", "\r\n"))
    assert load_conllu(path) == (SAMPLE_SENTS, SAMPLE_TAGS)
    # ... and the full reader keeps them: writing gives the same bytes back.
    out = io.BytesIO()
    write_conllu(read_conllu(path), out)
    assert out.getvalue() == path.read_bytes()


def test_blank_lines_between_and_before_sentences(tmp_path):
    text = "\n\n" + SAMPLE.replace("\n\n#", "\n\n\n \t\n#")
    path = _write(tmp_path, "a.conllu", text)
    assert load_conllu(path) == (SAMPLE_SENTS, SAMPLE_TAGS)
    out = io.BytesIO()
    write_conllu(read_conllu(path), out)
    assert out.getvalue() == text.encode()


def test_bom_accepted_and_kept(tmp_path):
    path = _write(tmp_path, "a.conllu", "\ufeff" + SAMPLE)
    assert load_conllu(path) == (SAMPLE_SENTS, SAMPLE_TAGS)
    out = io.BytesIO()
    write_conllu(read_conllu(path), out)
    assert out.getvalue() == path.read_bytes()


@pytest.mark.parametrize("bad_line, lineno, message", [
    ("1\tdog\tdog\tNOUN\n", 3, "10 tab-separated columns, found 4"),
    ("x\tdog\t_\tNOUN\t_\t_\t_\t_\t_\t_\n", 3, "bad token ID 'x'"),
    ("2-x\tdog\t_\tNOUN\t_\t_\t_\t_\t_\t_\n", 3, "bad token ID '2-x'"),
    ("3\tdog\t_\tNOUN\t_\t_\t_\t_\t_\t_\n", 3, "out of sequence: expected 2"),
    ("2\t\t_\tNOUN\t_\t_\t_\t_\t_\t_\n", 3, "empty FORM"),
    ("2\tdog\t_\t\t_\t_\t_\t_\t_\t_\n", 3, "empty UPOS"),
])
def test_malformed_line_names_file_and_line(tmp_path, bad_line, lineno, message):
    text = "# c\n" + _line(1, "The", "DET") + bad_line + _line(3, "barks", "VERB") + "\n"
    path = _write(tmp_path, "bad.conllu", text)
    with pytest.raises(ValueError, match=f"bad.conllu:{lineno}: .*{message}"):
        load_conllu(path)
    if "UPOS" not in message:   # the full reader accepts untagged input, nothing else
        with pytest.raises(ValueError, match=f"bad.conllu:{lineno}: .*{message}"):
            read_conllu(path)


def test_malformed_line_in_gzip_file_counts_lines_after_decompression(tmp_path):
    text = SAMPLE + _line(1, "a") + "1\tb\n"
    path = _write(tmp_path, "bad.conllu.gz", text, gz=True)
    bad_lineno = SAMPLE.count("\n") + 2
    with pytest.raises(ValueError, match=rf"bad\.conllu\.gz:{bad_lineno}: "):
        load_conllu(path)


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.conllu"
    path.write_bytes(_line(1, "a").encode() + "1\tcaf\xe9\t_\tNOUN\t_\t_\t_\t_\t_\t_\n"
                     .encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.conllu:2: not valid UTF-8"):
        load_conllu(path)


def test_missing_file_is_a_clear_error(tmp_path):
    path = tmp_path / "nope.conllu"
    with pytest.raises(FileNotFoundError, match="nope.conllu"):
        load_conllu(path)
    with pytest.raises(FileNotFoundError, match="nope.conllu"):
        read_conllu(path)


def test_missing_blank_line_between_sentences_is_reported(tmp_path):
    text = _line(1, "a") + _line(2, "b") + _line(1, "c") + "\n"
    with pytest.raises(ValueError, match=r":3: word ID 1 out of sequence: expected 3"):
        load_conllu(_write(tmp_path, "a.conllu", text))


def test_empty_file_and_sentences_without_words(tmp_path):
    assert load_conllu(_write(tmp_path, "empty.conllu", "")) == ([], [])
    text = "# only a comment\n\n" + "1-2\tdon't\t_\t_\t_\t_\t_\t_\t_\t_\n\n" + _line(1, "x")
    assert load_conllu(_write(tmp_path, "a.conllu", text)) == ([["x"]], [["NOUN"]])


# ------------------------------------------------------------------------------ full sentences


def _ewt_bytes(split):
    with gzip.open(fe.datasets.ud_english_ewt_path(split), "rb") as fh:
        return fh.read()


def test_write_round_trip_is_byte_identical_on_bundled_dev(tmp_path):
    sentences = read_conllu(fe.datasets.ud_english_ewt_path("dev"))
    out = io.BytesIO()
    write_conllu(sentences, out)
    assert out.getvalue() == _ewt_bytes("dev")
    # Through a path, gzipped by name, and through a text stream.
    write_conllu(sentences, tmp_path / "dev.conllu.gz")
    assert gzip.decompress((tmp_path / "dev.conllu.gz").read_bytes()) == _ewt_bytes("dev")
    text = io.StringIO()
    write_conllu(sentences, text)
    assert text.getvalue().encode() == _ewt_bytes("dev")


def test_load_shares_one_string_per_distinct_form_and_tag():
    sents, tags = fe.datasets.load_ud_english_ewt("dev")
    forms = [w for s in sents for w in s]
    upos = [t for ts in tags for t in ts]
    assert len({id(w) for w in forms}) == len(set(forms)) < len(forms)
    assert len({id(t) for t in upos}) == len(set(upos)) <= 18


def test_sentence_views_agree_with_load_conllu(tmp_path):
    path = _write(tmp_path, "a.conllu", SAMPLE)
    sentences = read_conllu(path)
    assert [s.forms for s in sentences] == SAMPLE_SENTS
    assert [s.upos for s in sentences] == SAMPLE_TAGS
    assert [len(s) for s in sentences] == [5, 2]
    assert sentences[0].comments == ["# newdoc id = d1", "# sent_id = s1",
                                     "# text = I don't know."]
    assert [row[0] for row in sentences[0].tokens] == ["1", "2-3", "2", "3", "3.1", "4", "5"]
    assert all(len(row) == 10 for s in sentences for row in s.tokens)


def test_setting_upos_changes_only_that_column(tmp_path):
    path = _write(tmp_path, "a.conllu", SAMPLE)
    new_tags = [["X1", "X2", "X3", "X4", "X5"], ["Y1", "Y2"]]
    out = io.StringIO()
    write_conllu(read_conllu(path), out, upos=new_tags)
    written = out.getvalue().split("\n")
    original = SAMPLE.split("\n")
    assert len(written) == len(original)
    flat_tags = iter(t for tags in new_tags for t in tags)
    for old, new in zip(original, written):
        cols = old.split("\t")
        if len(cols) == 10 and cols[0].isdigit():
            cols[3] = next(flat_tags)
        assert new == "\t".join(cols)
    # set_upos edits in place; load_conllu then reads the new tags.
    sentences = read_conllu(path)
    for s, tags in zip(sentences, new_tags):
        s.set_upos(tags)
    out = io.BytesIO()
    write_conllu(sentences, out)
    assert load_conllu(io.BytesIO(out.getvalue())) == (SAMPLE_SENTS, new_tags)


def test_to_string_and_file_modes(tmp_path):
    sentences = read_conllu(io.StringIO(SAMPLE))
    assert "".join(s.to_string() for s in sentences) == SAMPLE
    tagged = sentences[1].to_string(upos=["A", "B"])
    assert tagged.split("\n")[1].split("\t")[3] == "A"
    assert sentences[1].upos == ["INTJ", "PUNCT"]            # to_string leaves it unchanged
    with open(tmp_path / "b.conllu", "wb") as fh:
        write_conllu(sentences, fh)
    with open(tmp_path / "t.conllu", "w", encoding="utf-8", newline="") as fh:
        write_conllu(sentences, fh)
    assert (tmp_path / "b.conllu").read_bytes() == SAMPLE.encode()
    assert (tmp_path / "t.conllu").read_bytes() == SAMPLE.encode()


class _TrickleFile(io.RawIOBase):
    """An unbuffered binary file that takes at most 5 bytes per write(), as a pipe may."""

    def __init__(self):
        self.data = bytearray()

    def writable(self):
        return True

    def write(self, b):
        chunk = bytes(b[:5])
        self.data += chunk
        return len(chunk)


def test_partial_writes_of_an_unbuffered_file_are_completed():
    # sys.stdout.buffer is such a file under python -u / PYTHONUNBUFFERED: write_conllu once
    # kept only what the first write() took
    out = _TrickleFile()
    write_conllu(read_conllu(io.StringIO(SAMPLE)), out)
    assert out.data.decode("utf-8") == SAMPLE


def test_wrong_number_of_tags_is_refused(tmp_path):
    sentences = read_conllu(io.StringIO(SAMPLE))
    with pytest.raises(ValueError, match="expected 5 UPOS tags"):
        sentences[0].set_upos(["NOUN"] * 4)
    with pytest.raises(ValueError, match=r"upos\[1\]: expected 2 UPOS tags"):
        write_conllu(sentences, io.StringIO(), upos=[["A"] * 5, ["A"]])
    with pytest.raises(ValueError, match=r"upos\[0\]: expected 5 UPOS tags.*got 6"):
        write_conllu(sentences, io.StringIO(), upos=[["A"] * 6, ["A"] * 2])
    with pytest.raises(ValueError, match="bad UPOS tag"):
        sentences[1].set_upos(["A\tB", "C"])
    with pytest.raises(ValueError, match="bad UPOS tag"):
        write_conllu(sentences, io.StringIO(), upos=[["A"] * 5, ["A", ""]])
    assert sentences[0].upos == SAMPLE_TAGS[0]               # refused edits change nothing


def test_plain_text_to_conllu_and_back():
    text = "The dog  barks .\n\n  Hello\tworld\n"
    sentences = sentences_from_text(text)
    assert [s.forms for s in sentences] == [["The", "dog", "barks", "."], ["Hello", "world"]]
    out = io.StringIO()
    write_conllu(sentences, out, upos=[["DET", "NOUN", "VERB", "PUNCT"], ["INTJ", "NOUN"]])
    sents, tags = load_conllu(io.StringIO(out.getvalue()))
    assert sents == [["The", "dog", "barks", "."], ["Hello", "world"]]
    assert tags == [["DET", "NOUN", "VERB", "PUNCT"], ["INTJ", "NOUN"]]
    assert "# text = The dog barks ." in out.getvalue()
    # blank lines make no sentence but keep their place: sent_id is the input line number
    assert [s.comments[0] for s in sentences] == ["# sent_id = 1", "# sent_id = 3"]


def test_plain_text_lines_end_at_newline_only():
    # str.splitlines also breaks at these: sent_id would drift from the input line number
    breaks = ["\f", "\v", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
    text = "".join(f"a{b}b\n" for b in breaks) + "last line\r\n"
    sentences = sentences_from_text(text)
    assert [s.comments[0] for s in sentences] == [f"# sent_id = {i}"
                                                  for i in range(1, len(breaks) + 2)]
    assert [s.forms for s in sentences] == [["a", "b"]] * len(breaks) + [["last", "line"]]
    assert [s.comments[0] for s in read_sentences(io.StringIO(text))] == [
        s.comments[0] for s in sentences]


def test_read_sentences_detects_the_format():
    conllu = read_sentences(io.StringIO(SAMPLE))
    assert [s.forms for s in conllu] == SAMPLE_SENTS
    plain = read_sentences(io.BytesIO(b"I do n't know .\nHello !\n"))
    assert [s.forms for s in plain] == SAMPLE_SENTS
    as_text = read_sentences(io.StringIO(SAMPLE), format="text")
    assert as_text[0].forms[0] == "#"
    with pytest.raises(ValueError, match="format"):
        read_sentences(io.StringIO(SAMPLE), format="xml")


@pytest.mark.parametrize("text, is_conllu", [
    (SAMPLE, True),
    ("\ufeff\n\n" + SAMPLE, True),
    ("#1 fan here\nI like it\n", False),              # plain text may start with '#'
    ("# a\n# b\n\n#c\nno tabs here\n", False),
    ("# x\n" * 100 + "1\tA\t_\t_\t_\t_\t_\t_\t_\t_\n", True),   # long comment header
    ("# only comments\n", True),                       # nothing to tag: kept as it is
    ("", False),
    ("1\tA\tB\n", False),
])
def test_format_is_decided_on_the_first_line_that_is_not_a_comment(text, is_conllu):
    assert looks_like_conllu(text) is is_conllu


def test_format_errors_are_conllu_syntax_errors(tmp_path):
    with pytest.raises(fe.datasets.ConlluSyntaxError, match=":2: expected 10"):
        read_sentences(io.StringIO("1\tA\t_\t_\t_\t_\t_\t_\t_\t_\n2\tB\n"))
    bad = tmp_path / "bad.conllu"
    bad.write_bytes(b"\xff\n")
    with pytest.raises(ValueError, match="UTF-8") as info:
        read_sentences(bad)
    assert not isinstance(info.value, fe.datasets.ConlluSyntaxError)


def test_plain_text_starting_with_a_hash_is_read_as_text():
    sentences = read_sentences(io.BytesIO(b"#1 fan here\r\nI like it\r\n"))
    assert [s.forms for s in sentences] == [["#1", "fan", "here"], ["I", "like", "it"]]


def test_from_tokens_refuses_tabs_and_empty_tokens():
    with pytest.raises(ValueError, match="token 2"):
        Sentence.from_tokens(["a", "b\tc"])
    with pytest.raises(ValueError, match="token 1"):
        Sentence.from_tokens([""])


# Random files: words, ranges and empty nodes, comments, runs of blank lines (some with spaces),
# LF or CRLF, with or without a final newline. Reading then writing gives the same bytes, and
# load_conllu agrees with the full reader on every sentence.
_form = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"),
                              blacklist_characters="\t\n\r\x85"), min_size=1, max_size=6)


@st.composite
def _conllu_files(draw):
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    lines = []
    expected = []
    for _ in range(draw(st.integers(0, 4))):
        if expected or lines:
            lines.extend(draw(st.sampled_from([[""], [""], ["", ""], ["", "  "]])))
        for c in range(draw(st.integers(0, 2))):
            lines.append(f"# comment {c} = {draw(_form)}")
        forms = draw(st.lists(_form, min_size=1, max_size=5))
        tags = draw(st.lists(st.sampled_from(["NOUN", "VERB", "_"]), min_size=len(forms),
                             max_size=len(forms)))
        for i, (form, tag) in enumerate(zip(forms, tags), 1):
            if draw(st.booleans()) and i < len(forms):
                lines.append(f"{i}-{i + 1}\t{form}{form}\t_\t_\t_\t_\t_\t_\t_\t_")
            lines.append(f"{i}\t{form}\t_\t{tag}\t_\t_\t{i - 1}\tdep\t_\t_")
            if draw(st.booleans()):
                lines.append(f"{i}.1\t{form}\t_\t_\t_\t_\t_\t_\t_\t_")
        expected.append((forms, tags))
    text = newline.join(lines)
    if lines and draw(st.booleans()):
        text += newline
    return text, expected


@settings(max_examples=60, deadline=None)
@given(_conllu_files())
def test_random_files_round_trip(case):
    text, expected = case
    data = text.encode("utf-8")
    sentences = read_conllu(io.BytesIO(data))
    out = io.BytesIO()
    write_conllu(sentences, out)
    assert out.getvalue() == data
    sents, tags = load_conllu(io.BytesIO(data))
    assert sents == [f for f, _ in expected]
    assert tags == [t for _, t in expected]
    assert [s.forms for s in sentences if len(s)] == sents


# ------------------------------------------------------------------------------ bundled EWT


def _count_by_hand(split):
    """Sentences and words of a bundled split, counted without the library's reader."""
    n_sents = n_words = 0
    for block in _ewt_bytes(split).decode("utf-8").split("\n\n"):
        ids = [ln.split("\t", 1)[0] for ln in block.split("\n") if ln and ln[0] != "#"]
        words = [i for i in ids if i.isdigit()]
        n_sents += bool(words)
        n_words += len(words)
    return n_sents, n_words


@pytest.mark.parametrize("split", ["dev", "test"])
def test_bundled_ewt(split):
    sents, tags = fe.datasets.load_ud_english_ewt(split)
    assert (len(sents), sum(map(len, sents))) == _count_by_hand(split)
    assert [len(s) for s in sents] == [len(t) for t in tags]
    upos = {t for ts in tags for t in ts}
    assert upos <= {"ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART",
                    "PRON", "PROPN", "PUNCT", "SCONJ", "SYM", "VERB", "X"}
    assert len(upos) == 17


def test_bundled_ewt_paths_and_bad_split():
    for split in ("train", "dev", "test"):
        assert fe.datasets.ud_english_ewt_path(split).endswith(f"en_ewt-ud-{split}.conllu.gz")
    with pytest.raises(ValueError, match="'train', 'dev', 'test'.*'validation'"):
        fe.datasets.load_ud_english_ewt("validation")


# The compiled fast path of load_conllu must return exactly what the Python parser returns,
# and leave every input it does not accept to it (so errors keep one source).
_LINES = st.sampled_from([
    "", "\r", " ", "\t", "# c", "#", "1-2\ta\t_\t_\t_\t_\t_\t_\t_\t_", "1.1\tb\t_\t_\t_\t_\t_\t_\t_\t_",
    "1-x\ta\t_\t_\t_\t_\t_\t_\t_\t_", "1.2.3\ta\t_\t_\t_\t_\t_\t_\t_\t_", "-1\ta\t_\t_\t_\t_\t_\t_\t_\t_",
    "1\t\t_\tX\t_\t_\t_\t_\t_\t_", "1\ta\t_\t\t_\t_\t_\t_\t_\t_", "1\ta\t_\tX\t_", "W", "W\r", "W0",
    "W+", "2\tb\t_\tY\t_\t_\t_\t_\t_\t_\t_", "١\tz\t_\tX\t_\t_\t_\t_\t_\t_",
])


@settings(max_examples=200, deadline=None)
@given(st.lists(_LINES, max_size=25), st.booleans(), st.sampled_from([1, 3, 4, 9]))
def test_fast_reader_matches_python_reader(lines, final_newline, column):
    from factorebm.datasets import conllu
    out = []
    n = 0
    for line in lines:
        if line in ("", "\r", " "):
            n = 0
        if line.startswith("W"):    # the next word line in sequence, or one with a bad ID
            n += 1
            word_id = {"W0": "0" + str(n), "W+": "+" + str(n)}.get(line.rstrip("\r"), str(n))
            line = (f"{word_id}\tw{n}é\t_\tT{n % 3}\tX{n % 2}\t_\t_\t_\t_\tM{n}"
                    + line[len(line.rstrip("\r")):])
        out.append(line)
    text = "\n".join(out) + ("\n" if final_newline else "")
    fast = conllu._fast_parse_forms_and_labels(text.encode("utf-8"), column)
    try:
        expected = conllu._parse_forms_and_labels(text, "f", column)
    except ValueError:
        assert fast is None     # the Python parser then raises
        return
    if fast is not None:
        assert fast == expected
        assert [type(w) for s in fast[0] for w in s] == [str] * sum(map(len, fast[0]))
    assert load_conllu(io.StringIO(text), column=conllu.COLUMNS[column]) == expected


@pytest.mark.parametrize("split", ["dev", "test"])
def test_fast_reader_matches_python_reader_on_ewt(split):
    from factorebm.datasets import conllu
    text, name = fe.datasets.textio.read_text(fe.datasets.ud_english_ewt_path(split))
    expected = conllu._parse_forms_and_labels(text, name)
    assert conllu._fast_parse_forms_and_labels(text.encode("utf-8")) == expected
    crlf = text.replace("\n", "\r\n").encode("utf-8")
    assert conllu._fast_parse_forms_and_labels(crlf) == expected
    assert sum(map(len, expected[0])) > 20_000
