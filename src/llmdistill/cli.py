"""`llmdistill`: a thin Typer layer over `llmdistill.pipeline`. Parses, calls, renders."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from llmdistill.config import RunConfig, StudentConfig, full, load_config, quick
from llmdistill.errors import UsageError
from llmdistill.files import refuse_existing
from llmdistill.student.zoo import kinds
from llmdistill.teachers import spec_help

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Distill a large language model into a small, fast text classifier.")
err = Console(stderr=True)
_state = {"debug": False}

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML run config.")]
TextCol = Annotated[str | None, typer.Option(help="Name of the text column.")]
LabelCol = Annotated[str | None, typer.Option(help="Name of the gold label column.")]


@app.callback()
def _main(debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False) -> None:
    _state["debug"] = debug


def _config(path: Path | None, text_column: str | None = None,
            label_column: str | None = None) -> RunConfig:
    cfg = load_config(path)
    if text_column:
        cfg.data.text_column = text_column
    if label_column:
        cfg.data.label_column = label_column
    return cfg


STUDENT_HELP = (f"minilm-l6, smollm2-135m, an HF id or a folder, or a student kind: "
                f"{', '.join(k for k in kinds() if k != 'transformers')} (model2vec:BASE)")
TeacherOpt = Annotated[list[str] | None, typer.Option(
    "--teacher", help=f"{spec_help()}. Repeat it for several teachers (a label model joins "
                      "them: label_model in the config).")]
AnchorOpt = Annotated[Path | None, typer.Option(
    help="Reviewed gold labels to use as the anchor: the CSV `llmdistill review` wrote, filled "
         "in, or a Label Studio JSON export.")]


def _teacher_flags(cfg: RunConfig, specs: list[str] | None) -> None:
    """--teacher once: that teacher; repeated: several, each merged over `teacher`."""
    if not specs:
        return
    if len(specs) == 1 and not cfg.teachers:
        cfg.teacher.spec = specs[0]
        return
    cfg.teachers = [cfg.teacher.model_copy(update={"spec": spec}) for spec in specs]


def _engine_flags(cfg: RunConfig, engine: str | None, ray_address: str | None,
                  replicas: int | None) -> None:
    """Apply --engine, --ray-address and --replicas to `cfg.engine`; a bad value is one line."""
    from pydantic import ValidationError

    flags = {"name": engine, "address": ray_address, "replicas": replicas}
    given = {k: v for k, v in flags.items() if v is not None}
    try:
        cfg.engine = cfg.engine.model_validate(cfg.engine.model_dump() | given)
    except ValidationError as e:
        first = e.errors()[0]
        flag = {"name": "engine", "address": "ray-address"}.get(str(first["loc"][0]),
                                                                 str(first["loc"][0]))
        raise UsageError(f"--{flag} {first['input']}: {first['msg'][0].lower()}"
                         f"{first['msg'][1:]}") from None
    if cfg.engine.name != "ray" and (ray_address is not None or replicas is not None):
        raise UsageError("--ray-address and --replicas apply to the Ray engine: add --engine ray")


@app.command()
def run(config: ConfigOpt = None,
        quick_run: Annotated[bool, typer.Option("--quick", help="smollm2-135m, few hundred "
                                                "tweets: a look in minutes.")] = False,
        full_run: Annotated[bool, typer.Option("--full", help="1,200/200/600 tweets instead of "
                                               "the demo's 500/100/300 (≈ 45 min).")] = False,
        out: Annotated[Path | None, typer.Option(help="Run folder.")] = None,
        engine: Annotated[str | None, typer.Option(
            help="Where the teacher runs: local (this process) or ray (replicas on a Ray "
                 "cluster). Default: engine.name in the config, else local.")] = None,
        ray_address: Annotated[str | None, typer.Option(
            help="Ray cluster to join (HOST:6379 or ray://HOST:10001; default $RAY_ADDRESS, "
                 "else a local cluster).")] = None,
        replicas: Annotated[int | None, typer.Option(
            help="Teacher replicas on Ray (default 2).")] = None,
        teacher: TeacherOpt = None, anchor: AnchorOpt = None) -> None:
    """The whole pipeline: annotate, train, evaluate, report. No arguments: the embedded demo."""
    from llmdistill import pipeline

    if quick_run and full_run:
        raise UsageError("--quick and --full contradict each other: pass one of them")
    cfg = load_config(config, base=quick() if quick_run else full() if full_run else None)
    if out:
        cfg.out = out
    _teacher_flags(cfg, teacher)
    if anchor:
        cfg.anchor = anchor
    _engine_flags(cfg, engine, ray_address, replicas)
    pipeline.run(cfg)


@app.command("annotate")
def annotate_cmd(
    data: Annotated[str, typer.Option(help="CSV/JSONL/Parquet file or embedded split "
                                           "(tweets:train).")],
    out: Annotated[Path, typer.Option(help="Annotation Parquet file to write.")],
    teacher: TeacherOpt = None,
    demos: Annotated[str | None, typer.Option(help="Labelled data to draw few-shot demos from "
                                                   "(default: the embedded train split).")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N texts.")] = None,
    retry_failed: Annotated[bool, typer.Option(help="Label non-ok cached texts again.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Estimate tokens and dollars; spend "
                                               "nothing.")] = False,
    max_cost: Annotated[float | None, typer.Option(help="Stop cleanly at this many dollars; "
                                                        "a rerun resumes.")] = None,
    engine: Annotated[str | None, typer.Option(
        help="Where the teacher runs: local (this process) or ray (replicas on a Ray cluster; "
             "this process alone writes the cache). Default: engine.name in the config, else "
             "local.")] = None,
    ray_address: Annotated[str | None, typer.Option(
        help="Ray cluster to join (HOST:6379 or ray://HOST:10001; default $RAY_ADDRESS, else "
             "a local cluster).")] = None,
    replicas: Annotated[int | None, typer.Option(
        help="Teacher replicas on Ray (default 2).")] = None,
    config: ConfigOpt = None, text_column: TextCol = None, label_column: LabelCol = None,
) -> None:
    """Label texts with a teacher LLM: per-class probabilities, cached and resumable."""
    from llmdistill import data as data_mod
    from llmdistill import pipeline
    from llmdistill.annotate import demos_for, without_demos, write_annotations

    cfg = _config(config, text_column, label_column)
    _teacher_flags(cfg, teacher)
    if max_cost is not None:
        cfg.teacher.api.max_cost = max_cost
        cfg.teachers = [t.model_copy(update={"api": t.api.model_copy(
            update={"max_cost": max_cost})}) for t in cfg.teachers]
    _engine_flags(cfg, engine, ray_address, replicas)
    if not dry_run:
        refuse_existing(out)
    frame, labels, task = data_mod.resolve_with_task(data, cfg.data)
    source, split = data_mod.split_spec(data)
    demo_source = demos or (f"{source}:train" if split else None)
    if demo_source and not labels:
        _, labels, task = data_mod.resolve_with_task(demo_source, cfg.data)
    labels = labels or cfg.data.labels or []
    if len(labels) < 2:
        raise UsageError("no label set: give data with a label column, --demos, or set "
                         "data.labels in the config")
    if cfg.data.task != "auto":
        task = cfg.data.task
    teachers = cfg.all_teachers()
    demo_rows = [demos_for(demo_source, labels, t, cfg.data, task=task) for t in teachers]
    if demo_source == data:
        frame = without_demos(frame, [d for rows in demo_rows for d in rows])
    if limit:
        frame = frame.head(limit)
    if dry_run:
        est = [pipeline.estimate(frame, labels, rows, t, cfg.resolved_cache_dir(), task=task)
               for t, rows in zip(teachers, demo_rows, strict=True)]
        print(json.dumps(est[0] if len(est) == 1 else est, indent=2))
        return
    table, manifest = pipeline.annotate_teachers(frame, labels, demo_rows, teachers,
                                                 cfg.resolved_cache_dir(), retry_failed,
                                                 engine=cfg.engine, task=task)
    manifest["task"] = task
    anchor_rows = pipeline.choose_anchor(table, labels, cfg.student, cfg.anchor)
    table, manifest["label_model"] = pipeline.aggregate_teachers(
        table, labels, cfg.label_model, anchor_rows, seed=cfg.student.seed, task=task)
    write_annotations(table, out, manifest)
    err.print(f"wrote {out} ({len(table)} rows)")


@app.command("train")
def train_cmd(
    annotations: Annotated[Path, typer.Option(help="Annotation Parquet file.")],
    out: Annotated[Path, typer.Option(help="Model folder to write.")],
    student: Annotated[str | None, typer.Option(help=STUDENT_HELP + ".")] = None,
    config: ConfigOpt = None, anchor: AnchorOpt = None,
) -> None:
    """Distil a student encoder from the teacher's probabilities."""
    from llmdistill import pipeline
    from llmdistill.annotate import read_annotations

    cfg = _config(config)
    if student:
        cfg.student.model = student
    refuse_existing(out)
    table, manifest = read_annotations(annotations)
    labels, task = manifest["labels"], manifest.get("task", "single_label")
    anchor_rows: object = "auto"
    if anchor or cfg.anchor:
        anchor_rows = pipeline.choose_anchor(table, labels, cfg.student, anchor or cfg.anchor)
        table, _ = pipeline.aggregate_teachers(table, labels, cfg.label_model, anchor_rows,
                                               seed=cfg.student.seed, task=task)
    result = pipeline.train(table, labels, cfg.student, out,
                            {"task": task, "teacher": manifest.get("teacher"),
                             "prompt_hash": manifest.get("prompt_hash"),
                             "annotations": str(annotations)}, anchor=anchor_rows)
    err.print(f"wrote {out}: trained on {result.used} texts ({result.skipped} not ok, skipped), "
              f"validation agreement with the teacher {result.validation_agreement:.3f}")


