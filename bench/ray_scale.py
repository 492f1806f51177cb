"""How does `--engine ray` scale on this machine, and what bounds it on a big cluster?

Annotation (section `annotate`), on the same test tweets with smollm2-135m and 3 demos, each
way on a fresh cache, timing the labelling only (cluster start and model loads are reported
apart):

- one process (`--engine local`) with 1 llama.cpp thread and with one thread per core;
- a local Ray cluster (127.0.0.1) with 1 and 2 replicas, 1 CPU and 1 thread each;
- the driver's commit ceiling: rows/s that `annotate` commits to the SQLite cache with an
  instant teacher, in one process and through Ray (`replay:` replicas: `ray.wait`, `ray.get`,
  commit), at 8 and 64 texts per batch. With N replicas at r texts/s each, a cluster runs at
  min(N × r, ceiling): this is the number that caps a large cluster.

    .venv/bin/python bench/ray_scale.py --n 120 --json ray_scale.json

Sections are functions `bench_NAME(args) -> dict` registered in SECTIONS; they share one Ray
cluster (`start_cluster`). To add prediction, write `bench_prediction(args)` and register it as
SECTIONS["predict"].
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import ray

from llmdistill.annotate import AnnotationCache, annotate, demos_for
from llmdistill.config import DataConfig, EngineConfig, TeacherConfig
from llmdistill.data import resolve
from llmdistill.scale.annotate import RayTeacher
from llmdistill.scale.cluster import start_local
from llmdistill.teachers import Annotation, Teacher, load_teacher


def start_cluster(cpus: int) -> str:
    """A private Ray cluster on 127.0.0.1 without a dashboard; returns its address."""
    start_local(ray, num_cpus=cpus, logging_level="error")
    return ray.get_runtime_context().gcs_address


def timed(frame: pd.DataFrame, teacher: Teacher, use_stream: bool) -> tuple[float, pd.DataFrame]:
    """Label `frame` on a fresh cache; (texts/s of the labelling alone, the table)."""
    with tempfile.TemporaryDirectory() as tmp:
        cache = AnnotationCache(Path(tmp) / "annotations.sqlite")
        start = time.perf_counter()
        table = annotate(frame, teacher, cache, description=teacher.id,
                         labeller=teacher.label_stream if use_stream else None)
        wall = time.perf_counter() - start
        cache.close()
    return len(frame) / wall, table


class Instant(Teacher):
    """Answers at once: what is left is the driver's own work per row."""

    id, labels, prompt_hash, info = "instant", ["a", "b"], "p", {}

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size

    def label_probs(self, texts: list[str]) -> list[Annotation]:
        return [Annotation([0.5, 0.5], "ok", 0.0) for _ in texts]


def bench_annotation(args: argparse.Namespace) -> dict:
    """texts/s: one process vs 1 and 2 Ray replicas of smollm2-135m; the commit ceiling."""
    frame, labels = resolve("tweets:test", DataConfig())
    frame = frame.head(args.n).reset_index(drop=True)
    cfg = TeacherConfig(spec="smollm2-135m", n_demos=3, n_threads=1)
    demos = demos_for("tweets:train", labels, cfg, DataConfig())
    probs = [f"prob_{lab}" for lab in labels]
    rows: list[dict] = []
    reference = None
    for threads in (1, os.cpu_count() or 1):
        teacher = load_teacher(cfg.spec, labels, demos, cfg.model_copy(
            update={"n_threads": threads}), None)
        rate, table = timed(frame, teacher, use_stream=False)
        teacher.close()
        reference = table[probs].to_numpy() if reference is None else reference
        rows.append({"way": f"one process, {threads} thread(s)", "texts_per_s": rate})
    for replicas in (1, 2):
        engine = EngineConfig(name="ray", replicas=replicas, cpus_per_replica=1)
        start = time.perf_counter()
        teacher = RayTeacher(cfg.spec, labels, demos, cfg, None, engine)
        ready = time.perf_counter() - start
        rate, table = timed(frame, teacher, use_stream=True)
        teacher.close()
        diff = float(np.nanmax(np.abs(table[probs].to_numpy() - reference)))
        rows.append({"way": f"Ray, {replicas} replica(s) × 1 CPU", "texts_per_s": rate,
                     "replicas_ready_s": ready, "max_abs_prob_diff_vs_1_thread": diff})
    base = rows[0]["texts_per_s"]
    for r in rows:
        r["x_one_process_1_thread"] = r["texts_per_s"] / base

    ceiling: list[dict] = []
    texts = pd.DataFrame({"id": range(args.ceiling_n),
                          "text": [f"ticket {i}: the printer is on fire again"
                                   for i in range(args.ceiling_n)]})
    with tempfile.TemporaryDirectory() as tmp:
        answers = Path(tmp) / "answers.csv"
        texts.assign(label="a").to_csv(answers, index=False)
        for batch in (8, 64):
            rate, _ = timed(texts, Instant(batch), use_stream=False)
            ceiling.append({"way": "one process, instant teacher", "batch": batch,
                            "rows_per_s": rate})
            engine = EngineConfig(name="ray", replicas=2, cpus_per_replica=1)
            teacher = RayTeacher(f"replay:{answers}#label", ["a", "b"], [], cfg, None, engine,
                                 batch_size=batch)
            rate, _ = timed(texts, teacher, use_stream=True)
            teacher.close()
            ceiling.append({"way": "Ray, 2 replay: replicas", "batch": batch,
                            "rows_per_s": rate})
        replay = load_teacher(f"replay:{answers}#label", ["a", "b"], [], cfg, None)
        start = time.perf_counter()
        replay.label_probs(texts["text"].tolist())
        ceiling.append({"way": "replay: teacher alone, in process (one replica's bound)",
                        "batch": args.ceiling_n,
                        "rows_per_s": args.ceiling_n / (time.perf_counter() - start)})
    return {"teacher": cfg.spec, "n": args.n, "demos": len(demos), "rows": rows,
            "ceiling_n": args.ceiling_n, "commit_ceiling": ceiling}


