import subprocess
import sys

import pytest


def cli(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "llmdistill.cli", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=120)


@pytest.fixture
def csv(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("body,label\ngood day,positive\nbad day,negative\n")
    return path


@pytest.mark.parametrize("args, message", [
    (["annotate", "--data", "{csv}", "--out", "{tmp}/a.parquet"], "no text column 'text'"),
    (["annotate", "--data", "{csv}", "--out", "{csv}", "--text-column", "body"],
     "already exists"),
    (["annotate", "--data", "{csv}", "--out", "{tmp}/a.parquet", "--text-column", "body",
      "--teacher", "gpt5"], "unknown teacher 'gpt5'"),
    (["annotate", "--data", "{tmp}/nope.csv", "--out", "{tmp}/a.parquet"], "not found"),
    (["run", "--config", "{tmp}/nope.yaml"], "config file"),
    (["train", "--annotations", "{csv}", "--out", "{tmp}/m"], "not an annotation Parquet"),
    (["predict", "--student", "{tmp}"], "no texts"),
    (["predict", "--student", "{tmp}/nope", "hello"], "no such student folder"),
    (["predict", "--student", "{csv}", "hello"], "is a file, not a student folder"),
    (["predict", "--student", "{tmp}", "hello"], "has no config.json"),
    (["serve", "{tmp}/nope"], "no such student folder"),
    (["export", "{tmp}/nope"], "no such student folder"),
    (["run", "--quick", "--full"], "contradict"),
])
def test_bad_input_exits_2_with_one_line_and_no_traceback(tmp_path, csv, args, message):
    args = [a.format(csv=csv, tmp=tmp_path) for a in args]
    r = cli(*args)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_bad_config_key_names_the_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("student:\n  epochz: 3\n")
    r = cli("run", "--config", str(cfg))
    assert r.returncode == 2 and "student.epochz" in r.stderr


def test_debug_flag_shows_the_traceback(tmp_path):
    r = cli("--debug", "run", "--config", str(tmp_path / "nope.yaml"))
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_help_lists_the_pipeline_commands():
    r = cli("--help")
    assert r.returncode == 0
    for cmd in ("run", "annotate", "train", "evaluate", "predict"):
        assert cmd in r.stdout


def test_a_student_folder_without_its_tokenizer_names_the_missing_files(tmp_path,
                                                                       tiny_student_dir):
    import shutil

    folder = tmp_path / "student"
    shutil.copytree(tiny_student_dir, folder)
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (folder / f).unlink(missing_ok=True)
    r = cli("predict", "--student", str(folder), "hello")
    assert r.returncode == 2 and "has no tokenizer files" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "sentencepiece" not in r.stderr
