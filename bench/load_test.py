"""Load and abuse test of `llmdistill serve`, on 127.0.0.1 only.

Starts `llmdistill serve STUDENT` (a subprocess) on a free loopback port, sends N requests of
real test tweets at the given concurrency from an async httpx client, and records the status
counts (the goal: zero 5xx), latency p50/p99 and requests/s; client and server share the CPU.
Then it sends what a careless or hostile client sends (malformed JSON, an empty list, too many
texts, an oversize text, wrong types, a huge body, a wrong path or method), checks that each
gets a 4xx JSON error with a message, and that /healthz still answers afterwards. The server is
stopped at the end whatever happens; the exit code is 1 on any 5xx or failed abuse case.

`--student` is a folder that training wrote, e.g. `runs/demo/student` after `make demo`
(`llmdistill run` writes `<out>/student`); export it first (`llmdistill export DIR --int8`)
to load-test the ONNX backend that `serve` then picks.

The full measurement, on an otherwise idle machine:

    .venv/bin/python bench/load_test.py --student runs/demo/student --requests 2000 \
        --concurrency 32 --out runs/bench/load_test.json

A quick check that the script works:

    .venv/bin/python bench/load_test.py --student runs/demo/student --requests 200 \
        --out /tmp/load_test.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from llmdistill.config import DataConfig
from llmdistill.data import load_dataset
from llmdistill.evaluate import hardware

ABUSE = [  # (what, method, path, body bytes or JSON, headers)
    ("malformed JSON", "POST", "/v1/classify", b'{"texts": ["a",', {}),
    ("empty list", "POST", "/v1/classify", {"texts": []}, {}),
    ("too many texts", "POST", "/v1/classify", {"texts": ["ok"] * 1000}, {}),
    ("oversize text", "POST", "/v1/classify", {"texts": ["x" * 100_000]}, {}),
    ("texts not a list", "POST", "/v1/classify", {"texts": "one tweet"}, {}),
    ("a number in texts", "POST", "/v1/classify", {"texts": ["fine", 42]}, {}),
    ("unknown field", "POST", "/v1/classify", {"texts": ["fine"], "x": 1}, {}),
    ("whitespace text", "POST", "/v1/classify", {"texts": ["   "]}, {}),
    ("no body", "POST", "/v1/classify", b"", {}),
    ("5 MB body", "POST", "/v1/classify", b'{"texts": ["' + b"y" * 5_000_000 + b'"]}', {}),
    ("wrong path", "POST", "/v1/nothing", {"texts": ["fine"]}, {}),
    ("wrong method", "GET", "/v1/classify", None, {}),
]


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(student: Path, port: int, extra: list[str], log: Path) -> subprocess.Popen:
    """`llmdistill serve` on 127.0.0.1:`port`, once /healthz answers; its output goes to `log`
    (a file, not a pipe: a pipe nobody reads would block the server once full)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llmdistill.cli", "serve", str(student), "--host",
             "127.0.0.1", "--port", str(port), *extra], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"serve exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2,
                         trust_env=False).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    stop(proc)
    raise SystemExit("serve did not answer /healthz within 120 s")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM (uvicorn shuts down cleanly), SIGKILL if it has not exited after 30 s."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def load(url: str, bodies: list[dict], concurrency: int) -> tuple[Counter, list[float],
                                                                        float]:
    """POST every body with at most `concurrency` in flight: statuses, latencies (ms), wall s."""
    sem = asyncio.Semaphore(concurrency)
    statuses: Counter = Counter()
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60, trust_env=False) as client:
        async def one(body: dict) -> None:
            async with sem:
                t0 = time.perf_counter()
                try:
                    r = await client.post(url + "/v1/classify", json=body)
                    statuses[r.status_code] += 1
                    if r.status_code == 200:
                        assert len(r.json()["results"]) == len(body["texts"])
                except httpx.HTTPError as e:
                    statuses[type(e).__name__] += 1
                latencies.append(1000 * (time.perf_counter() - t0))

        t0 = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
        return statuses, latencies, time.perf_counter() - t0


