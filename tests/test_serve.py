"""`llmdistill serve`: classify, health, abuse answered with 4xx JSON, the teacher cascade.

Servers run in a thread on 127.0.0.1 with a port the OS picks, and are stopped by the fixture.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import uvicorn

from llmdistill.cascade import cascade_curve, cascade_markdown, curve_for_report
from llmdistill.config import ServeConfig
from llmdistill.errors import DataError, UsageError
from llmdistill.serve import create_app
from llmdistill.student.predict import StudentClassifier
from llmdistill.teachers.base import Annotation, Teacher

LABELS = ["negative", "neutral", "positive"]
LIMITS = {"max_texts": 5, "max_chars": 50, "max_body_bytes": 2048}


@contextmanager
def running(app) -> Iterator[str]:
    """Serve `app` on 127.0.0.1 (a free port) in a thread; yield its base URL; stop it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


class StubTeacher(Teacher):
    """Says neutral; fails on texts containing FAIL; records that calls never overlap."""

    id = "stub"
    prompt_hash = "stub"
    info: dict = {}

    def __init__(self) -> None:
        self.labels = list(LABELS)
        self.calls: list[list[str]] = []
        self.active = 0
        self.overlapped = False

    def label_probs(self, texts: list[str]) -> list[Annotation]:
        self.active += 1
        self.overlapped |= self.active > 1
        time.sleep(0.01)
        self.calls.append(list(texts))
        self.active -= 1
        return [Annotation(None, "error", 0.0) if "FAIL" in t else
                Annotation([0.1, 0.8, 0.1], "ok", 0.01) for t in texts]


@pytest.fixture(scope="module")
def student(exported_student_dir: Path) -> StudentClassifier:
    return StudentClassifier.load(exported_student_dir, threads=1)


@pytest.fixture(scope="module")
def url(student) -> Iterator[str]:
    with running(create_app(student, ServeConfig(**LIMITS), model_name="tiny")) as base:
        yield base


def test_classify_answers_each_text_in_order_as_the_student_does(url, student) -> None:
    texts = ["I love it, wonderful", "awful and broken", "the tuesday meeting report"]
    r = httpx.post(f"{url}/v1/classify", json={"texts": texts})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny" and body["backend"] == "onnx-int8"
    assert body["cascade_threshold"] is None
    expected = student.predict(texts)
    assert [x["label"] for x in body["results"]] == expected
    for x in body["results"]:
        assert x["answered_by"] == "student" and x["teacher_status"] is None
        assert set(x["probs"]) == set(LABELS)
        assert sum(x["probs"].values()) == pytest.approx(1.0, abs=1e-4)


def test_health_and_openapi(url) -> None:
    h = httpx.get(f"{url}/healthz").json()
    assert h["status"] == "ok" and h["labels"] == LABELS and h["backend"] == "onnx-int8"
    assert h["limits"]["max_texts"] == 5 and h["cascade"] is None
    spec = httpx.get(f"{url}/openapi.json").json()
    assert "/v1/classify" in spec["paths"] and "/healthz" in spec["paths"]
    assert httpx.get(f"{url}/docs").status_code == 200


