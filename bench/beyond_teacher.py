"""Beyond the teacher on the seed: two teachers joined by a label model, confident learning and
self-training, each measured against the last, chosen on dev, reported on the 904 gold tweets.

Teachers: the replayed Llama-3.1-405B labels (`replay:`, one-hot) and the packaged qwen2.5-1.5b
label scoring (probabilities; labelled once by `bench/seed_teachers.py` into the cache, read
here from it). The anchor is 200 gold labels sampled from the training rows with each training
seed; it fits the calibration and the label model and trains on its gold label (the default).

Which data decides what (no test gold is used for any choice):
- step 1 (label models, no student): the aggregate's accuracy on the dev tweets' gold, over
  3 anchor seeds; the best method × calibration goes on;
- step 2 (students, 3 training seeds each): the student's dev accuracy picks the option;
- the test file's 904 gold labels: only the final table (intervals, McNemar vs the 405B).

    nice -n 5 .venv/bin/python bench/beyond_teacher.py --max-train 1200 --seeds 3
"""

from __future__ import annotations

import argparse
import json
import os
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

from seed_reproduction import LABELS, SEED_DIR, fmt_ci, metrics_row, split_dev  # noqa: E402
from seed_teachers import seed_frames  # noqa: E402

from llmdistill.annotate import (  # noqa: E402
    AnnotationCache,
    annotate,
    merge_teachers,
    set_aggregate,
    teacher_probs,
)
from llmdistill.config import (  # noqa: E402
    ConfidentConfig,
    LabelModelConfig,
    RunConfig,
    SelfTrainingConfig,
    StudentConfig,
    TeacherConfig,
)
from llmdistill.evaluate import hardware  # noqa: E402
from llmdistill.label_model import aggregate  # noqa: E402
from llmdistill.student.noise import sample_anchor  # noqa: E402
from llmdistill.teachers import load_teacher  # noqa: E402

TEACHER_NAMES = ["Llama-3.1-405B (replayed)", "qwen2.5-1.5b (label scoring)"]
METHODS = [("first", "none"), ("first", "temperature"), ("first", "temperature_bias"),
           ("mean", "none"), ("mean", "temperature"), ("mean", "temperature_bias"),
           ("dawid_skene", "none"), ("dawid_skene", "temperature"),
           ("dawid_skene", "temperature_bias"), ("stacked", "none"), ("stacked", "temperature"),
           ("stacked", "temperature_bias"), ("snorkel", "none")]
STUDENT_BASE = {"model": "minilm-l6", "epochs": 3, "max_length": 64, "anchor_size": 200,
                "class_weights": "balanced", "anchor_targets": "gold", "prior_correction": True}


def stores(seed_dir: Path, dev_size: int, max_train: int | None, cache_dir: Path,
           second: str) -> tuple[pd.DataFrame, list[dict]]:
    """One store over train + dev + test with both teachers' columns (t0 = 405B, t1 = second)."""
    train, dev, test, demos = seed_frames(seed_dir, dev_size, max_train)
    rows = pd.concat([train.assign(split="train"), dev.assign(split="validation"),
                      test.assign(split="test")], ignore_index=True)
    keep = ["id", "text", "text_hash", "gold", "split", "label", "status", "seconds", "tokens",
            "cost", "teacher", "prompt_hash", "raw", *[f"prob_{lab}" for lab in LABELS]]
    first = rows[keep]
    cfg = TeacherConfig(spec=second)
    teacher = load_teacher(second, LABELS, demos, cfg, cache_dir)
    cache = AnnotationCache(cache_dir / "annotations.sqlite")
    try:
        other = annotate(rows[["id", "text"]], teacher, cache, description=f"reading {second}")
    finally:
        cache.close()
        teacher.close()
    return merge_teachers([first, other.assign(gold=rows["gold"].to_numpy(),
                                              split=rows["split"].to_numpy())], LABELS), demos