def abuse(url: str) -> list[dict]:
    """Each ABUSE case's status and message, then whether /healthz still answers."""
    rows = []
    with httpx.Client(timeout=30, trust_env=False) as client:
        for what, method, path, body, headers in ABUSE:
            kw: dict = {"headers": {"content-type": "application/json", **headers}}
            if isinstance(body, bytes):
                kw["content"] = body
            elif body is not None:
                kw["content"] = json.dumps(body).encode()
            r = client.request(method, url + path, **kw)
            try:
                body_json = r.json()
                error, message = body_json.get("error"), body_json.get("message")
            except (ValueError, AttributeError):
                error = message = None
            rows.append({"case": what, "status": r.status_code, "error": error,
                         "message": message,
                         "ok": 400 <= r.status_code < 500 and bool(error and message)})
        status = client.get(url + "/healthz").status_code
        rows.append({"case": "healthz afterwards", "status": status, "error": None,
                     "message": None, "ok": status == 200})
    return rows


def main() -> None:
    """Start the server, load it, abuse it, stop it; print Markdown and write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--student", type=Path, required=True,
                    help="a trained student folder (e.g. runs/demo/student after `make demo`)")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--texts-per-request", type=int, default=1)
    ap.add_argument("--serve-args", default="", help="extra `llmdistill serve` flags")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/load_test.json"))
    args = ap.parse_args()
    if not (args.student / "config.json").exists():
        ap.error(f"{args.student} is not a student folder: run `make demo` (→ runs/demo/student) "
                 "or `llmdistill train` first")

    tweets = load_dataset(DataConfig(max_test=2000)).splits["test"]["text"].tolist()
    k = args.texts_per_request
    bodies = [{"texts": [tweets[(i * k + j) % len(tweets)] for j in range(k)]}
              for i in range(args.requests)]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = Path(tempfile.mkdtemp(prefix="bench-load-")) / "serve.log"
    proc = start(args.student, port, args.serve_args.split(), log)
    try:
        health = httpx.get(url + "/healthz", trust_env=False).json()
        statuses, lat, wall = asyncio.run(load(url, bodies, args.concurrency))
        abuse_rows = abuse(url)
    finally:
        stop(proc)

    five_xx = sum(v for s, v in statuses.items() if not isinstance(s, int) or s >= 500)
    p50, p99 = np.percentile(lat, [50, 99])
    hw = hardware()
    result = {"requests": args.requests, "concurrency": args.concurrency,
              "texts_per_request": k, "backend": health.get("backend"),
              "statuses": {str(s): v for s, v in statuses.items()}, "errors_5xx": five_xx,
              "latency_p50_ms": float(p50), "latency_p99_ms": float(p99),
              "requests_per_s": args.requests / wall, "texts_per_s": args.requests * k / wall,
              "abuse": abuse_rows, "hardware": hw, "cores": os.cpu_count()}
    print(f"{args.requests} requests × {k} tweet{'s' if k > 1 else ''} at concurrency "
          f"{args.concurrency} against `llmdistill serve` ({health.get('backend')}) on "
          f"127.0.0.1; {hw['cpu']}, {hw['cores']} cores (client and server share them)\n")
    print("| statuses | 5xx | requests/s | texts/s | latency p50 (ms) | p99 (ms) |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(f"| {dict(statuses)} | {five_xx} | {result['requests_per_s']:,.0f} | "
          f"{result['texts_per_s']:,.0f} | {p50:.0f} | {p99:.0f} |\n")
    print("| abuse case | status | error | message | 4xx JSON with a message |")
    print("| --- | --- | --- | --- | --- |")
    for r in abuse_rows:
        print(f"| {r['case']} | {r['status']} | {r['error'] or ''} | "
              f"{(r['message'] or '')[:90]} | {'yes' if r['ok'] else 'NO'} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"wrote {args.out}; server log {log}")
    if five_xx or not all(r["ok"] for r in abuse_rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
