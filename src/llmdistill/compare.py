"""`llmdistill compare`: a zoo of students trained on one run's annotations, side by side.

Every student of `cfg.students` learns from the same store (`RUN_DIR/annotations.parquet`, the
same train/validation split and anchor as `llmdistill run`) into `RUN_DIR/students/<name>/`, and
is measured on the run's gold test texts: accuracy and macro-F1 with bootstrap intervals (one
set of resamples for every model), agreement with the teacher, parameters, megabytes on disk,
texts/s at the report's batch and p50 latency at batch 1 on this machine. A transformer student
also gets an int8 ONNX row when its export passes the parity gate on the validation rows, its
speed over `transformers.pipeline` on the same folder, and its share of the CPU's fp32 FLOP
bound. The Pareto frontier (no other row at least as accurate and as fast, and better in one)
is marked. The result is `RUN_DIR/compare.json` and a "Students compared" report section.

A folder whose record carries the same run key (annotations, settings, anchor) is reused, so a
rerun trains nothing it has, and a killed compare loses only the student it was training.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ValidationError
from rich.console import Console

from llmdistill import pipeline
from llmdistill.annotate import read_annotations
from llmdistill.config import RunConfig, StudentConfig
from llmdistill.data import clean_text, frame_hash
from llmdistill.errors import UsageError
from llmdistill.evaluate import evaluate_predictions, hardware, measure_speed, model_size
from llmdistill.files import atomic_write
from llmdistill.report.format import clean
from llmdistill.report.markdown import COMPARE_FILE
from llmdistill.student.record import StudentRecord
from llmdistill.student.zoo import TRANSFORMERS, kind_module, kind_of

console = Console(stderr=True)
logger = logging.getLogger(__name__)

STUDENTS_DIR = "students"
ANNOTATIONS_FILE = "annotations.parquet"
MAX_NAME = 80  # characters of a student's folder name; longer ones end in a hash
INT8_SUFFIX = " int8"


def compare(cfg: RunConfig, run_dir: Path, report: bool = True) -> dict:
    """Train (or reuse) every student of `cfg.students` on `run_dir`'s annotations, measure them
    on its gold test texts, write `run_dir/compare.json`; with `report`, re-render the run's
    report with the "Students compared" section. Returns what compare.json holds."""
    start = time.perf_counter()
    run_dir = Path(run_dir)
    if not cfg.students:
        raise UsageError("no students to compare: pass --student MODEL (repeatable) or list "
                         "them under `students:` in the config")
    store, manifest = read_store(run_dir)
    if manifest.get("task", "single_label") != "single_label":
        raise UsageError(f"{run_dir} is a {manifest['task']} run: compare measures single_label "
                         "students only (accuracy, the teacher's argmax); evaluate each "
                         "multi_label student with `llmdistill run` or `llmdistill evaluate`")
    labels = list(manifest["labels"])
    test = gold_test(store, run_dir)
    for scfg in cfg.students:  # every student is loadable before the first one trains
        check_student(scfg.model)
    names = student_names(cfg.students, cfg.student)
    annotations_hash = frame_hash(store.assign(label=store["label"].astype(str)))

    trained = []
    for i, (name, scfg) in enumerate(zip(names, cfg.students, strict=True)):
        console.rule(f"student {i + 1}/{len(names)}: {name}")
        trained.append(train_or_reuse(store, manifest, labels, scfg, run_dir / STUDENTS_DIR / name,
                                      annotations_hash, cfg))

    console.rule("measuring on the gold test texts")
    teacher_df = pipeline.align_teacher(test, store)
    ev = cfg.evaluate
    speed_texts = test["text"].tolist()[: ev.speed_texts]
    peak = _peak_gflops()
    rows, skipped = [], []
    for name, scfg, (folder, training) in zip(names, cfg.students, trained, strict=True):
        main, extra, why = measure_student(name, scfg, folder, test, teacher_df, labels, cfg,
                                           speed_texts, peak, store)
        main["training"] = training
        rows.append(main)
        if extra is not None:
            rows.append(extra)
        if why is not None:
            skipped.append({"name": name + INT8_SUFFIX, "reason": why})
    baseline = None
    first = next((r for r in rows if r["kind"] == TRANSFORMERS and r["variant"] == "pytorch"), None)
    if first is not None and cfg.compare.pipeline_baseline:
        baseline = pipeline_baseline(Path(first["model_dir"]), first["name"], speed_texts, cfg)
    for r in rows:
        base = baseline["speed"]["throughput_texts_per_s"] if baseline else None
        r["vs_pipeline"] = r["speed"]["throughput_texts_per_s"] / base if base else None
    for r, on in zip(rows, pareto_frontier([(r["accuracy"]["value"],
                                             r["speed"]["throughput_texts_per_s"])
                                            for r in rows]), strict=True):
        r["pareto"] = on
    result = {
        "run_dir": str(run_dir),
        "annotations_hash": annotations_hash,
        "n": len(test),
        "labels": labels,
        "settings": {"evaluate": ev.model_dump(mode="json"),
                     "compare": cfg.compare.model_dump(mode="json"),
                     "export_min_agreement": cfg.export.min_agreement},
        "hardware": {**hardware(), "peak_gflops": peak},
        "teacher": teacher_row(test, teacher_df, labels, cfg, manifest),
        "baseline": baseline,
        "rows": rows,
        "frontier": [r["name"] for r in sorted((r for r in rows if r["pareto"]),
                                               key=lambda r: r["speed"]["throughput_texts_per_s"])],
        "skipped": skipped,
        "seconds": time.perf_counter() - start,
    }
    result = clean(result)
    atomic_write(run_dir / COMPARE_FILE,
                 json.dumps(result, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    if report:
        add_to_report(run_dir, result)
    return result


def read_store(run_dir: Path) -> tuple[pd.DataFrame, dict]:
    """The run's annotation store and its manifest; a one-line error without one."""
    path = Path(run_dir) / ANNOTATIONS_FILE
    if not path.is_file():
        raise UsageError(f"{run_dir} has no {ANNOTATIONS_FILE}: give a run folder that "
                         "`llmdistill run` wrote (compare trains on its annotations)")
    return read_annotations(path)