@app.command("evaluate")
def evaluate_cmd(
    student: Annotated[Path, typer.Option(help="Trained student folder.")],
    data: Annotated[str, typer.Option(help="Gold data: file or embedded split (tweets:test).")],
    out: Annotated[Path, typer.Option(help="Folder for report.md, metrics.json.")],
    teacher_annotations: Annotated[Path | None, typer.Option(help="The teacher's annotations "
                                                                  "of the same texts.")] = None,
    config: ConfigOpt = None, text_column: TextCol = None, label_column: LabelCol = None,
) -> None:
    """Student vs gold, teacher vs gold, student vs teacher, with intervals."""
    from llmdistill import data as data_mod
    from llmdistill import pipeline
    from llmdistill.annotate import read_annotations
    from llmdistill.report import print_summary

    cfg = _config(config, text_column, label_column)
    if (out / "metrics.json").exists():
        raise UsageError(f"{out} already holds a report: pass a new --out or delete it")
    gold, labels, task = data_mod.resolve_with_task(data, cfg.data)
    if "label" not in gold.columns:
        raise UsageError(f"{data} has no gold label column {cfg.data.label_column!r}: "
                         "pass --label-column")
    table = manifest = None
    if teacher_annotations:
        table, manifest = read_annotations(teacher_annotations)
        labels = manifest["labels"]
    metrics = pipeline.evaluate(student, gold, labels, cfg.evaluate, table, manifest, out,
                                curve_thresholds=cfg.serve.curve_thresholds, task=task)
    print_summary(metrics, Console())


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="A run or evaluate folder.")]) -> None:
    """Re-render report.md and report.html from metrics.json and predictions, no recomputing."""
    from llmdistill.report import rerender

    for path in rerender(run_dir).values():
        err.print(f"wrote {path}")


