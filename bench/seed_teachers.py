"""The seed's tweets labelled by a second teacher (the packaged qwen2.5-1.5b), into the cache.

The seed ships one teacher (the 405B's replayed labels). The label-model benchmark
(`bench/beyond_teacher.py`) needs a second one on the same tweets; this labels them once, in the
order the benchmark needs them (dev, then the training subsample, then the 904 test tweets), into
the user's annotation cache, so a later run (or a rerun after a crash) only reads it.

Demos: 6 label-balanced gold rows of train.csv (`pick_demos`, seed 7), never trained on,
dev or test. Run it alone (llama.cpp's threads need both cores):

    nice -n 5 .venv/bin/python bench/seed_teachers.py --max-train 1200   # ≈ 2,600 tweets
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from seed_reproduction import LABELS, SEED_DIR, load_seed, split_dev  # noqa: E402

from llmdistill.annotate import demos_for, status_counts, without_demos  # noqa: E402
from llmdistill.config import RunConfig, TeacherConfig  # noqa: E402
from llmdistill.pipeline import annotate_texts  # noqa: E402


def seed_frames(seed_dir: Path, dev_size: int, max_train: int | None
                ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, list[dict]]:
    """The benchmark's train / dev / test rows (405B-annotated) and the second teacher's demos."""
    ann, test_ann, _ = load_seed(seed_dir)
    demos = demos_for(ann.rename(columns={"label": "teacher_label", "gold": "label"}), LABELS,
                      TeacherConfig())
    ann = without_demos(ann, demos)
    train, dev = split_dev(ann.reset_index(drop=True), dev_size, seed=13)
    if max_train and max_train < len(train):
        train = train.sample(n=max_train, random_state=13).reset_index(drop=True)
    return train, dev, test_ann, demos


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed-dir", type=Path, default=SEED_DIR)
    ap.add_argument("--teacher", default="qwen2.5-1.5b")
    ap.add_argument("--dev-size", type=int, default=500)
    ap.add_argument("--max-train", type=int, default=1200)
    args = ap.parse_args()
    train, dev, test, demos = seed_frames(args.seed_dir, args.dev_size, args.max_train)
    cfg = TeacherConfig(spec=args.teacher)
    cache_dir = RunConfig().resolved_cache_dir()
    for name, part in (("dev", dev), ("train", train), ("test", test)):
        frame = part[["id", "text"]].reset_index(drop=True)
        start = time.perf_counter()
        table, _ = annotate_texts(frame, LABELS, demos, cfg, cache_dir)
        print(f"{name}: {len(frame)} tweets, {status_counts(table)}, "
              f"{time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
