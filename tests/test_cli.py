"""The factorebm command line on a small slice of EWT: train, evaluate, tag, errors."""
import gzip
import json
import os
import subprocess
import sys

import pytest

import factorebm as fe


def run_cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "factorebm.cli", *map(str, args)],
                          input=stdin, capture_output=True, text=True, timeout=300)


def slice_conllu(src, dst, n_sentences):
    """Copy the first n sentences of a (gzipped) CoNLL-U file, byte for byte."""
    out, count = [], 0
    with gzip.open(src, "rt", encoding="utf-8") as fh:
        for line in fh:
            out.append(line)
            if line.strip() == "":
                count += 1
                if count == n_sentences:
                    break
    dst.write_text("".join(out), encoding="utf-8")
    return dst


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    train = slice_conllu(fe.datasets.ud_english_ewt_path("train"), d / "train.conllu", 300)
    dev = slice_conllu(fe.datasets.ud_english_ewt_path("dev"), d / "dev.conllu", 100)
    model = d / "m.npz"
    r = run_cli("train", "--model", model, "--train", train, "--dev", dev, "--test", dev,
                "--max-iter", 6)
    assert r.returncode == 0, r.stderr
    return {"dir": d, "train": train, "dev": dev, "model": model, "train_out": r.stdout}


def test_train_prints_accuracies(files):
    assert "dev accuracy" in files["train_out"] and "test accuracy" in files["train_out"]
    assert files["model"].exists()


def test_evaluate_json_matches_library(files):
    r = run_cli("evaluate", "--model", files["model"], files["dev"], "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    tagger = fe.SequenceTagger.load(files["model"])
    assert result["accuracy"] == pytest.approx(tagger.score(*fe.datasets.load_conllu(files["dev"])))
    assert result["tokens"] == sum(len(s) for s in fe.datasets.load_conllu(files["dev"])[0])


def test_tag_conllu_fills_upos_and_keeps_the_rest(files):
    src = files["dev"].read_text(encoding="utf-8")
    r = run_cli("tag", "--model", files["model"], files["dev"])
    assert r.returncode == 0, r.stderr
    out_lines, src_lines = r.stdout.splitlines(), src.splitlines()
    assert len(out_lines) == len(src_lines)
    tagger = fe.SequenceTagger.load(files["model"])
    sents, _ = fe.datasets.load_conllu(files["dev"])
    expected = iter(t for ts in tagger.predict(sents) for t in ts)
    for a, b in zip(src_lines, out_lines):
        ca, cb = a.split("\t"), b.split("\t")
        if len(ca) == 10 and ca[0].isdigit():
            assert cb[3] == next(expected)
            assert ca[:3] + ca[4:] == cb[:3] + cb[4:]
        else:
            assert a == b


def test_tag_plain_text_from_stdin(files):
    r = run_cli("tag", "--model", files["model"], "-", stdin="The dog barks .\nI saw her\n")
    assert r.returncode == 0, r.stderr
    rows = [line.split("\t") for line in r.stdout.splitlines() if line and not line.startswith("#")]
    assert [row[1] for row in rows] == ["The", "dog", "barks", ".", "I", "saw", "her"]
    assert all(len(row) == 10 and row[3] != "_" for row in rows)


def test_errors_are_one_line_without_traceback(files, tmp_path):
    bad = tmp_path / "bad.conllu"
    bad.write_text("1\tThe\tthe\tDET\n", encoding="utf-8")
    for args in [("evaluate", "--model", files["model"], bad),
                 ("evaluate", "--model", tmp_path / "missing.npz"),
                 ("train", "--model", tmp_path / "x.npz", "--train", tmp_path / "nope.conllu")]:
        r = run_cli(*args)
        assert r.returncode != 0
        assert "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = run_cli("evaluate", "--model", files["model"], bad)
    assert "bad.conllu:1:" in r.stderr  # file:line: message, as compilers print it


def assert_one_line_error(r, *fragments):
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    for fragment in fragments:
        assert fragment in r.stderr, r.stderr


def test_lbfgs_with_a_most_offending_loss_is_refused(files, tmp_path):
    # it used to train an all-zero model (line search failed at iteration 0) and exit 0
    model = tmp_path / "x.npz"
    r = run_cli("train", "--model", model, "--train", files["train"], "--dev", files["dev"],
                "--loss", "hinge", "--optimizer", "lbfgs")
    assert_one_line_error(r, "optimizer='adagrad'")
    assert not model.exists()


def test_unwritable_model_path_is_refused_before_training(files, tmp_path):
    for model, message in [(tmp_path / "no_such_folder" / "m.npz", "does not exist"),
                           (tmp_path, "is a directory"),
                           (files["train"] / "m.npz", "is not a folder")]:
        r = run_cli("train", "--model", model, "--train", files["train"])
        assert_one_line_error(r, message, str(model))
        assert r.stdout == ""       # no progress line: training never started


def test_closed_output_pipe_ends_quietly(files):
    read_end, write_end = os.pipe()
    os.close(read_end)              # as `factorebm tag ... | true` once true has exited
    try:
        r = subprocess.run([sys.executable, "-m", "factorebm.cli", "tag", "--model",
                            str(files["model"]), str(files["dev"])], stdout=write_end,
                           stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write_end)
    assert (r.returncode, r.stderr) == (141, "")


def test_plain_text_whose_first_line_starts_with_a_hash(files):
    r = run_cli("tag", "--model", files["model"], stdin="#1 fan here\nI like it\n")
    assert r.returncode == 0, r.stderr
    rows = [line.split("\t") for line in r.stdout.splitlines() if line[:1].isdigit()]
    assert [row[1] for row in rows] == ["#1", "fan", "here", "I", "like", "it"]
    r = run_cli("tag", "--model", files["model"], stdin="1\tA\t_\t_\t_\t_\t_\t_\t_\t_\n2\tB\n")
    assert_one_line_error(r, "<stdin>:2:", "--format text")
    r = run_cli("tag", "--model", files["model"], "--format", "conllu",
                stdin="1\tA\t_\t_\t_\t_\t_\t_\t_\t_\n2\tB\n")
    assert_one_line_error(r, "<stdin>:2:")
    assert "--format text" not in r.stderr
    r = run_cli("tag", "--model", files["model"], stdin="# just a comment\n")
    assert r.returncode == 0 and r.stdout == "# just a comment\n"
    assert "--format text" in r.stderr


def test_threads_option_of_tag_and_evaluate(files):
    r = run_cli("evaluate", "--model", files["model"], files["dev"], "--json", "--threads", 1)
    assert r.returncode == 0, r.stderr
    r = run_cli("tag", "--model", files["model"], files["dev"], "--threads", 2)
    assert r.returncode == 0, r.stderr


def run_main(capsys, *args):
    """The command line in this process (fast, for errors found before any real work)."""
    from factorebm.cli import main
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, rc, out, err)


