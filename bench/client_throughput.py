"""Can the API teacher's client keep a fast server busy? Requests/s against a loopback stub.

A stub OpenAI-compatible server (its own process, answers at once with a one-token reply and
top logprobs) is started on 127.0.0.1; the teacher labels N texts through it at several
concurrency levels. The baseline in the same run is the raw `httpx` async client posting the
same requests with no SDK, parsing or ledger on top: the ratio says what our layer costs.

    .venv/bin/python bench/client_throughput.py --n 3000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import socket
import time

import httpx

from llmdistill.config import TeacherConfig
from llmdistill.teachers.openai_api import OpenAITeacher

LABELS = ["negative", "neutral", "positive"]
REPLY = json.dumps({
    "id": "x", "object": "chat.completion", "created": 0, "model": "stub",
    "choices": [{"index": 0, "finish_reason": "length",
                 "message": {"role": "assistant", "content": "positive"},
                 "logprobs": {"content": [{"token": "positive", "logprob": -0.2, "bytes": None,
                                           "top_logprobs": [
                                               {"token": "positive", "logprob": -0.2,
                                                "bytes": None},
                                               {"token": "neutral", "logprob": -2.0,
                                                "bytes": None},
                                               {"token": "negative", "logprob": -3.0,
                                                "bytes": None}]}]}}],
    "usage": {"prompt_tokens": 60, "completion_tokens": 1, "total_tokens": 61}}).encode()
MODELS = json.dumps({"object": "list", "data": [{"id": "stub", "object": "model"}]}).encode()


def stub_server(port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                if length:
                    await reader.readexactly(length)
                body = MODELS if b" /v1/models " in head.split(b"\r\n")[0] + b" " else REPLY
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n" % len(body) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
        await server.serve_forever()

    asyncio.run(main())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def raw_httpx(url: str, n: int, concurrency: int) -> float:
    sem = asyncio.Semaphore(concurrency)
    payload = {"model": "stub", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits) as client:
        async def one() -> None:
            async with sem:
                (await client.post(url + "/chat/completions", json=payload)).json()

        t = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[16, 64, 128])
    args = ap.parse_args()
    port = free_port()
    proc = mp.Process(target=stub_server, args=(port,), daemon=True)
    proc.start()
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(100):
        try:
            httpx.get(url + "/models")
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    texts = [f"tweet number {i} about a flight" for i in range(args.n)]
    rows = []
    try:
        for c in args.concurrency:
            baseline = asyncio.run(raw_httpx(url, args.n, c))
            cfg = TeacherConfig(spec=f"openai:stub@{url}")
            cfg.api = cfg.api.model_copy(update={"concurrency": c})
            teacher = OpenAITeacher(f"stub@{url}", LABELS, [], cfg)
            t = time.perf_counter()
            anns = teacher.label_probs(texts)
            ours = args.n / (time.perf_counter() - t)
            teacher.close()
            assert all(a.status == "ok" for a in anns)
            rows.append({"concurrency": c, "llmdistill_requests_per_s": round(ours, 1),
                         "raw_httpx_requests_per_s": round(baseline, 1),
                         "ratio_ours_over_raw": round(ours / baseline, 2)})
    finally:
        proc.terminate()
    print(json.dumps({"n": args.n, "hardware": {"cpu": platform.processor() or
                                                platform.machine(), "cores": os.cpu_count()},
                      "note": "client and stub server share this machine's cores",
                      "results": rows}, indent=2))


if __name__ == "__main__":
    main()
