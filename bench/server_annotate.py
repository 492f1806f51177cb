"""Annotating through a real OpenAI-compatible server: the `openai:` teacher against llama.cpp.

Starts llama-cpp-python's server (`python -m llama_cpp.server`) on 127.0.0.1 with a packaged
GGUF, labels the same embedded test tweets through it in `logprobs` mode at several client
concurrencies, and in the same run labels them in-process with the `llamacpp:` teacher (label
scoring with the cached prompt prefix) on the same model and prompt. Prints texts/s, the ledger
counts, the probability mass that fell outside the labels, and how often the two ways agree —
the server path reads one token's top-20 logprobs, the in-process path scores every label word.

    .venv/bin/python bench/server_annotate.py --teacher smollm2-135m --n 200
    .venv/bin/python bench/server_annotate.py --teacher qwen2.5-1.5b --n 100 --concurrency 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from llmdistill import assets
from llmdistill.annotate import AnnotationCache, annotate, status_counts
from llmdistill.config import RunConfig
from llmdistill.data import load_dataset
from llmdistill.evaluate import hardware
from llmdistill.teachers import load_teacher
from llmdistill.teachers.prompts import pick_demos


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(gguf: Path, alias: str, threads: int, n_ctx: int) -> tuple[subprocess.Popen, str]:
    """llama_cpp.server on a free loopback port; returns the process and its /v1 URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", alias,
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx),
         "--n_threads", str(threads)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            if httpx.get(url + "/models", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("llama_cpp.server did not start within 180 s")


def label_all(frame: pd.DataFrame, spec: str, labels: list[str], demos: list[dict],
              cfg: RunConfig, concurrency: int | None = None) -> tuple[pd.DataFrame, float]:
    """Annotate `frame` with a fresh cache (nothing reused); returns the table and wall seconds."""
    tcfg = cfg.teacher.model_copy(update={"spec": spec})
    if concurrency is not None:
        tcfg.api = tcfg.api.model_copy(update={"concurrency": concurrency, "mode": "logprobs"})
    teacher = load_teacher(spec, labels, demos, tcfg, cfg.cache_dir)
    with tempfile.TemporaryDirectory() as tmp:
        cache = AnnotationCache(Path(tmp) / "annotations.sqlite")
        try:
            start = time.perf_counter()
            table = annotate(frame, teacher, cache, description=spec.split("@")[0])
            wall = time.perf_counter() - start
        finally:
            cache.close()
            teacher.close()
    return table, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default="smollm2-135m", choices=["smollm2-135m", "qwen2.5-1.5b"])
    ap.add_argument("--n", type=int, default=200, help="embedded test tweets to label")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2,
                    help="llama.cpp threads (server and in-process alike)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/server_annotate.json"))
    args = ap.parse_args()

    cfg = RunConfig()
    cfg.teacher.n_threads = args.threads
    data = load_dataset(cfg.data)
    labels = data.labels
    demos = pick_demos(data.splits["train"], labels, cfg.teacher.n_demos, cfg.teacher.demo_seed)
    frame = data.splits["test"].head(args.n).reset_index(drop=True)
    gguf = assets.teacher_gguf(args.teacher, cfg.cache_dir)
    alias = args.teacher

    rows = []
    local, wall = label_all(frame, f"llamacpp:{gguf}", labels, demos, cfg)
    rows.append({"way": "in-process label scoring (cached prefix)", "concurrency": 1,
                 "wall": wall, "table": local})
    proc, url = start_server(gguf, alias, args.threads, n_ctx=4096)
    try:
        for c in args.concurrency:
            table, wall = label_all(frame, f"openai:{alias}@{url}", labels, demos, cfg, c)
            rows.append({"way": "openai: teacher → llama_cpp.server, logprobs", "concurrency": c,
                         "wall": wall, "table": table})
    finally:
        proc.terminate()
        proc.wait(30)

    gold = frame["label"].to_numpy(dtype=object)
    ref = local["label"].to_numpy(dtype=object)
    lines = [f"{len(frame)} embedded test tweets, teacher {args.teacher} ({gguf.name}), "
             f"{len(demos)} demos, {args.threads} llama.cpp threads; {hardware()['cpu']}, "
             f"{os.cpu_count()} cores", "",
             "| way | client concurrency | texts/s | ledger | mean mass outside labels | "
             "accuracy vs gold | agreement with in-process |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    record = []
    for r in rows:
        t = r["table"]
        ok = (t["status"] == "ok").to_numpy()
        pred = t["label"].to_numpy(dtype=object)
        mass = float(1.0 - np.nanmean(t["label_mass"])) if t["label_mass"].notna().any() else None
        entry = {"way": r["way"], "concurrency": r["concurrency"],
                 "texts_per_s": len(t) / r["wall"], "wall_seconds": r["wall"],
                 "ledger": status_counts(t), "outside_mass": mass,
                 "accuracy": float(np.mean(pred == gold)),
                 "agreement_with_in_process": float(np.mean(ok & (pred == ref)))}
        record.append(entry)
        lines.append(f"| {entry['way']} | {entry['concurrency']} | {entry['texts_per_s']:.2f} | "
                     f"{entry['ledger']} | {'—' if mass is None else f'{mass:.3f}'} | "
                     f"{entry['accuracy']:.1%} | {entry['agreement_with_in_process']:.1%} |")
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                    "hardware": hardware(), "rows": record}, indent=2))


if __name__ == "__main__":
    main()