def minilm_student(folder: Path, labels: list[str], parity_texts: list[str]) -> dict:
    """The packaged MiniLM-L6 with a seeded, untrained head, exported to ONNX (fp32 + int8).

    Speed does not depend on the head's weights, so nothing is trained; the parity check runs
    as for a real student and decides, as in `predict`, which file the runs use.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from llmdistill.assets import minilm_dir
    from llmdistill.config import ExportConfig
    from llmdistill.student.export import export_student

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(minilm_dir()), num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={lab: i for i, lab in enumerate(labels)})
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(minilm_dir())).save_pretrained(folder)
    result = export_student(folder, parity_texts, None, ExportConfig(max_texts=len(parity_texts)),
                            int8=True, data_name="tweets")
    return {v["file"]: {"agreement": v["agreement"], "passed": v["passed"]}
            for v in result.variants}


def bench_prediction(args: argparse.Namespace) -> dict:
    """texts/s of `predict --input --out`: one process vs `--engine ray` with 1 and 2 replicas.

    Each way reads the same tweets from Parquet and writes Parquet predictions, end to end
    (model load included; the Ray cluster is already up). Medians of `--predict-runs` runs on
    `--predict-n` texts and on SMALL texts; the difference gives the steady rate (texts/s once
    loaded) and the fixed cost per job (load, actor start), the two numbers a scaling model needs.
    """
    import statistics

    from llmdistill.data import load_tweets
    from llmdistill.evaluate import hardware
    from llmdistill.scale_predict import backend_for, predict_on_ray
    from llmdistill.student.predict import (
        StudentClassifier,
        prediction_records,
        read_texts,
        write_predictions,
    )

    small = 64
    tweets = load_tweets().sample(frac=1.0, random_state=0)
    labels = sorted(tweets["label"].unique())
    texts = (tweets["text"].tolist() * (args.predict_n // len(tweets) + 1))[:args.predict_n]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        student = tmp / "student"
        parity = minilm_student(student, labels, tweets["text"].tolist()[:200])
        backend = backend_for(student)
        shards = {}
        for name, n in (("all", len(texts)), ("small", small)):
            folder = tmp / f"in-{name}"
            folder.mkdir()
            frame = pd.DataFrame({"id": [f"t{i}" for i in range(n)], "text": texts[:n]})
            for k, part in enumerate(np.array_split(np.arange(n), 4)):
                frame.iloc[part].to_parquet(folder / f"part-{k}.parquet", index=False)
            frame.to_parquet(tmp / f"{name}.parquet", index=False)
            shards[name] = folder

        def one_process(threads: int) -> Callable[[str, Path], None]:
            def run(name: str, out: Path) -> None:
                clf = StudentClassifier.load(student, threads=threads)
                frame = read_texts(str(tmp / f"{name}.parquet"))
                ids, rows = frame["id"].tolist(), frame["text"].tolist()
                probs = clf.predict_proba(rows)
                write_predictions(prediction_records(ids, rows, probs, clf.labels), clf.labels,
                                  out.with_suffix(".parquet"))
            return run

        def on_ray(replicas: int) -> Callable[[str, Path], None]:
            def run(name: str, out: Path) -> None:
                predict_on_ray(student, shards[name], out,
                               EngineConfig(name="ray", replicas=replicas, cpus_per_replica=1))
            return run

        cores = os.cpu_count() or 1
        ways = [("one process, 1 thread", one_process(1)),
                (f"one process, {cores} threads", one_process(cores)),
                ("Ray, 1 replica × 1 CPU", on_ray(1)), ("Ray, 2 replicas × 1 CPU", on_ray(2))]
        rows: list[dict] = []
        outputs: dict[str, pd.DataFrame] = {}
        for way, run in ways:
            walls: dict[str, list[float]] = {"all": [], "small": []}
            for r in range(args.predict_runs):
                for name in ("small", "all"):
                    out = tmp / f"out-{len(rows)}-{name}-{r}"
                    start = time.perf_counter()
                    run(name, out)
                    walls[name].append(time.perf_counter() - start)
                    if name == "all" and r == 0:
                        got = out.with_suffix(".parquet") if way.startswith("one") else out
                        outputs[way] = pd.read_parquet(got).set_index("id").loc[
                            [f"t{i}" for i in range(len(texts))]]
            t_all, t_small = (statistics.median(walls[k]) for k in ("all", "small"))
            steady = (len(texts) - small) / max(t_all - t_small, 1e-9)
            ref = outputs[ways[0][0]]
            probs = [f"prob_{lab}" for lab in labels]
            rows.append({"way": way, "texts_per_s": len(texts) / t_all,
                         "steady_texts_per_s": steady,
                         "fixed_s": max(t_small - small / steady, 0.0),
                         "walls_s": walls["all"],
                         "labels_agree_with_1_thread": float(
                             (outputs[way]["label"] == ref["label"]).mean()),
                         "max_abs_prob_diff_vs_1_thread": float(
                             np.abs(outputs[way][probs].to_numpy() - ref[probs].to_numpy()).max())})
    base = rows[0]["steady_texts_per_s"]
    for r in rows:
        r["steady_x_one_process_1_thread"] = r["steady_texts_per_s"] / base
    return {"student": "minilm-l6 (packaged; seeded untrained head)", "backend": backend,
            "parity": parity, "n": len(texts), "small_n": small, "runs": args.predict_runs,
            "rows": rows, "hardware": hardware()}


def print_prediction_table(results: dict) -> None:
    """The prediction numbers as a markdown table, for docs/results.md."""
    if p := results.get("predict"):
        hw = p["hardware"]
        print(f"\n{p['student']}, {p['backend']}, {p['n']} tweets (fixed cost from "
              f"{p['small_n']}), median of {p['runs']}, {hw['cpu']} x {hw['cores']} cores\n")
        print("| way | texts/s end to end | steady texts/s | × one process, 1 thread | "
              "fixed cost (s) |")
        print("| --- | --- | --- | --- | --- |")
        for r in p["rows"]:
            print(f"| {r['way']} | {r['texts_per_s']:.0f} | {r['steady_texts_per_s']:.0f} | "
                  f"{r['steady_x_one_process_1_thread']:.2f} | {r['fixed_s']:.1f} |")


SECTIONS: dict[str, Callable[[argparse.Namespace], dict]] = {"annotate": bench_annotation}
SECTIONS["predict"] = bench_prediction


def print_tables(results: dict) -> None:
    """The numbers as markdown tables, for docs/results.md."""
    if a := results.get("annotate"):
        print(f"\n{a['teacher']}, {a['n']} tweets, {a['demos']} demos\n")
        print("| way | texts/s | × one process, 1 thread | replicas ready (s) |")
        print("| --- | --- | --- | --- |")
        for r in a["rows"]:
            ready = f"{r['replicas_ready_s']:.1f}" if "replicas_ready_s" in r else "—"
            print(f"| {r['way']} | {r['texts_per_s']:.2f} | {r['x_one_process_1_thread']:.2f} "
                  f"| {ready} |")
        print(f"\ncommit ceiling, {a['ceiling_n']} rows\n")
        print("| way | texts per batch | rows/s |")
        print("| --- | --- | --- |")
        for r in a["commit_ceiling"]:
            print(f"| {r['way']} | {r['batch']} | {r['rows_per_s']:,.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=120, help="tweets labelled by each way")
    ap.add_argument("--ceiling-n", type=int, default=20_000, help="rows for the commit ceiling")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated, of {', '.join(SECTIONS)}")
    ap.add_argument("--predict-n", type=int, default=2000, help="tweets each prediction run "
                                                                "labels")
    ap.add_argument("--predict-runs", type=int, default=3, help="runs per prediction way")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    cpus = os.cpu_count() or 1
    address = start_cluster(cpus)
    try:
        results = {name: SECTIONS[name](args) for name in args.sections.split(",")}
    finally:
        ray.shutdown()
    results["hardware"] = {"cpu": platform.processor() or platform.machine(), "cores": cpus,
                           "ray": ray.__version__, "cluster": f"local, {address}"}
    print(json.dumps(results, indent=2))
    print_tables(results)
    print_prediction_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
