"""The OpenAI-compatible teacher against a real server: llama-cpp-python's, on 127.0.0.1."""

import json
import os
import socket
import subprocess
import sys
import time

import httpx
import pandas as pd
import pytest
from fault_proxy import FaultProxy

from llmdistill import assets
from llmdistill.annotate import AnnotationCache, BudgetReached, annotate
from llmdistill.config import TeacherConfig
from llmdistill.errors import TeacherError
from llmdistill.teachers import STATUSES, load_teacher
from llmdistill.teachers.openai_api import parse_label

pytestmark = pytest.mark.integration
LABELS = ["negative", "neutral", "positive"]
TEXTS = ["I hate mondays so much", "what a wonderful day :)", "Flight 22 departs at noon",
         "my bag is lost again", "thanks for the upgrade!", "the meeting is at 3"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(assets.smollm2_gguf()),
         "--model_alias", "smol", "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(url + "/models", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("llama_cpp.server did not start")
    yield url
    proc.terminate()
    proc.wait(30)


@pytest.fixture(autouse=True)
def _close_teachers():
    yield
    while OPEN:
        OPEN.pop().close()


OPEN = []


def teacher(url, **api):
    cfg = TeacherConfig(spec=f"openai:smol@{url}")
    cfg.api = cfg.api.model_copy(update=api)
    t = load_teacher(cfg.spec, LABELS, [], cfg, None)
    OPEN.append(t)
    return t


def frame(texts):
    return pd.DataFrame({"id": [f"r{i}" for i in range(len(texts))], "text": texts})


def test_logprobs_give_probabilities_over_the_labels(server):
    t = teacher(server, concurrency=4)
    anns = t.label_probs(TEXTS)
    for a in anns:
        raw = json.loads(a.raw)
        assert raw["method"] in ("logprobs", "votes")
        if a.status == "ok":
            assert abs(sum(a.probs) - 1) < 1e-9 and 0 < a.label_mass <= 1.0001
    assert sum(a.status == "ok" for a in anns) >= 4
    assert t.label_probs(TEXTS[:2])[0].probs == anns[0].probs  # temperature 0: reproducible


def test_votes_and_reasoning_modes_account_for_every_text(server):
    for mode in ("votes", "reasoning"):
        anns = teacher(server, mode=mode, samples=3, reasoning_max_tokens=48).label_probs(
            TEXTS[:2])
        assert all(a.status in STATUSES for a in anns)
        assert all(json.loads(a.raw)["method"] == mode for a in anns)


def test_injected_faults_end_with_every_text_in_the_ledger(server, tmp_path):
    faults = ["429", "500", "slow", "drop", "badjson", "429", "ok", "500"]
    with FaultProxy(server, faults, slow_seconds=4) as proxy:
        t = teacher(proxy.url, concurrency=2, timeout=2, max_retries=4)
        out = annotate(frame(TEXTS), t, AnnotationCache(tmp_path / "c.sqlite"))
    assert len(out) == len(TEXTS) and set(out["status"]) <= set(STATUSES)
    assert (out["status"] == "ok").sum() >= len(TEXTS) - 1
    assert not proxy.faults, "every injected fault was hit"


def test_budget_stops_cleanly_and_a_rerun_resumes_without_relabelling(server, tmp_path):
    cache = AnnotationCache(tmp_path / "c.sqlite")
    t = teacher(server, concurrency=1, price_input_per_million=1000.0,
                price_output_per_million=1000.0, max_cost=1e-9)
    t.api = t.api.model_copy(update={"concurrency": 1})
    with pytest.raises(BudgetReached, match="rerun with a higher max_cost"):
        annotate(frame(TEXTS * 20), t, cache)
    first = len(cache.get(t.id, t.prompt_hash, [__import__("llmdistill").data.text_hash(x)
                                                 for x in TEXTS]))
    assert 0 < first < len(TEXTS) * 20
    t.api = t.api.model_copy(update={"max_cost": None})
    out = annotate(frame(TEXTS), t, cache)
    assert (out["cost"] > 0).all()


def test_dry_run_estimates_tokens_and_dollars(server):
    est = teacher(server, price_input_per_million=3.0, price_output_per_million=3.0).estimate(
        TEXTS)
    assert est["input_tokens"] > 0 and est["dollars"] > 0 and "approximation" in est["tokenizer"]


def test_wrong_url_unknown_model_and_missing_key_are_one_line_errors(server, tmp_path):
    with pytest.raises(TeacherError, match="cannot reach"):
        teacher(f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(TeacherError, match="unknown model 'nope'"):
        load_teacher(f"openai:nope@{server}", LABELS, [], TeacherConfig(), None)
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    r = subprocess.run([sys.executable, "-m", "llmdistill.cli", "annotate", "--data",
                        str(tmp_path / "d.csv"), "--out", str(tmp_path / "a.parquet"),
                        "--teacher", "openai:gpt-4o-mini"], capture_output=True, text=True,
                       env=env, input=None, timeout=120) if _write_csv(tmp_path) else None
    assert r.returncode == 2 and "OPENAI_API_KEY" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def _write_csv(tmp_path) -> bool:
    (tmp_path / "d.csv").write_text("text,label\ngood,positive\nbad,negative\n")
    return True


def test_free_text_replies_are_parsed_to_labels_or_none():
    assert parse_label("Positive.", LABELS) == "positive"
    assert parse_label("The sentiment is neutral", LABELS) == "neutral"
    assert parse_label("positive or negative", LABELS) is None
    assert parse_label("I cannot help", LABELS) is None


def test_killed_client_resumes_against_the_server_relabelling_nothing(server, tmp_path):
    import signal
    import sqlite3

    def cached(db):
        try:
            with sqlite3.connect(db) as c:
                return {h: (s, p) for h, s, p in
                        c.execute("SELECT text_hash, status, probs FROM annotations")}
        except sqlite3.OperationalError:  # not created yet
            return {}

    env = {**os.environ, "LLMDISTILL_CACHE": str(tmp_path / "cache")}
    db, out = tmp_path / "cache" / "annotations.sqlite", tmp_path / "a.parquet"
    (tmp_path / "c.yaml").write_text("teacher:\n  n_demos: 0\n  api: {concurrency: 2}\n")
    args = [sys.executable, "-m", "llmdistill.cli", "annotate", "--config",
            str(tmp_path / "c.yaml"),
            "--data", "tweets:test", "--limit", "60", "--teacher", f"openai:smol@{server}",
            "--out", str(out)]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len(cached(db)) < 16 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = cached(db)
    assert 16 <= len(before) < 60, "the kill should land midway"
    assert not out.exists()

    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    after = cached(db)
    assert len(after) == 60
    assert all(after[h] == row for h, row in before.items()), "cached texts were relabelled"
    table = pd.read_parquet(out)
    assert len(table) == 60 and set(table["status"]) <= set(STATUSES)


# ---- multi-label -------------------------------------------------------------------------------

ML_LABELS = ["complaint", "question", "praise"]


def multi_teacher(url, **api):
    cfg = TeacherConfig(spec=f"openai:smol@{url}", n_demos=0)
    cfg.api = cfg.api.model_copy(update=api)
    t = load_teacher(cfg.spec, ML_LABELS, [], cfg, None, task="multi_label")
    OPEN.append(t)
    return t


def test_multi_label_logprobs_ask_one_yes_no_question_per_label(server):
    with FaultProxy(server, []) as proxy:
        t = multi_teacher(proxy.url, concurrency=4)
        before = len(proxy.seen)
        anns = t.label_probs(TEXTS[:2])
        requests = len(proxy.seen) - before
        OPEN.remove(t)
        t.close()  # before the proxy stops: no connection is left pending
    assert t.task == "multi_label"
    for a in anns:
        assert a.status in STATUSES
        if a.status == "ok":
            assert len(a.probs) == len(ML_LABELS) and all(0 <= p <= 1 for p in a.probs)
            assert 0 < a.label_mass <= 1.0001
    if all(json.loads(a.raw)["method"] == "logprobs" for a in anns):
        assert requests == len(TEXTS[:2]) * len(ML_LABELS)  # k requests per text
        assert all(len(json.loads(a.raw)["answers"]) == len(ML_LABELS) for a in anns
                   if a.status == "ok")


def test_multi_label_votes_and_reasoning_give_the_share_of_samples_naming_each_label(server):
    for mode in ("votes", "reasoning"):
        anns = multi_teacher(server, mode=mode, samples=3,
                             reasoning_max_tokens=48).label_probs(TEXTS[:2])
        for a in anns:
            assert a.status in STATUSES and json.loads(a.raw)["method"] == mode
            if a.status == "ok":  # a share of 3 samples
                assert all(round(p * 3, 6) in (0, 1, 2, 3) for p in a.probs)


def test_multi_label_prompt_hash_and_dry_run_differ_from_single_label():
    url = "http://127.0.0.1:9/v1"  # nothing listens: a dry run sends nothing
    cfg = TeacherConfig(spec=f"openai:gpt-4o-mini@{url}", n_demos=0)
    single = load_teacher(cfg.spec, ML_LABELS, [], cfg, None, dry_run=True)
    multi = load_teacher(cfg.spec, ML_LABELS, [], cfg, None, dry_run=True, task="multi_label")
    OPEN.extend([single, multi])
    assert single.prompt_hash != multi.prompt_hash
    assert "Any number of these labels may apply" in multi.prompt.prefix
    one, k = single.estimate(TEXTS), multi.estimate(TEXTS)
    assert k["input_tokens"] > 2.5 * one["input_tokens"]  # one request per label


def test_multi_label_samples_are_tallied_per_label():
    from llmdistill.teachers.openai_api import parse_label_list

    assert parse_label_list('["Praise", "complaint"]', ML_LABELS) == (
        ["complaint", "praise"], [])
    assert parse_label_list('{"reason": "x", "labels": ["question", "spam"]}', ML_LABELS) == (
        ["question"], ["spam"])
    assert parse_label_list("[]", ML_LABELS) == ([], [])
    assert parse_label_list("complaint", ML_LABELS) == (None, [])
    cfg = TeacherConfig(spec="openai:m@http://127.0.0.1:9/v1", n_demos=0)
    cfg.api = cfg.api.model_copy(update={"mode": "votes"})
    t = load_teacher(cfg.spec, ML_LABELS, [], cfg, None, dry_run=True, task="multi_label")
    OPEN.append(t)
    replies = ['["complaint"]', '["complaint", "praise"]', "[]", "no idea", '["spam"]']
    ann = t._tally_sets(replies, [parse_label_list(r, ML_LABELS) for r in replies], {})
    assert ann.status == "ok" and ann.probs == [2 / 3, 0.0, 1 / 3]  # 3 samples counted
    assert ann.label_mass == 3 / 5 and json.loads(ann.raw)["unknown_labels"] == ["spam"]
    none = t._tally_sets(["no idea"], [parse_label_list("no idea", ML_LABELS)], {})
    assert none.status == "unparseable" and none.probs is None
