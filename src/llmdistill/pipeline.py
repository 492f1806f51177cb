"""The recipe, top to bottom: data → teacher annotates → student trains → evaluation → report.

Each step is a function the CLI and notebooks call; `run` chains them. Every step writes its
artefact atomically with a manifest, and a rerun reuses what is already done.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console

from llmdistill import __version__
from llmdistill.annotate import (
    FEATURES_COLUMN,
    AnnotationCache,
    annotate,
    demos_for,
    hidden_states,
    merge_teachers,
    set_aggregate,
    status_counts,
    teacher_count,
    teacher_probs,
    without_demos,
    write_annotations,
)
from llmdistill.cascade import curve_for_report
from llmdistill.config import (
    EngineConfig,
    EvaluateConfig,
    LabelModelConfig,
    RunConfig,
    StudentConfig,
    TeacherConfig,
)
from llmdistill.data import frame_hash, load_dataset, text_hash
from llmdistill.errors import DataError, UsageError
from llmdistill.evaluate import evaluate_predictions, evaluate_sets, measure_speed, model_size
from llmdistill.files import atomic_path
from llmdistill.report import print_summary, write_html, write_report
from llmdistill.student.model_card import update_metrics
from llmdistill.student.record import StudentRecord
from llmdistill.tasks import get_task
from llmdistill.teachers import load_teacher

console = Console(stderr=True)


def annotate_texts(frame: pd.DataFrame, labels: list[str], demos: list[dict],
                   cfg: TeacherConfig, cache_dir: Path, retry_failed: bool = False,
                   engine: EngineConfig | None = None,
                   task: str = "single_label") -> tuple[pd.DataFrame, dict]:
    """Label `frame` with the configured teacher; returns the table and its manifest.

    `engine.name == "ray"`: the teacher runs as `engine.replicas` Ray actors and this process
    alone commits their answers (llmdistill.scale.annotate); the cache, ledger, budget and
    manifest are those of a one-process run, plus the manifest's `engine` record.
    """
    engine = engine or EngineConfig()
    labeller = None
    if engine.name == "ray":
        from llmdistill.scale.annotate import RayTeacher

        start = time.perf_counter()
        teacher = RayTeacher(cfg.spec, labels, demos, cfg, cache_dir, engine, task=task)
        labeller = teacher.label_stream
        console.print(f"{engine.replicas} replicas of {cfg.spec} ready on Ray "
                      f"({teacher.engine_info['address']}) in "
                      f"{time.perf_counter() - start:.1f} s")
    else:
        teacher = load_teacher(cfg.spec, labels, demos, cfg, cache_dir, task=task)
    cache = AnnotationCache(cache_dir / "annotations.sqlite")
    try:
        start = time.perf_counter()
        table = annotate(frame, teacher, cache, retry_failed=retry_failed,
                         description=f"annotating with {cfg.spec}", labeller=labeller)
        wall = time.perf_counter() - start
    finally:
        cache.close()
        teacher.close()
    counts = status_counts(table)
    console.print(f"teacher outcomes: {counts}")
    prompt = teacher.prompt  # None for a teacher that prompts no model (replay)
    manifest = {
        "teacher": {"spec": cfg.spec, "id": teacher.id, **teacher.info},
        "prompt_hash": teacher.prompt_hash,
        "prompt": {"task": cfg.task, "label_descriptions": cfg.label_descriptions,
                   "prefix": prompt.prefix if prompt else None,
                   "suffix": prompt.suffix if prompt else None},
        "demos": demos,
        "labels": labels,
        "task": task,
        "texts": len(table),
        "data_hash": frame_hash(frame),
        "annotate_wall_seconds": wall,
        "seconds_per_text": float(np.mean(table["seconds"])),
        "tokens": int(table["tokens"].sum()),
        "truncated": int(table["truncated"].sum()) if "truncated" in table else 0,
        "dollars": float(table["cost"].sum()),
        "dollars_per_1000": float(table["cost"].sum()) / max(len(table), 1) * 1000,
    }
    if engine.name == "ray":
        manifest["engine"] = teacher.engine_info
    return table, manifest


def estimate(frame: pd.DataFrame, labels: list[str], demos: list[dict], cfg: TeacherConfig,
             cache_dir: Path, task: str = "single_label") -> dict:
    """--dry-run: what labelling `frame` would cost, before spending anything (no requests)."""
    teacher = load_teacher(cfg.spec, labels, demos, cfg, cache_dir, dry_run=True, task=task)
    try:
        return teacher.estimate(frame["text"].tolist())
    finally:
        teacher.close()


def annotate_teachers(frame: pd.DataFrame, labels: list[str], demos: list[list[dict]],
                      cfgs: list[TeacherConfig], cache_dir: Path, retry_failed: bool = False,
                      engine: EngineConfig | None = None,
                      task: str = "single_label") -> tuple[pd.DataFrame, dict]:
    """Label `frame` with every teacher (each its own cache key); one store and manifest.

    The store keeps each teacher's answers (`t{i}_…` columns); its top-level columns are the
    first teacher's until `aggregate_teachers` replaces them. A row stays when any teacher
    answered it.
    """
    if len(demos) != len(cfgs):
        raise ValueError("one demo list per teacher")
    tables, manifests = [], []
    for i, (cfg, rows) in enumerate(zip(cfgs, demos, strict=True)):
        if len(cfgs) > 1:
            console.print(f"teacher {i + 1} of {len(cfgs)}: {cfg.spec}")
        table, manifest = annotate_texts(frame, labels, rows, cfg, cache_dir, retry_failed,
                                         engine, task=task)
        tables.append(table)
        manifests.append(manifest)
    return merge_teachers(tables, labels, task=task), combined_manifest(manifests)


def combined_manifest(manifests: list[dict]) -> dict:
    """One manifest for several teachers: each one's record under `teachers`; the summed cost
    and time (what labelling a text cost in all) at the top, as for one teacher."""
    if len(manifests) == 1:
        return {**manifests[0], "teachers": [_teacher_record(manifests[0])]}
    first = manifests[0]
    ids = [m["teacher"]["id"] for m in manifests]
    demos = list({d["id"]: d for m in manifests for d in m["demos"]}.values())
    return {
        **{k: first[k] for k in ("labels", "texts", "data_hash") if k in first},
        "task": first.get("task", "single_label"),
        "teacher": {"spec": " + ".join(m["teacher"]["spec"] for m in manifests),
                    "id": "+".join(ids), "teachers": len(manifests)},
        "teachers": [_teacher_record(m) for m in manifests],
        "prompt_hash": "+".join(m["prompt_hash"] for m in manifests),
        "demos": demos,
        **{k: float(sum(m[k] for m in manifests)) for k in
           ("annotate_wall_seconds", "seconds_per_text", "dollars", "dollars_per_1000")},
        "tokens": int(sum(m["tokens"] for m in manifests)),
        "truncated": int(sum(m.get("truncated", 0) for m in manifests)),
    }


def _teacher_record(m: dict) -> dict:
    keep = ("teacher", "prompt_hash", "prompt", "seconds_per_text", "tokens", "truncated",
            "dollars", "dollars_per_1000", "annotate_wall_seconds", "engine")
    return {k: m[k] for k in keep if k in m} | {"demos": [d["id"] for d in m["demos"]]}


def choose_anchor(store: pd.DataFrame, labels: list[str], cfg: StudentConfig,
                  anchor_file: Path | None = None) -> pd.DataFrame | None:
    """The gold anchor: reviewed labels from `anchor_file`, else `cfg.anchor_size` gold training
    rows sampled with the student's seed; None when there is no gold to use.

    The label model, the calibration and the student's noise corrections all use these rows.
    """
    from llmdistill.student.noise import sample_anchor

    train_rows = store[store["split"] == "train"] if "split" in store.columns else store
    if anchor_file is not None:
        from llmdistill.review import read_anchor

        reviewed = read_anchor(Path(anchor_file), labels, store)
        gold = dict(zip(reviewed["text_hash"], reviewed["gold"], strict=True))
        rows = store[store["text_hash"].isin(gold.keys())]
        if "split" in rows.columns and (rows["split"] != "train").any():
            where = sorted(set(rows.loc[rows["split"] != "train", "split"]))
            raise UsageError(f"{int((rows['split'] != 'train').sum())} anchor texts are in the "
                             f"{'/'.join(where)} split: review only training texts (their gold "
                             "would leak into the evaluation)")
        rows = rows.assign(gold=rows["text_hash"].map(gold))
        return rows[rows["status"].astype(str) == "ok"].reset_index(drop=True)
    if (cfg.anchor_size == 0 or "gold" not in train_rows.columns
            or not train_rows["gold"].notna().any()):
        return None
    return sample_anchor(train_rows, cfg.anchor_size, cfg.seed)


def aggregate_teachers(store: pd.DataFrame, labels: list[str], cfg: LabelModelConfig,
                       anchor: pd.DataFrame | None, seed: int = 0,
                       task: str = "single_label") -> tuple[pd.DataFrame, dict]:
    """The label model over the store's teachers: one soft label and its entropy per row."""
    from llmdistill.label_model import aggregate, resolve_method

    if not teacher_count(store):  # a store written before several teachers existed
        store = merge_teachers([store], labels, task=task)
    probs = [teacher_probs(store, i, labels) for i in range(teacher_count(store))]
    index = gold = None
    if anchor is not None and len(anchor):
        position = {h: i for i, h in enumerate(store["text_hash"])}
        index = anchor["text_hash"].map(position).to_numpy(dtype=np.int64)
        if get_task(task).exclusive:
            gold = anchor["gold"].map({lab: j for j, lab in enumerate(labels)}).to_numpy(
                np.int64)
        else:
            gold = get_task(task).targets(anchor["gold"].astype(str).tolist(), labels)
    cfg = resolve_method(cfg, len(probs), index is not None, task=task)
    fallback = None
    if index is None and cfg.method == "stacked":  # nothing to fit it on: say so, don't fail
        fallback = ("no gold anchor (no gold labels in the training rows, anchor_size 0, and no "
                    "--anchor): label_model stacked fell back to mean")
        console.print(f"warning: {fallback}", style="yellow")
        cfg = cfg.model_copy(update={"method": "mean"})
    agg = aggregate(probs, labels, cfg, index, gold, seed=seed, task=task)
    info = agg.info if fallback is None else {**agg.info, "fallback": fallback}
    return set_aggregate(store, agg.probs, agg.entropy, labels, task=task), info


