"""How fast does the student answer on this CPU? Four ways to run the same model on the same tweets.

(1) `transformers.pipeline("text-classification")`, the baseline a user would write;
(2) llmdistill's PyTorch path (`StudentClassifier`, backend torch: length-sorted batches,
dynamic padding); (3) the ONNX fp32 export and (4) the int8 export, on ONNX Runtime.

For each: batch-64 throughput (texts/s, median of 3 passes after a warm-up), batch-1 latency
p50/p99, accuracy on the gold labels and label agreement with PyTorch, its ratio to the
pipeline baseline, and its share of the FLOP-bound throughput of the model on this CPU (peak
fp32 GFLOP/s measured in the same run by a matmul ÷ (2 × non-embedding parameters × mean
tokens per tweet)). Nothing is trained: `--student` is a folder that training wrote, e.g.
`runs/demo/student` after `make demo` (`llmdistill run` writes `<out>/student`;
`llmdistill run --quick` writes `runs/quick/student`). The folder is copied to a temporary
directory and exported there (ONNX fp32 + int8 with the parity check on the validation split)
when it has no export; the original is never touched.

The full measurement, on an otherwise idle machine:

    .venv/bin/python bench/inference.py --student runs/demo/student --n 2000 \
        --out runs/bench/inference.json

A quick check that the script works (seconds, numbers meaningless):

    .venv/bin/python bench/inference.py --student runs/demo/student --n 200 --latency-n 20 \
        --parity-n 200 --out /tmp/inference.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from llmdistill.config import DataConfig, ExportConfig
from llmdistill.data import load_dataset
from llmdistill.evaluate import hardware, measure_speed
from llmdistill.student.export import export_student
from llmdistill.student.predict import (
    FP32_FILE,
    INT8_FILE,
    ONNX_DIR,
    PARITY_FILE,
    StudentClassifier,
)
from llmdistill.student.train import measure_peak_gflops, non_embedding_parameters

GOALS = {"int8_vs_pipeline": 4.0, "int8_texts_per_s": 1000.0, "int8_accuracy_loss_points": 0.5}


def ensure_export(folder: Path, parity_n: int) -> dict:
    """The folder's parity record, exporting fp32 + int8 first when either file is missing."""
    onnx_dir = folder / ONNX_DIR
    if not ((onnx_dir / FP32_FILE).exists() and (onnx_dir / INT8_FILE).exists()):
        print(f"exporting to ONNX fp32 + int8 (parity on {parity_n} validation tweets) …",
              flush=True)
        val = load_dataset(DataConfig(max_validation=parity_n)).splits["validation"]
        export_student(folder, val["text"].tolist(), val["label"].tolist(),
                       ExportConfig(max_texts=parity_n), int8=True,
                       data_name="tweets:validation")
    return json.loads((onnx_dir / PARITY_FILE).read_text(encoding="utf-8"))


def pipeline_labels(folder: Path) -> Callable[[list[str], int], list[str]]:
    """`transformers.pipeline` as a user would call it: texts in, top labels out."""
    from transformers import pipeline

    pipe = pipeline("text-classification", model=str(folder), device="cpu")

    def run(texts: list[str], batch: int) -> list[str]:
        return [r["label"] for r in pipe(texts, batch_size=batch, truncation=True)]

    return run


def measure(name: str, fn: Callable[[list[str], int], list[str]], texts: list[str],
            gold: np.ndarray, reference: np.ndarray, batch: int, latency_n: int) -> dict:
    """One way's speed (evaluate.measure_speed, as the report measures it) and accuracy."""
    print(f"timing {name} …", flush=True)
    pred = np.asarray(fn(texts, batch), dtype=object)
    speed = measure_speed(fn, texts, batch=batch, latency_samples=latency_n)
    return {"way": name, "texts_per_s": speed["throughput_texts_per_s"],
            "latency_p50_ms": speed["latency_ms"]["p50"],
            "latency_p99_ms": speed["latency_ms"]["p99"],
            "accuracy": float(np.mean(pred == gold)),
            "agreement_with_pytorch": float(np.mean(pred == reference))}


