"""annotate → train → evaluate with the packaged smollm2-135m teacher and minilm-l6 student."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pandas as pd
import pytest

from llmdistill.config import DataConfig
from llmdistill.data import load_dataset

pytestmark = pytest.mark.integration


def cli(*args, env, check=True):
    r = subprocess.run([sys.executable, "-m", "llmdistill.cli", *args], capture_output=True,
                       text=True, env=env, timeout=600)
    if check:
        assert r.returncode == 0, r.stderr[-2000:]
    return r


def cached_rows(db):
    if not db.exists():
        return {}
    with sqlite3.connect(db) as c:
        try:
            return {h: (s, p, t) for h, s, p, t in
                    c.execute("SELECT text_hash, status, probs, created FROM annotations")}
        except sqlite3.OperationalError:  # table not created yet
            return {}


@pytest.fixture
def env(tmp_path):
    return {**os.environ, "LLMDISTILL_CACHE": str(tmp_path / "cache")}


def test_killed_annotation_run_resumes_relabelling_nothing_and_losing_nothing(tmp_path, env):
    db = tmp_path / "cache" / "annotations.sqlite"
    out = tmp_path / "a.parquet"
    args = ["annotate", "--data", "tweets:test", "--limit", "80", "--teacher", "smollm2-135m",
            "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "llmdistill.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len(cached_rows(db)) < 20 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = cached_rows(db)
    assert 20 <= len(before) < 80, "the kill should land midway"
    assert not out.exists(), "a killed run must not leave a store behind"

    cli(*args, env=env)
    after = cached_rows(db)
    assert len(after) == 80
    assert all(after[h] == row for h, row in before.items()), "cached texts were relabelled"
    table = pd.read_parquet(out)
    assert len(table) == 80 and (table["status"] == "ok").all()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_annotate_train_evaluate_end_to_end(tmp_path, env):
    ds = load_dataset(DataConfig())
    train = tmp_path / "train.csv"
    test = tmp_path / "test.csv"
    ds.splits["train"].head(100).to_csv(train, index=False)
    ds.splits["test"].head(60).to_csv(test, index=False)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("student:\n  epochs: 1\n  batch_size: 16\nteacher:\n  n_demos: 3\n")
    common = ["--teacher", "smollm2-135m", "--demos", "tweets:train", "--config", str(cfg)]
    cli("annotate", "--data", str(train), "--out", str(tmp_path / "train.parquet"), *common,
        env=env)
    cli("annotate", "--data", str(test), "--out", str(tmp_path / "test.parquet"), *common,
        env=env)
    cli("train", "--annotations", str(tmp_path / "train.parquet"), "--out",
        str(tmp_path / "student"), "--config", str(cfg), env=env)
    cli("evaluate", "--student", str(tmp_path / "student"), "--data", str(test),
        "--teacher-annotations", str(tmp_path / "test.parquet"), "--out",
        str(tmp_path / "report"), env=env)

    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["n"] == 60
    for who in ("teacher", "student"):
        acc = metrics[who]["accuracy"]
        assert acc["low"] <= acc["value"] <= acc["high"]
    assert 0 <= metrics["student_vs_teacher"]["p_value"] <= 1
    assert "McNemar" in (tmp_path / "report" / "report.md").read_text()

    r = cli("predict", "--student", str(tmp_path / "student"), "what a lovely day", env=env)
    assert json.loads(r.stdout)["label"] in ("negative", "neutral", "positive")

    # the model folder is a plain HF folder: transformers loads it without llmdistill
    code = ("from transformers import pipeline; import sys; "
            "p = pipeline('text-classification', model=sys.argv[1]); print(p('great')[0]['label'])")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "student")],
                       capture_output=True, text=True, timeout=300)
    assert r.stdout.strip() in ("negative", "neutral", "positive"), r.stderr[-1000:]


def test_run_does_the_whole_pipeline_and_a_rerun_reuses_everything(tmp_path, env):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"out: {tmp_path / 'run'}\n"
                   "data: {max_train: 40, max_validation: 20, max_test: 30}\n"
                   "teacher: {spec: smollm2-135m, n_demos: 3}\n"
                   "student: {epochs: 1, batch_size: 16}\n"
                   "evaluate: {bootstrap: 200, speed_texts: 32}\n")
    first = cli("run", "--config", str(cfg), env=env)
    assert "student vs teacher vs gold" in first.stdout
    for name in ("annotations.parquet", "metrics.json", "report.md", "predictions.parquet",
                 "student/model.safetensors", "student/README.md"):
        assert (tmp_path / "run" / name).exists(), name
    weights = (tmp_path / "run" / "student" / "model.safetensors").stat().st_mtime
    second = cli("run", "--config", str(cfg), env=env)
    assert "reusing" in second.stderr
    assert (tmp_path / "run" / "student" / "model.safetensors").stat().st_mtime == weights
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    demos = metrics["info"]["manifest"]["demos"]
    assert len(demos) == 3
    preds = pd.read_parquet(tmp_path / "run" / "predictions.parquet")
    assert not set(demos) & set(preds["id"]), "demos must not be evaluated"


def test_run_with_two_teachers_a_label_model_and_a_review_round_trip(tmp_path, env):
    """Two teachers (the same model with other demos) → stacked label model, confident learning,
    one self-training round; then `review` and the reviewed labels back as the anchor."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"out: {tmp_path / 'run'}\n"
                   "data: {max_train: 60, max_validation: 20, max_test: 30}\n"
                   "teacher: {spec: smollm2-135m, n_demos: 3}\n"
                   "teachers: [{demo_seed: 7}, {demo_seed: 8}]\n"
                   "label_model: {method: dawid_skene, calibration: temperature}\n"
                   "confident: {action: downweight, folds: 3}\n"
                   "self_training: {rounds: 1, max_pool: 40, threshold: 0.0}\n"
                   "student: {epochs: 1, batch_size: 16, anchor_size: 30}\n"
                   "evaluate: {bootstrap: 200, speed_texts: 32}\n")
    cli("run", "--config", str(cfg), env=env)
    store = pd.read_parquet(tmp_path / "run" / "annotations.parquet")
    assert {"t0_status", "t1_status", "t0_prob_neutral", "t1_label", "entropy"} <= set(store)
    ok = store["status"] == "ok"
    assert ok.any()
    sums = store.loc[ok, ["prob_negative", "prob_neutral", "prob_positive"]].sum(axis=1)
    assert (sums - 1).abs().max() < 1e-6
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    rows = metrics["teachers"]["rows"]
    assert len(rows) == 2 and metrics["teachers"]["label_model"]["method"] == "dawid_skene"
    assert "Teachers and the label model" in (tmp_path / "run" / "report.md").read_text()
    assert "Teachers and the label model" in (tmp_path / "run" / "report.html").read_text()

    cli("review", str(tmp_path / "run"), "--k", "12", env=env)
    review = pd.read_csv(tmp_path / "run" / "review" / "review.csv", dtype=str)
    assert len(review) == 12
    assert not set(review["id"]) & set(store.loc[store["split"] != "train", "id"])
    gold = dict(zip(store["id"], store["gold"], strict=True))
    review["label"] = review["id"].map(gold)
    review.to_csv(tmp_path / "reviewed.csv", index=False)
    cli("run", "--config", str(cfg), "--out", str(tmp_path / "run2"),
        "--anchor", str(tmp_path / "reviewed.csv"), env=env)
    manifest = json.loads((tmp_path / "run2" / "metrics.json").read_text())["teachers"]
    assert manifest["anchor"]["rows"] == 12