def anchor_for(store: pd.DataFrame, seed: int, size: int) -> pd.DataFrame:
    return sample_anchor(store[store["split"] == "train"], size, seed)


def aggregated(store: pd.DataFrame, method: str, calibration: str, anchor: pd.DataFrame,
               seed: int) -> tuple[pd.DataFrame, dict]:
    position = {h: i for i, h in enumerate(store["text_hash"])}
    index = anchor["text_hash"].map(position).to_numpy(np.int64)
    gold = anchor["gold"].map({lab: j for j, lab in enumerate(LABELS)}).to_numpy(np.int64)
    probs = [teacher_probs(store, i, LABELS) for i in range(2)]
    agg = aggregate(probs, LABELS, LabelModelConfig(method=method, calibration=calibration),
                    index, gold, seed=seed)
    return set_aggregate(store, agg.probs, agg.entropy, LABELS), agg.info


def accuracy(store: pd.DataFrame, split: str, column: str = "label") -> float:
    part = store[store["split"] == split]
    return float(np.mean(part[column].astype(object).to_numpy() == part["gold"].to_numpy()))


def train_job(job: dict) -> dict:
    """One student in a worker: optional confident learning / self-training, then dev and test
    probabilities."""
    import torch

    from llmdistill.student.predict import StudentClassifier
    from llmdistill.student.train import train_student

    torch.set_num_threads(job["threads"])
    work = Path(job["work"])
    store = pd.read_parquet(job["store"])
    anchor = pd.read_parquet(job["anchor"])
    cfg = StudentConfig(**{**STUDENT_BASE, "seed": job["seed"], "threads": job["threads"],
                           "anchor_size": len(anchor)})
    train = store[store["split"] == "train"]
    dev = store[store["split"] == "validation"]
    extra: dict = {}
    if job.get("confident"):
        from llmdistill.student.confident import apply_issues, find_label_issues

        ccfg = ConfidentConfig(action=job["confident"])
        part = train[~train["id"].isin(anchor["id"])]
        report = find_label_issues(part, LABELS, cfg.model, ccfg, seed=job["seed"],
                                   max_length=cfg.max_length)
        train = pd.concat([apply_issues(part, report, ccfg), train[train["id"].isin(anchor["id"])]],
                          ignore_index=True)
        extra["confident"] = {"flagged": int(report.mask.sum()), "checked": len(part)}
    out = work / f"{job['name']}-{job['seed']}"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    train_student(train, dev, LABELS, cfg, out, {"benchmark": "beyond_teacher"}, anchor=anchor)
    if job.get("self_training"):
        from llmdistill.self_training import self_train

        pool = pd.read_parquet(job["pool"])
        scfg = SelfTrainingConfig(rounds=job["self_training"])
        result = self_train(train, pool, LABELS, cfg, scfg, out, anchor, dev)
        extra["self_training"] = result.history
    wall = time.perf_counter() - start
    clf = StudentClassifier.load(out)
    test = store[store["split"] == "test"]
    probs = {"dev": clf.predict_proba(dev["text"].tolist(), batch_size=64),
             "test": clf.predict_proba(test["text"].tolist(), batch_size=64)}
    shutil.rmtree(out, ignore_errors=True)
    return {"name": job["name"], "seed": job["seed"], "wall_seconds": wall, **extra,
            "probs": {k: v.tolist() for k, v in probs.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed-dir", type=Path, default=SEED_DIR)
    ap.add_argument("--teacher", default="qwen2.5-1.5b", help="the second teacher")
    ap.add_argument("--dev-size", type=int, default=500)
    ap.add_argument("--max-train", type=int, default=1200)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--options",
                    default="405b,label-model,confident-drop,confident-down,self-train",
                    help="student options (step 2)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=Path("runs/beyond_teacher"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    cache_dir = RunConfig().resolved_cache_dir()
    store, demos = stores(args.seed_dir, args.dev_size, args.max_train, cache_dir, args.teacher)
    seeds = [42 + s for s in range(args.seeds)]
    print(f"store: {store['split'].value_counts().to_dict()}; {len(demos)} qwen demos")

    # step 1: label models, judged on dev gold, no student
    lm_rows = []
    for i, name in enumerate(TEACHER_NAMES):
        acc = {s: float(np.mean(store.loc[store["split"] == s, f"t{i}_label"].to_numpy()
                                == store.loc[store["split"] == s, "gold"].to_numpy()))
               for s in ("validation", "test")}
        lm_rows.append({"label model": f"{name} alone, raw", "dev": [acc["validation"]],
                        "test": [acc["test"]]})
    for method, cal in METHODS:
        devs, tests, infos = [], [], []
        for seed in seeds:
            try:
                agg, info = aggregated(store, method, cal, anchor_for(store, seed, 200), seed)
            except Exception as e:  # noqa: BLE001 - a method that cannot run is reported, not fatal
                print(f"  {method}/{cal}: {type(e).__name__}: {e}")
                break
            devs.append(accuracy(agg, "validation"))
            tests.append(accuracy(agg, "test"))
            infos.append(info)
        if devs:
            lm_rows.append({"label model": f"{method}, calibration {cal}", "method": method,
                            "calibration": cal, "dev": devs, "test": tests})
            print(f"  {method}/{cal}: dev {np.mean(devs):.2%} ± {np.std(devs, ddof=1):.2%}, "
                  f"test {np.mean(tests):.2%}", flush=True)
    best = max((r for r in lm_rows if "method" in r), key=lambda r: np.mean(r["dev"]))
    print(f"chosen on dev: {best['label model']}")

    # step 2: students on the chosen label model
    work = Path(tempfile.mkdtemp(prefix="beyond-", dir=args.out))
    pool_ids = set(store["id"])
    from seed_reproduction import load_seed

    ann, _, _ = load_seed(args.seed_dir)
    rest, _ = split_dev(ann[~ann["id"].isin({d["id"] for d in demos})].reset_index(drop=True),
                        args.dev_size, seed=13)
    pool = rest[~rest["id"].isin(pool_ids)][["id", "text"]]
    pool.to_parquet(work / "pool.parquet")
    options = {"405b": ("first", "none", {}),
               "label-model": (best["method"], best["calibration"], {}),
               "confident-drop": (best["method"], best["calibration"], {"confident": "drop"}),
               "confident-down": (best["method"], best["calibration"],
                                  {"confident": "downweight"}),
               "self-train": (best["method"], best["calibration"], {"self_training": 1})}
    wanted = [o.strip() for o in args.options.split(",") if o.strip()]
    jobs = []
    for seed in seeds:
        anchor = anchor_for(store, seed, 200)
        anchor.to_parquet(work / f"anchor-{seed}.parquet")
        for name in wanted:
            method, cal, extra = options[name]
            agg, _ = aggregated(store, method, cal, anchor, seed)
            path = work / f"store-{name}-{seed}.parquet"
            agg.to_parquet(path)
            jobs.append({"name": name, "seed": seed, "store": str(path), "work": str(work),
                         "anchor": str(work / f"anchor-{seed}.parquet"),
                         "pool": str(work / "pool.parquet"), "threads": args.threads, **extra})
    print(f"{len(jobs)} students on {args.workers} workers × {args.threads} thread(s); pool of "
          f"{len(pool)} unlabelled tweets for self-training", flush=True)
    results = []
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as ex:
        for r in ex.map(train_job, jobs):
            print(f"  {r['name']} seed {r['seed']}: {r['wall_seconds']:.0f} s", flush=True)
            results.append(r)
    shutil.rmtree(work, ignore_errors=True)

    dev_gold = store.loc[store["split"] == "validation", "gold"].to_numpy(dtype=object)
    test_part = store[store["split"] == "test"]
    test_gold = test_part["gold"].to_numpy(dtype=object)
    teacher_test = test_part["t0_label"].tolist()
    rows = [metrics_row(TEACHER_NAMES[0], "405B", teacher_test, test_gold, None, args.bootstrap),
            metrics_row(TEACHER_NAMES[1], "1.5B", test_part["t1_label"].tolist(), test_gold,
                        teacher_test, args.bootstrap)]
    dev_acc: dict[str, list[float]] = {}
    by_option: dict[str, dict] = {}
    for name in wanted:
        runs = [r for r in results if r["name"] == name]
        labels_of = [[LABELS[i] for i in np.argmax(r["probs"]["test"], axis=1)] for r in runs]
        dev_acc[name] = [float(np.mean(np.array([LABELS[i] for i in np.argmax(r["probs"]["dev"],
                                                                              axis=1)],
                                                dtype=object) == dev_gold)) for r in runs]
        test_accs = [float(np.mean(np.array(p, dtype=object) == test_gold)) for p in labels_of]
        row = metrics_row(f"student: {name}", "22.7M", labels_of[0], test_gold, teacher_test,
                          args.bootstrap)
        row["test_seeds"] = test_accs
        row["dev_seeds"] = dev_acc[name]
        row.update({k: runs[0][k] for k in ("confident", "self_training") if k in runs[0]})
        by_option[name] = row
        rows.append(row)
    chosen = max(dev_acc, key=lambda k: np.mean(dev_acc[k])) if dev_acc else None
    lines = ["### Step 1: label models (no student), aggregate accuracy on gold", "",
             "| label model | dev accuracy (mean ± sd, 3 anchor seeds) | test accuracy (mean) |",
             "| --- | --- | --- |"]
    for r in lm_rows:
        sd = f" ± {np.std(r['dev'], ddof=1):.1%}" if len(r["dev"]) > 1 else ""
        mark = " (chosen on dev)" if r is best else ""
        lines.append(f"| {r['label model']}{mark} | {np.mean(r['dev']):.1%}{sd} | "
                     f"{np.mean(r['test']):.1%} |")
    lines += ["", "### Step 2: students (minilm-l6), chosen on dev", "",
              "| model | test accuracy, seed 42 [95% CI] | macro-F1 [95% CI] | test mean ± sd "
              "(seeds) | dev mean ± sd | McNemar p vs 405B |",
              "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        p = "—" if r["p_vs_teacher"] is None else f"{r['p_vs_teacher']:.3g}"
        ts = r.get("test_seeds")
        ds = r.get("dev_seeds")
        ts_s = f"{np.mean(ts):.1%} ± {np.std(ts, ddof=1):.1%}" if ts and len(ts) > 1 else "—"
        ds_s = f"{np.mean(ds):.1%} ± {np.std(ds, ddof=1):.1%}" if ds and len(ds) > 1 else "—"
        name = r["model"] + (" (chosen on dev)" if r["model"] == f"student: {chosen}" else "")
        lines.append(f"| {name} | {fmt_ci(r['accuracy'])} | {fmt_ci(r['macro_f1'], False)} | "
                     f"{ts_s} | {ds_s} | {p} |")
    wall = time.perf_counter() - t0
    n_train = int((store["split"] == "train").sum())
    lines += ["", f"n = {len(test_gold)} gold test tweets; dev = {len(dev_gold)} train.csv "
              f"tweets; {n_train} training tweets; anchor 200 gold training rows per seed; pool "
              f"{len(pool)} unlabelled train.csv tweets. Wall {wall / 60:.1f} min on "
              f"{os.cpu_count()} cores ({hardware()['cpu']})."]
    text = "\n".join(lines) + "\n"
    print(text)
    (args.out / "table.md").write_text(text, encoding="utf-8")
    (args.out / "results.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "label_models": lm_rows,
         "chosen_label_model": best["label model"], "students": rows, "chosen_on_dev": chosen,
         "runs": [{k: v for k, v in r.items() if k != "probs"} for r in results],
         "wall_seconds": wall}, indent=2, default=str), encoding="utf-8")


if __name__ == "__main__":
    main()
