"""Which int8 student passes the parity gate, and how fast is it? One student, each int8 method.

A copy of `--student` is exported once through `export_student` with the default settings
(fp32 + int8, the real gate, its parity.json). Then every candidate method is built from that
fp32 file by `quantize_int8` (dynamic or static QDQ; per-channel weights; with or without the
outlier-channel split; calibrated on `--calibration` training texts, never the parity texts) and
checked against PyTorch on the parity texts: label agreement (the gate), agreement on confident
texts (PyTorch's top-2 probabilities ≥ `confident_margin` apart: the rest are near-ties that flip
at any numerical change), mean |Δp|, accuracy on gold. Speed: fp32 and all candidates are run in
the same passes, interleaved, `--threads` intra-op threads, batch 64 texts/s (median of
`--passes`) and its ratio to fp32 in the same pass (median), batch-1 latency p50; sizes in MB.
`--sweep` adds rows with one block (each `layer.N/`, then each role across layers) kept fp32 on
top of the default: which exclusions recover agreement (no speed for those rows).

    nice -n 10 .venv/bin/python bench/quantize.py --student /tmp/quant_student \\
        --out runs/bench/quantize.json            # ≈ 10 min on 2 busy cores
    nice -n 10 .venv/bin/python bench/quantize.py --student /tmp/quant_student --sweep \\
        --methods default --out runs/bench/quantize_sweep.json

The student used for the numbers in the report: MiniLM trained on 1,200 of the seed's tweets
with the Llama-405B labels, 3 epochs (`bench/seed_reproduction.py`'s data and `train_student`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from llmdistill.config import DataConfig, ExportConfig
from llmdistill.data import resolve
from llmdistill.evaluate import hardware
from llmdistill.student.export import calibrate_on, export_student, parity, quantize_int8
from llmdistill.student.predict import FP32_FILE, INT8_FILE, ONNX_DIR, StudentClassifier

# name → (ExportConfig overrides on top of the defaults, what it is)
METHODS: dict[str, tuple[dict[str, Any], str]] = {
    "default": ({}, "the ExportConfig defaults (dynamic, outlier split)"),
    "previous": ({}, "the previous export: quantize_dynamic on every op type, embeddings too"),
    "dynamic": ({"int8_method": "dynamic", "outlier_channels": 0},
                "dynamic, no split"),
    "dynamic-rr": ({"int8_method": "dynamic", "outlier_channels": 0, "reduce_range": True},
                   "dynamic, no split, 7-bit weights"),
    "dynamic-split8": ({"int8_method": "dynamic", "outlier_channels": 8, "outlier_ratio": 4.0},
                       "dynamic, split 8 channels at ratio 4"),
    "dynamic-split16-r2.5": ({"int8_method": "dynamic", "outlier_channels": 16,
                              "outlier_ratio": 2.5}, "dynamic, split 16 channels at ratio 2.5"),
    "dynamic-split-l0ffn": ({"int8_method": "dynamic", "int8_exclude": [
        "layer.0/intermediate/", "layer.0/output/dense/"]}, "dynamic, split, layer 0's FFN fp32"),
    "static": ({"int8_method": "static", "outlier_channels": 0}, "static QDQ minmax u8, no split"),
    "static-split": ({"int8_method": "static"}, "static QDQ minmax u8, split"),
    "static-s8-split": ({"int8_method": "static", "activation_type": "int8"},
                        "static QDQ minmax s8 (symmetric), split"),
    "static-entropy-split": ({"int8_method": "static", "calibrator": "entropy"},
                             "static QDQ entropy u8, split"),
    "static-percentile-split": ({"int8_method": "static", "calibrator": "percentile"},
                                "static QDQ percentile u8, split"),
}
# role → the node-name substring of that MatMul in block N (BERT-style names)
ROLES = {"query": "layer.{}/attention/self/query/", "key": "layer.{}/attention/self/key/",
         "value": "layer.{}/attention/self/value/",
         "attention output": "layer.{}/attention/output/dense/",
         "FFN in": "layer.{}/intermediate/dense/", "FFN out": "layer.{}/output/dense/"}


def parity_data(spec: str, n: int) -> tuple[list[str], list[str] | None]:
    """The first `n` texts (and gold labels) of `spec`, as `llmdistill export --data` reads it."""
    embedded = ":" in spec and not Path(spec).exists()
    cfg = DataConfig(max_validation=None, max_test=None) if embedded else DataConfig()
    frame, _ = resolve(spec, cfg)
    frame = frame.iloc[:n]
    gold = frame["label"].astype(str).tolist() if "label" in frame.columns else None
    return frame["text"].astype(str).tolist(), gold


def calibration_texts(spec: str) -> list[str]:
    frame, _ = resolve(spec, DataConfig(max_train=None))
    return frame["text"].astype(str).tolist()


def speeds(models: dict[str, StudentClassifier], texts: list[str], passes: int,
           latency_texts: list[str]) -> dict[str, dict[str, float]]:
    """Batch-64 texts/s (median), its ratio to fp32 in the same pass (median), batch-1 p50 ms;
    every model in every pass, in turn, so that load from other jobs hits them alike."""
    for clf in models.values():
        clf.predict_proba(texts[:128], batch_size=64)
    tps: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(passes):
        for name, clf in models.items():
            t0 = time.perf_counter()
            clf.predict_proba(texts, batch_size=64)
            tps[name].append(len(texts) / (time.perf_counter() - t0))
    lat: dict[str, list[float]] = {k: [] for k in models}
    for text in latency_texts:
        for name, clf in models.items():
            t0 = time.perf_counter()
            clf.predict_proba([text], batch_size=1)
            lat[name].append(1000 * (time.perf_counter() - t0))
    base = np.array(tps["fp32"])
    return {k: {"texts_per_s": float(np.median(v)),
                "ratio_to_fp32": float(np.median(np.array(v) / base)),
                "texts_per_s_passes": [round(x, 1) for x in v],
                "p50_ms_batch1": float(np.median(lat[k]))} for k, v in tps.items()}


def row_of(name: str, ref: np.ndarray, probs: np.ndarray, gold: list[str] | None,
           labels: list[str], cfg: ExportConfig, path: Path, info: dict | None) -> dict:
    p = parity(ref, probs, gold, labels, cfg.min_agreement, cfg.confident_margin)
    return {"method": name, "agreement": p["agreement"],
            "confident_agreement": p["confident_agreement"],
            "confident_texts": p["confident_texts"],
            "mean_abs_prob_diff": float(np.abs(ref - probs).mean()),
            "accuracy": p["accuracy"], "passed": p["passed"],
            "mb": path.stat().st_size / 1e6, "quantization": info}


def render(rows: list[dict], texts: int, gold: bool) -> str:
    head = ("| method | agreement | confident agreement | mean abs dp | accuracy | texts/s (b64) | "
            "x fp32 | p50 ms (b1) | MB |")
    lines = [head, "|" + " --- |" * 9]
    for r in rows:
        acc = "—" if r.get("accuracy") is None else f"{r['accuracy']:.2%}"
        conf = "—" if r.get("confident_agreement") is None else f"{r['confident_agreement']:.2%}"
        speed = r.get("speed")
        sp = (f"{speed['texts_per_s']:.0f} | {speed['ratio_to_fp32']:.2f} | "
              f"{speed['p50_ms_batch1']:.1f}") if speed else "— | — | —"
        gate = " ✓" if r["passed"] else ""
        lines.append(f"| {r['method']} | {r['agreement']:.2%}{gate} | {conf} | "
                     f"{r['mean_abs_prob_diff']:.4f} | {acc} | {sp} | {r['mb']:.0f} |")
    lines.append("")
    lines.append(f"{texts} parity texts{' with gold labels' if gold else ''}; ✓ = passes the "
                 "gate (label agreement with PyTorch).")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--student", type=Path, required=True, help="a trained MiniLM student folder")
    ap.add_argument("--data", default=ExportConfig().data, help="parity texts")
    ap.add_argument("--parity-n", type=int, default=ExportConfig().max_texts)
    ap.add_argument("--calibration", default=ExportConfig().calibration_data,
                    help="training texts that calibrate int8")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {list(METHODS)}")
    ap.add_argument("--sweep", action="store_true", help="add one-block-in-fp32 rows")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--speed-n", type=int, default=640, help="texts per speed pass")
    ap.add_argument("--latency-n", type=int, default=100, help="texts for batch-1 latency")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/quantize.json"))
    args = ap.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if unknown := sorted(set(methods) - set(METHODS)):
        ap.error(f"unknown method(s) {unknown}: use {list(METHODS)}")
    t_start = time.perf_counter()
    texts, gold = parity_data(args.data, args.parity_n)
    calib = calibration_texts(args.calibration)
    work = Path(tempfile.mkdtemp(prefix="quantize-bench-"))
    try:
        folder = work / "student"
        shutil.copytree(args.student, folder, ignore=shutil.ignore_patterns(ONNX_DIR))
        default = ExportConfig()
        print(f"export with the defaults (parity on {len(texts)} texts of {args.data}) …",
              flush=True)
        exported = export_student(folder, texts, gold, default, int8=True, data_name=args.data,
                                  calibration_texts=calib)
        gate = {v["file"]: v for v in exported.variants}
        torch_clf = StudentClassifier.load(folder, threads=args.threads, backend="torch")
        ref = torch_clf.predict_proba(texts, batch_size=64)
        labels = torch_clf.labels
        fp32_path = folder / ONNX_DIR / FP32_FILE
        models = {"fp32": StudentClassifier.load_onnx(folder, fp32_path, args.threads, 1)}
        rows = [row_of("fp32", ref, models["fp32"].predict_proba(texts), gold, labels, default,
                       fp32_path, None)]
        jobs = [(m, METHODS[m][0], True) for m in methods]
        if args.sweep:
            graph_names = _matmul_names(fp32_path)
            blocks = sorted({n.split("layer.")[1].split("/")[0] for n in graph_names
                             if "layer." in n}, key=int)
            jobs += [(f"default-fp32:layer.{b}", {"int8_exclude": [f"layer.{b}/"]}, False)
                     for b in blocks]
            for role, pattern in ROLES.items():
                keep = [pattern.format(b) for b in blocks]
                if all(any(k in n for n in graph_names) for k in keep):
                    jobs.append((f"default-fp32:every {role}", {"int8_exclude": keep}, False))
        for name, overrides, timed in jobs:
            cfg = ExportConfig(**overrides)
            path = work / f"candidate{len(rows)}.onnx"
            t0 = time.perf_counter()
            if name == "default":
                path = folder / ONNX_DIR / INT8_FILE
                info = gate[INT8_FILE]["quantization"]
            elif name == "previous":
                info = previous_int8(fp32_path, path)
            else:
                info = quantize_int8(fp32_path, path, cfg, calibrate_on(torch_clf, cfg, texts,
                                                                        calib))
            clf = StudentClassifier.load_onnx(folder, path, args.threads, 1)
            row = row_of(name, ref, clf.predict_proba(texts), gold, labels, cfg, path, info)
            row["build_seconds"] = time.perf_counter() - t0
            row["description"] = METHODS[name][1] if name in METHODS else "sweep: " + name
            rows.append(row)
            if timed:
                models[name] = clf
            print(f"  {name}: agreement {row['agreement']:.2%}, confident "
                  f"{row['confident_agreement']:.2%}, mean |dp| {row['mean_abs_prob_diff']:.4f}",
                  flush=True)
        print(f"speed: {len(models)} models interleaved, {args.passes} passes …", flush=True)
        speed = speeds(models, texts[: args.speed_n], args.passes, texts[: args.latency_n])
        for r in rows:
            r["speed"] = speed.get(r["method"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = render(rows, len(texts), gold is not None)
    print()
    print(table)
    write_result(args, t_start, rows=rows, gate=exported.record, table=table)


def write_result(args: argparse.Namespace, t_start: float, **payload: Any) -> None:
    """`payload` with the arguments, hardware and wall time as JSON at `args.out`."""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "args": {k: str(v) for k, v in vars(args).items()}, **payload, "hardware": hardware(),
        "cpu_count": os.cpu_count(), "wall_seconds": time.perf_counter() - t_start,
    }, indent=2, default=str), encoding="utf-8")
    print(f"wrote {args.out}")


def previous_int8(src: Path, dst: Path) -> dict[str, Any]:
    """int8 as export.py made it before the outlier split: ONNX Runtime's dynamic quantization
    with its default op types (MatMul, Gemm, the embedding Gathers), per-channel weights."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                     reduce_range=False)
    return {"method": "dynamic", "per_channel": True, "op_types": "all"}


def _matmul_names(path: Path) -> list[str]:
    import onnx

    return [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "MatMul"]


if __name__ == "__main__":
    main()