@app.command("compare")
def compare_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (annotations.parquet, "
                                                 "metrics.json).")],
    student: Annotated[list[str] | None, typer.Option(
        "--student", help=f"{STUDENT_HELP}. Repeat it for each student (default: `students:` "
                          "in the config).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Train several students on a run's annotations; one table of accuracy against size and
    speed, written to compare.json and the run's report."""
    from rich.table import Table

    from llmdistill.compare import compare, with_students
    from llmdistill.report.markdown import COMPARE_HEADER, compare_table

    cfg = _config(config)
    if student:
        cfg = with_students(cfg, student)
    result = compare(cfg, run_dir)
    rows, notes = compare_table(result)
    table = Table(title=f"students compared on {result['n']} gold test texts")
    for col in COMPARE_HEADER:
        table.add_column(col, justify="left" if col in ("student", "kind", "backend") else "right")
    for r in rows:
        table.add_row(*r)
    Console(width=None if sys.stdout.isatty() else 200).print(table)  # a log keeps every column
    for note in notes[1:]:
        err.print(note, highlight=False, markup=False)
    err.print(f"wrote {run_dir / 'compare.json'}", highlight=False)
    if (run_dir / "metrics.json").is_file():
        err.print(f"report: {run_dir / 'report.md'} and {run_dir / 'report.html'}",
                  highlight=False)


@app.command("review")
def review_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (annotations.parquet, "
                                                 "student/).")],
    k: Annotated[int, typer.Option("--k", help="How many texts to pick.")] = 200,
    out: Annotated[Path | None, typer.Option(help="Review folder (default: "
                                                  "RUN_DIR/review).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing review folder.")] = False,
    exclude: Annotated[list[Path] | None, typer.Option(
        help="Labels of an earlier round (review CSV or Label Studio export): skip those "
             "texts. Repeatable.")] = None,
) -> None:
    """Pick the texts a human label helps most; write review.csv and Label Studio files."""
    from llmdistill.review import review_run

    result = review_run(run_dir, k, out, overwrite, exclude)
    files = result.files
    why = ", ".join(f"{r} {n}" for r, n in sorted(result.reasons.items(), key=lambda x: -x[1]))
    err.print(f"picked {result.picked} of {result.candidates} training texts "
              f"({result.excluded} already labelled, skipped){f': {why}' if why else ''}",
              highlight=False)
    for path in files.values():
        err.print(f"wrote {path}", highlight=False)
    err.print("label them: fill the empty label column of review.csv, or in Label Studio "
              "(pip install label-studio; label-studio start --internal-host 127.0.0.1) create a "
              f"project with the labeling config {files['labelstudio_config.xml'].name}, import "
              f"{files['labelstudio_tasks.json'].name}, label, then Export → JSON", highlight=False)
    err.print("bring them back: llmdistill run --anchor FILE, or llmdistill train --anchor FILE",
              highlight=False)