def markdown(result: dict) -> str:
    """The result as a Markdown table with its context and the issue's goals."""
    rows, base = result["rows"], result["rows"][0]
    hw, bound = result["hardware"], result["flop_bound_texts_per_s"]
    lines = [f"{result['n_texts']} embedded test tweets; student {result['student']} "
             f"({result['non_embedding_parameters'] / 1e6:.1f}M non-embedding parameters, "
             f"{result['tokens_per_text']:.1f} tokens per tweet); {hw['cpu']}, {hw['cores']} "
             f"cores, {result['threads']} threads", "",
             f"| way | texts/s (batch {result['batch']}) | × pipeline | % of fp32 FLOP bound "
             "| batch-1 p50 (ms) | p99 (ms) | accuracy | agreement with PyTorch |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['way']} | {r['texts_per_s']:,.0f} | "
                     f"{r['texts_per_s'] / base['texts_per_s']:.2f} | "
                     f"{100 * r['texts_per_s'] / bound:.0f}% | {r['latency_p50_ms']:.1f} | "
                     f"{r['latency_p99_ms']:.1f} | {r['accuracy']:.2%} | "
                     f"{r['agreement_with_pytorch']:.2%} |")
    g = result["goals"]
    lines += ["", f"FLOP bound (fp32): {bound:,.0f} texts/s at the {result['peak_gflops']:.0f} "
              f"GFLOP/s a {result['threads']}-thread matmul reached in this run.",
              f"int8 − PyTorch accuracy: {g['int8_accuracy_change_points']:+.2f} points; "
              f"int8 = {g['int8_vs_pipeline']:.2f}× the pipeline, "
              f"{g['int8_texts_per_s']:,.0f} texts/s. Goals (≥ 4×, ≥ 1,000 texts/s, ≤ 0.5 "
              f"point loss): {'met' if g['met'] else 'not met'}."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--student", type=Path, required=True,
                    help="a trained student folder (runs/demo/student after `make demo`)")
    ap.add_argument("--n", type=int, default=2000, help="embedded test tweets to classify")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--latency-n", type=int, default=200, help="batch-1 calls for latency")
    ap.add_argument("--parity-n", type=int, default=ExportConfig().max_texts,
                    help="validation tweets for the parity check when exporting")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/inference.json"))
    args = ap.parse_args()
    if not (args.student / "config.json").exists():
        ap.error(f"{args.student} is not a student folder: run `make demo` (→ runs/demo/student) "
                 "or `llmdistill train` first")
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)

    test = load_dataset(DataConfig(max_test=args.n)).splits["test"]
    texts, gold = test["text"].tolist(), np.asarray(test["label"], dtype=object)
    work = Path(tempfile.mkdtemp(prefix="bench-inference-"))
    try:
        folder = work / "student"
        shutil.copytree(args.student, folder)
        parity = ensure_export(folder, args.parity_n)
        torch_clf = StudentClassifier.load(folder, threads=threads, backend="torch")
        fp32 = StudentClassifier.load_onnx(folder, folder / ONNX_DIR / FP32_FILE, threads)
        int8 = StudentClassifier.load_onnx(folder, folder / ONNX_DIR / INT8_FILE, threads)
        ways = [("transformers.pipeline (baseline)", pipeline_labels(folder)),
                ("llmdistill PyTorch", torch_clf.predict),
                ("ONNX Runtime fp32", fp32.predict),
                ("ONNX Runtime int8", int8.predict)]
        reference = np.asarray(torch_clf.predict(texts, args.batch), dtype=object)
        rows = [measure(name, fn, texts, gold, reference, args.batch, args.latency_n)
                for name, fn in ways]
        tokens = float(np.mean([len(ids) for ids in torch_clf.tokenizer(
            texts, truncation=True, max_length=torch_clf.max_length)["input_ids"]]))
        non_emb = non_embedding_parameters(torch_clf.model)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    gflops = measure_peak_gflops()
    bound = gflops * 1e9 / (2 * non_emb * tokens)
    base, pt, q = rows[0], rows[1], rows[3]
    change = 100 * (q["accuracy"] - pt["accuracy"])
    goals = {"int8_vs_pipeline": q["texts_per_s"] / base["texts_per_s"],
             "int8_texts_per_s": q["texts_per_s"], "int8_accuracy_change_points": change}
    goals["met"] = bool(goals["int8_vs_pipeline"] >= GOALS["int8_vs_pipeline"]
                        and q["texts_per_s"] >= GOALS["int8_texts_per_s"]
                        and -change <= GOALS["int8_accuracy_loss_points"])
    result = {"student": str(args.student), "n_texts": len(texts), "batch": args.batch,
              "latency_samples": args.latency_n, "threads": threads, "hardware": hardware(),
              "tokens_per_text": tokens, "non_embedding_parameters": non_emb,
              "peak_gflops": gflops, "flop_bound_texts_per_s": bound, "rows": rows,
              "goals": goals, "goal_thresholds": GOALS, "export_parity": parity}
    print(markdown(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
