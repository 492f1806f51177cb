"""`llmdistill serve`: the student behind a small FastAPI app, optionally cascading to the teacher.

`POST /v1/classify` takes `{"texts": [...]}` and answers each text with its label, the label
probabilities, and who answered. Requests that arrive together are classified together: one
worker thread runs the model, and each batch takes every request queued meanwhile (up to
`batch_texts` texts), so throughput under load approaches batch throughput instead of batch-1
latency. With a cascade teacher, texts whose top student probability is below the threshold are
sent to the teacher (one instance, one thread, behind a lock: local LLMs are CPU-bound and not
thread-safe). Every error is JSON with `error` (a code) and `message` (what to fix).

Both models see texts repaired by `llmdistill.data.clean_text`, as in training and annotation:
`StudentClassifier.predict_proba` cleans what the student reads, `CascadeTeacher` what the teacher
reads (the answers keep the request's order, and limits apply to the texts as sent).

Access: the service listens on 127.0.0.1 unless told otherwise. With an API key (`api_key_env`
names the environment variable that holds it), every request except GET /healthz must send
`Authorization: Bearer <key>`, /docs and /openapi.json included (the API's shape is as private as
the API); without the key /healthz says only that the service is up. A non-loopback host without
a key is refused unless `insecure` is set. The key is never logged, printed or written anywhere.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmdistill import __version__
from llmdistill.cascade import labels_sure, student_answers
from llmdistill.config import ServeConfig
from llmdistill.data import clean_text
from llmdistill.errors import UsageError
from llmdistill.student.record import StudentRecord
from llmdistill.tasks import Task, get_task

logger = logging.getLogger(__name__)


class ClassifyRequest(BaseModel):
    """The texts to classify."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"texts": ["what a lovely flight", "my bag is lost again"]}]})
    texts: list[StrictStr] = Field(description="texts to classify, in order")
    task: Literal["single_label", "multi_label"] | None = Field(
        None, description="the task the caller expects; a student of another task answers 422")


class TextResult(BaseModel):
    """One text's answer."""

    label: str = Field(description="the label; for a multi_label student its label set "
                                   "joined by '|' ('' when none applies)")
    labels: list[str] | None = Field(None, description="multi_label: the labels that apply")
    probs: dict[str, float] = Field(description="probability of each label (multi_label: "
                                                "that it applies, independently)")
    answered_by: Literal["student", "teacher"]
    teacher_status: str | None = Field(
        None, description="set when the teacher was asked but gave no usable answer (the "
                          "student's answer is returned instead)")


class ClassifyResponse(BaseModel):
    """Answers in the order of the request's texts."""

    results: list[TextResult]
    model: str
    backend: str
    cascade_threshold: float | None = None


class ErrorResponse(BaseModel):
    """Every 4xx/5xx body."""

    error: str = Field(description="machine-readable code")
    message: str = Field(description="what went wrong and how to fix it")


class ApiError(Exception):
    """An error answered with `status` and an ErrorResponse body."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message


def _error(status: int, error: str, message: str,
           headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "message": message}, status_code=status,
                        headers=headers)


class _Secret:
    """The API key: compared in constant time, and shown as `<hidden>` by repr and str."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value.encode("utf-8")

    def __repr__(self) -> str:
        return "<hidden>"

    __str__ = __repr__

    def matches(self, token: bytes) -> bool:
        return hmac.compare_digest(token, self._value)


AUTHENTICATED = "llmdistill.authenticated"  # scope key: the request carried the right key