def test_threads_below_one_are_a_one_line_error(files, capsys):
    for command in ("tag", "evaluate"):
        for bad in (0, -3):
            r = run_main(capsys, command, "--model", files["model"], files["dev"], "--threads",
                         bad)
            assert_one_line_error(r, f"--threads must be an integer >= 1 (default: all cores), "
                                     f"got {bad}")


def test_more_threads_than_cores_are_clamped(files):
    # more threads than cores: clamped to the cores, the same tags
    r400 = run_cli("tag", "--model", files["model"], files["dev"], "--threads", 400)
    r1 = run_cli("tag", "--model", files["model"], files["dev"], "--threads", 1)
    assert r400.returncode == 0 and r400.stdout == r1.stdout, r400.stderr


def test_files_without_tokens_or_gold_tags_are_named(files, tmp_path):
    untagged = tmp_path / "untagged.conllu"
    untagged.write_text("".join(f"{i}\tw{i}\t_\t_\t_\t_\t_\t_\t_\t_\n" for i in (1, 2)) + "\n",
                        encoding="utf-8")
    empty = tmp_path / "empty.conllu"
    empty.write_text("# sent_id = 1\n\n", encoding="utf-8")
    for command, args in [("evaluate", [untagged]), ("train", ["--train", untagged])]:
        r = run_cli(command, "--model", files["model"] if command == "evaluate" else
                    tmp_path / "m.npz", *args)
        assert_one_line_error(r, f"no gold UPOS tags in {untagged}")
    for command, args in [("evaluate", [empty]), ("train", ["--train", empty]),
                          ("train", ["--train", files["train"], "--dev", empty])]:
        r = run_cli(command, "--model", files["model"] if command == "evaluate" else
                    tmp_path / "m.npz", *args)
        assert_one_line_error(r, f"{empty}: zero tokens")


def test_help_shows_no_rst_markup():
    for command in ([], ["train"], ["evaluate"], ["tag"]):
        r = run_cli(*command, "--help")
        assert r.returncode == 0 and "``" not in r.stdout, r.stdout


