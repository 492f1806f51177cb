"""The other gold source: each chosen student scored on the gold tweets it was not drawn from,
next to its teacher on the same texts.

- the demo's student (RUN/student, from `llmdistill run`) on the seed's 904 gold test tweets,
  next to the demo's teacher (qwen2.5-1.5b with the demo's prompt) on them;
- the seed's chosen student (`bench/beyond_teacher.py`'s option: 405B + qwen joined by the
  stacked label model, seed 42, retrained here and kept) on the embedded `tweets` test split of
  the demo, next to qwen2.5-1.5b with the seed's prompt (the seed's second teacher; the 405B has
  no labels there) and the demo's teacher.

Every teacher answer is cached; no choice is made here (it only reports).

    nice -n 5 .venv/bin/python bench/other_source.py runs/demo       # ≈ 8 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from beyond_teacher import LABELS, STUDENT_BASE, aggregated, anchor_for, stores  # noqa: E402
from seed_reproduction import SEED_DIR, fmt_ci  # noqa: E402
from seed_teachers import seed_frames  # noqa: E402

from llmdistill.annotate import read_annotations  # noqa: E402
from llmdistill.config import RunConfig, StudentConfig, TeacherConfig  # noqa: E402
from llmdistill.data import load_dataset  # noqa: E402
from llmdistill.evaluate import classification_metrics, compare  # noqa: E402
from llmdistill.pipeline import annotate_texts  # noqa: E402
from llmdistill.student.predict import StudentClassifier  # noqa: E402
from llmdistill.student.train import train_student  # noqa: E402


def teacher_labels(frame: pd.DataFrame, demos: list[dict], cache_dir: Path) -> list[str | None]:
    table, _ = annotate_texts(frame[["id", "text"]].reset_index(drop=True), LABELS, demos,
                              TeacherConfig(), cache_dir)
    return [lab if s == "ok" else None for lab, s in zip(table["label"], table["status"],
                                                         strict=True)]


def row(name: str, pred: list, gold: np.ndarray, ref: list | None) -> str:
    m = classification_metrics(gold, pred, LABELS, n_boot=1000)
    p = "—"
    if ref is not None:
        c = compare(pred, ref, gold, LABELS, n_boot=200)
        d = c["accuracy_difference"]
        p = f"{100 * d['value']:+.1f} points, p = {c['p_value']:.3g}"
    return f"| {name} | {fmt_ci(m['accuracy'])} | {fmt_ci(m['macro_f1'], False)} | {p} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="the demo run folder (llmdistill run)")
    ap.add_argument("--out", type=Path, default=Path("runs/other_source"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cache_dir = RunConfig().resolved_cache_dir()
    _, manifest = read_annotations(args.run / "annotations.parquet")
    demo_demos = manifest["demos"]
    header = ["| model | accuracy [95% CI] | macro-F1 [95% CI] | vs the teacher in the row "
              "above |", "| --- | --- | --- | --- |"]

    # the demo's student on the seed's 904 gold tweets
    _, _, seed_test, seed_demos = seed_frames(SEED_DIR, 500, 1200)
    gold = seed_test["gold"].to_numpy(dtype=object)
    demo_teacher = teacher_labels(seed_test, demo_demos, cache_dir)
    demo_student = StudentClassifier.load(args.run / "student").predict(seed_test["text"].tolist())
    lines = ["**The demo's student on the seed's 904 gold tweets**", "", *header,
             row("demo teacher: qwen2.5-1.5b, the demo's prompt", demo_teacher, gold, None),
             row("demo student", demo_student, gold, demo_teacher)]

    # the seed's chosen student on the demo's test split
    store, _ = stores(SEED_DIR, 500, 1200, cache_dir, "qwen2.5-1.5b")
    anchor = anchor_for(store, 42, 200)
    agg, _ = aggregated(store, "stacked", "temperature_bias", anchor, 42)
    cfg = StudentConfig(**{**STUDENT_BASE, "seed": 42})
    out = args.out / "seed_student"
    shutil.rmtree(out, ignore_errors=True)
    train_student(agg[agg["split"] == "train"], agg[agg["split"] == "validation"], LABELS, cfg,
                  out, {"bench": "other_source"}, anchor=anchor)
    ds = load_dataset(RunConfig().data)
    test = ds.splits["test"]  # demos come from train: none is here
    gold = test["label"].to_numpy(dtype=object)
    qwen_seed_prompt = teacher_labels(test, seed_demos, cache_dir)
    qwen_demo_prompt = teacher_labels(test, demo_demos, cache_dir)
    seed_student = StudentClassifier.load(out).predict(test["text"].tolist())
    demo_on_own = StudentClassifier.load(args.run / "student").predict(test["text"].tolist())
    lines += ["", f"**The seed's chosen student on the demo's {len(test)} test tweets**", "",
              *header,
              row("qwen2.5-1.5b, the seed's prompt (the seed student's 2nd teacher)",
                  qwen_seed_prompt, gold, None),
              row("seed student (405B + qwen, stacked)", seed_student, gold, qwen_seed_prompt),
              row("qwen2.5-1.5b, the demo's prompt (the demo's teacher)", qwen_demo_prompt, gold,
                  None),
              row("demo student (in-source, for reference)", demo_on_own, gold, qwen_demo_prompt)]
    text = "\n".join(lines) + "\n"
    print(text)
    (args.out / "table.md").write_text(text, encoding="utf-8")
    (args.out / "results.json").write_text(json.dumps({"table": text}, indent=2),
                                           encoding="utf-8")


if __name__ == "__main__":
    main()