class BearerAuth:
    """ASGI middleware: every HTTP request except GET /healthz needs `Authorization: Bearer <key>`.

    A missing or wrong key is answered 401 with an ErrorResponse body and a `WWW-Authenticate:
    Bearer` header, before the body is read. GET /healthz passes either way, with the scope's
    `llmdistill.authenticated` saying whether the key was right.
    """

    def __init__(self, app: ASGIApp, key: _Secret) -> None:
        self.app, self.key = app, key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = next((v for k, v in scope.get("headers") or [] if k == b"authorization"), None)
        scheme, _, token = (header or b"").strip().partition(b" ")
        token = token.strip()
        ok = scheme.lower() == b"bearer" and bool(token) and self.key.matches(token)
        if scope.get("method") == "GET" and scope.get("path") == "/healthz":
            await self.app({**scope, AUTHENTICATED: ok}, receive, send)
        elif ok:
            await self.app(scope, receive, send)
        elif header is None or scheme.lower() != b"bearer" or not token:
            await _error(401, "missing_api_key", "this service needs an API key: send the "
                         "header 'Authorization: Bearer <key>'",
                         {"WWW-Authenticate": "Bearer"})(scope, receive, send)
        else:
            await _error(401, "invalid_api_key", "the API key is wrong: send the key the "
                         "server was started with", {"WWW-Authenticate": 'Bearer error='
                                                     '"invalid_token"'})(scope, receive, send)