def flag_teacher_errors(store: pd.DataFrame, labels: list[str], cfg: RunConfig,
                        anchor: pd.DataFrame | None) -> tuple[pd.DataFrame, dict | None]:
    """Confident learning on the training rows (not the anchor, which trains on gold)."""
    if cfg.confident.action == "off":
        return store, None
    from llmdistill.student.confident import apply_issues, find_label_issues

    anchor_ids = set(anchor["id"]) if anchor is not None else set()
    mask = (store["split"] == "train") & ~store["id"].isin(anchor_ids)
    part = store[mask]
    try:
        report = find_label_issues(part, labels, cfg.student.model, cfg.confident,
                                   seed=cfg.student.seed, max_length=cfg.student.max_length)
    except DataError as e:  # e.g. the teacher gave one class only: nothing to cross-validate
        console.print(f"confident learning skipped: {e}", style="yellow")
        return store, {"skipped": str(e)}
    fixed = apply_issues(part, report, cfg.confident)
    console.print(f"confident learning: {int(report.mask.sum())} likely teacher errors of "
                  f"{len(part)} training texts ({cfg.confident.action})")
    return pd.concat([fixed, store[~mask]], ignore_index=True), report.to_dict()


def with_hidden_states(store: pd.DataFrame, cfg: RunConfig) -> tuple[pd.DataFrame, dict | None]:
    """Feature distillation's targets: the teacher's hidden state of every non-test text, as
    the store's `teacher_features` column (cached, so a rerun computes only what is new)."""
    if cfg.student.feature_loss.weight <= 0:
        return store, None
    from llmdistill.teachers.hidden import load_embedder

    teacher = cfg.all_teachers()[0]
    spec = cfg.student.feature_loss.teacher or teacher.spec
    embedder = load_embedder(spec, teacher, cfg.resolved_cache_dir())
    cache = AnnotationCache(cfg.resolved_cache_dir() / "annotations.sqlite")
    try:
        keep = store["split"].astype(str) != "test" if "split" in store else slice(None)
        part = hidden_states(store[keep], embedder, cache)
    finally:
        cache.close()
        embedder.close()
    out = store.copy()
    out[FEATURES_COLUMN] = None
    out.loc[part.index, FEATURES_COLUMN] = pd.Series(list(part[FEATURES_COLUMN]),
                                                     index=part.index, dtype=object)
    width = len(part[FEATURES_COLUMN].iloc[0]) if len(part) else 0
    return out, {"model": embedder.id, "texts": len(part), "width": width}


