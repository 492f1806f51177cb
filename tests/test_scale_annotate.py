"""`annotate --engine ray`: smollm2-135m replicas on a local Ray cluster (127.0.0.1, 2 CPUs).

One module-scoped cluster. The reference is a one-process run with 1 llama.cpp thread; every
replica also gets 1 thread (`cpus_per_replica: 1`), so the arithmetic is the same (llama.cpp's
results can change with the thread count, not with the process). No assertion is about the
model's answer to any one text: only store invariants and agreement with the reference.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmdistill.annotate import AnnotationCache, BudgetReached, annotate, read_annotations
from llmdistill.config import DataConfig, EngineConfig, TeacherConfig
from llmdistill.data import resolve
from llmdistill.errors import UsageError
from llmdistill.teachers import Annotation, Teacher, load_teacher

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.integration

N_TEXTS = 40
TEACHER = "smollm2-135m"
PROBS_ATOL = 1e-6  # observed: identical (max |Δp| 0.0, even 1 vs 2 threads, on this CPU);
# the slack is for float32 reduction order elsewhere, far below a label-changing difference


@pytest.fixture(scope="module")
def cluster():
    """A private 2-CPU Ray cluster on 127.0.0.1; yields its address for CLI drivers."""
    from llmdistill.scale.cluster import require_ray, start_local

    require_ray()
    if ray.is_initialized():
        ray.shutdown()
    start_local(ray, num_cpus=2, logging_level="error")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def tweets() -> tuple[pd.DataFrame, list[str], list[dict], TeacherConfig]:
    """40 test tweets, the label set, 3 demos from train, a 1-thread teacher config."""
    from llmdistill.annotate import demos_for

    frame, labels = resolve("tweets:test", DataConfig())
    cfg = TeacherConfig(spec=TEACHER, n_demos=3, n_threads=1)
    demos = demos_for("tweets:train", labels, cfg, DataConfig())
    return frame.head(N_TEXTS).reset_index(drop=True), labels, demos, cfg


@pytest.fixture(scope="module")
def reference(tweets, tmp_path_factory) -> pd.DataFrame:
    """The one-process run: the probabilities every Ray run must reproduce, by text hash."""
    frame, labels, demos, cfg = tweets
    cache = AnnotationCache(tmp_path_factory.mktemp("ref") / "annotations.sqlite")
    teacher = load_teacher(cfg.spec, labels, demos, cfg, None)
    try:
        table = annotate(frame, teacher, cache)
    finally:
        teacher.close()
        cache.close()
    return table.set_index("text_hash")


def prob_columns(labels: list[str]) -> list[str]:
    return [f"prob_{lab}" for lab in labels]


def assert_matches_reference(table: pd.DataFrame, reference: pd.DataFrame,
                             labels: list[str]) -> None:
    """Every text exactly once, all ok, each text's probabilities those of one process."""
    assert len(table) == N_TEXTS and table["text_hash"].is_unique
    assert set(table["text_hash"]) == set(reference.index)
    assert (table["status"] == reference.loc[table["text_hash"], "status"].to_numpy()).all()
    ours = table.set_index("text_hash").loc[reference.index, prob_columns(labels)].to_numpy()
    np.testing.assert_allclose(ours, reference[prob_columns(labels)].to_numpy(),
                               atol=PROBS_ATOL, rtol=0)


def cached_rows(db: Path) -> dict[str, tuple]:
    if not db.exists():
        return {}
    with sqlite3.connect(db) as c:
        try:
            return {h: (s, p, t) for h, s, p, t in
                    c.execute("SELECT text_hash, status, probs, created FROM annotations")}
        except sqlite3.OperationalError:  # the driver has not created the table yet
            return {}


