"""`llmdistill serve`: classify, health, abuse answered with 4xx JSON, the teacher cascade,
the API key and the refusal to listen publicly without one.

Servers run in a thread (or a `llmdistill serve` process) on 127.0.0.1 with a port the OS picks,
and are stopped by the fixture. Nothing ever binds another address: the host checks run before
binding, with `uvicorn.run` replaced where a test gets that far.
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

from llmdistill import serve as serve_mod
from llmdistill.cascade import cascade_curve, curve_for_report
from llmdistill.config import ServeConfig
from llmdistill.data import clean_text
from llmdistill.errors import DataError, UsageError
from llmdistill.report.markdown import cascade_markdown
from llmdistill.serve import check_exposure, create_app, is_loopback
from llmdistill.student.predict import StudentClassifier
from llmdistill.teachers.base import Annotation, Teacher

LABELS = ["negative", "neutral", "positive"]
LIMITS = {"max_texts": 5, "max_chars": 50, "max_body_bytes": 2048}
KEY = "llmdistill-test-key-5f0c2a9e7b1d"  # a fixed string, easy to find in any output
KEY_ENV = "LLMDISTILL_TEST_SERVE_KEY"
BEARER = {"Authorization": f"Bearer {KEY}"}


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


@contextmanager
def cli_server(student_dir: Path, env: dict[str, str], *args: str) -> Iterator[dict]:
    """`llmdistill serve` in a process on 127.0.0.1; yields {"url", "health"}, then, once the
    process is stopped, also its "stdout" and "stderr"."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen([sys.executable, "-m", "llmdistill.cli", "serve", str(student_dir),
                             "--port", str(port), "--threads", "1", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out: dict = {"url": f"http://127.0.0.1:{port}"}
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                out["health"] = httpx.get(f"{out['url']}/healthz", timeout=2).json()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "serve did not come up"
                time.sleep(0.2)
        yield out
    finally:
        proc.terminate()
        stdout, stderr = proc.communicate(timeout=30)
        out["stdout"], out["stderr"] = stdout.decode(), stderr.decode()


def test_serve_cli_starts_on_loopback_and_answers(exported_student_dir, tmp_path) -> None:
    env = {**os.environ, "LLMDISTILL_CACHE": str(tmp_path)}
    with cli_server(exported_student_dir, env) as server:
        assert server["health"]["backend"] == "onnx-int8"
        r = httpx.post(f"{server['url']}/v1/classify", json={"texts": ["great"]})
        assert r.status_code == 200 and r.json()["results"][0]["answered_by"] == "student"


@pytest.mark.parametrize("args, message", [
    (["--cascade-threshold", "2"], "--cascade-threshold: Input should be less than or equal"),
    (["--backend", "gpu"], "--backend"),
])
def test_serve_cli_refuses_bad_options(exported_student_dir, args, message) -> None:
    from typer.testing import CliRunner

    from llmdistill.cli import app

    r = CliRunner().invoke(app, ["serve", str(exported_student_dir), *args])
    assert isinstance(r.exception, UsageError) and message in str(r.exception)


# --- the API key -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_url(student) -> Iterator[str]:
    app = create_app(student, ServeConfig(**LIMITS), model_name="tiny", api_key=KEY)
    with running(app) as base:
        yield base


PRIVATE = [("POST", "/v1/classify"), ("GET", "/openapi.json"), ("GET", "/docs"),
           ("GET", "/redoc"), ("GET", "/nowhere"), ("POST", "/healthz")]
BAD_AUTH = [
    ("no header", {}, "missing_api_key"),
    ("basic scheme", {"Authorization": "Basic dXNlcjpwYXNz"}, "missing_api_key"),
    ("bare scheme", {"Authorization": "Bearer"}, "missing_api_key"),
    ("wrong key", {"Authorization": "Bearer not-the-key"}, "invalid_api_key"),
    ("key prefix", {"Authorization": f"Bearer {KEY[:-1]}"}, "invalid_api_key"),
    ("key plus one", {"Authorization": f"Bearer {KEY}0"}, "invalid_api_key"),
    ("key without scheme", {"Authorization": KEY}, "missing_api_key"),
]


@pytest.mark.parametrize("method, path", PRIVATE, ids=[f"{m} {p}" for m, p in PRIVATE])
@pytest.mark.parametrize("headers, code", [b[1:] for b in BAD_AUTH], ids=[b[0] for b in BAD_AUTH])
def test_without_the_right_key_every_request_but_healthz_is_401(keyed_url, method, path,
                                                               headers, code) -> None:
    r = httpx.request(method, f"{keyed_url}{path}", headers=headers, json={"texts": ["great"]})
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"].startswith("Bearer")
    body = r.json()
    assert set(body) == {"error", "message"} and body["error"] == code
    assert KEY not in r.text