def gold_test(store: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
    """The gold test texts `llmdistill run` evaluated on: the store's test rows (the data's test
    split less the teacher's demos), gold label as `label`."""
    if "split" not in store.columns or "gold" not in store.columns:
        raise UsageError(f"{run_dir}/{ANNOTATIONS_FILE} has no split or gold column: compare "
                         "needs the store of a `llmdistill run` folder, with gold test labels")
    rows = store[(store["split"] == "test") & store["gold"].notna()]
    if rows.empty:
        raise UsageError(f"{run_dir}/{ANNOTATIONS_FILE} has no gold-labelled test rows: run "
                         "`llmdistill run` on data with gold labels first")
    return (rows[["id", "text", "gold"]].rename(columns={"gold": "label"})
            .assign(label=lambda d: d["label"].astype(str)).reset_index(drop=True))


def check_student(model: str) -> None:
    """Stop before any training when a student cannot be loaded: an unknown kind or name, a
    missing folder, or a hub id that is neither cached nor on the hub."""
    kind = kind_of(model)
    if kind != TRANSFORMERS:
        try:
            kind_module(kind)
        except ImportError as e:
            raise UsageError(f"student {model!r}: the {kind} kind is not available here ({e}): "
                             "pip install 'llmdistill[zoo]'") from None
        return
    from llmdistill.assets import student_source

    path, gguf = student_source(model)  # a missing GGUF file is its own one-line error
    if gguf is not None:
        return
    folder = Path(path).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise UsageError(f"student folder {model} has no config.json: give a Hugging Face "
                             "model folder")
        return
    if path.startswith(("/", ".", "~")) or folder.exists():
        raise UsageError(f"no such student folder: {model}: check the path")
    _check_hub_id(model)


def _check_hub_id(model: str) -> None:
    """An HF id must be in the local cache or, online, on the hub."""
    import huggingface_hub
    from huggingface_hub.constants import HF_HUB_OFFLINE

    unknown = (f"unknown student {model!r}: use an embedded name (minilm-l6, smollm2-135m), a "
               "kind (tfidf, model2vec[:BASE]), a model folder, or a Hugging Face id")
    try:
        if isinstance(huggingface_hub.try_to_load_from_cache(model, "config.json"), str):
            return
    except ValueError:  # not a valid repo id at all
        raise UsageError(unknown) from None
    if HF_HUB_OFFLINE:
        raise UsageError(f"{unknown} that is in the local cache (the hub is offline)")
    try:
        huggingface_hub.model_info(model, timeout=10)
    except Exception as e:  # not found, gated, or no network: nothing to train from
        raise UsageError(f"{unknown} ({type(e).__name__} asking the hub)") from None


def student_names(students: list[StudentConfig], base: StudentConfig) -> list[str]:
    """Folder names: the model; where several students share it, each setting in which a
    student differs from `base` (`key=value`, joined by +); a duplicate gets -2, -3, ... in
    list order."""
    slugs = [_model_slug(s.model) for s in students]
    names = []
    for s, slug in zip(students, slugs, strict=True):
        parts = [slug, *(_differences(s, base) if slugs.count(slug) > 1 else [])]
        name = re.sub(r"[^A-Za-z0-9._=,+-]", "-", "+".join(parts))
        if len(name) > MAX_NAME:
            import hashlib

            digest = hashlib.sha256(s.model_dump_json().encode()).hexdigest()[:8]
            name = f"{name[: MAX_NAME - 9]}-{digest}"
        names.append(name)
    out, seen = [], {}
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out


def _model_slug(model: str) -> str:
    kind, _, arg = model.partition(":")
    if kind_of(model) != TRANSFORMERS:
        return kind + (f"-{_last(arg)}" if arg else "")
    return _last(model)


def _last(path: str) -> str:
    name = path.rstrip("/").split("/")[-1].lstrip(".")
    return name.removesuffix(".gguf") or "student"


def _differences(value: Any, base: Any, key: str = "") -> list[str]:
    """`key=value` for each leaf setting of `value` that is not `base`'s (the model aside); a
    section `base` lacks (lora: None) is named, with its non-default values."""
    if isinstance(value, BaseModel):
        marker = []
        if not isinstance(base, BaseModel):
            marker = [key]
            try:
                base = type(value)()
            except ValidationError:
                base = None
        out = []
        for field in type(value).model_fields:
            if not key and field == "model":
                continue
            sub = f"{key}.{field}" if key else field
            out += _differences(getattr(value, field), getattr(base, field, None), sub)
        return out or marker
    if value == base:
        return []
    return [f"{key}={_short(value)}"]


def _short(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list | tuple):
        return ",".join(_short(x) for x in v)
    if isinstance(v, dict):
        return ",".join(f"{k}:{_short(x)}" for k, x in v.items())
    return _last(str(v)) if "/" in str(v) else str(v)


def train_or_reuse(store: pd.DataFrame, manifest: dict, labels: list[str], scfg: StudentConfig,
                   folder: Path, annotations_hash: str, cfg: RunConfig) -> tuple[Path, dict]:
    """The student's folder, trained as `llmdistill run` trains its student (same split and
    anchor), unless the folder already holds one with the same run key."""
    import torch

    anchor = pipeline.choose_anchor(store, labels, scfg, cfg.anchor)
    key = {"annotations": annotations_hash, "hidden_states": manifest.get("hidden_states"),
           "student": scfg.model_dump(mode="json"),
           "anchor": sorted(anchor["id"]) if anchor is not None else None}
    if pipeline.matching_student(folder, key):
        console.print(f"reusing {folder}: same annotations and settings")
        record = StudentRecord.load(folder)
        return folder, {"reused": True, **_training(record.result)}
    threads = torch.get_num_threads()
    try:
        result = pipeline.train(store[store["split"] != "test"], labels, scfg, folder,
                                {"run_key": key, "teacher": manifest.get("teacher"),
                                 "prompt_hash": manifest.get("prompt_hash"),
                                 "data": manifest.get("data")},
                                overwrite=True, anchor=anchor)
    finally:
        torch.set_num_threads(threads)  # every row is timed on the same threads
    console.print(f"trained {folder.name} on {result.used} texts in {result.train_seconds:.1f} s; "
                  f"validation agreement with the teacher {result.validation_agreement:.3f}")
    return folder, {"reused": False, **_training(result.to_dict())}


def _training(result: dict) -> dict:
    keep = ("used", "skipped", "best_epoch", "validation_agreement", "train_seconds")
    return {k: result.get(k) for k in keep}


def measure_student(name: str, scfg: StudentConfig, folder: Path, test: pd.DataFrame,
                    teacher_df: pd.DataFrame, labels: list[str], cfg: RunConfig,
                    speed_texts: list[str], peak_gflops: float, store: pd.DataFrame
                    ) -> tuple[dict, dict | None, str | None]:
    """The student's row, its int8 row (or None) and why there is none (or None)."""
    from llmdistill.student.predict import StudentClassifier

    kind = kind_of(scfg.model)
    transformer = kind == TRANSFORMERS
    clf = StudentClassifier.load(folder, backend="torch" if transformer else "auto")
    if clf.labels != labels:
        pipeline.raise_labels(clf.labels, labels)
    flops = _transformer_flops(clf, speed_texts) if transformer else _kind_flops(clf, speed_texts)
    main = measure_row(name, scfg.model, kind, "pytorch" if transformer else kind, clf, folder,
                       test, teacher_df, labels, cfg, speed_texts, flops, peak_gflops)
    if not (transformer and cfg.compare.int8):
        return main, None, None
    onnx_path, why = int8_export(folder, store, labels, cfg, scfg)
    if onnx_path is None:
        console.print(f"no int8 row for {name}: {why}", style="yellow")
        return main, None, why
    q = StudentClassifier.load_onnx(folder, onnx_path, None, clf.parameters)
    row = measure_row(name + INT8_SUFFIX, scfg.model, kind, "int8", q, folder, test, teacher_df,
                      labels, cfg, speed_texts, flops, peak_gflops, size_path=onnx_path)
    row["of"] = name
    return main, row, None


def measure_row(name: str, model: str, kind: str, variant: str, clf: Any, folder: Path,
                test: pd.DataFrame, teacher_df: pd.DataFrame, labels: list[str], cfg: RunConfig,
                speed_texts: list[str], flops: float | None, peak_gflops: float,
                size_path: Path | None = None) -> dict:
    """One row: the same evaluation as the run's report (same resamples), size and speed."""
    ev = cfg.evaluate
    console.print(f"measuring {name} ({clf.backend})")
    probs = clf.predict_proba(test["text"].tolist(), batch_size=ev.speed_batch)
    m = evaluate_predictions(test, teacher_df, probs, labels, ev, {})
    speed = measure_speed(lambda t, b: clf.predict_proba(t, batch_size=b), speed_texts,
                          batch=ev.speed_batch, latency_samples=ev.latency_samples)
    speed.pop("hardware")  # once, at the top of the result
    bound = peak_gflops * 1e9 / flops if flops else None
    svt = m["student_vs_teacher"]
    return {
        "name": name, "model": model, "kind": kind, "variant": variant, "of": None,
        "backend": clf.backend, "model_dir": str(folder),
        "onnx_path": str(clf.onnx_path) if clf.onnx_path else None,
        "parameters": int(clf.parameters) if clf.parameters is not None else None,
        "size": model_size(size_path or folder),
        "speed": speed,
        "accuracy": m["student"]["accuracy"], "macro_f1": m["student"]["macro_f1"],
        "ece": m["student"].get("ece"),
        "vs_teacher": {k: svt[k] for k in ("agreement", "kappa", "p_value", "verdict",
                                           "accuracy_difference")} if svt else None,
        "warnings": [w.removeprefix("student, ") for w in m["warnings"]
                     if w.startswith("student, ")],
        "flops_per_text": flops, "flop_bound_texts_per_s": bound,
        "flop_bound_share": speed["throughput_texts_per_s"] / bound if bound else None,
    }


def _transformer_flops(clf: Any, texts: list[str]) -> float:
    """2 × non-embedding parameters × mean unpadded tokens per text: a forward pass's FLOPs."""
    from llmdistill.student.train import non_embedding_parameters

    enc = clf.tokenizer([clean_text(str(t)) for t in texts], truncation=True,
                        max_length=clf.max_length)
    tokens = float(np.mean([len(ids) for ids in enc["input_ids"]]))
    return 2.0 * non_embedding_parameters(clf.model) * tokens


def _kind_flops(clf: Any, texts: list[str]) -> float | None:
    """A zoo kind's FLOPs per text, if its classifier says (`flops_per_text(texts)`)."""
    count = getattr(clf, "flops_per_text", None)
    return float(count(texts)) if callable(count) else None


def _peak_gflops() -> float:
    from llmdistill.student.train import measure_peak_gflops

    return measure_peak_gflops()


def int8_export(folder: Path, store: pd.DataFrame, labels: list[str], cfg: RunConfig,
                scfg: StudentConfig) -> tuple[Path | None, str | None]:
    """The int8 ONNX file when it passed parity with PyTorch on the validation rows (exported
    now unless the folder's export is of these weights and settings), else None and why."""
    from llmdistill.student.export import export_student
    from llmdistill.student.predict import (
        INT8_FILE,
        ONNX_DIR,
        PARITY_FILE,
        weights_fingerprint,
    )

    _, val = pipeline.train_split(store[store["split"] != "test"], scfg.seed,
                                  scfg.validation_fraction)
    texts = val["text"].astype(str).tolist()
    gold = None
    if "gold" in val.columns and val["gold"].notna().all() and set(val["gold"]) <= set(labels):
        gold = val["gold"].astype(str).tolist()
    data_name = f"{len(texts)} validation rows of the run"
    settings = cfg.export.model_dump(mode="json") | {"int8": True}
    parity_file = folder / ONNX_DIR / PARITY_FILE
    record = None
    if parity_file.is_file():
        try:
            old = json.loads(parity_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = {}
        if (old.get("weights_sha256") == weights_fingerprint(folder)
                and old.get("settings") == settings and old.get("data") == data_name
                and (folder / ONNX_DIR / INT8_FILE).is_file()):
            record = old
    if record is None:
        try:
            record = export_student(folder, texts, gold, cfg.export, int8=True,
                                    data_name=data_name).record
        except Exception as e:  # onnxruntime missing, a model the ONNX tracer cannot follow:
            # the row is optional, the reason is recorded, the students already measured stay
            logger.warning("ONNX export of %s failed", folder, exc_info=True)
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            return None, f"the ONNX export failed ({type(e).__name__}: {first})"
    v = next((v for v in record["variants"] if v["file"] == INT8_FILE), None)
    if v is None:
        return None, "the export has no int8 variant"
    if not v["passed"]:
        return None, (f"int8 agrees with PyTorch on {v['agreement']:.2%} of {record['texts']} "
                      f"validation texts, below export.min_agreement {record['threshold']:.2%}")
    return folder / ONNX_DIR / INT8_FILE, None


def pipeline_baseline(folder: Path, name: str, texts: list[str], cfg: RunConfig) -> dict:
    """`transformers.pipeline("text-classification")` on `folder`, timed as every row is."""
    from transformers import pipeline as hf_pipeline
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        pipe = hf_pipeline("text-classification", model=str(folder), device="cpu")
    finally:
        hf_logging.set_verbosity(verbosity)
    console.print(f"measuring transformers.pipeline on {name}")

    def run(batch_texts: list[str], batch: int) -> list:
        return pipe(batch_texts, batch_size=batch, truncation=True)

    speed = measure_speed(run, texts, batch=cfg.evaluate.speed_batch,
                          latency_samples=cfg.evaluate.latency_samples)
    speed.pop("hardware")
    return {"name": 'transformers.pipeline("text-classification")', "student": name,
            "model_dir": str(folder), "speed": speed}


def teacher_row(test: pd.DataFrame, teacher_df: pd.DataFrame, labels: list[str],
                cfg: RunConfig, manifest: dict) -> dict:
    """The teacher on the same gold texts (the reference row), and its annotation speed."""
    m = evaluate_predictions(test, teacher_df, None, labels, cfg.evaluate, {})
    t = manifest.get("teacher") or {}
    spt = manifest.get("seconds_per_text") or None  # 0: not timed (a replayed teacher)
    return {"name": t.get("spec", "teacher"), "parameters": t.get("parameters"),
            "accuracy": m["teacher"]["accuracy"], "macro_f1": m["teacher"]["macro_f1"],
            "not_ok": (m["teacher_not_ok"] or {}).get("count", 0),
            "seconds_per_text": spt, "texts_per_s": 1 / spt if spt else None}


def pareto_frontier(points: list[tuple[float, float]]) -> list[bool]:
    """For (accuracy, speed) points: True where no other point is at least as good in both
    and better in one (the rows worth choosing between)."""
    return [not any(a >= acc and s >= speed and (a > acc or s > speed) for a, s in points)
            for acc, speed in points]


def add_to_report(run_dir: Path, result: dict) -> dict[str, Path] | None:
    """Put the result into the run's metrics.json and re-render report.md and report.html; None
    (and a note) for a folder without metrics.json."""
    from llmdistill.report import rerender

    run_dir = Path(run_dir)
    path = run_dir / "metrics.json"
    if not path.is_file():
        console.print(f"{run_dir} has no metrics.json (no evaluated run): the comparison is in "
                      f"{run_dir / COMPARE_FILE} only", style="yellow")
        return None
    metrics = json.loads(path.read_text(encoding="utf-8"))
    metrics["compare"] = result
    atomic_write(path, json.dumps(clean(metrics), indent=2, ensure_ascii=False,
                                  allow_nan=False) + "\n")
    return rerender(run_dir)


def with_students(cfg: RunConfig, models: list[str]) -> RunConfig:
    """`cfg` with `students` replaced by these models, each merged over `cfg.student`."""
    try:
        return RunConfig.model_validate(cfg.model_dump(mode="json") | {"students": list(models)})
    except ValidationError as e:
        first = e.errors()[0]
        raise UsageError(f"--student: {'.'.join(str(p) for p in first['loc'])}: "
                         f"{first['msg']}") from None