def test_a_multi_label_run_end_to_end_gives_label_sets_everywhere(tmp_path, env):
    """bbc-multi with the packaged teacher asked yes/no per topic → a sigmoid student → set
    metrics, report, predict and the model card; single-label stays what it was elsewhere."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"out: {tmp_path / 'run'}\n"
                   "data: {source: bbc-multi, task: multi_label, test_fraction: 0.15,\n"
                   "       max_train: 24, max_validation: 8, max_test: 16}\n"
                   "teacher: {spec: smollm2-135m, task: 'Which news topics does the text cover?',\n"
                   "          n_demos: 2, max_text_tokens: 96, label_descriptions: {}}\n"
                   "student: {epochs: 1, batch_size: 8, max_length: 64}\n"
                   "evaluate: {bootstrap: 100, speed_texts: 16}\n")
    cli("run", "--config", str(cfg), env=env)
    run = tmp_path / "run"
    store = pd.read_parquet(run / "annotations.parquet")
    labels = ["business", "entertainment", "politics", "sports", "tech"]
    probs = store.loc[store["status"] == "ok", [f"prob_{lab}" for lab in labels]]
    assert len(probs) and ((probs >= 0) & (probs <= 1)).all().all()
    assert "truncated" in store.columns
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["task"] == "multi_label"
    for key in ("micro_f1", "macro_f1", "subset_accuracy", "hamming_loss"):
        m = metrics["student"][key]
        assert m["low"] <= m["value"] <= m["high"]
    assert "micro-F1" in (run / "report.md").read_text()
    assert "<table>" in (run / "report.html").read_text()
    record = json.loads((run / "student" / "llmdistill.json").read_text())
    assert record["task"] == "multi_label" and len(record["thresholds"]) == len(labels)
    out = cli("predict", "--student", str(run / "student"), "sport and tech news today",
              env=env).stdout
    answer = json.loads(out.splitlines()[0])
    assert set(answer["labels"]) <= set(labels) and set(answer["probs"]) == set(labels)
