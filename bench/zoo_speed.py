"""How fast do the zoo's numpy students (tfidf, model2vec) answer on this CPU?

Each kind is trained through `train_student` (the dispatch `student.model` takes) on the
embedded tweets' training split, with the *gold* label as a one-hot teacher (no LLM is run: the
speed of a head does not depend on where its labels came from, and the accuracy is then a
reference for these students, not a distillation result). Then the folder is loaded with
`StudentClassifier.load(threads=…)` and timed with `evaluate.measure_speed`, as the report times
a student: batch-64 throughput (median of 3 passes after a warm-up) and batch-1 latency, on
`--n` test tweets, with accuracy on the same tweets.

The goal for model2vec (issue 14): ≥ 10,000 texts/s on 2 cores.

    nice -n 10 .venv/bin/python bench/zoo_speed.py --n 2000 --out runs/bench/zoo_speed.json

Distilling MiniLM for model2vec is one forward pass per vocabulary token (≈ 30k), minutes on two
busy cores; `--reuse DIR` keeps the trained folders in DIR and skips training where one exists.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from llmdistill.config import DataConfig, StudentConfig
from llmdistill.data import load_dataset
from llmdistill.evaluate import hardware, measure_speed, model_size
from llmdistill.files import atomic_write
from llmdistill.student.predict import StudentClassifier
from llmdistill.student.train import train_student

GOAL_TEXTS_PER_S = 10_000.0


def gold_as_teacher(frame: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """An annotation frame whose teacher is the gold label, one-hot."""
    out = frame[["id", "text", "label"]].copy()
    out["status"] = "ok"
    for lab in labels:
        out[f"prob_{lab}"] = (out["label"] == lab).astype(float)
    return out


def run(kinds: list[str], n: int, max_train: int | None, batch: int, threads: int,
        latency_n: int, work: Path) -> dict:
    data = load_dataset(DataConfig(max_train=max_train, max_validation=None, max_test=None))
    labels = data.labels
    train = gold_as_teacher(data.splits["train"], labels)
    validation = gold_as_teacher(data.splits["validation"], labels)
    test = data.splits["test"].head(n)
    texts, gold = test["text"].tolist(), test["label"].to_numpy(dtype=object)
    rows = []
    for kind in kinds:
        folder = work / kind.replace(":", "_").replace("/", "_")
        seconds = None
        if not folder.exists():
            print(f"training {kind} on {len(train)} tweets …", flush=True)
            t0 = time.perf_counter()
            train_student(train, validation, labels,
                          StudentConfig(model=kind, threads=threads), folder)
            seconds = time.perf_counter() - t0
        clf = StudentClassifier.load(folder, threads=threads)
        print(f"timing {kind} …", flush=True)
        probs = clf.predict_proba(texts, batch_size=batch)
        speed = measure_speed(lambda t, b, c=clf: c.predict_proba(t, batch_size=b), texts,
                              batch=batch, latency_samples=latency_n)
        rows.append({"kind": kind, "backend": clf.backend,
                     "texts_per_s": speed["throughput_texts_per_s"],
                     "latency_p50_ms": speed["latency_ms"]["p50"],
                     "latency_p99_ms": speed["latency_ms"]["p99"],
                     "accuracy": float(np.mean(np.array(labels, dtype=object)[probs.argmax(1)]
                                               == gold)),
                     "parameters": clf.parameters, "size_mb": model_size(folder)["mb"],
                     "train_seconds": seconds, "folder": str(folder)})
    return {"n_texts": len(texts), "n_train": len(train), "batch": batch, "threads": threads,
            "hardware": hardware(), "goal_texts_per_s": GOAL_TEXTS_PER_S, "rows": rows}


def markdown(result: dict) -> str:
    hw = result["hardware"]
    lines = [f"{result['n_texts']} embedded test tweets; trained on {result['n_train']} "
             f"training tweets with gold as the teacher; {hw.get('cpu')}, "
             f"{result['threads']} threads", "",
             f"| kind | texts/s (batch {result['batch']}) | batch-1 p50 (ms) | p99 (ms) | "
             "accuracy vs gold | parameters | weights (MB) | train (s) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        train_s = "reused" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}"
        lines.append(f"| {r['kind']} | {r['texts_per_s']:,.0f} | {r['latency_p50_ms']:.2f} | "
                     f"{r['latency_p99_ms']:.2f} | {r['accuracy']:.2%} | "
                     f"{r['parameters'] / 1e6:.2f}M | {r['size_mb']:.1f} | {train_s} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", nargs="+", default=["tfidf", "model2vec"])
    parser.add_argument("--n", type=int, default=2000, help="test tweets timed")
    parser.add_argument("--max-train", type=int, default=None,
                        help="training tweets (default: the whole training split)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--latency-n", type=int, default=200)
    parser.add_argument("--reuse", type=Path, default=None,
                        help="keep trained folders here and reuse them")
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.reuse or Path(tmp)
        result = run(args.kinds, args.n, args.max_train, args.batch, args.threads,
                     args.latency_n, work)
    print(markdown(result))
    if args.out:
        atomic_write(args.out, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
