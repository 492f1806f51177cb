"""What does a multi-label teacher cost per text as the label count grows?

The same texts (bbc-multi test split) scored by one local teacher as a single-label task and as
a multi-label task over the first k of the labels, for each k: seconds per text (median) and
tokens evaluated per text. With the KV cache reused, a multi-label text costs one pass over the
text plus k short yes/no continuations, so the cost should grow by about one question's tokens
per label, not by one text per label. Labels beyond bbc-multi's 5 are extra topics
(descriptions only; they exist to measure cost, no text carries them).

    .venv/bin/python bench/multilabel_cost.py --teacher qwen2.5-1.5b --n 20 --ks 1,5,10,20
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from llmdistill.config import DataConfig, TeacherConfig
from llmdistill.data import load_dataset
from llmdistill.teachers import load_teacher

EXTRA = ["science", "health", "education", "travel", "weather", "crime", "religion",
         "environment", "transport", "food", "fashion", "history", "law", "military", "space"]


def measure(teacher, texts: list[str]) -> dict:
    teacher.label_probs(texts[:1])  # warm
    seconds, tokens = [], []
    for t in texts:
        start = time.perf_counter()
        (a,) = teacher.label_probs([t])
        seconds.append(time.perf_counter() - start)
        tokens.append(a.tokens)
    return {"seconds_per_text": statistics.median(seconds),
            "tokens_per_text": statistics.mean(tokens)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default="qwen2.5-1.5b")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--ks", default="1,5,10,20")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    ds = load_dataset(DataConfig(source="bbc-multi", task="multi_label", test_fraction=0.15,
                                 max_test=args.n))
    texts = ds.splits["test"]["text"].tolist()
    base = ds.labels + EXTRA
    rows = []
    for task, ks in (("single_label", [len(ds.labels)]),
                     ("multi_label", [int(k) for k in args.ks.split(",")])):
        for k in ks:
            labels = base[:k] if task == "multi_label" else ds.labels
            cfg = TeacherConfig(spec=args.teacher, n_demos=0, n_threads=args.threads,
                                task="Which news topics does the text cover?",
                                label_descriptions={lab: lab for lab in labels},
                                max_text_chars=4000, max_text_tokens=256)
            teacher = load_teacher(args.teacher, labels, [], cfg, None, task=task)
            try:
                rows.append({"task": task, "labels": k, **measure(teacher, texts)})
            finally:
                teacher.close()
            print(json.dumps(rows[-1]), flush=True)
    one = rows[0]["seconds_per_text"]
    print("\n| task | labels | s / text (median) | × single-label | tokens / text |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['task']} | {r['labels']} | {r['seconds_per_text']:.2f} | "
              f"{r['seconds_per_text'] / one:.2f} | {r['tokens_per_text']:.0f} |")


if __name__ == "__main__":
    main()