def test_an_unauthenticated_oversize_body_is_401_before_it_is_read(keyed_url) -> None:
    r = httpx.post(f"{keyed_url}/v1/classify", json={"texts": ["y" * 3000]})
    assert r.status_code == 401 and r.json()["error"] == "missing_api_key"
    r = httpx.post(f"{keyed_url}/v1/classify", json={"texts": ["y" * 3000]}, headers=BEARER)
    assert r.status_code == 413 and r.json()["error"] == "body_too_large"


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_the_right_key_classifies(keyed_url, scheme) -> None:
    texts = ["I love it, wonderful", "awful and broken", "the tuesday meeting report"]
    r = httpx.post(f"{keyed_url}/v1/classify", json={"texts": texts},
                   headers={"Authorization": f"{scheme} {KEY}"})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == len(texts)
    for x in results:
        assert x["answered_by"] == "student" and x["label"] in LABELS
        assert set(x["probs"]) == set(LABELS)
        assert sum(x["probs"].values()) == pytest.approx(1.0, abs=1e-4)
        assert x["label"] == max(x["probs"], key=x["probs"].get)


def test_docs_and_openapi_need_the_key_and_declare_it(keyed_url) -> None:
    assert httpx.get(f"{keyed_url}/docs", headers=BEARER).status_code == 200
    r = httpx.get(f"{keyed_url}/openapi.json", headers=BEARER)
    assert r.status_code == 200 and KEY not in r.text
    spec = r.json()
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert spec["paths"]["/v1/classify"]["post"]["security"] == [{"bearer": []}]
    assert "401" in spec["paths"]["/v1/classify"]["post"]["responses"]
    assert "security" not in spec["paths"]["/healthz"]["get"]


def test_healthz_is_open_and_says_only_that_it_is_up_without_the_key(keyed_url) -> None:
    for headers in ({}, {"Authorization": "Bearer not-the-key"}):
        r = httpx.get(f"{keyed_url}/healthz", headers=headers)
        assert r.status_code == 200 and set(r.json()) == {"status", "version"}
        assert r.json()["status"] == "ok"
    full = httpx.get(f"{keyed_url}/healthz", headers=BEARER).json()
    assert full["status"] == "ok" and full["labels"] == LABELS and full["model"] == "tiny"


class FailingStudent:
    """A student whose inference always fails: the server answers 500 and logs a traceback."""

    labels = LABELS
    backend = "stub"

    def predict_proba(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        raise RuntimeError("inference broke")


def test_the_key_never_appears_in_logs_output_or_answers(student, caplog, capfd) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    answers = []
    for model in (student, FailingStudent()):
        app = create_app(model, ServeConfig(**LIMITS), api_key=KEY)
        assert KEY not in repr(app.user_middleware)
        with running(app) as base:
            for headers in ({}, BEARER, {"Authorization": f"Bearer {KEY}0"}):
                answers.append(httpx.post(f"{base}/v1/classify", headers=headers,
                                          json={"texts": ["great", "awful"]}))
                answers.append(httpx.get(f"{base}/healthz", headers=headers))
                answers.append(httpx.get(f"{base}/openapi.json", headers=headers))
    assert {r.status_code for r in answers} >= {200, 401, 500}
    assert "inference broke" in caplog.text  # the failure was logged, the key was not
    out, err = capfd.readouterr()
    for text in [caplog.text, out, err, *(r.text for r in answers)]:
        assert KEY not in text


def test_serve_cli_with_a_key_lets_in_only_callers_that_send_it(exported_student_dir,
                                                                tmp_path) -> None:
    env = {**os.environ, "LLMDISTILL_CACHE": str(tmp_path), KEY_ENV: KEY}
    with cli_server(exported_student_dir, env, "--api-key-env", KEY_ENV) as server:
        url = server["url"]
        assert server["health"] == {"status": "ok", "version": server["health"]["version"]}
        assert httpx.post(f"{url}/v1/classify", json={"texts": ["great"]}).status_code == 401
        r = httpx.post(f"{url}/v1/classify", json={"texts": ["great"]}, headers=BEARER)
        assert r.status_code == 200, r.text
        assert sum(r.json()["results"][0]["probs"].values()) == pytest.approx(1.0, abs=1e-4)
        assert httpx.get(f"{url}/openapi.json").status_code == 401
    assert KEY_ENV in server["stderr"]  # the banner names the variable, never its value
    assert KEY not in server["stdout"] and KEY not in server["stderr"]
    for folder in (tmp_path, exported_student_dir):
        for f in folder.rglob("*"):
            assert not f.is_file() or KEY.encode() not in f.read_bytes(), f


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "[::]", "192.168.1.20", "10.0.0.1",
                                  "example.com", ""])
