"""Student options compared on a run's own annotations: mean ± sd over seeds, chosen on dev.

Reads RUN/annotations.parquet (what `llmdistill run` wrote: train/validation/test rows with the
teacher's probabilities and the gold labels), trains the student once per option and seed on the
train rows (epochs picked by agreement with the teacher on validation, as always), and scores
each model on the validation split's gold labels (dev: the only gold that chooses) and on the
test split's gold (reported, never used to choose). The teacher's row is its own labels.

    .venv/bin/python bench/demo_options.py runs/demo --seeds 3 \
        --options anchor-teacher,anchor-gold,epochs10
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd

OPTIONS: dict[str, dict] = {
    "default": {},
    "anchor-teacher": {"anchor_targets": "teacher"},
    "anchor-gold": {"anchor_targets": "gold"},
    "epochs10": {"epochs": 10},
    "kd-only": {"class_weights": "none", "prior_correction": False,
                "anchor_targets": "teacher"},
}


def train_one(job: dict) -> dict:
    """One student in a worker process: train, then label dev and test."""
    import torch

    from llmdistill import pipeline
    from llmdistill.config import StudentConfig
    from llmdistill.student.predict import StudentClassifier

    torch.set_num_threads(job["threads"])
    ann = pd.read_parquet(job["annotations"])
    cfg = StudentConfig(**job["config"])
    out = Path(job["out"])
    start = time.perf_counter()
    pipeline.train(ann[ann["split"] != "test"], job["labels"], cfg, out, {"bench": "options"})
    wall = time.perf_counter() - start
    clf = StudentClassifier.load(out, backend="torch")
    preds = {}
    for split in ("validation", "test"):
        rows = ann[ann["split"] == split]
        preds[split] = clf.predict(rows["text"].tolist())
    shutil.rmtree(out, ignore_errors=True)
    return {"option": job["option"], "seed": cfg.seed, "wall": wall, "preds": preds}


def accuracy(pred: list[str], gold: pd.Series) -> float:
    return float(np.mean(np.asarray(pred, dtype=object) == gold.to_numpy(dtype=object)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a run folder with annotations.parquet")
    ap.add_argument("--options", default="anchor-teacher,anchor-gold")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    from llmdistill.annotate import read_annotations

    ann, manifest = read_annotations(args.run / "annotations.parquet")
    labels = manifest["labels"]
    options = [o.strip() for o in args.options.split(",") if o.strip()]
    if unknown := sorted(set(options) - set(OPTIONS)):
        ap.error(f"unknown option(s) {unknown}: use {', '.join(OPTIONS)}")
    work = Path(tempfile.mkdtemp(prefix="options-", dir=args.run))
    jobs = [{"option": o, "labels": labels, "annotations": str(args.run / "annotations.parquet"),
             "config": {**OPTIONS[o], "seed": 42 + s, "threads": args.threads},
             "out": str(work / f"{o}-{s}"), "threads": args.threads}
            for s in range(args.seeds) for o in options]
    gold = {s: ann.loc[ann["split"] == s, "gold"] for s in ("validation", "test")}
    teacher = {s: ann.loc[ann["split"] == s, "label"].tolist() for s in ("validation", "test")}
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        results = list(pool.map(train_one, jobs))
    shutil.rmtree(work, ignore_errors=True)
    rows = [{"option": "teacher (its own labels)",
             **{s: [accuracy(teacher[s], gold[s])] for s in gold}}]
    for o in options:
        runs = [r for r in results if r["option"] == o]
        rows.append({"option": o, **{s: [accuracy(r["preds"][s], gold[s]) for r in runs]
                                      for s in gold}})
    chosen = max(rows[1:], key=lambda r: np.mean(r["validation"]))["option"]
    print(f"\n{args.run}: {len(gold['validation'])} dev (validation) and {len(gold['test'])} "
          f"test gold texts; {args.seeds} seeds; {time.perf_counter() - t0:.0f} s\n")
    print("| option | dev accuracy (mean ± sd) | test accuracy (mean ± sd) |")
    print("| --- | --- | --- |")
    for r in rows:
        cells = [f"{100 * np.mean(r[s]):.1f} ± "
                 f"{100 * (np.std(r[s], ddof=1) if len(r[s]) > 1 else 0):.1f}"
                 for s in ("validation", "test")]
        mark = " (chosen on dev)" if r["option"] == chosen else ""
        print(f"| {r['option']}{mark} | {cells[0]} | {cells[1]} |")
    out = args.run / "options.json"
    out.write_text(json.dumps({"rows": rows, "chosen": chosen, "seeds": args.seeds}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
