"""Active distillation vs random selection on the seed's tweets and their replayed 405B labels.

How many teacher calls does margin selection (with the k-means++ diversity guard) need to match
what random selection reaches with the whole budget? Both strategies run `active_distill` with
the same seeds, the same budget, the same seed set per seed and the same student settings as
bench/seed_reproduction.py (MiniLM-L6, max_length 64, 3 epochs, anchor of 200 gold rows from
the random seed set, prior correction). The teacher is the seed's Llama-3.1-405B, replayed from
train.csv (`replay:` teacher: free and exact), so the curves measure selection, not sampling.

Which data decides what (no test gold is used for any choice):
- pool: the seed's train.csv minus a 500-tweet dev split (`split_dev`, as seed_reproduction);
- validation (epoch choice, agreement with the teacher): the dev split, teacher-labelled; its
  500 calls count against the budget of both strategies alike;
- dev gold: the accuracy that would choose between settings; the 904 gold tweets of
  total_tests.csv: the reported accuracy, recorded at every round.

A killed benchmark resumes: finished runs are kept in OUT/runs/, unfinished ones resume from
OUT/work/ (active_distill's own resume). One process with 2 torch threads is the default: on a
smoke run (2 jobs of 3 rounds) it took 131 s against 151 s for 2 worker processes × 1 thread
(`--workers 2 --threads 1`).

    flock /tmp/cpu.lock .venv/bin/python bench/active_vs_random.py   # ≈ 35-40 min on 2 cores
    .venv/bin/python bench/active_vs_random.py --seeds 1 --budget 200 --seed-size 100 \\
        --step 100 --dev-size 100 --out runs/active_smoke           # a smoke test
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # the trainer's per-step bars would flood the log

import argparse
import json
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from seed_reproduction import LABELS, SEED_DIR, TEACHER_COLUMN, load_seed, split_dev  # noqa: E402

from llmdistill.evaluate import hardware  # noqa: E402
from llmdistill.files import atomic_path, atomic_write  # noqa: E402

STRATEGIES = ("margin", "random")
# seed_reproduction's student (its `kd` variant with prior correction); only seed and threads vary
STUDENT = {"model": "minilm-l6", "epochs": 3, "max_length": 64, "anchor_size": 200,
           "prior_correction": True, "forward_correction": False, "class_weights": "none",
           "label_smoothing": 0.0, "confidence_weighting": False}


def round_costs(job: dict) -> list[float]:
    """Relative CPU cost of each round of a job: training texts × epochs, plus forward passes
    at ~1/3 each (validation every epoch, the evaluation sets, and for margin the pool)."""
    epochs, v, e = STUDENT["epochs"], job["validation"], job["eval_texts"]
    costs, labelled = [], 0
    sizes = [job["seed_size"]] + [job["step"]] * job["steps"]
    for r, add in enumerate(sizes):
        labelled += add
        last = r == len(sizes) - 1
        scored = 0 if last or job["strategy"] == "random" else job["pool"] - labelled
        costs.append(epochs * labelled + (epochs * v + v + e + scored) / 3)
    return costs


def run_job(job: dict) -> dict:
    """One (strategy, seed) active run in a worker process; returns its history."""
    import torch
    from transformers.utils import logging as hf_logging

    from llmdistill.active import STATE_FILE, active_distill
    from llmdistill.config import ActiveConfig, StudentConfig, TeacherConfig

    teacher = TeacherConfig(spec=job["teacher"], n_demos=0)
    student = StudentConfig(**STUDENT, seed=42 + job["seed"], threads=job["threads"])
    active = ActiveConfig(budget=job["budget"], seed_size=job["seed_size"], step=job["step"],
                          strategy=job["strategy"])
    name = f"{job['strategy']}-seed{job['seed']}"
    keep = Path(job["runs_dir"]) / f"{name}.json"
    if keep.exists():  # finished by an earlier, interrupted invocation with the same settings
        done = json.loads(keep.read_text(encoding="utf-8"))
        if (done["config"]["student"] == student.model_dump(mode="json")
                and done["config"]["active"] == active.model_dump(mode="json")):
            print(f"  [{name}] reusing {keep}", flush=True)
            return {"strategy": job["strategy"], "seed": job["seed"],
                    "history": done["history"], "wall_seconds": None, "reused": True}
    torch.set_num_threads(job["threads"])
    hf_logging.set_verbosity_error()  # the encoder-only load report of every embedding pass
    work = Path(job["work"])
    pool, dev, test = (pd.read_parquet(work / f"{k}.parquet") for k in ("pool", "dev", "test"))
    out, cache = work / name, work / f"{name}-cache"  # a killed job resumes from these
    start = time.perf_counter()

    def progress(rec: dict) -> None:
        acc = rec["accuracy"]
        print(f"  [{name}] round {rec['round']}: {rec['calls']} calls, dev {acc['dev']:.3f}, "
              f"test {acc['test']:.3f}, {rec['seconds']:.0f} s", flush=True)
        if rec["round"] == 0 and job.get("projection"):
            p = job["projection"]
            mine = rec["seconds"] * p["job_units"] / p["round0_units"]
            print(f"  projected: this job ≈ {mine / 60:.1f} min; the benchmark ≈ "
                  f"{mine * p['total_units'] / p['job_units'] / p['workers'] / 60:.0f} min "
                  f"({p['jobs']} jobs on {p['workers']} worker(s))", flush=True)

    result = active_distill(pool, dev, LABELS, teacher, student, active, cache, out,
                            seed=job["seed"], evaluate_on={"dev": dev, "test": test},
                            on_round=progress)
    keep.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(keep, (out / STATE_FILE).read_text(encoding="utf-8"))
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    return {"strategy": job["strategy"], "seed": job["seed"], "history": result.history,
            "wall_seconds": time.perf_counter() - start}


def curves(results: list[dict], strategy: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Teacher calls per round and the (seeds × rounds) accuracy on evaluation set `key`."""
    runs = sorted((r for r in results if r["strategy"] == strategy), key=lambda r: r["seed"])
    calls = [[h["calls"] for h in r["history"]] for r in runs]
    if any(c != calls[0] for c in calls):
        raise RuntimeError(f"{strategy}: the seeds' rounds spent different calls: {calls}")
    return (np.array(calls[0]),
            np.array([[h["accuracy"][key] for h in r["history"]] for r in runs]))