def test_a_public_host_without_a_key_is_refused_unless_insecure(host) -> None:
    assert not is_loopback(host)
    with pytest.raises(UsageError, match="--api-key-env") as e:
        check_exposure(host, has_api_key=False, insecure=False)
    assert "--insecure" in str(e.value) and "\n" not in str(e.value)
    check_exposure(host, has_api_key=False, insecure=True)
    check_exposure(host, has_api_key=True, insecure=False)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "[::1]", "localhost", "LocalHost",
                                  "127.0.0.2"])
def test_loopback_hosts_need_no_key(host) -> None:
    assert is_loopback(host)
    check_exposure(host, has_api_key=False, insecure=False)


@pytest.fixture
def uvicorn_runs(monkeypatch) -> list[dict]:
    """`uvicorn.run` replaced by a recorder: the host checks run, nothing binds."""
    calls: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append({"app": app, **kw}))
    return calls


def test_serve_refuses_a_public_host_before_binding(student, uvicorn_runs) -> None:
    with pytest.raises(UsageError, match="--insecure"):
        serve_mod.serve(create_app(student), "0.0.0.0", 8000)
    assert uvicorn_runs == []
    serve_mod.serve(create_app(student), "0.0.0.0", 8000, insecure=True)
    serve_mod.serve(create_app(student, api_key=KEY), "0.0.0.0", 8000)
    assert [c["host"] for c in uvicorn_runs] == ["0.0.0.0", "0.0.0.0"]
    with pytest.raises(UsageError, match="trace"):
        serve_mod.serve(create_app(student, api_key=KEY), "127.0.0.1", 8000, log_level="trace")


def test_serve_cli_refuses_a_public_host_without_a_key_before_loading(
        exported_student_dir, uvicorn_runs, monkeypatch) -> None:
    from typer.testing import CliRunner

    from llmdistill.cli import app

    def never(*args, **kwargs):
        raise AssertionError("the student was loaded before the host was checked")

    monkeypatch.setattr(serve_mod, "app_from_folder", never)
    r = CliRunner().invoke(app, ["serve", str(exported_student_dir), "--host", "0.0.0.0"])
    assert isinstance(r.exception, UsageError), r.output
    assert "--api-key-env" in str(r.exception) and "--insecure" in str(r.exception)
    assert uvicorn_runs == []


@pytest.mark.parametrize("args, keyed", [(["--insecure"], False),
                                         (["--api-key-env", KEY_ENV], True)],
                         ids=["insecure", "api key"])
def test_serve_cli_listens_publicly_with_insecure_or_a_key(exported_student_dir, uvicorn_runs,
                                                           monkeypatch, args, keyed) -> None:
    from typer.testing import CliRunner

    from llmdistill.cli import app

    monkeypatch.setenv(KEY_ENV, KEY)
    r = CliRunner().invoke(app, ["serve", str(exported_student_dir), "--host", "0.0.0.0",
                                 "--threads", "1", *args])
    assert r.exception is None, r.output
    assert [c["host"] for c in uvicorn_runs] == ["0.0.0.0"]
    assert uvicorn_runs[0]["app"].state.requires_api_key is keyed
    assert KEY not in r.output


@pytest.mark.parametrize("value", [None, "", "   "], ids=["unset", "empty", "blank"])
def test_a_missing_key_variable_exits_2_with_one_line(exported_student_dir, monkeypatch, capsys,
                                                      uvicorn_runs, value) -> None:
    from llmdistill.cli import main

    if value is None:
        monkeypatch.delenv(KEY_ENV, raising=False)
    else:
        monkeypatch.setenv(KEY_ENV, value)
    monkeypatch.setattr(sys, "argv", ["llmdistill", "serve", str(exported_student_dir),
                                      "--api-key-env", KEY_ENV])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and KEY_ENV in lines[0] and f"export {KEY_ENV}=" in lines[0]
    assert uvicorn_runs == []


def test_a_key_given_where_its_variable_name_belongs_is_not_echoed(exported_student_dir,
                                                                    monkeypatch, capsys) -> None:
    from llmdistill.cli import main

    monkeypatch.setattr(sys, "argv", ["llmdistill", "serve", str(exported_student_dir),
                                      "--api-key-env", KEY])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "NAME" in err and KEY not in err


# --- the same text cleaning as training ------------------------------------------------------