def cli(*args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmdistill.cli", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


def test_two_replicas_match_one_process_and_survive_a_killed_replica(
        cluster, tweets, reference, tmp_path, monkeypatch):
    from llmdistill import pipeline
    from llmdistill.scale.annotate import RayTeacher

    frame, labels, demos, cfg = tweets
    stream = RayTeacher.label_stream
    delivered: list[str] = []
    after: dict = {}

    def kill_replica_midway(self, todo):
        """The real stream; after the first batch lands, replica 0 (work queued) is killed."""
        before = ray.get(self.actors[0].describe.remote())
        for i, (hashes, anns) in enumerate(stream(self, todo)):
            if i == 0:
                ray.kill(self.actors[0], no_restart=False)
            delivered.extend(hashes)
            yield hashes, anns
        after.update(before=before, now=ray.get(self.actors[0].describe.remote()))

    monkeypatch.setattr(RayTeacher, "label_stream", kill_replica_midway)
    engine = EngineConfig(name="ray", replicas=2, cpus_per_replica=1, max_restarts=3)
    table, manifest = pipeline.annotate_texts(frame, labels, demos, cfg, tmp_path, engine=engine)

    assert sorted(delivered) == sorted(set(reference.index)), "a text was lost or labelled twice"
    assert after["now"]["pid"] != after["before"]["pid"], "replica 0 was not restarted"
    assert_matches_reference(table, reference, labels)
    assert len(cached_rows(tmp_path / "annotations.sqlite")) == N_TEXTS
    assert manifest["teacher"]["id"] == reference["teacher"].iloc[0]
    assert manifest["prompt_hash"] == reference["prompt_hash"].iloc[0]
    assert manifest["engine"]["replicas"] == 2 and manifest["texts"] == N_TEXTS


def stop_midway(args: list[str], env: dict, db: Path, sig: signal.Signals,
                after_rows: int) -> tuple[int, str]:
    """Start a CLI driver, send it `sig` once the cache holds `after_rows` rows.

    The driver starts with SIGINT at its default, as under a terminal: an ignored SIGINT is
    inherited across exec, and some earlier test in the same pytest process may have left it
    ignored (then Python installs no KeyboardInterrupt handler and Ctrl-C does nothing).
    """
    proc = subprocess.Popen([sys.executable, "-m", "llmdistill.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 180
    while len(cached_rows(db)) < after_rows and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    return proc.returncode, stderr


def test_interrupted_and_killed_drivers_resume_from_the_cache_relabelling_nothing(
        cluster, tweets, tmp_path):
    """Ctrl-C, then kill -9, of CLI drivers midway; the rerun labels only what is missing.

    120 texts, not the module's 40: with 2 replicas × 2 batches of 8 in flight, 40 can all be
    committed before a signal sent after the first 8 lands, and the test would prove nothing.
    """
    frame = resolve("tweets:test", DataConfig())[0].head(3 * N_TEXTS).reset_index(drop=True)
    n = len(frame)
    data = tmp_path / "tweets.csv"
    frame[["id", "text", "label"]].to_csv(data, index=False)
    (tmp_path / "run.yaml").write_text("engine: {name: ray, replicas: 2, cpus_per_replica: 1}\n")
    env = {**os.environ, "LLMDISTILL_CACHE": str(tmp_path / "cache")}
    db = tmp_path / "cache" / "annotations.sqlite"
    out = tmp_path / "a.parquet"
    args = ["annotate", "--data", str(data), "--teacher", TEACHER, "--config",  # zero-shot
            str(tmp_path / "run.yaml"), "--ray-address", cluster, "--out", str(out)]

    code, stderr = stop_midway(args, env, db, signal.SIGINT, after_rows=8)
    first = cached_rows(db)
    assert code == 130 and "interrupted: rerun the same command" in stderr, stderr[-1500:]
    assert 8 <= len(first) <= n - 16, "the Ctrl-C should land early"
    code, stderr = stop_midway(args, env, db, signal.SIGKILL, after_rows=len(first) + 8)
    second = cached_rows(db)
    assert len(first) < len(second) < n, f"the kill should land midway: {stderr[-1500:]}"
    assert not out.exists(), "a stopped run must not leave a store behind"

    rerun = cli(*args, env=env)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    now = cached_rows(db)
    assert len(now) == n
    assert all(now[h] == row for h, row in second.items()), "cached texts were relabelled"
    assert all(second[h] == row for h, row in first.items()), "cached texts were relabelled"
    table, manifest = read_annotations(out)
    assert len(table) == n and table["text_hash"].is_unique
    assert set(table["text_hash"]) == set(now) and (table["status"] == "ok").all()
    assert manifest["engine"]["name"] == "ray" and manifest["engine"]["replicas"] == 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case", ["no cluster", "malformed address", "replicas 0",
                                  "more replicas than CPUs", "model cannot load"])
def test_bad_input_is_one_line_with_the_fix_and_exit_2(case, cluster, tmp_path):
    data = tmp_path / "t.csv"
    pd.DataFrame({"text": ["good", "bad"], "label": ["positive", "negative"]}).to_csv(
        data, index=False)
    flags, expected = {
        "no cluster": (["--ray-address", f"127.0.0.1:{free_port()}"],
                       "no Ray cluster at 127.0.0.1:"),
        "malformed address": (["--ray-address", "head-node"], "is not HOST:PORT"),
        "replicas 0": (["--replicas", "0"], "--replicas 0: input should be greater than"),
        "more replicas than CPUs": (["--ray-address", cluster, "--replicas", "3"],
                                    "the Ray cluster has 2 CPUs but 3 replicas"),
        "model cannot load": (["--ray-address", cluster, "--teacher",
                               f"llamacpp:{tmp_path / 'missing.gguf'}"],
                              "2 of 2 Ray replicas cannot load the teacher"),
    }[case]
    env = {**os.environ, "LLMDISTILL_CACHE": str(tmp_path / "cache")}
    r = cli("annotate", "--data", str(data), "--out", str(tmp_path / "a.parquet"),
            "--engine", "ray", *flags, env=env, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], r.stderr
    if case == "model cannot load":
        assert lines[0].count("not found") == 1 and "check the path" in lines[0]


def test_ray_missing_or_too_old_is_a_usage_error(monkeypatch):
    from llmdistill.scale.cluster import require_ray

    monkeypatch.setattr(ray, "__version__", "2.9.3")
    with pytest.raises(UsageError, match=r"Ray 2\.9\.3 is too old .* pip install -U"):
        require_ray()
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(UsageError, match=r"pip install 'llmdistill\[ray\]'"):
        require_ray()


def test_local_engine_never_imports_ray():
    code = ("import sys, llmdistill.annotate, llmdistill.pipeline, llmdistill.cli; "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


class Priced(Teacher):
    """An instant in-process teacher whose every answer costs $0.01."""

    id, labels, prompt_hash, info, batch_size = "priced", ["a", "b"], "p", {}, 2

    def __init__(self, cap: float | None) -> None:
        self.cap, self.spent, self.sent = cap, 0.0, []

    def over_budget(self) -> bool:
        return self.cap is not None and self.spent >= self.cap

    def label_probs(self, texts: list[str]) -> list[Annotation]:
        self.sent += texts
        self.spent += 0.01 * len(texts)
        return [Annotation([0.5, 0.5], "ok", 0.0, cost=0.01) for _ in texts]


class PricedReplica:
    """Stands in for a replica's handle: `label.remote(texts)` puts priced answers in Ray."""

    def __init__(self, sent: list[str]) -> None:
        self.sent, self.label = sent, self

    def remote(self, texts: list[str]):
        self.sent.extend(texts)
        return ray.put([Annotation([0.5, 0.5], "ok", 0.0, cost=0.01) for _ in texts])


def priced_ray_teacher(cap: float | None, sent: list[str], replicas: int = 2):
    """A RayTeacher over stand-in handles (the stream and budget code are the real ones)."""
    from llmdistill.scale.annotate import RayTeacher
    from llmdistill.scale.cluster import Cluster

    rt = RayTeacher.__new__(RayTeacher)
    rt.cluster, rt.engine = Cluster(ray, "test", owned=False), EngineConfig(replicas=replicas)
    rt.actors = [PricedReplica(sent) for _ in range(replicas)]
    rt.id, rt.labels, rt.prompt_hash, rt.batch_size = "priced", ["a", "b"], "p", 2
    rt.max_cost, rt.spent = cap, 0.0
    return rt


def test_budget_cap_stops_sending_commits_what_was_sent_and_a_rerun_resumes(cluster, tmp_path):
    from llmdistill.scale.annotate import IN_FLIGHT

    frame = pd.DataFrame({"id": range(20), "text": [f"text {i}" for i in range(20)]})
    local = Priced(cap=0.025)
    with pytest.raises(BudgetReached, match="rerun with a higher max_cost"):
        annotate(frame, local, AnnotationCache(tmp_path / "local.sqlite"))
    sent: list[str] = []
    rt = priced_ray_teacher(0.025, sent)
    cache = AnnotationCache(tmp_path / "ray.sqlite")
    with pytest.raises(BudgetReached, match="rerun with a higher max_cost"):
        annotate(frame, rt, cache, labeller=rt.label_stream)
    committed = cached_rows(tmp_path / "ray.sqlite")
    assert len(local.sent) == 4 and set(committed) and len(committed) == len(sent)
    assert len(sent) <= len(local.sent) + 2 * IN_FLIGHT * rt.batch_size, "sent past the cap"
    assert rt.spent == pytest.approx(0.01 * len(sent)) and rt.spent >= 0.025

    rerun = priced_ray_teacher(None, sent)
    table = annotate(frame, rerun, cache, labeller=rerun.label_stream)
    assert (table["status"] == "ok").all() and len(cached_rows(tmp_path / "ray.sqlite")) == 20
    assert sorted(sent) == sorted(frame["text"]), "a text was sent twice or never"