# benchmarks/compare_crfsuite.py: a child that dies must fail the run, not hang it.
BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def run_bench_snippet(code):
    prelude = f"import sys; sys.path.insert(0, {BENCH!r}); import compare_crfsuite as c\n"
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True,
                          text=True, timeout=120)


def test_benchmark_reports_a_child_that_died():
    r = run_bench_snippet("try:\n    c.in_child('no_such_phase')\n"
                          "except RuntimeError as exc:\n    print(exc)\n")
    assert r.returncode == 0, r.stderr
    assert "no_such_phase failed in the child process (exit 1" in r.stdout


def test_benchmark_without_python_crfsuite_says_how_to_install_it():
    r = run_bench_snippet("sys.modules['pycrfsuite'] = None\nsys.exit(c.main([]))")
    assert r.returncode == 1 and "pip install python-crfsuite" in r.stderr, r.stderr


@pytest.mark.parametrize("option, value, message", [
    ("--l1", "inf", "--l1 must be a finite number >= 0, got inf"),
    ("--l1", "-0.5", "--l1 must be a finite number >= 0"),
    ("--l2", "nan", "--l2 must be a finite number >= 0, got nan"),
    ("--max-iter", "0", "--max-iter must be an integer >= 1, got 0"),
    ("--batch-size", "-2", "--batch-size must be an integer >= 1"),
    ("--learning-rate", "0", "--learning-rate must be a finite number > 0"),
    ("--min-count", "0", "--min-count must be an integer >= 1"),
    ("--substates", "0", "--substates must be an integer >= 1"),
    ("--threads", "0", "--threads must be an integer >= 1"),
])
def test_bad_training_options_are_refused_before_reading_data(tmp_path, capsys, option, value,
                                                             message):
    model = tmp_path / "m.npz"
    r = run_main(capsys, "train", "--model", model, "--train", tmp_path / "never_read.conllu",
                 option, value)
    assert_one_line_error(r, message)
    assert not model.exists() and r.stdout == ""


def test_hostile_model_files_are_one_line_errors(files, tmp_path, capsys):
    from factorebm.modelio import load_arrays, save_arrays
    arrays, meta = load_arrays(files["model"], kind="SequenceTagger")
    for key in ("format_version", "kind", "arrays", "shapes"):
        meta.pop(key, None)
    meta["params"]["n_threads"] = 0
    bad_threads = tmp_path / "threads.npz"
    save_arrays(bad_threads, arrays, meta, kind="SequenceTagger")
    truncated = tmp_path / "cut.npz"
    truncated.write_bytes(files["model"].read_bytes()[:5000])
    for path in (bad_threads, truncated):
        for command in ("tag", "evaluate"):
            r = run_main(capsys, command, "--model", path, files["dev"])
            assert_one_line_error(r, str(path))
    r = run_cli("tag", "--model", bad_threads, files["dev"])        # the real process too
    assert_one_line_error(r, str(bad_threads), "n_threads")


def test_closed_stdin_is_a_one_line_error(files):
    r = subprocess.run(["sh", "-c", f'"$0" -m factorebm.cli tag --model "$1" <&-',
                        sys.executable, str(files["model"])],
                       capture_output=True, text=True, timeout=300)
    assert_one_line_error(r, "standard input is closed")


def test_plain_text_sent_ids_stay_input_line_numbers(files):
    # pdftotext's form feeds and other characters str.splitlines breaks at are not line ends
    text = "The dog\n\fbarks .\x1cI\x0bsaw\x85her\u2028too\n\nGood .\n"
    r = run_cli("tag", "--model", files["model"], "--format", "text", stdin=text)
    assert r.returncode == 0, r.stderr
    ids = [line for line in r.stdout.splitlines() if line.startswith("# sent_id")]
    assert ids == ["# sent_id = 1", "# sent_id = 2", "# sent_id = 4"]
    forms = [line.split("\t")[1] for line in r.stdout.split("\n") if line[:1].isdigit()]
    assert forms == ["The", "dog", "barks", ".", "I", "saw", "her", "too", "Good", "."]