class UnsureStudent:
    """Uniform probabilities for every text (so the cascade sends all of them up)."""

    labels = LABELS
    backend = "stub"

    def predict_proba(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        return np.full((len(texts), len(LABELS)), 1 / len(LABELS))


MESSY = ["so   good\n today ", "I love it äó_", "cafÃ© time"]  # spaces, tweets' mojibake, ftfy's


def test_the_cascade_teacher_sees_cleaned_texts() -> None:
    assert all(clean_text(t) != t for t in MESSY)
    teacher = StubTeacher()
    with running(create_app(UnsureStudent(), ServeConfig(), teacher, "stub")) as base:
        r = httpx.post(f"{base}/v1/classify", json={"texts": MESSY})
    assert r.status_code == 200, r.text
    assert [x["answered_by"] for x in r.json()["results"]] == ["teacher"] * len(MESSY)
    assert teacher.calls == [[clean_text(t) for t in MESSY]]


def test_the_student_answers_a_messy_text_as_its_cleaned_form(url) -> None:
    messy = MESSY[:2]  # one request, one batch: identical rows give identical probabilities
    r = httpx.post(f"{url}/v1/classify", json={"texts": [*messy, *map(clean_text, messy)]})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    for raw, cleaned in zip(results[:2], results[2:], strict=True):
        assert raw["label"] == cleaned["label"]
        assert raw["probs"] == pytest.approx(cleaned["probs"], abs=1e-5)


class MultiLabelStub:
    """A multi-label student: each label applies when its name is in the text."""

    labels = ["sport", "tech", "politics"]
    backend = "stub"
    task = "multi_label"
    thresholds = np.array([0.5, 0.5, 0.5])

    def predict_proba(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        return np.array([[0.9 if lab in t else 0.1 for lab in self.labels] for t in texts])


class SetTeacher(StubTeacher):
    """A multi-label teacher: always `politics` alone."""

    task = "multi_label"

    def __init__(self) -> None:
        super().__init__()
        self.labels = list(MultiLabelStub.labels)

    def label_probs(self, texts: list[str]) -> list[Annotation]:
        return [Annotation([0.2, 0.2, 0.9], "ok", 0.01) for _ in texts]


def test_a_multi_label_student_answers_label_sets_with_independent_probabilities() -> None:
    with running(create_app(MultiLabelStub(), ServeConfig(**LIMITS))) as base:
        r = httpx.post(f"{base}/v1/classify", json={"texts": ["sport and tech news", "weather"]})
        assert r.status_code == 200, r.text
        first, second = r.json()["results"]
        assert first["labels"] == ["sport", "tech"] and first["label"] == "sport|tech"
        assert second["labels"] == [] and second["label"] == ""
        assert sum(first["probs"].values()) > 1  # independent, not a softmax
        assert httpx.get(f"{base}/healthz").json()["task"] == "multi_label"


def test_a_request_for_the_other_task_gets_a_422_naming_both() -> None:
    with running(create_app(MultiLabelStub(), ServeConfig(**LIMITS))) as base:
        r = httpx.post(f"{base}/v1/classify", json={"texts": ["x"], "task": "single_label"})
        assert r.status_code == 422 and r.json()["error"] == "wrong_task"
        assert "multi_label" in r.json()["message"]
    with running(create_app(StubStudentForTask(), ServeConfig(**LIMITS))) as base:
        r = httpx.post(f"{base}/v1/classify", json={"texts": ["x"], "task": "multi_label"})
        assert r.status_code == 422 and "single_label" in r.json()["message"]


class StubStudentForTask:
    labels = LABELS
    backend = "stub"

    def predict_proba(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        return np.tile([0.2, 0.5, 0.3], (len(texts), 1))


def test_the_multi_label_cascade_defers_texts_with_an_unsure_label() -> None:
    cfg = ServeConfig(**LIMITS, cascade_threshold=0.8)
    with running(create_app(MultiLabelStub(), cfg, teacher=SetTeacher())) as base:
        r = httpx.post(f"{base}/v1/classify", json={"texts": ["sport"]})
        (result,) = r.json()["results"]
    # 0.9 and 0.1 are both sure at 0.8 (≥ 0.8 or ≤ 0.2), so the student answers
    assert result["answered_by"] == "student" and result["labels"] == ["sport"]
    cfg = ServeConfig(**LIMITS, cascade_threshold=0.95)
    with running(create_app(MultiLabelStub(), cfg, teacher=SetTeacher())) as base:
        (result,) = httpx.post(f"{base}/v1/classify", json={"texts": ["sport"]}).json()["results"]
    assert result["answered_by"] == "teacher" and result["labels"] == ["politics"]