class BodyLimit:
    """ASGI middleware: a body over `max_bytes` is refused with 413 before anything parses it.

    The body is read (at most `max_bytes`, chunked or not) and replayed to the app.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = _error(413, "body_too_large", f"the request body exceeds {self.max_bytes} "
                                                "bytes: send fewer or shorter texts")
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await too_big(scope, receive, send)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await too_big(scope, receive, send)
                return
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class MicroBatcher:
    """Runs `fn(texts) -> probs` on one worker thread over batches of queued requests."""

    def __init__(self, fn: Callable[[list[str]], np.ndarray], max_texts: int,
                 wait_s: float = 0.0) -> None:
        self.fn, self.max_texts, self.wait_s = fn, max_texts, wait_s
        self.queue: asyncio.Queue[tuple[list[str], asyncio.Future]] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="student")
        self.task: asyncio.Task | None = None
        self.batches = 0

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.executor.shutdown(wait=True)

    async def submit(self, texts: list[str]) -> np.ndarray:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((texts, future))
        return await future

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            self._drain(items)
            if self.wait_s and self._count(items) < self.max_texts:
                await asyncio.sleep(self.wait_s)
                self._drain(items)
            live = [(t, f) for t, f in items if not f.done()]
            if not live:
                continue
            texts = [t for ts, _ in live for t in ts]
            try:
                probs = await loop.run_in_executor(self.executor, self.fn, texts)
            except Exception as e:  # a model failure fails these requests, not the server
                logger.exception("student inference failed")
                for _, f in live:
                    if not f.done():
                        f.set_exception(e)
                continue
            self.batches += 1
            start = 0
            for ts, f in live:
                if not f.done():
                    f.set_result(probs[start : start + len(ts)])
                start += len(ts)

    def _drain(self, items: list) -> None:
        while self._count(items) < self.max_texts:
            try:
                items.append(self.queue.get_nowait())
            except asyncio.QueueEmpty:
                return

    @staticmethod
    def _count(items: list) -> int:
        return sum(len(t) for t, _ in items)


class CascadeTeacher:
    """The teacher behind a lock on its own thread: blocking, CPU-bound, one model instance."""

    def __init__(self, teacher: Any, name: str) -> None:
        self.teacher, self.name = teacher, name
        self.lock = threading.Lock()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="teacher")

    def _label(self, texts: list[str]) -> list:
        cleaned = [clean_text(t) for t in texts]  # the teacher saw cleaned texts in annotation
        with self.lock:
            return self.teacher.label_probs(cleaned)

    async def label(self, texts: list[str]) -> list:
        return await asyncio.get_running_loop().run_in_executor(self.executor, self._label, texts)

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        self.teacher.close()


def create_app(student: Any, cfg: ServeConfig | None = None, teacher: Any | None = None,
               teacher_name: str | None = None, model_name: str = "student",
               api_key: str | None = None) -> FastAPI:
    """The FastAPI app around a loaded `StudentClassifier` and, optionally, a cascade teacher.

    `teacher` is any `llmdistill.teachers.Teacher` whose labels are the student's, in order.
    With `api_key`, every request except GET /healthz must send `Authorization: Bearer
    <api_key>`: /docs and /openapi.json too, since a private API's shape is private as well.
    """
    cfg = cfg or ServeConfig()
    labels: list[str] = list(student.labels)
    task = get_task(getattr(student, "task", "single_label"))
    thresholds = getattr(student, "thresholds", None)
    cascade = CascadeTeacher(teacher, teacher_name or getattr(teacher, "id", "teacher")) \
        if teacher is not None else None
    if teacher is not None and list(teacher.labels) != labels:
        raise UsageError(f"the cascade teacher's labels {teacher.labels} differ from the "
                         f"student's {labels}: load the teacher with the student's labels")
    if teacher is not None and getattr(teacher, "task", "single_label") != task.name:
        raise UsageError(f"the cascade teacher labels {teacher.task} but the student is "
                         f"{task.name}: load the teacher with task={task.name!r}")
    batcher = MicroBatcher(lambda texts: student.predict_proba(texts, batch_size=cfg.batch_texts),
                           cfg.batch_texts, cfg.batch_wait_ms / 1000)
    stats = {"requests": 0, "texts": 0, "teacher_texts": 0, "started": time.time()}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            if cascade is not None:
                cascade.close()

    app = FastAPI(title="llmdistill student", version=__version__, lifespan=lifespan,
                  description="Text classification by a distilled student model"
                              + (f", deferring to the teacher {cascade.name} below a top "
                                 f"probability of {cfg.cascade_threshold}" if cascade else "")
                              + ".")
    app.add_middleware(BodyLimit, max_bytes=cfg.max_body_bytes)
    errors = {400: {"model": ErrorResponse}, 413: {"model": ErrorResponse},
              422: {"model": ErrorResponse}}
    app.state.requires_api_key = api_key is not None
    if api_key is not None:
        if not api_key.strip():
            raise UsageError("the API key is empty: give a long random key, e.g. from "
                             "python -c 'import secrets; print(secrets.token_urlsafe(32))'")
        app.add_middleware(BearerAuth, key=_Secret(api_key.strip()))  # outermost: before 413
        errors[401] = {"model": ErrorResponse, "description": "missing or wrong API key"}
        _document_bearer(app)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> JSONResponse:
        return _error(e.status, e.error, e.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        return _validation_response(e.errors())

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        hint = {404: ": the endpoints are POST /v1/classify and GET /healthz",
                405: ": see /docs for each endpoint's method"}.get(e.status_code, "")
        return _error(e.status_code, code, f"{e.detail}{hint}")

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception) -> JSONResponse:
        logger.exception("unhandled error")
        return _error(500, "internal_error", f"the server failed on this request "
                      f"({type(e).__name__}): retry, and report it if it persists")

    @app.get("/healthz", summary="Liveness and what is being served",
             description="Open to all; with an API key set, callers without it see only "
                         "status and version.")
    async def healthz(request: Request) -> dict[str, Any]:
        if not request.scope.get(AUTHENTICATED, True):
            return {"status": "ok", "version": __version__}
        return {"status": "ok", "model": model_name, "backend": student.backend,
                "labels": labels, "task": task.name, "version": __version__,
                "limits": {"max_texts": cfg.max_texts, "max_chars": cfg.max_chars,
                           "max_body_bytes": cfg.max_body_bytes},
                "cascade": {"teacher": cascade.name, "threshold": cfg.cascade_threshold}
                if cascade else None,
                "served": {k: v for k, v in stats.items() if k != "started"},
                "uptime_s": round(time.time() - stats["started"], 1)}

    @app.post("/v1/classify", response_model=ClassifyResponse, responses=errors,
              summary="Classify texts")
    async def classify(body: ClassifyRequest) -> ClassifyResponse:
        texts = body.texts
        if body.task is not None and body.task != task.name:
            raise ApiError(422, "wrong_task", f"this student is a {task.name} classifier but "
                           f"the request asks for {body.task}: send the request to a "
                           f"{body.task} student, or drop `task`")
        _check_limits(texts, cfg)
        probs = await batcher.submit(texts)
        results = [_result(p, labels, "student", task, thresholds) for p in probs]
        if cascade is not None:
            sure = (student_answers(probs, cfg.cascade_threshold) if task.exclusive
                    else labels_sure(probs, cfg.cascade_threshold))
            unsure = np.flatnonzero(~sure)
            if len(unsure):
                answers = await cascade.label([texts[i] for i in unsure])
                stats["teacher_texts"] += len(unsure)
                for i, ann in zip(unsure, answers, strict=True):
                    if ann.status == "ok" and ann.probs is not None:
                        results[i] = _result(np.asarray(ann.probs), labels, "teacher", task)
                    else:
                        results[i].teacher_status = ann.status
        stats["requests"] += 1
        stats["texts"] += len(texts)
        return ClassifyResponse(results=results, model=model_name, backend=student.backend,
                                cascade_threshold=cfg.cascade_threshold if cascade else None)

    return app


def _check_limits(texts: list[str], cfg: ServeConfig) -> None:
    if not texts:
        raise ApiError(422, "empty_list", 'texts is empty: send at least one text, '
                       'e.g. {"texts": ["what a lovely flight"]}')
    if len(texts) > cfg.max_texts:
        raise ApiError(413, "too_many_texts", f"{len(texts)} texts in one request; at most "
                       f"{cfg.max_texts}: split the request")
    for i, t in enumerate(texts):
        if len(t) > cfg.max_chars:
            raise ApiError(413, "text_too_long", f"texts[{i}] has {len(t)} characters; at most "
                           f"{cfg.max_chars}: shorten it")
        if not t.strip():
            raise ApiError(422, "empty_text", f"texts[{i}] is empty or whitespace: remove it")


def _validation_response(errors: list[dict]) -> JSONResponse:
    """Pydantic's errors as one clear message: 400 for bad JSON, 422 for the wrong shape."""
    first = errors[0] if errors else {"type": "", "msg": "invalid request", "loc": ()}
    if first.get("type") == "json_invalid":
        where = first.get("ctx", {}).get("error", "")
        return _error(400, "invalid_json", f"the request body is not valid JSON ({where}): "
                      'send {"texts": ["..."]} with Content-Type: application/json')
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    field = loc[0] + "".join(f"[{p}]" for p in loc[1:]) if loc else "body"
    if first.get("type") == "missing" and not loc:
        msg = "the request has no JSON body"
    else:
        msg = f"{field}: {first.get('msg', 'invalid')}"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return _error(422, "invalid_request", f'{msg}{more}: send {{"texts": ["..."]}}, a JSON '
                  "object whose texts is a list of strings")


