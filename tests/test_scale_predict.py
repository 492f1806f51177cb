"""`predict --engine ray`: Ray Data batch prediction on a local 2-CPU cluster on 127.0.0.1.

Every Ray run is compared with a one-process `StudentClassifier.predict_proba` over the same
texts (labels equal, probabilities within 1e-5) and checked for each input row exactly once;
never a model's answer on one text.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from llmdistill.cli import app
from llmdistill.config import EngineConfig
from llmdistill.data import clean_text
from llmdistill.errors import DataError, UsageError
from llmdistill.scale_predict import (
    StudentReplica,
    _named_error,
    check_ray_output,
    input_shards,
    predict_on_ray,
    read_shard,
)
from llmdistill.student.predict import INT8_FILE, ONNX_DIR, StudentClassifier

LABELS = ["negative", "neutral", "positive"]
PROBS = [f"prob_{lab}" for lab in LABELS]


def _invoke(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray cluster for the module: 2 CPUs, loopback only, no dashboard.

    `start_local` keeps every Ray server on 127.0.0.1 (and checks it).
    """
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    from llmdistill.scale.cluster import start_local

    if ray.is_initialized():  # another module's cluster: this module wants its own 2 CPUs
        ray.shutdown()
    start_local(ray, num_cpus=2, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def shards(tmp_path_factory, toy_annotations) -> tuple[Path, pd.DataFrame]:
    """300 toy texts in four shards of three formats, two with an id column and two without,
    one in a subfolder; plus files the reader must skip. Returns the folder and the expected
    id → cleaned text frame."""
    root = tmp_path_factory.mktemp("shards") / "in"
    (root / "sub").mkdir(parents=True)
    frame = toy_annotations(300, seed=5)[["id", "text"]].copy()
    frame.loc[0, "text"] = "  great \t  day\n "  # cleaning: whitespace normalised
    frame.loc[1, "text"] = "caf\u00e9 was the worst"
    parts = [frame.iloc[i:i + 75].reset_index(drop=True) for i in range(0, 300, 75)]
    parts[0].to_csv(root / "a.csv", index=False)
    parts[1][["text"]].to_csv(root / "b.csv", index=False)
    parts[2][["text"]].to_json(root / "c.jsonl", orient="records", lines=True)
    parts[3].to_parquet(root / "sub" / "d.parquet", index=False)
    (root / "_SUCCESS").write_text("")
    (root / ".a.csv.tmp-1").write_text("text\nnot an input\n")
    expected = pd.concat([
        parts[0],
        parts[1].assign(id=[f"b.csv:r{i}" for i in range(len(parts[1]))]),
        parts[2].assign(id=[f"c.jsonl:r{i}" for i in range(len(parts[2]))]),
        parts[3],
    ])
    expected["text"] = expected["text"].map(clean_text)
    return root, expected.reset_index(drop=True)


@pytest.fixture(scope="module")
def fp32_student_dir(exported_student_dir, tmp_path_factory) -> Path:
    """The exported student without its int8 file, so `auto` runs the fp32 ONNX export.

    Dynamic int8 quantization scales activations per batch, so an int8 answer depends on which
    texts share its batch; fp32 answers do not (beyond float rounding), which is what a
    comparison of two batchings needs.
    """
    out = tmp_path_factory.mktemp("fp32") / "student"
    shutil.copytree(exported_student_dir, out)
    (out / ONNX_DIR / INT8_FILE).unlink()
    return out


def _assert_matches_one_process(out: Path, expected: pd.DataFrame, student: Path,
                                backend: str) -> None:
    """OUTDIR holds every expected id exactly once, with the one-process run's answers."""
    files = sorted(out.glob("*.parquet"))
    assert files and [p.name for p in out.iterdir() if p.suffix != ".parquet"] == []
    got = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    assert list(got.columns) == ["id", "text", "label", *PROBS]
    assert got["id"].is_unique and sorted(got["id"]) == sorted(expected["id"])
    got = got.set_index("id").loc[expected["id"]]
    assert got["text"].tolist() == expected["text"].tolist()
    clf = StudentClassifier.load(student, backend=backend)  # type: ignore[arg-type]
    ref = clf.predict_proba(expected["text"].tolist())
    assert got["label"].tolist() == [LABELS[i] for i in ref.argmax(axis=1)]
    np.testing.assert_allclose(got[PROBS].to_numpy(), ref, atol=1e-5, rtol=0)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def test_reader_ids_come_from_the_id_column_else_file_and_row(shards, tmp_path) -> None:
    root, expected = shards
    files, folder = input_shards(root)
    assert [f.relative_to(folder).as_posix() for f in files] == [
        "a.csv", "b.csv", "c.jsonl", "sub/d.parquet"]
    rows = pd.concat([frame for f in files for frame in read_shard(
        f, "text", f"{f.relative_to(folder).as_posix()}:", chunk_rows=7)], ignore_index=True)
    pd.testing.assert_frame_equal(rows, expected[["id", "text"]])
    single = tmp_path / "one.csv"
    single.write_text("text,id\nfirst,007\nsecond,008\n")
    assert input_shards(single) == ([single.resolve()], None)
    assert [r for f in read_shard(single, "text", None) for r in f["id"]] == ["007", "008"]
    single.write_text('text\nfirst\n"   "\n')
    with pytest.raises(DataError, match=r"one.csv: empty or whitespace text at row 2"):
        list(read_shard(single, "text", None))


def test_ray_cli_matches_the_one_process_path_with_the_onnx_export(
        ray_cluster, shards, fp32_student_dir, tmp_path) -> None:
    root, expected = shards
    out = tmp_path / "preds"
    r = _invoke("predict", "--student", str(fp32_student_dir), "--engine", "ray",
                "--replicas", "2", "--input", str(root), "--out", str(out))
    assert r.exit_code == 0, (r.output, r.exception)
    said = " ".join(r.output.split())
    assert f"{len(expected)} texts from 4 input file(s)" in said and "backend onnx-fp32" in said
    _assert_matches_one_process(out, expected, fp32_student_dir, "auto")


def test_a_replica_killed_mid_run_is_restarted_and_nothing_is_lost_or_doubled(
        ray_cluster, shards, tiny_student_dir, tmp_path) -> None:
    root, expected = shards
    marker, inits = tmp_path / "kill-one-replica", tmp_path / "inits"
    marker.touch()
    inits.mkdir()

    class DiesOnFirstBatch(StudentReplica):
        """The first replica to take a batch while the marker exists deletes it and exits."""

        def __init__(self, *args, **kwargs) -> None:
            (inits / uuid.uuid4().hex).touch()
            super().__init__(*args, **kwargs)

        def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
            try:
                marker.unlink()
            except FileNotFoundError:
                return super().__call__(batch)
            os._exit(1)

    out = tmp_path / "preds"
    result = predict_on_ray(tiny_student_dir, root, out,
                            EngineConfig(name="ray", replicas=2, max_restarts=2),
                            backend="torch", rows_per_call=16, replica=DiesOnFirstBatch)
    assert not marker.exists()  # a replica did die
    assert len(list(inits.iterdir())) == 3  # two replicas and one restart
    assert (result.rows, result.inputs, result.backend) == (len(expected), 4, "torch")
    _assert_matches_one_process(out, expected, tiny_student_dir, "torch")


def test_a_failed_job_leaves_no_output_and_names_the_bad_row(ray_cluster, tiny_student_dir,
                                                             tmp_path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "good.csv").write_text("text\ngreat day\nawful day\n")
    (src / "bad.csv").write_text("text\n" + "happy\n" * 40 + '"  "\n')
    out = tmp_path / "preds"
    with pytest.raises(DataError, match=r"bad.csv: empty or whitespace text at row 41: remove"):
        predict_on_ray(tiny_student_dir, src, out, EngineConfig(name="ray", replicas=1),
                       rows_per_call=8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_a_replica_that_cannot_load_the_student_is_one_usage_error(ray_cluster, tiny_student_dir,
                                                                  toy_parity_csv,
                                                                  tmp_path) -> None:
    broken = tmp_path / "student"
    shutil.copytree(tiny_student_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # passes the driver's folder check
    out = tmp_path / "preds"
    with pytest.raises(UsageError, match=r"a Ray replica cannot load the student .*"
                                         r"SafetensorError.*: check that the folder is complete"):
        predict_on_ray(broken, toy_parity_csv, out, EngineConfig(name="ray", replicas=1))
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--input", "{csv}"], "needs --input DATA"),
    (["--out", "{tmp}/preds"], "needs --input DATA"),
    (["--input", "{csv}", "--out", "{tmp}/preds.parquet"], "not a .parquet file"),
    (["--input", "{csv}", "--out", "{tmp}"], "already exists"),
    (["--input", "{tmp}/nope", "--out", "{tmp}/preds"], "not found"),
    (["--input", "-", "--out", "{tmp}/preds"], "cannot read stdin"),
    (["--input", "{csv}", "--out", "{tmp}/preds", "--replicas", "0"],
     "--replicas 0: input should be greater than or equal to 1"),
    (["--input", "{csv}", "--out", "{tmp}/preds", "--text-column", "body"],
     "no text column 'body'"),
    (["--input", "{csv}", "--out", "{tmp}/preds", "a text"], "not TEXT arguments"),
])
def test_bad_ray_flags_are_usage_errors_before_any_work(exported_student_dir, toy_parity_csv,
                                                        tmp_path, args, message) -> None:
    args = [a.format(tmp=tmp_path, csv=toy_parity_csv) for a in args]
    r = _invoke("predict", "--student", str(exported_student_dir), "--engine", "ray", *args)
    assert isinstance(r.exception, UsageError), r.output
    assert message in str(r.exception)
    assert not (tmp_path / "preds").exists()


def test_a_user_error_is_found_by_name_in_a_remote_traceback() -> None:
    text = ("ray::MapWorker.submit() (pid=1)\n  File \"x.py\", line 3\n"
            "llmdistill.errors.DataError: a.csv: empty or whitespace text at row 4: remove it\n")
    found = _named_error(text)
    assert type(found) is DataError and str(found).endswith("row 4: remove it")
    assert _named_error("ValueError: no llmdistill error here") is None


def test_ray_flags_without_the_ray_engine_are_refused(exported_student_dir) -> None:
    r = _invoke("predict", "--student", str(exported_student_dir), "--replicas", "2", "a text")
    assert isinstance(r.exception, UsageError) and "add --engine ray" in str(r.exception)
    r = _invoke("predict", "--student", str(exported_student_dir), "--engine", "spark", "a")
    assert isinstance(r.exception, UsageError)
    assert "--engine spark: input should be 'local' or 'ray'" in str(r.exception)
    with pytest.raises(UsageError, match="already exists"):
        check_ray_output(exported_student_dir)
    check_ray_output(exported_student_dir.parent / "preds.v2")  # a dotted folder name is fine


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([sys.executable, "-m", "llmdistill.cli", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_no_cluster_at_the_address_exits_2_with_one_line(exported_student_dir,
                                                         toy_parity_csv, tmp_path) -> None:
    pytest.importorskip("ray")
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = _cli("predict", "--student", str(exported_student_dir), "--engine", "ray",
             "--ray-address", f"127.0.0.1:{port}", "--input", str(toy_parity_csv),
             "--out", str(tmp_path / "preds"))
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"no Ray cluster at 127.0.0.1:{port}" in lines[0], r.stderr
    assert "ray start --head" in lines[0] and not (tmp_path / "preds").exists()


def test_the_local_engine_never_imports_ray(exported_student_dir, toy_parity_csv,
                                            tmp_path) -> None:
    out = tmp_path / "p.parquet"
    code = ("import sys\n"
            "from typer.testing import CliRunner\n"
            "from llmdistill.cli import app\n"
            f"r = CliRunner().invoke(app, ['predict', '--student', {str(exported_student_dir)!r},"
            f" '--input', {str(toy_parity_csv)!r}, '--out', {str(out)!r}])\n"
            "assert r.exit_code == 0, r.output\n"
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1].replace("'", '"')) == []
    assert len(pd.read_parquet(out)) == len(pd.read_csv(toy_parity_csv))
