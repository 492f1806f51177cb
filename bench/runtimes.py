"""Is OpenVINO a faster runtime than ONNX Runtime for a student's exports on this CPU?

A copy of `--student` is exported once through `export_student` with the defaults plus int8 and
`openvino=True`: the real parity gate, on each runtime, against PyTorch. Then PyTorch, ONNX
Runtime fp32/int8 and OpenVINO fp32/int8 run the same texts in the same interleaved passes
(`--threads` threads, batch 64 texts/s as the median of `--passes`, its ratio to ONNX Runtime
fp32 in the same pass, batch-1 p50 latency).

    .venv/bin/python bench/runtimes.py --student runs/seed/student --out runs/bench/runtimes.json
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from quantize import calibration_texts, parity_data, speeds, write_result

from llmdistill.config import ExportConfig
from llmdistill.student.export import export_student
from llmdistill.student.predict import FP32_FILE, INT8_FILE, ONNX_DIR, StudentClassifier

# speed-table name → (file, runtime); "fp32" is the ratio's baseline (quantize.speeds)
RUNNERS = {"fp32": (FP32_FILE, "onnxruntime"), "int8": (INT8_FILE, "onnxruntime"),
           "openvino-fp32": (FP32_FILE, "openvino"), "openvino-int8": (INT8_FILE, "openvino")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--student", type=Path, required=True, help="a trained student folder")
    ap.add_argument("--data", default=ExportConfig().data, help="parity texts")
    ap.add_argument("--parity-n", type=int, default=ExportConfig().max_texts)
    ap.add_argument("--calibration", default=ExportConfig().calibration_data)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--speed-n", type=int, default=640, help="texts per speed pass")
    ap.add_argument("--latency-n", type=int, default=100, help="texts for batch-1 latency")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/runtimes.json"))
    args = ap.parse_args()
    t_start = time.perf_counter()
    texts, gold = parity_data(args.data, args.parity_n)
    work = Path(tempfile.mkdtemp(prefix="openvino-bench-"))
    try:
        folder = work / "student"
        shutil.copytree(args.student, folder, ignore=shutil.ignore_patterns(ONNX_DIR))
        print(f"export, parity on {len(texts)} texts of {args.data} on both runtimes …",
              flush=True)
        exported = export_student(folder, texts, gold, ExportConfig(openvino=True), int8=True,
                                  data_name=args.data,
                                  calibration_texts=calibration_texts(args.calibration))
        gate = {(v["file"], v["runtime"]): v for v in exported.variants}
        models = {"torch": StudentClassifier.load(folder, threads=args.threads, backend="torch")}
        for name, (file, runtime) in RUNNERS.items():
            models[name] = StudentClassifier.load_onnx(folder, folder / ONNX_DIR / file,
                                                       args.threads, 1, runtime=runtime)
        print(f"speed: {len(models)} runners interleaved, {args.passes} passes …", flush=True)
        speed = speeds(models, texts[: args.speed_n], args.passes, texts[: args.latency_n])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = ["| runner | agreement with PyTorch | accuracy | texts/s (b64) | × ORT fp32 | "
             "p50 ms (b1) |", "|" + " --- |" * 6]
    for name, s in speed.items():
        v = gate.get(RUNNERS.get(name, ("", "")))
        agree = "—" if v is None else f"{v['agreement']:.2%}{' ✓' if v['passed'] else ' ✗'}"
        acc = v["accuracy"] if v else exported.record["torch_accuracy"]
        acc_s = "—" if acc is None else f"{acc:.2%}"
        lines.append(f"| {name} | {agree} | {acc_s} | {s['texts_per_s']:.0f} | "
                     f"{s['ratio_to_fp32']:.2f} | {s['p50_ms_batch1']:.1f} |")
    table = "\n".join(lines)
    print(table)
    write_result(args, t_start, speed=speed, gate=exported.record, table=table)


if __name__ == "__main__":
    main()