ABUSE = [
    ("malformed JSON", {"content": b'{"texts": ["a",', "headers": {
        "content-type": "application/json"}}, 400, "invalid_json", "not valid JSON"),
    ("empty list", {"json": {"texts": []}}, 422, "empty_list", "texts is empty"),
    ("too many texts", {"json": {"texts": ["a"] * 6}}, 413, "too_many_texts", "at most 5"),
    ("oversize text", {"json": {"texts": ["ok", "x" * 51]}}, 413, "text_too_long",
     "texts[1] has 51 characters"),
    ("blank text", {"json": {"texts": ["ok", "   "]}}, 422, "empty_text", "texts[1] is empty"),
    ("a string, not a list", {"json": {"texts": "abc"}}, 422, "invalid_request",
     "texts: Input should be a valid list"),
    ("numbers", {"json": {"texts": ["ok", 3]}}, 422, "invalid_request",
     "texts[1]: Input should be a valid string"),
    ("null", {"json": {"texts": None}}, 422, "invalid_request", "texts"),
    ("wrong key", {"json": {"text": ["a"]}}, 422, "invalid_request", "texts: Field required"),
    ("a list body", {"json": ["a", "b"]}, 422, "invalid_request", "valid dictionary"),
    ("no body", {}, 422, "invalid_request", "no JSON body"),
    ("huge body", {"json": {"texts": ["y" * 3000]}}, 413, "body_too_large", "exceeds 2048"),
    ("huge chunked body", {"content": iter([b'{"texts": ["', b"z" * 3000, b'"]}']),
                           "headers": {"content-type": "application/json"}},
     413, "body_too_large", "exceeds 2048"),
]


@pytest.mark.parametrize("kwargs, status, code, message",
                         [a[1:] for a in ABUSE], ids=[a[0] for a in ABUSE])