def calls_to_reach(calls: np.ndarray, acc: np.ndarray, target: float) -> float | None:
    """First point where the mean curve `acc` reaches `target`, interpolated linearly between
    rounds; None when it never does."""
    hit = np.flatnonzero(acc >= target)
    if not len(hit):
        return None
    i = int(hit[0])
    if i == 0:
        return float(calls[0])
    a0, a1 = acc[i - 1], acc[i]
    return float(calls[i - 1] + (target - a0) / (a1 - a0) * (calls[i] - calls[i - 1]))


def pm(values: np.ndarray) -> str:
    sd = np.std(values, ddof=1) if len(values) > 1 else 0.0
    return f"{np.mean(values):.2%} ± {sd:.1%}"


def summarise(results: list[dict], validation: int) -> tuple[str, dict]:
    """The Markdown table and the calls-to-reach numbers."""
    data = {s: {k: curves(results, s, k) for k in ("dev", "test")} for s in STRATEGIES}
    calls = data["margin"]["test"][0]
    lines = [f"| teacher calls (incl. {validation} validation) | "
             + " | ".join(f"{s} {k}" for s in STRATEGIES for k in ("dev", "test")) + " |",
             "| ---: |" + " ---: |" * (2 * len(STRATEGIES))]
    for i, c in enumerate(calls):
        cells = [pm(data[s][k][1][:, i]) for s in STRATEGIES for k in ("dev", "test")]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    reach = {}
    for k in ("dev", "test"):
        rc, racc = data["random"][k]
        mc, macc = data["margin"][k]
        target = float(racc[:, -1].mean())
        need = calls_to_reach(mc, macc.mean(axis=0), target)
        reach[k] = {"random_final_accuracy": target, "random_calls": int(rc[-1]),
                    "margin_calls_needed": need,
                    "margin_pool_calls_needed": None if need is None else need - validation,
                    "random_pool_calls": int(rc[-1]) - validation,
                    "margin_final_accuracy": float(macc[:, -1].mean())}
    return "\n".join(lines), {"reach": reach, "curves": {
        s: {k: {"calls": v[0].tolist(), "accuracy": v[1].tolist()} for k, v in d.items()}
        for s, d in data.items()}}


def reach_sentence(r: dict, what: str) -> str:
    if r["margin_calls_needed"] is None:
        return (f"On {what}, margin selection never reached random selection's accuracy at the "
                f"full budget ({r['random_final_accuracy']:.2%} at {r['random_calls']} calls); "
                f"it ended at {r['margin_final_accuracy']:.2%}.")
    need, pool = r["margin_calls_needed"], r["margin_pool_calls_needed"]
    saved = 1 - pool / r["random_pool_calls"]
    return (f"On {what}, margin selection reaches random selection's full-budget accuracy "
            f"({r['random_final_accuracy']:.2%} at {r['random_calls']} calls) after "
            f"**{need:.0f} teacher calls** ({pool:.0f} pool calls instead of "
            f"{r['random_pool_calls']}: {saved:.0%} fewer), on the mean curve.")


