"""The demo (embedded `tweets`, 500 / 100 / 300) with one, or three, packaged teachers joined by
a label model: is the student significantly better than its teacher within the demo's budget?

Teachers: qwen2.5-1.5b with the demo's 6 demos (today's teacher), and the same model with two
other demo sets (demo_seed 8 and 9): three prompts, ≈ 3 × the teacher time. Every option trains
the student with 3 seeds; options are compared on the validation split's 100 gold labels (dev)
and reported on the 300 test tweets, with McNemar against the demo's teacher (qwen, demo_seed 7).
The anchor: 200 gold training rows, as in the default run.

    nice -n 5 .venv/bin/python bench/demo_teachers.py --seeds 3       # ≈ 25 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from seed_reproduction import fmt_ci  # noqa: E402

from llmdistill import pipeline  # noqa: E402
from llmdistill.annotate import demos_for, without_demos  # noqa: E402
from llmdistill.config import LabelModelConfig, RunConfig, StudentConfig  # noqa: E402
from llmdistill.data import load_dataset  # noqa: E402
from llmdistill.evaluate import classification_metrics, compare, hardware  # noqa: E402

# key → (description, teachers used (indices into the three prompts), method, calibration)
OPTIONS = {
    "today": ("qwen, the demo's prompt (today)", [0], "first", "none"),
    "stacked1": ("qwen, stacked on the anchor", [0], "stacked", "temperature_bias"),
    "temperature1": ("qwen, temperature-calibrated", [0], "mean", "temperature"),
    "mean3": ("3 prompts, mean", [0, 1, 2], "mean", "temperature_bias"),
    "stacked3": ("3 prompts, stacked", [0, 1, 2], "stacked", "temperature_bias"),
}


def train_job(job: dict) -> dict:
    import torch

    from llmdistill.student.predict import StudentClassifier

    torch.set_num_threads(job["threads"])
    store = pd.read_parquet(job["store"])
    anchor = pd.read_parquet(job["anchor"])
    cfg = StudentConfig(seed=job["seed"], threads=job["threads"])
    out = Path(job["out"])
    pipeline.train(store[store["split"] != "test"], job["labels"], cfg, out, {"bench": "demo"},
                   overwrite=True, anchor=anchor)
    clf = StudentClassifier.load(out, backend="torch")
    preds = {s: clf.predict(store.loc[store["split"] == s, "text"].tolist())
             for s in ("validation", "test")}
    shutil.rmtree(out, ignore_errors=True)
    return {"option": job["option"], "seed": job["seed"], "preds": preds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--options", default=",".join(OPTIONS),
                    help=f"comma list of {', '.join(OPTIONS)} (today,stacked1: one prompt, the "
                         "demo's teacher budget)")
    ap.add_argument("--out", type=Path, default=Path("runs/demo_teachers"))
    args = ap.parse_args()
    options = {k: OPTIONS[k] for k in args.options.split(",") if k in OPTIONS}
    if not options:
        ap.error(f"no known option in {args.options!r}: use {', '.join(OPTIONS)}")
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    cfg = RunConfig()
    ds = load_dataset(cfg.data)
    labels = ds.labels
    n_prompts = 1 + max(i for _, which, _, _ in options.values() for i in which)
    teachers = [cfg.teacher.model_copy(update={"demo_seed": s}) for s in (7, 8, 9)[:n_prompts]]
    demos = [demos_for(ds.splits["train"], labels, t) for t in teachers]
    shown = [d for rows in demos for d in rows]
    frame = pd.concat([without_demos(df, shown).assign(split=name)
                       for name, df in ds.splits.items()], ignore_index=True)
    full, manifest = pipeline.annotate_teachers(frame, labels, demos, teachers,
                                                cfg.resolved_cache_dir())
    seconds = [m["seconds_per_text"] for m in manifest["teachers"]]
    work = Path(tempfile.mkdtemp(prefix="demo-", dir=args.out))
    jobs, teacher_dev = [], {}
    for name, (_, which, method, cal) in options.items():
        store = full[[c for c in full.columns if not re.match(r"t\d+_", c)]].copy()
        for new, old in enumerate(which):
            for c in [c for c in full.columns if c.startswith(f"t{old}_")]:
                store[f"t{new}_" + c.split("_", 1)[1]] = full[c]
        for s in range(args.seeds):
            seed = 42 + s
            anchor = pipeline.choose_anchor(store, labels, StudentConfig(seed=seed))
            agg, _ = pipeline.aggregate_teachers(store, labels, LabelModelConfig(
                method=method, calibration=cal), anchor, seed=seed)
            val = agg[agg["split"] == "validation"]
            teacher_dev.setdefault(name, []).append(float(np.mean(val["label"] == val["gold"])))
            agg.to_parquet(work / f"{len(jobs)}.parquet")
            anchor.to_parquet(work / f"{len(jobs)}-anchor.parquet")
            jobs.append({"option": name, "seed": seed, "labels": labels,
                         "store": str(work / f"{len(jobs)}.parquet"),
                         "anchor": str(work / f"{len(jobs)}-anchor.parquet"),
                         "out": str(work / f"s{len(jobs)}"), "threads": args.threads})
    print(f"{len(jobs)} students on {args.workers} workers", flush=True)
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as ex:
        results = list(ex.map(train_job, jobs))
    shutil.rmtree(work, ignore_errors=True)

    gold = {s: full.loc[full["split"] == s, "gold"].to_numpy(dtype=object)
            for s in ("validation", "test")}
    test_teacher = full.loc[full["split"] == "test", "t0_label"].tolist()
    rows, dev_means = [], {}
    for name in options:
        runs = [r for r in results if r["option"] == name]
        dev = [float(np.mean(np.array(r["preds"]["validation"], dtype=object)
                             == gold["validation"])) for r in runs]
        test = [float(np.mean(np.array(r["preds"]["test"], dtype=object) == gold["test"]))
                for r in runs]
        dev_means[name] = np.mean(dev)
        m = classification_metrics(gold["test"], runs[0]["preds"]["test"], labels, n_boot=1000)
        c = compare(runs[0]["preds"]["test"], test_teacher, gold["test"], labels, n_boot=1000)
        ps = [compare(r["preds"]["test"], test_teacher, gold["test"], labels,
                      n_boot=200)["p_value"] for r in runs]
        rows.append({"option": OPTIONS[name][0], "dev": dev, "test": test,
                     "accuracy": m["accuracy"], "p": c["p_value"], "p_seeds": ps,
                     "teacher_dev": teacher_dev[name]})
    chosen = OPTIONS[max(dev_means, key=dev_means.get)][0]
    t = classification_metrics(gold["test"], test_teacher, labels, n_boot=1000)
    lines = [f"Teacher (qwen2.5-1.5b, the demo's prompt) on the 300 test tweets: "
             f"{fmt_ci(t['accuracy'])}; {np.mean(seconds[:1]):.2f} s per tweet for one prompt, "
             f"{sum(seconds):.2f} s for three.", "",
             "| option | label model dev accuracy | student dev (mean ± sd) | student test "
             "(mean ± sd) | seed 42 test [95% CI] | McNemar p vs teacher, seed 42 (all seeds) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        mark = " (chosen on dev)" if r["option"] == chosen else ""
        lines.append(f"| {r['option']}{mark} | {np.mean(r['teacher_dev']):.1%} | "
                     f"{np.mean(r['dev']):.1%} ± {np.std(r['dev'], ddof=1):.1%} | "
                     f"{np.mean(r['test']):.1%} ± {np.std(r['test'], ddof=1):.1%} | "
                     f"{fmt_ci(r['accuracy'])} | {r['p']:.3g} "
                     f"({', '.join(f'{p:.2g}' for p in r['p_seeds'])}) |")
    wall = time.perf_counter() - t0
    lines += ["", f"Wall {wall / 60:.1f} min on {os.cpu_count()} cores ({hardware()['cpu']})."]
    text = "\n".join(lines) + "\n"
    print(text)
    (args.out / "table.md").write_text(text, encoding="utf-8")
    (args.out / "results.json").write_text(json.dumps(
        {"rows": rows, "chosen_on_dev": chosen, "seconds_per_text": seconds,
         "wall_seconds": wall}, indent=2, default=str), encoding="utf-8")


if __name__ == "__main__":
    main()