@app.command()
def predict(
    student: Annotated[Path, typer.Option(help="Trained student folder.")],
    texts: Annotated[list[str] | None, typer.Argument(help="Texts to classify.")] = None,
    input: Annotated[str | None, typer.Option(
        "--input", help="CSV/JSONL/Parquet file, or - for one text per line on stdin.")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Write .jsonl, .csv or .parquet instead of JSON lines on stdout.")] = None,
    backend: Annotated[str, typer.Option(
        help="auto (the ONNX export if it passed parity, else PyTorch), onnx, openvino or "
             "torch.")] = "auto",
    batch_size: Annotated[int | None, typer.Option(min=1, help="Texts per batch (default: "
                                                          "student.inference_batch_size).")
                          ] = None,
    text_column: TextCol = None,
    engine: Annotated[str | None, typer.Option(
        help="local (this process; the default) or ray: student replicas on a Ray cluster, "
             "reading --input (a file or a folder of shards) and writing Parquet shards to the "
             "--out folder.")] = None,
    ray_address: Annotated[str | None, typer.Option(
        help="Ray cluster (HOST:6379 or ray://HOST:10001; default $RAY_ADDRESS, else a new "
             "local cluster).")] = None,
    replicas: Annotated[int | None, typer.Option(
        help="Student replicas (Ray actors) for --engine ray (default engine.replicas).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Classify texts: label and probabilities per text, batched by length."""
    from llmdistill.student.predict import (
        StudentClassifier,
        check_output,
        prediction_records,
        read_texts,
        write_predictions,
    )

    cfg = _config(config, text_column)
    _engine_flags(cfg, engine, ray_address, replicas)
    if cfg.engine.name == "ray":
        _predict_on_ray(cfg, student, texts, input, out, backend, batch_size)
        return
    if ray_address is not None or replicas is not None:
        raise UsageError("--ray-address and --replicas apply to the Ray engine: add --engine ray")
    if out:
        check_output(out)
    if input:
        frame = read_texts(input, cfg.data.text_column)
        ids, rows = frame["id"].tolist(), frame["text"].tolist()
    elif texts:
        rows = list(texts)
        ids = [f"r{i}" for i in range(len(rows))]
    else:
        raise UsageError("no texts: pass TEXT arguments or --input FILE (- for stdin)")
    clf = StudentClassifier.load(student, backend=backend)  # type: ignore[arg-type]
    batch = batch_size or StudentConfig().inference_batch_size
    probs = clf.predict_proba(rows, batch_size=batch, progress=bool(input))
    records = prediction_records(ids, rows, probs, clf.labels, task=clf.task,
                                 thresholds=clf.thresholds)
    if out:
        write_predictions(records, clf.labels, out)
        err.print(f"wrote {out} ({len(records)} texts, backend {clf.backend})")
        return
    for r in records:
        print(json.dumps({k: r[k] for k in ("text", "label", "labels", "probs") if k in r},
                         ensure_ascii=False))


def _predict_on_ray(cfg: RunConfig, student: Path, texts: list[str] | None, input: str | None,
                    out: Path | None, backend: str, batch_size: int | None) -> None:
    """`predict --engine ray`: flags checked here, the work in `scale_predict.predict_on_ray`."""
    from llmdistill.scale_predict import predict_on_ray

    if texts:
        raise UsageError("--engine ray reads --input, not TEXT arguments: put the texts in a "
                         "file or drop --engine ray")
    if not input or out is None:
        raise UsageError("--engine ray needs --input DATA (a file or a folder of shards) and "
                         "--out FOLDER (new): pass both")
    result = predict_on_ray(student, input, out, cfg.engine, text_column=cfg.data.text_column,
                            backend=backend, batch_size=batch_size)
    err.print(f"wrote {result.out} ({result.rows} texts from {result.inputs} input file(s) in "
              f"{result.shards} Parquet shard(s), {result.replicas} replica(s), backend "
              f"{result.backend})", highlight=False)


@app.command("export")
def export_cmd(
    student: Annotated[Path, typer.Argument(help="Trained student folder.")],
    int8: Annotated[bool, typer.Option("--int8", help="Also write an int8 model (dynamic "
                                                      "quantization).")] = False,
    openvino: Annotated[bool, typer.Option(
        "--openvino", help="Also check each file on OpenVINO's runtime (for --backend "
                           "openvino).")] = False,
    data: Annotated[str | None, typer.Option(help="Parity texts: file or embedded split "
                                                  "(default tweets:validation).")] = None,
    min_agreement: Annotated[float | None, typer.Option(
        help="Label agreement with PyTorch an export needs (default 0.99).")] = None,
    config: ConfigOpt = None, text_column: TextCol = None, label_column: LabelCol = None,
) -> None:
    """ONNX (and int8) export with a parity check; exit code 1 when an export fails it."""
    from llmdistill import data as data_mod
    from llmdistill.student.export import export_student

    cfg = _config(config, text_column, label_column)
    if min_agreement is not None:
        cfg.export.min_agreement = min_agreement
    cfg.export.openvino = openvino or cfg.export.openvino
    spec = data or cfg.export.data
    data_cfg = cfg.data.model_copy(update={"max_validation": None, "max_test": None}) \
        if data_mod.split_spec(spec)[1] else cfg.data
    frame, _ = data_mod.resolve(spec, data_cfg)
    gold = frame["label"].astype(str).tolist() if "label" in frame.columns else None
    result = export_student(student, frame["text"].tolist(), gold, cfg.export,
                            int8=int8 or cfg.export.int8, data_name=spec)
    rec = result.record
    torch_acc = "" if rec["torch_accuracy"] is None else \
        f", PyTorch accuracy {rec['torch_accuracy']:.2%}"
    err.print(f"parity on {rec['texts']} texts of {spec}{torch_acc}:")
    for v in result.variants:
        acc = "" if v["accuracy"] is None else \
            f", accuracy {v['accuracy']:.2%} ({v['accuracy_change']:+.2f} points)"
        err.print(f"  {v['file']:<16} {v.get('runtime', 'onnxruntime'):<11} "
                  f"{v['bytes'] / 1e6:6.1f} MB  agreement {v['agreement']:.2%}"
                  f"{acc}, max |Δp| {v['max_abs_prob_diff']:.4f}  "
                  f"{'passed' if v['passed'] else 'FAILED'}", highlight=False)
    err.print(f"wrote {result.out_dir}", highlight=False)
    if not result.passed:
        err.print(f"[red]error:[/red] agreement below {rec['threshold']:.2%}: the failed file is "
                  "kept for inspection, marked failed in parity.json, and never used by predict "
                  "or serve", highlight=False)
        raise typer.Exit(1)


@app.command("serve")
def serve_cmd(
    student: Annotated[Path, typer.Argument(help="Trained student folder.")],
    host: Annotated[str | None, typer.Option(help="Address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    backend: Annotated[str | None, typer.Option(help="auto, onnx, openvino or torch.")] = None,
    threads: Annotated[int | None, typer.Option(help="Inference threads.")] = None,
    max_texts: Annotated[int | None, typer.Option(help="Texts per request.")] = None,
    max_chars: Annotated[int | None, typer.Option(help="Characters per text.")] = None,
    cascade_teacher: Annotated[str | None, typer.Option(
        help="Teacher that answers when the student is unsure (e.g. smollm2-135m).")] = None,
    cascade_threshold: Annotated[float | None, typer.Option(
        help="The student answers when its top probability is at least this.")] = None,
    demos: Annotated[str | None, typer.Option(help="Labelled data for the cascade teacher's "
                                                   "few-shot demos.")] = None,
    api_key_env: Annotated[str | None, typer.Option(
        "--api-key-env", metavar="NAME",
        help="Environment variable holding the API key: every request but GET /healthz must "
             "send 'Authorization: Bearer KEY'.")] = None,
    insecure: Annotated[bool, typer.Option(
        "--insecure", help="Allow a non-loopback --host without an API key (only behind a "
                           "proxy that authenticates).")] = False,
    config: ConfigOpt = None,
) -> None:
    """HTTP service: POST /v1/classify, GET /healthz, OpenAPI docs at /docs.

    Listens on 127.0.0.1 by default; another host needs --api-key-env (or --insecure).
    """
    from pydantic import ValidationError

    from llmdistill.serve import app_from_folder, check_exposure, read_api_key, serve

    cfg = _config(config)
    flags = {"host": host, "port": port, "backend": backend, "threads": threads,
             "max_texts": max_texts, "max_chars": max_chars, "cascade_teacher": cascade_teacher,
             "cascade_threshold": cascade_threshold, "api_key_env": api_key_env,
             "insecure": insecure or None}
    try:
        scfg = cfg.serve.model_validate(cfg.serve.model_dump() | {k: v for k, v in flags.items()
                                                                  if v is not None})
    except ValidationError as e:
        first = e.errors()[0]
        raise UsageError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") from None
    check_exposure(scfg.host, read_api_key(scfg) is not None, scfg.insecure)  # before loading
    app_ = app_from_folder(student, scfg, cfg, demos)
    where = f"[{scfg.host}]" if ":" in scfg.host else scfg.host
    auth = f"; API key from ${scfg.api_key_env} required" if scfg.api_key_env else ""
    err.print(f"serving {student} on http://{where}:{scfg.port} (docs at /docs{auth})",
              highlight=False)
    serve(app_, scfg.host, scfg.port, insecure=scfg.insecure)


@app.command("active")
def active_cmd(
    data: Annotated[str, typer.Argument(help="Unlabelled texts: CSV/JSONL/Parquet file or "
                                             "embedded split (tweets:train).")],
    budget: Annotated[int | None, typer.Option(
        help="Teacher calls in all, the validation split and the seed set included (default "
             "active.budget in the config).")] = None,
    seed_size: Annotated[int | None, typer.Option(help="Texts labelled at random before the "
                                                       "first round.")] = None,
    step: Annotated[int | None, typer.Option(help="Texts sent to the teacher per round.")] = None,
    strategy: Annotated[str | None, typer.Option(help="margin, entropy or random.")] = None,
    out: Annotated[Path, typer.Option(help="Run folder; rerunning the same command resumes "
                                           "it.")] = Path("runs/active"),
    teacher: Annotated[str | None, typer.Option(help=f"{spec_help()}.")] = None,
    demos: Annotated[str | None, typer.Option(help="Labelled data to draw few-shot demos from "
                                                   "(default: the embedded train split).")] = None,
    evaluate: Annotated[str | None, typer.Option(help="Gold-labelled held-out texts (file or "
                                                      "tweets:test): accuracy per round.")] = None,
    max_cost: Annotated[float | None, typer.Option(help="Stop cleanly at this many dollars; "
                                                        "a rerun resumes.")] = None,
    config: ConfigOpt = None, text_column: TextCol = None, label_column: LabelCol = None,
) -> None:
    """Active distillation: the teacher labels only the texts the student is least sure of.

    A seeded student.validation_fraction of the budget is carved from DATA as the validation
    split (its calls count against the budget); the rest of DATA is the pool.
    """
    from pydantic import ValidationError
    from rich.table import Table

    from llmdistill import data as data_mod
    from llmdistill.active import active_distill, learning_curve
    from llmdistill.annotate import demos_for

    cfg = _config(config, text_column, label_column)
    if teacher:
        cfg.teacher.spec = teacher
    if max_cost is not None:
        cfg.teacher.api.max_cost = max_cost
    flags = {"budget": budget, "seed_size": seed_size, "step": step, "strategy": strategy}
    try:
        cfg.active = cfg.active.model_validate(
            cfg.active.model_dump() | {k: v for k, v in flags.items() if v is not None})
    except ValidationError as e:
        first = e.errors()[0]
        raise UsageError(f"--{str(first['loc'][0]).replace('_', '-')} {first['input']}: "
                         f"{first['msg'][0].lower()}{first['msg'][1:]}") from None
    source, split = data_mod.split_spec(data)
    data_cfg = cfg.data.model_copy(update={"max_train": None, "max_validation": None,
                                           "max_test": None}) if split else cfg.data
    frame, labels, task = data_mod.resolve_with_task(data, data_cfg)
    if task != "single_label":
        raise UsageError("active distillation supports single_label tasks only: run "
                         "`llmdistill run` for a multi_label task")
    demo_source = demos or (f"{source}:train" if split else None)
    if demo_source and not labels:
        labels = data_mod.resolve(demo_source, cfg.data)[1]
    labels = labels or cfg.data.labels or []
    if len(labels) < 2:
        raise UsageError("no label set: give data with a label column, --demos, or set "
                         "data.labels in the config")
    demo_rows = demos_for(demo_source, labels, cfg.teacher, cfg.data)
    n_val = max(1, round(cfg.student.validation_fraction * cfg.active.budget))
    if n_val >= len(frame):
        raise UsageError(f"{data} holds {len(frame)} texts, too few for a validation split of "
                         f"{n_val} and a pool: lower the budget or give more texts")
    validation = frame.sample(n=n_val, random_state=cfg.data.split_seed)
    gold = None
    if evaluate:
        gold = data_mod.resolve(evaluate, cfg.data)[0]
        if "label" not in gold.columns:
            raise UsageError(f"{evaluate} has no gold label column {cfg.data.label_column!r}: "
                             "pass --label-column")
    result = active_distill(frame.drop(validation.index), validation, labels, cfg.teacher,
                            cfg.student, cfg.active, cfg.resolved_cache_dir(), out,
                            evaluate_on=gold, demos=demo_rows)
    rows = learning_curve(result.history)
    table = Table(title=f"learning curve: {cfg.active.strategy}, {result.calls} of "
                        f"{cfg.active.budget} teacher calls ({len(validation)} for validation)")
    for name in rows[0]:
        table.add_column(name.replace("_", " "), justify="right")
    for row in rows:
        table.add_row(*[f"{v:.4f}" if k == "dollars" else f"{v:.3f}" if isinstance(v, float)
                        else str(v) for k, v in row.items()])
    Console().print(table)
    err.print(f"wrote {out}: student/, annotations.parquet, active.json (stopped by "
              f"{result.stopped_by})", highlight=False)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    try:
        code = app(standalone_mode=False)
        # typer turns Ctrl-C into Exit(130) and, outside standalone mode, returns Exit's code
        if code == 130:
            raise KeyboardInterrupt
        if isinstance(code, int) and code:
            sys.exit(code)
    except UsageError as e:
        if _state["debug"]:
            raise
        err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (typer.Exit, SystemExit) as e:
        sys.exit(getattr(e, "exit_code", getattr(e, "code", 0)))
    except KeyboardInterrupt:
        err.print("interrupted: rerun the same command to resume from the cache")
        sys.exit(130)
    except Exception as e:  # click usage errors arrive here in standalone_mode=False
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(2)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(130)
        raise


if __name__ == "__main__":
    main()