def plot(summary: dict, teacher_test: float, dev_size: int, path: Path) -> None:
    """Accuracy vs teacher calls for both strategies, mean ± sd bands; dev and test panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, key, title in ((axes[0], "dev", f"dev gold ({dev_size} train.csv tweets)"),
                           (axes[1], "test", "test gold (904 tweets)")):
        for s, colour in zip(STRATEGIES, ("tab:blue", "tab:orange"), strict=True):
            c = np.array(summary["curves"][s][key]["calls"])
            acc = np.array(summary["curves"][s][key]["accuracy"])
            mean = acc.mean(axis=0)
            sd = acc.std(axis=0, ddof=1) if len(acc) > 1 else np.zeros_like(mean)
            ax.plot(c, mean, marker="o", color=colour, label=s)
            ax.fill_between(c, mean - sd, mean + sd, color=colour, alpha=0.2)
        r = summary["reach"][key]
        ax.axhline(r["random_final_accuracy"], color="grey", ls=":", lw=1)
        if r["margin_calls_needed"] is not None:
            ax.axvline(r["margin_calls_needed"], color="tab:blue", ls=":", lw=1)
        if key == "test":
            ax.axhline(teacher_test, color="black", ls="--", lw=1, label="405B teacher")
        ax.set_title(title)
        ax.set_xlabel("teacher calls (validation included)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("student accuracy")
    axes[1].legend(loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed-dir", type=Path, default=SEED_DIR)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budget", type=int, default=1200,
                    help="pool calls; the validation split's calls are added to it")
    ap.add_argument("--seed-size", type=int, default=200)
    ap.add_argument("--step", type=int, default=200)
    ap.add_argument("--dev-size", type=int, default=500,
                    help="held-out train.csv tweets: validation and dev gold")
    ap.add_argument("--workers", type=int, default=1, help="parallel active runs")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per worker")
    ap.add_argument("--out", type=Path, default=Path("runs/active_vs_random"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)

    ann, test_ann, _ = load_seed(args.seed_dir)
    train, dev = split_dev(ann, args.dev_size, seed=13)
    as_input = {"gold": "label"}
    pool = train[["id", "text", "gold"]].rename(columns=as_input)
    dev_in = dev[["id", "text", "gold"]].rename(columns=as_input)
    test = test_ann[["id", "text", "gold"]].rename(columns=as_input)
    teacher_test = float(np.mean(test_ann["label"].to_numpy() == test_ann["gold"].to_numpy()))
    work = args.out / "work"  # kept until the end: a rerun resumes unfinished jobs from it
    work.mkdir(exist_ok=True)
    for name, frame in (("pool", pool), ("dev", dev_in), ("test", test)):
        frame.to_parquet(work / f"{name}.parquet")
    steps = -(-(args.budget - args.seed_size) // args.step)
    budget = args.budget + len(dev_in)
    jobs = [{"strategy": s, "seed": seed, "work": str(work), "runs_dir": str(args.out / "runs"),
             "teacher": f"replay:{args.seed_dir / 'train.csv'}#{TEACHER_COLUMN}",
             "budget": budget, "seed_size": args.seed_size, "step": args.step,
             "threads": args.threads, "validation": len(dev_in), "eval_texts": len(test),
             "pool": len(pool), "steps": steps}
            for seed in range(args.seeds) for s in STRATEGIES]
    costs = [round_costs(j) for j in jobs]
    jobs[0]["projection"] = {"job_units": sum(costs[0]), "round0_units": costs[0][0],
                             "total_units": sum(map(sum, costs)), "workers": args.workers,
                             "jobs": len(jobs)}
    print(f"{len(jobs)} active runs: pool {len(pool)} tweets, validation/dev {len(dev_in)}, "
          f"test {len(test)}; budget {budget} calls ({args.budget} pool + {len(dev_in)} "
          f"validation), seed set {args.seed_size}, step {args.step}; {args.workers} worker(s) "
          f"× {args.threads} thread(s)", flush=True)
    if args.workers == 1:
        results = [run_job(j) for j in jobs]
    else:
        with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as ex:
            results = list(ex.map(run_job, jobs))
    shutil.rmtree(work, ignore_errors=True)

    table, summary = summarise(results, len(dev_in))
    wall = time.perf_counter() - t0
    notes = [
        "",
        f"Mean ± sd over {args.seeds} seeds (seed s: selection seed s, student seed 42 + s); "
        f"student {STUDENT['model']}, max_length {STUDENT['max_length']}, {STUDENT['epochs']} "
        "epochs, anchor 200 gold rows of the random seed set, prior correction; margin uses "
        "the default diversity guard (k-means++ over the 4 × step least sure texts).",
        f"The 405B teacher itself: {teacher_test:.2%} on the 904 test tweets.",
        "",
        reach_sentence(summary["reach"]["test"], "the 904 test tweets"),
        reach_sentence(summary["reach"]["dev"], "dev gold"),
        "",
        f"Wall time {wall / 60:.1f} min on {os.cpu_count()} cores ({hardware()['cpu']}), "
        f"{args.workers} worker(s) × {args.threads} thread(s)"
        + (f"; {reused} of {len(results)} runs were finished by an earlier, interrupted "
           "invocation and reused" if (reused := sum(bool(r.get("reused")) for r in results))
           else "") + ".",
    ]
    text = table + "\n" + "\n".join(notes) + "\n"
    print()
    print(text)
    atomic_write(args.out / "table.md", text)
    plot(summary, teacher_test, len(dev_in), args.out / "learning_curve.png")
    atomic_write(args.out / "results.json", json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "budget": budget,
         "teacher_test_accuracy": teacher_test, "wall_seconds": wall, **summary,
         "runs": [{k: v for k, v in r.items()} for r in results]}, indent=2, default=str))


if __name__ == "__main__":
    main()