def test_version_and_python_dash_m_factorebm(files):
    r = subprocess.run([sys.executable, "-m", "factorebm", "--version"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == f"factorebm {fe.__version__}"
    r = subprocess.run([sys.executable, "-m", "factorebm", "tag", "--model", str(files["model"]),
                        "-"], input="The dog barks .\n", capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and r.stdout == run_cli("tag", "--model", files["model"], "-",
                                                     stdin="The dog barks .\n").stdout
    r = subprocess.run([sys.executable, "-m", "factorebm"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and "usage: factorebm" in r.stderr


def test_tag_output_file_is_written_atomically_and_devices_directly(files, tmp_path):
    # -o FILE goes through the models' atomic writer: an existing file keeps its mode and a
    # symbolic link stays a link; -o /dev/stdout (not a regular file) is written straight
    expected = run_cli("tag", "--model", files["model"], files["dev"]).stdout
    target = tmp_path / "out.conllu"
    target.write_text("old\n")
    os.chmod(target, 0o600)
    link = tmp_path / "link.conllu"
    link.symlink_to(target)
    r = run_cli("tag", "--model", files["model"], files["dev"], "-o", link)
    assert r.returncode == 0, r.stderr
    assert link.is_symlink() and target.read_text(encoding="utf-8") == expected
    assert (os.stat(target).st_mode & 0o777) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []   # no temp left
    r = run_cli("tag", "--model", files["model"], files["dev"], "-o", "/dev/stdout")
    assert r.returncode == 0, r.stderr
    assert r.stdout == expected


def test_tag_output_failing_midway_leaves_the_old_file(files, tmp_path, monkeypatch, capsys):
    from factorebm import cli, datasets

    def write_half(self, out, codes, labels):
        out.write(b"# half a document\n")
        raise OSError("disk full")

    target = tmp_path / "out.conllu"
    target.write_text("old\n")
    monkeypatch.setattr(datasets.ConlluDocument, "write_codes", write_half)
    assert cli.main(["tag", "--model", str(files["model"]), str(files["dev"]), "-o",
                     str(target)]) == 1
    assert "disk full" in capsys.readouterr().err
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.conllu"]     # no temporary left


def run_program(files, args, prelude=""):
    """``factorebm ARGS`` as the installed program runs it (``factorebm.__main__.run``), after
    ``prelude``."""
    code = (f"import atexit, sys, threading, time\n{prelude}\n"
            f"sys.argv = ['factorebm'] + {list(map(str, args))!r}\n"
            "from factorebm.__main__ import run\nrun()\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)


def test_program_exit_flushes_output_runs_exit_handlers_and_keeps_the_status(files):
    # run() skips the interpreter's teardown: what main printed must still arrive whole
    # (a pipe, block-buffered), exit handlers must still run, the status must be main's
    handler = "atexit.register(print, 'exit handler ran', file=sys.stderr)"
    r = run_program(files, ["tag", "--model", files["model"], files["dev"]], handler)
    assert (r.returncode, r.stderr) == (0, "exit handler ran\n")
    assert r.stdout == run_cli("tag", "--model", files["model"], files["dev"]).stdout
    assert r.stdout.count("\n") > 1000
    r = run_program(files, ["tag", "--model", files["dir"] / "missing.npz", files["dev"]],
                    handler)
    assert r.returncode == 1
    assert r.stderr.endswith("exit handler ran\n") and "missing.npz" in r.stderr


def test_program_exit_waits_for_other_threads(files):
    # a live thread (a Dask client's, say) gets the usual exit, which waits for it
    worker = ("def late():\n    time.sleep(0.3)\n    print('thread finished', file=sys.stderr)\n"
              "threading.Thread(target=late).start()")
    r = run_program(files, ["tag", "--model", files["model"], files["dev"]], worker)
    assert (r.returncode, r.stderr) == (0, "thread finished\n")


def test_tagging_commands_start_no_blas_threads_unless_told_otherwise(files):
    show = ("atexit.register(lambda: print(os.environ.get('OPENBLAS_NUM_THREADS'), "
            "os.environ.get('OPENBLAS_THREAD_TIMEOUT'), file=sys.stderr))")
    unset = ("import os; os.environ.pop('OPENBLAS_NUM_THREADS', None); "
             "os.environ.pop('OPENBLAS_THREAD_TIMEOUT', None); ")
    tag = ["tag", "--model", files["model"], files["dev"]]
    assert run_program(files, tag, unset + show).stderr == "1 4\n"
    told = ("import os; os.environ['OPENBLAS_THREAD_TIMEOUT'] = '12'; "
            "os.environ['OPENBLAS_NUM_THREADS'] = '3'; " + show)
    assert run_program(files, tag, told).stderr == "3 12\n"
    evaluate = ["evaluate", "--model", files["model"], files["dev"]]
    assert run_program(files, evaluate, unset + show).stderr.endswith("1 4\n")
    assert run_program(files, ["--version"], unset + show).stderr == "None None\n"