def test_abuse_gets_a_4xx_json_error_and_the_server_stays_up(url, kwargs, status, code,
                                                             message) -> None:
    r = httpx.post(f"{url}/v1/classify", **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code and message in body["message"], body
    assert httpx.get(f"{url}/healthz").json()["status"] == "ok"


def test_wrong_method_and_path_are_json_too(url) -> None:
    r = httpx.get(f"{url}/v1/classify")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"
    r = httpx.post(f"{url}/v2/classify", json={"texts": ["a"]})
    assert r.status_code == 404 and "/v1/classify" in r.json()["message"]


def test_concurrent_requests_are_batched_and_all_answered(url) -> None:
    texts = [f"text number {i} is great" if i % 2 else f"awful day {i}" for i in range(100)]

    async def main() -> list[httpx.Response]:
        limit = asyncio.Semaphore(8)
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            async def one(t: str) -> httpx.Response:
                async with limit:
                    return await client.post("/v1/classify", json={"texts": [t]})
            return await asyncio.gather(*(one(t) for t in texts))

    responses = asyncio.run(main())
    assert [r.status_code for r in responses] == [200] * 100
    served = httpx.get(f"{url}/healthz").json()["served"]
    assert served["requests"] >= 100 and served["teacher_texts"] == 0


def test_cascade_sends_unsure_texts_to_the_teacher_one_call_at_a_time(student) -> None:
    teacher = StubTeacher()
    texts = ["I love it", "awful", "FAIL here", "meeting"]
    probs = student.predict_proba(texts)
    threshold = float(np.sort(probs.max(axis=1))[1]) + 1e-9  # the two least sure go up
    cfg = ServeConfig(cascade_threshold=threshold)
    with running(create_app(student, cfg, teacher, "stub")) as base:
        results = [httpx.post(f"{base}/v1/classify", json={"texts": texts}, timeout=30)
                   for _ in range(3)]
        health = httpx.get(f"{base}/healthz").json()
    assert health["cascade"] == {"teacher": "stub", "threshold": threshold}
    unsure = set(np.flatnonzero(probs.max(axis=1) < threshold))
    assert len(unsure) == 2
    for r in results:
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["cascade_threshold"] == threshold
        for i, res in enumerate(body["results"]):
            if i not in unsure:
                assert res["answered_by"] == "student" and res["teacher_status"] is None
            elif "FAIL" in texts[i]:  # the teacher failed: the student's answer, flagged
                assert res["answered_by"] == "student" and res["teacher_status"] == "error"
            else:
                assert res["answered_by"] == "teacher" and res["label"] == "neutral"
                assert res["probs"]["neutral"] == pytest.approx(0.8)
    assert teacher.calls[0] == [texts[i] for i in sorted(unsure)]
    assert not teacher.overlapped and health["served"]["teacher_texts"] == 6


def test_a_teacher_with_other_labels_is_refused(student) -> None:
    teacher = StubTeacher()
    teacher.labels = ["no", "yes"]
    with pytest.raises(UsageError, match="labels"):
        create_app(student, ServeConfig(), teacher)


def test_cascade_curve_by_hand() -> None:
    probs = np.array([[0.9, 0.05, 0.05], [0.2, 0.5, 0.3], [0.4, 0.35, 0.25], [0.1, 0.1, 0.8]])
    gold = ["negative", "positive", "neutral", "positive"]
    teacher = ["negative", "positive", None, "neutral"]  # None: no usable answer
    curve = cascade_curve(probs, teacher, gold, LABELS, [0.0, 0.6, 1.0], 2.0, 5.0, 0.001)
    assert [c["coverage"] for c in curve] == [1.0, 0.5, 0.0]
    # student alone: right on rows 0 and 3; at 0.6 the teacher takes rows 1 (right), 2 (none)
    assert [c["accuracy"] for c in curve] == [0.5, 0.75, 0.5]
    assert curve[1]["student_accuracy_on_covered"] == 1.0
    assert curve[2]["student_accuracy_on_covered"] is None
    assert [c["teacher_texts_per_1000"] for c in curve] == [0.0, 500.0, 1000.0]
    assert curve[1]["cpu_seconds_per_1000"] == pytest.approx(1000 * (0.5 * 2.0 + 0.001))
    assert [c["dollars_per_1000"] for c in curve] == [0.0, 2.5, 5.0]
    table = cascade_markdown(curve)
    assert "| 0.60 | 50.0% | 75.0% | 100.0% | 500 | 1001.0 | 2.5000 |" in table
    no_cost = cascade_curve(probs, teacher, gold, LABELS, [0.5])
    assert no_cost[0]["cpu_seconds_per_1000"] is None and no_cost[0]["dollars_per_1000"] is None
    with pytest.raises(DataError):
        cascade_curve(probs[:2], teacher, gold, LABELS, [0.5])


def test_curve_for_report_reads_the_run_artefacts() -> None:
    gold = pd.DataFrame({"id": ["a", "b"], "label": ["negative", "positive"]})
    teacher = pd.DataFrame({"id": ["a", "b"], "status": ["ok", "missing"],
                            "label": ["negative", None]})
    probs = np.array([[0.5, 0.3, 0.2], [0.9, 0.05, 0.05]])
    out = curve_for_report(probs, teacher, gold, LABELS, {"seconds_per_text": 0.5,
                                                          "dollars_per_1000": 0.0},
                           {"throughput_texts_per_s": 1000.0}, [0.0, 0.6])
    assert out["teacher_dollars_per_1000"] is None  # a local teacher: no dollar column
    assert [c["accuracy"] for c in out["curve"]] == [0.5, 0.5]
    assert out["curve"][1]["cpu_seconds_per_1000"] == pytest.approx(1000 * (0.5 * 0.5 + 0.001))


def test_serve_cli_starts_on_loopback_and_answers(exported_student_dir, tmp_path) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    env = {**os.environ, "LLMDISTILL_CACHE": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "llmdistill.cli", "serve",
                             str(exported_student_dir), "--port", str(port), "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "serve did not come up"
                time.sleep(0.2)
        assert health["backend"] == "onnx-int8"
        r = httpx.post(f"http://127.0.0.1:{port}/v1/classify", json={"texts": ["great"]})
        assert r.status_code == 200 and r.json()["results"][0]["answered_by"] == "student"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("args, message", [
    (["--cascade-threshold", "2"], "--cascade-threshold: Input should be less than or equal"),
    (["--backend", "gpu"], "--backend"),
])
def test_serve_cli_refuses_bad_options(exported_student_dir, args, message) -> None:
    from typer.testing import CliRunner

    from llmdistill.cli import app

    r = CliRunner().invoke(app, ["serve", str(exported_student_dir), *args])
    assert isinstance(r.exception, UsageError) and message in str(r.exception)