def _result(p: np.ndarray, labels: list[str], who: str, task: Task,
            thresholds: Any = None) -> TextResult:
    """One text's answer; the teacher's multi-label sets use 0.5 (its store's rule), the
    student's its tuned thresholds."""
    probs = {lab: round(float(x), 6) for lab, x in zip(labels, p, strict=True)}
    label = task.decide(np.asarray(p)[None, :], labels, thresholds)[0]
    return TextResult(label=label, labels=None if task.exclusive else task.split(label),
                      answered_by=who, probs=probs)


def _document_bearer(app: FastAPI) -> None:
    """Declare the bearer scheme in the OpenAPI schema, on every operation but GET /healthz."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
                "type": "http", "scheme": "bearer",
                "description": "the key in the server's `serve.api_key_env` variable"}
            for path, operations in schema.get("paths", {}).items():
                for method, operation in operations.items():
                    if (path, method) != ("/healthz", "get"):
                        operation["security"] = [{"bearer": []}]
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def read_api_key(cfg: ServeConfig) -> str | None:
    """The API key from the environment variable `cfg.api_key_env` names; None when unset.

    A name that is not an environment variable's, or a variable that is missing or empty, is a
    one-line UsageError (which never echoes a value that might be the key itself).
    """
    name = cfg.api_key_env
    if name is None:
        return None
    if not _ENV_NAME.fullmatch(name):
        raise UsageError("--api-key-env takes the NAME of an environment variable (letters, "
                         "digits and _), not the key itself: export NAME=<key>, then pass "
                         "--api-key-env NAME")
    key = os.environ.get(name, "").strip()
    if not key:
        raise UsageError(f"--api-key-env {name}: the environment variable {name} is not set or "
                         f"empty: export {name}=<a long random key> before starting the server")
    if len(key) < 16:
        logger.warning("the API key in $%s is shorter than 16 characters: use a long random "
                       "one, e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'",
                       name)
    return key


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1): unreachable from outside."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, has_api_key: bool, insecure: bool = False) -> None:
    """Refuse to listen on a non-loopback `host` without an API key, unless `insecure`."""
    if is_loopback(host):
        return
    if has_api_key:
        logger.warning("listening on %s over plain HTTP: the API key crosses the network in "
                       "clear text; put a TLS-terminating proxy in front", host)
    elif insecure:
        logger.warning("listening on %s without an API key (--insecure): anyone who can reach "
                       "it can use it; put it behind a proxy that authenticates", host)
    else:
        raise UsageError(f"--host {host} is reachable from other machines and the service has "
                         "no API key: pass --api-key-env NAME (with NAME=<key> exported), or "
                         "--insecure if a proxy in front of it authenticates")


def model_name(student_dir: Path) -> str:
    """The base model's name from the folder's llmdistill.json, else the folder's name.

    A folder without the file (a plain HF folder) is named by its folder; a broken file is a
    UsageError from `StudentRecord.load`.
    """
    record = StudentRecord.load_if_present(student_dir)
    return str(record and record.model_name or Path(student_dir).name)


def serve(app: FastAPI, host: str, port: int, log_level: str = "info",
          insecure: bool = False) -> None:
    """Run `app` with uvicorn until interrupted (no access log: it costs per request).

    A non-loopback `host` is refused before binding unless the app requires an API key or
    `insecure` is set.
    """
    import uvicorn

    keyed = bool(getattr(app.state, "requires_api_key", False))
    check_exposure(host, keyed, insecure)
    if keyed and log_level == "trace":
        raise UsageError("log level trace prints request headers, the API key among them: "
                         "use debug or higher")
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)


def app_from_folder(student_dir: Path, cfg: ServeConfig, run_cfg: Any | None = None,
                    demos: str | None = None) -> FastAPI:
    """Load the student (ONNX when its export passed parity) and the cascade teacher, if any.

    The API key, when `cfg.api_key_env` names one, is read from the environment first.

    The teacher's prompt comes from `run_cfg.teacher` (a RunConfig); its few-shot demos are
    drawn from `demos` (labelled data), by default the embedded `tweets:train` when the
    student's labels are the tweets' labels, else none (zero-shot, with a warning).
    """
    from llmdistill.config import RunConfig
    from llmdistill.student.predict import StudentClassifier

    api_key = read_api_key(cfg)  # before loading anything: a missing key fails fast
    run_cfg = run_cfg or RunConfig()
    student = StudentClassifier.load(student_dir, threads=cfg.threads, backend=cfg.backend)
    teacher = None
    if cfg.cascade_teacher:
        teacher = load_cascade_teacher(cfg.cascade_teacher, student.labels, run_cfg, demos,
                                       task=student.task)
    return create_app(student, cfg, teacher, cfg.cascade_teacher, model_name(student_dir),
                      api_key)


def load_cascade_teacher(spec: str, labels: list[str], run_cfg: Any, demos: str | None,
                         task: str = "single_label") -> Any:
    """`load_teacher` with few-shot demos drawn as `annotate` draws them."""
    from llmdistill.annotate import demos_for
    from llmdistill.config import TWEET_LABELS
    from llmdistill.teachers import load_teacher

    if demos is None and sorted(labels) == sorted(TWEET_LABELS):
        demos = "tweets:train"
    if demos is None:
        logger.warning("cascade teacher %s runs zero-shot: pass --demos DATA for few-shot "
                       "demonstrations (they matter for accuracy)", spec)
    rows = demos_for(demos, labels, run_cfg.teacher, run_cfg.data, task=task)
    return load_teacher(spec, labels, rows, run_cfg.teacher, run_cfg.resolved_cache_dir(),
                        task=task)