def train_split(annotations: pd.DataFrame, seed: int,
                fraction: float = StudentConfig().validation_fraction
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train and validation rows: the store's split column, or a seeded `fraction` carved out."""
    if "split" in annotations.columns and (annotations["split"] == "validation").any():
        return (annotations[annotations["split"] == "train"],
                annotations[annotations["split"] == "validation"])
    val = annotations.sample(frac=fraction, random_state=seed)
    return annotations.drop(val.index), val


def train(annotations: pd.DataFrame, labels: list[str], cfg: StudentConfig, out_dir: Path,
          manifest: dict, overwrite: bool = False, anchor: pd.DataFrame | None | str = "auto"):
    """Distil the student from the teacher's probabilities.

    Gold is read only from training rows, as the anchor set (`cfg.anchor_size` of them) that
    estimates the teacher's confusion for the noise-aware options; never to select a model.
    `anchor`: "auto" samples it from the training rows' gold; or the rows themselves (from
    `choose_anchor`), or None for no anchor.
    """
    from llmdistill.student.train import train_student

    tr, val = train_split(annotations, cfg.seed, cfg.validation_fraction)
    if isinstance(anchor, str):
        anchor = tr if "gold" in tr.columns and tr["gold"].notna().any() else None
    elif anchor is not None:
        cfg = cfg.model_copy(update={"anchor_size": len(anchor)})
    return train_student(tr, val, labels, cfg, out_dir, manifest, anchor=anchor,
                         overwrite=overwrite)


def evaluate(student_dir: Path, gold: pd.DataFrame, labels: list[str], cfg: EvaluateConfig,
             teacher_annotations: pd.DataFrame | None = None,
             teacher_manifest: dict | None = None, out_dir: Path | None = None,
             curve_thresholds: list[float] | None = None, task: str | None = None) -> dict:
    """Teacher vs gold, student vs gold, student vs teacher on the same gold texts.

    `curve_thresholds`: the cascade curve's thresholds (the run's `serve.curve_thresholds`).
    `task`: the gold's task type, when known; a student of another task is refused.
    """
    from llmdistill.student.predict import StudentClassifier

    student = StudentClassifier.load(student_dir)
    record = StudentRecord.load_if_present(student_dir)
    if student.labels != labels:
        raise_labels(student.labels, labels)
    student_task = getattr(student, "task", "single_label")
    if task is not None and task != student_task:
        raise_task(student_task, task)
    exclusive = get_task(student_task).exclusive
    texts = gold["text"].tolist()
    probs = student.predict_proba(texts, batch_size=cfg.speed_batch, progress=True)
    speed_texts = texts[: cfg.speed_texts]
    info: dict = {"student": {
        "name": (record and record.model_name) or Path(student_dir).name,
        "parameters": student.parameters,
        "size": model_size(student.onnx_path or student_dir),
        "speed": {**measure_speed(lambda t, b: student.predict_proba(t, batch_size=b),
                                  speed_texts, batch=cfg.speed_batch,
                                  latency_samples=cfg.latency_samples),
                  "backend": student.backend},
    }}
    teacher_df = None
    if teacher_annotations is not None:
        teacher_df = align_teacher(gold, teacher_annotations)
        tm = (teacher_manifest or {}).get("teacher", {})
        info["teacher"] = {"name": tm.get("spec", "teacher"), "parameters": tm.get("parameters"),
                           "size": model_size(Path(tm["path"])) if tm.get("path") and
                           Path(tm["path"]).exists() else None,
                           "speed": {"seconds_per_text": teacher_manifest.get("seconds_per_text")}
                           if teacher_manifest and teacher_manifest.get("seconds_per_text")
                           else {},
                           "cost": {k: teacher_manifest.get(k) for k in
                                    ("tokens", "dollars", "dollars_per_1000")}
                           if teacher_manifest else None}
    info["manifest"] = {"llmdistill_version": __version__, "versions": _versions(),
                        "student": record.summary() if record else {},
                        "student_dir": str(student_dir),
                        "gold_hash": frame_hash(gold),
                        "teacher": (teacher_manifest or {}).get("teacher"),
                        "prompt_hash": (teacher_manifest or {}).get("prompt_hash"),
                        "annotations_data_hash": (teacher_manifest or {}).get("data_hash"),
                        "split": (teacher_manifest or {}).get("data"),
                        "demos": [d["id"] for d in (teacher_manifest or {}).get("demos", [])]}
    if not exclusive:
        metrics = evaluate_sets(gold, teacher_df, probs, labels, cfg, info,
                                thresholds=getattr(student, "thresholds", None))
    else:
        metrics = evaluate_predictions(gold, teacher_df, probs, labels, cfg, info)
    if exclusive and teacher_df is not None and teacher_count(teacher_df):
        metrics["teachers"] = _teachers_section(gold, teacher_df, probs, labels, cfg,
                                                teacher_manifest or {})
    if exclusive and teacher_df is not None:  # what deferring unsure texts to the teacher gives
        metrics["cascade"] = curve_for_report(probs, teacher_df, gold, labels, teacher_manifest,
                                              info["student"]["speed"],
                                              thresholds=curve_thresholds)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        preds = gold[["id", "text", "label"]].rename(columns={"label": "gold"}).copy()
        preds["student"] = get_task(student_task).decide(
            probs, labels, getattr(student, "thresholds", None))
        for j, lab in enumerate(labels):
            preds[f"student_prob_{lab}"] = probs[:, j]
        if teacher_df is not None:
            preds["teacher"] = teacher_df["label"].to_numpy()
            for lab in labels:
                preds[f"teacher_prob_{lab}"] = teacher_df[f"prob_{lab}"].to_numpy()
        with atomic_path(out_dir / "predictions.parquet") as tmp:
            preds.to_parquet(tmp, index=False)
        write_report(metrics, out_dir)
        write_html(metrics, preds, out_dir)
    return metrics


def _teachers_section(gold: pd.DataFrame, teacher_df: pd.DataFrame, probs: np.ndarray,
                      labels: list[str], cfg: EvaluateConfig, manifest: dict) -> dict:
    """Each teacher vs gold and vs the student, and what the label model made of them."""
    from llmdistill.evaluate import teacher_breakdown

    n = teacher_count(teacher_df)
    records = manifest.get("teachers") or []
    names = [(records[i].get("teacher") or {}).get("spec", f"teacher {i + 1}")
             if i < len(records) else f"teacher {i + 1}" for i in range(n)]
    info = manifest.get("label_model") or {}
    fitted = (info.get("calibration") or {}).get("teachers") or []
    calibrated = [_calibrated(teacher_probs(teacher_df, i, labels), fitted[i])
                  if i < len(fitted) else None for i in range(n)]
    return {"rows": teacher_breakdown(gold, teacher_df, probs, labels, cfg, names, calibrated),
            "label_model": info, "confident": manifest.get("confident"),
            "anchor": manifest.get("anchor")}


def _calibrated(probs: np.ndarray, fitted: dict) -> np.ndarray | None:
    """Teacher probabilities through the calibration the label model recorded (None: none)."""
    from llmdistill.label_model import Calibration

    if "temperature" not in fitted or fitted.get("mode") == "none":
        return None
    cal = Calibration(mode=fitted["mode"], temperature=fitted["temperature"],
                      bias=np.asarray(fitted["bias"], float), n=fitted["n"],
                      nll_before=fitted["nll_before"], nll_after=fitted["nll_after"],
                      ece_before=fitted["ece_before"], ece_after=fitted["ece_after"])
    return cal.apply(probs)


def align_teacher(gold: pd.DataFrame, annotations: pd.DataFrame) -> pd.DataFrame:
    """The teacher's rows for the gold texts, matched by text (ids may differ between files)."""
    ann = annotations.drop_duplicates("text_hash").set_index("text_hash")
    hashes = gold["text"].map(text_hash)
    t = ann.reindex(hashes.to_numpy()).reset_index(drop=True)
    t["id"] = gold["id"].to_numpy()
    t["status"] = t["status"].fillna("missing")
    return t


def raise_task(student_task: str, task: str) -> None:
    raise UsageError(f"the student is a {student_task} classifier but the data is {task}: "
                     f"train a {task} student on this data (data.task {task})")


def raise_labels(student_labels: list[str], labels: list[str]) -> None:
    raise UsageError(f"the student predicts {student_labels} but the data's labels are "
                     f"{labels}: evaluate on data with the student's label set")


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("torch", "transformers", "llama-cpp-python", "scikit-learn", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return out


def run(cfg: RunConfig) -> dict:
    """The whole pipeline on one config. Reruns reuse the cache and a matching student."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = cfg.resolved_cache_dir()
    teachers = cfg.all_teachers()

    console.rule("1/4 data")
    ds = load_dataset(cfg.data)
    labels, task = ds.labels, ds.task
    refuse_for_multi_label(cfg, task)
    demos = [demos_for(ds.splits["train"], labels, t, task=task) for t in teachers]
    shown = [d for rows in demos for d in rows]
    frame = pd.concat([without_demos(df, shown).assign(split=name)
                       for name, df in ds.splits.items()], ignore_index=True)
    console.print(f"{ds.manifest['used_split_sizes']} texts from {cfg.data.source}; {task}; "
                  f"labels {labels}; {len({d['id'] for d in shown})} demos from train")

    console.rule("2/4 teacher" + ("s" if len(teachers) > 1 else ""))
    store, manifest = annotate_teachers(frame, labels, demos, teachers, cache_dir,
                                        engine=cfg.engine, task=task)
    manifest["data"] = ds.manifest
    manifest["task"] = task
    anchor = choose_anchor(store, labels, cfg.student, cfg.anchor)
    store, manifest["label_model"] = aggregate_teachers(store, labels, cfg.label_model, anchor,
                                                        seed=cfg.student.seed, task=task)
    store, manifest["confident"] = flag_teacher_errors(store, labels, cfg, anchor)
    store, manifest["hidden_states"] = with_hidden_states(store, cfg)
    manifest["anchor"] = {"rows": 0 if anchor is None else len(anchor),
                          "source": str(cfg.anchor) if cfg.anchor else "sampled gold"}
    write_annotations(store, out / "annotations.parquet", manifest, overwrite=True)

    console.rule("3/4 student")
    student_dir = out / "student"
    key = {"annotations": frame_hash(store.assign(label=store["label"].astype(str))),
           "hidden_states": manifest["hidden_states"],
           "student": cfg.student.model_dump(mode="json"),
           "self_training": cfg.self_training.model_dump(mode="json"),
           "anchor": sorted(anchor["id"]) if anchor is not None else None}
    if matching_student(student_dir, key):
        console.print(f"reusing {student_dir}: same annotations and student settings")
    else:
        record = {"run_key": key, "task": task, "teacher": manifest["teacher"],
                  "prompt_hash": manifest["prompt_hash"], "data": ds.manifest}
        result = train(store[store["split"] != "test"], labels, cfg.student, student_dir,
                       record, overwrite=True, anchor=anchor)
        console.print(f"trained on {result.used} texts ({result.skipped} skipped, not ok); "
                      f"{result.samples_per_second:.1f} samples/s")
        if cfg.self_training.rounds:
            _self_train(store, ds, labels, cfg, student_dir, anchor, record)

    console.rule("4/4 evaluation")
    test = without_demos(ds.splits["test"], shown)
    metrics = evaluate(student_dir, test, labels, cfg.evaluate, store, manifest, out_dir=out,
                       curve_thresholds=cfg.serve.curve_thresholds, task=task)
    update_metrics(student_dir, card_metrics(metrics))
    print_summary(metrics, Console())
    console.print(f"report: {out / 'report.md'} and {out / 'report.html'}")
    return metrics


def refuse_for_multi_label(cfg: RunConfig, task: str) -> None:
    """The steps that assume one exclusive label per text, refused up front for multi-label."""
    if get_task(task).exclusive:
        return
    used = [name for name, on in (("confident (confident.action)", cfg.confident.action != "off"),
                                  ("self_training (self_training.rounds)",
                                   cfg.self_training.rounds > 0))
            if on]
    if used:
        raise UsageError(f"{' and '.join(used)} support single_label tasks only: turn "
                         f"{'them' if len(used) > 1 else 'it'} off for this multi_label run")


def _self_train(store: pd.DataFrame, ds, labels: list[str], cfg: RunConfig, student_dir: Path,
                anchor: pd.DataFrame | None, record: dict) -> None:
    """Self-training rounds on the pool; the final student replaces `student_dir`."""
    from llmdistill.self_training import load_pool, self_train

    pool = load_pool(cfg.self_training, cfg.data, ds.pool, labelled=store)
    labelled = store[store["split"] != "test"]
    tr, val = train_split(labelled, cfg.student.seed, cfg.student.validation_fraction)
    result = self_train(tr, pool, labels, cfg.student, cfg.self_training, student_dir,
                        anchor, val, manifest=record, exclude=store[store["split"] == "test"])
    record["self_training"] = result.history


def card_metrics(metrics: dict) -> dict:
    """The few numbers the model card shows: test accuracy and macro-F1 with intervals."""
    out: dict = {"test_texts": metrics["n"]}
    if metrics.get("task") == "multi_label":
        for who in ("student", "teacher"):
            if m := metrics.get(who):
                out[f"{who}_micro_f1"] = m["micro_f1"]
                out[f"{who}_macro_f1"] = m["macro_f1"]
        if c := metrics.get("student_vs_teacher"):
            out["agreement_with_teacher"] = c["agreement"]
        return out
    for who in ("student", "teacher"):
        if m := metrics.get(who):
            out[f"{who}_accuracy"] = m["accuracy"]
            out[f"{who}_macro_f1"] = m["macro_f1"]
    if c := metrics.get("student_vs_teacher"):
        out["agreement_with_teacher"] = c["agreement"]
    return out


def matching_student(student_dir: Path, key: dict) -> bool:
    """True when `student_dir` was trained on the same annotations with the same settings."""
    try:
        record = StudentRecord.load_if_present(student_dir)
    except UsageError:  # an unreadable record: retrain
        return False
    return record is not None and record.run_key == key
