"""Batch prediction on a Ray cluster: `llmdistill predict --engine ray --input DATA --out DIR`.

Ray Data runs three stages. (1) Read: one Ray task per input shard (CSV, JSONL or Parquet; one
file or a folder of them) parses it with the same rules as the one-process path (`data.read_frame`:
CSV cells as strings, so an id "007" stays "007"), cleans the text with `data.clean_text`, refuses
an empty text by file and row, and yields chunks of `id`, `text`. Ray's own readers are not used
because they infer CSV types and do not number rows, which the ids below need. (2) Predict:
`map_batches` with a callable class on a fixed pool of `engine.replicas` actors, each loading
`StudentClassifier.load(student, threads=engine.cpus_per_replica)` once (the ONNX export that
passed parity, else PyTorch; `predict_proba` cleans the text as training did). (3) Write: Parquet
shards with the columns `write_predictions` writes for a .parquet file (id, text, label,
prob_<label>, probabilities rounded to 6 decimals) into a hidden sibling of OUTDIR, renamed into
place when every shard is written (`files.atomic_dir`), so a killed job leaves no OUTDIR at all.

Ids: a file's `id` column when it has one (as text); otherwise `r<row>` for a single input file
(the ids the one-process path gives) and `<path relative to the folder>:r<row>` for a folder of
shards, rows counted from 0 in file order. Shards are not in input order: join on `id`.

Paths must be visible to every node under the same name (one machine, or a shared mount), since
the replicas read the input and the student folder and write OUTDIR themselves. Nothing here is
imported unless `--engine ray` is asked for, and `ray` itself only inside the functions that need
it.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmdistill.config import DataConfig, EngineConfig, StudentConfig
from llmdistill.data import clean_text
from llmdistill.errors import DataError, UsageError
from llmdistill.files import atomic_dir, refuse_existing
from llmdistill.scale.cluster import INSTALL, connect, first_line, require_ray
from llmdistill.student.predict import (
    StudentClassifier,
    backend_name,
    check_backend,
    check_model_folder,
    export_for,
)

SHARD_SUFFIXES = (".csv", ".jsonl", ".parquet")
# an --out ending in one of these names a file, not the folder of shards the Ray engine writes
FILE_SUFFIXES = (*SHARD_SUFFIXES, ".json", ".pq", ".tsv", ".txt")
# Rows one replica call receives: `predict_proba` sorts them by length, so larger calls pad less
# (MiniLM on tweets, one thread: 86 texts/s in calls of 256, 108 in calls of 1,024, 112 for all
# 2,000 at once); a job's tail idles a replica for at most one call.
ROWS_PER_CALL = 16 * StudentConfig().inference_batch_size


@dataclass(frozen=True)
class RayPrediction:
    """What a Ray prediction run wrote."""

    out: Path
    rows: int
    shards: int
    inputs: int
    backend: str
    replicas: int


def check_ray_output(out: Path) -> None:
    """OUTDIR must be a new folder: refuse a file name (.parquet, .csv, ...) or an existing path."""
    out = Path(out)
    if out.suffix.lower() in FILE_SUFFIXES:
        raise UsageError(f"--out {out}: the Ray engine writes a folder of Parquet shards, not a "
                         f"{out.suffix} file: pass a folder name such as {out.with_suffix('')}")
    refuse_existing(out)


def input_shards(source: str | Path) -> tuple[list[Path], Path | None]:
    """The shard files of `--input` and, for a folder, the folder (ids are relative to it).

    A folder is searched recursively for .csv, .jsonl and .parquet files, in sorted order;
    names starting with "." or "_" (temporary files, _SUCCESS markers) are skipped.
    """
    if str(source) == "-":
        raise UsageError("--input -: the Ray engine cannot read stdin: give a file or a folder "
                         "of shards, or drop --engine ray")
    path = Path(source)
    if not path.exists():
        raise UsageError(f"--input {path} not found: check the path")
    if path.is_file():
        if path.suffix.lower() not in SHARD_SUFFIXES:
            raise UsageError(f"--input {path}: unknown format {path.suffix!r}: use "
                             f"{', '.join(SHARD_SUFFIXES)}")
        return [path.resolve()], None
    files = sorted(
        p for p in path.rglob("*")
        if p.is_file() and p.suffix.lower() in SHARD_SUFFIXES
        and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)
    )
    if not files:
        raise UsageError(f"--input {path} holds no {', '.join(SHARD_SUFFIXES)} files: give a "
                         "file or a folder of shards")
    return [f.resolve() for f in files], path.resolve()


def shard_columns(path: Path) -> list[str]:
    """A shard's column names, read from its header, first line or Parquet schema only."""
    import json

    import pyarrow.parquet as pq

    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return [str(c) for c in pd.read_csv(path, encoding="utf-8", dtype=str, nrows=0)]
        if suffix == ".parquet":
            return list(pq.read_schema(path).names)
        with path.open(encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), "{}")
        return list(json.loads(first))
    except UnicodeDecodeError:
        raise DataError(f"data file {path} is not UTF-8: re-save it as UTF-8") from None
    except Exception as e:  # pandas/pyarrow/json raise many types for unreadable files
        raise DataError(f"data file {path} cannot be read as {suffix[1:]} ({type(e).__name__}): "
                        "check the file") from None


def check_text_column(files: list[Path], text_column: str) -> None:
    """Every shard has the text column: checked from headers before any Ray work starts."""
    for path in files:
        columns = shard_columns(path)
        if text_column not in columns:
            raise DataError(f"{path} has no text column {text_column!r} (columns: "
                            f"{', '.join(columns)}): pass --text-column")


def _raw_chunks(path: Path, chunk_rows: int, text_column: str) -> Iterator[pd.DataFrame]:
    """A shard as read, `chunk_rows` rows at a time, with `data.read_frame`'s parsing rules."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with pd.read_csv(path, encoding="utf-8", dtype=str, keep_default_na=False,
                         chunksize=chunk_rows) as reader:
            yield from reader
    elif suffix == ".jsonl":
        with pd.read_json(path, lines=True, dtype=False, encoding="utf-8",
                          chunksize=chunk_rows) as reader:
            yield from reader
    else:
        import pyarrow.parquet as pq

        shard = pq.ParquetFile(path)
        wanted = [c for c in (text_column, "id") if c in shard.schema_arrow.names]
        for batch in shard.iter_batches(batch_size=chunk_rows, columns=wanted):
            yield batch.to_pandas()


def read_shard(path: Path, text_column: str, id_prefix: str | None,
               chunk_rows: int = ROWS_PER_CALL) -> Iterator[pd.DataFrame]:
    """Frames of `id` and cleaned `text` from one shard, in file order.

    Ids come from the shard's `id` column, else `id_prefix` + "r" + the row number (from 0).
    An empty or whitespace text is a DataError naming the file and row (1-based, as
    `data.read_table` counts), like the one-process path.
    """
    suffix = path.suffix.lower()
    chunks = _raw_chunks(path, chunk_rows, text_column)
    start = 0
    while True:
        try:
            raw = next(chunks)
        except StopIteration:
            return
        except UnicodeDecodeError:
            raise DataError(f"data file {path} is not UTF-8: re-save it as UTF-8") from None
        except Exception as e:  # pandas/pyarrow raise many types for unreadable files
            raise DataError(f"data file {path} cannot be read as {suffix[1:]} "
                            f"({type(e).__name__}): check the file") from None
        if text_column not in raw.columns:
            raise DataError(f"{path} has no text column {text_column!r} (columns: "
                            f"{', '.join(map(str, raw.columns))}): pass --text-column")
        texts = raw[text_column].astype(str).map(clean_text).tolist()
        empty = [i for i, t in enumerate(texts) if not t]
        if empty:
            raise DataError(f"{path}: empty or whitespace text at row {start + empty[0] + 1}: "
                            "remove it")
        ids = raw["id"].astype(str).tolist() if "id" in raw.columns else [
            f"{id_prefix or ''}r{start + i}" for i in range(len(texts))]
        start += len(texts)
        yield pd.DataFrame({"id": ids, "text": texts})


def _read_shards(batch: dict[str, np.ndarray], text_column: str,
                 chunk_rows: int) -> Iterator[pd.DataFrame]:
    """Ray Data read step: a batch of (path, id prefix) rows in, frames of id and text out."""
    for path, prefix in zip(batch["path"], batch["prefix"], strict=True):
        yield from read_shard(Path(str(path)), text_column, str(prefix) or None, chunk_rows)


def prediction_frame(ids: list[str], texts: list[str], probs: np.ndarray,
                     labels: list[str], decided: list[str] | None = None) -> pd.DataFrame:
    """The columns `write_predictions` writes to Parquet: id, text, label, prob_<label>.
    `decided`: the classifier's answers (multi-label sets); None: the argmax label."""
    frame = pd.DataFrame({"id": ids, "text": texts,
                          "label": decided if decided is not None
                          else [labels[i] for i in probs.argmax(axis=1)]})
    for j, lab in enumerate(labels):
        frame[f"prob_{lab}"] = np.round(probs[:, j].astype(np.float64), 6)
    return frame


class StudentReplica:
    """One Ray actor of the pool: loads the student once, then labels batches of id/text rows.

    A load failure is kept and raised by the first batch, not by the constructor: Ray reports a
    failed constructor as a dead actor with only the error's text, a failed call with the error
    itself, which the driver shows as its one line.
    """

    def __init__(self, student_dir: str, threads: int, backend: str, batch_size: int) -> None:
        self.classifier: StudentClassifier | None = None
        self.error: UsageError | None = None
        self.batch_size = batch_size
        try:
            self.classifier = StudentClassifier.load(student_dir, threads=threads,
                                                     backend=backend)  # type: ignore[arg-type]
        except UsageError as e:
            self.error = e
        except Exception as e:  # a damaged weights file, a runtime missing on this node
            self.error = UsageError(
                f"a Ray replica cannot load the student {student_dir} ({type(e).__name__}: "
                f"{first_line(e)}): check that the folder is complete and the same on every "
                f"node, and that every node has llmdistill installed ({INSTALL})")

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        """Probabilities for one batch, in the batch's row order."""
        if self.classifier is None:
            raise self.error or UsageError("the student is not loaded")
        texts = batch["text"].tolist()
        probs = self.classifier.predict_proba(texts, batch_size=self.batch_size)
        return prediction_frame(batch["id"].astype(str).tolist(), texts, probs,
                                self.classifier.labels, self.classifier.decide(probs))


def backend_for(student_dir: Path, backend: str = "auto") -> str:
    """What `StudentClassifier.load(student_dir, backend=backend)` will run, without loading it.

    Checks the folder on the driver, so a wrong --student fails before the cluster is touched.
    """
    check_model_folder(student_dir)
    check_backend(backend)
    if backend == "torch":
        return "torch"
    choice, runtime, _ = export_for(student_dir, backend)
    return "torch" if choice is None else backend_name(runtime, choice)


def ray_data() -> Any:
    """`ray.data`, or a UsageError when Ray is missing, too old, or lacks the APIs used here."""
    require_ray()
    try:
        import ray.data
    except ImportError:
        raise UsageError("--engine ray needs Ray Data, which is not installed: "
                         f"{INSTALL}") from None
    if not all(hasattr(ray.data, a) for a in ("ActorPoolStrategy", "TaskPoolStrategy")):
        raise UsageError(f"Ray {ray.__version__} lacks the Ray Data APIs --engine ray uses: "
                         f"pip install -U {INSTALL.removeprefix('pip install ')}")
    return ray.data


def _user_error(e: BaseException) -> UsageError | None:
    """The llmdistill error a replica or read task raised, unwrapped from Ray's exceptions."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [e]
    while todo:
        cur = todo.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        cause = getattr(cur, "cause", None)
        if isinstance(cur, UsageError) and not isinstance(cause, BaseException):
            return cur
        todo += [cur.__context__, cur.__cause__,
                 cause if isinstance(cause, BaseException) else None]
    return None


def _check_cluster(ray: Any, engine: EngineConfig) -> None:
    """A fixed pool of replicas must fit the cluster's CPUs, or Ray Data would wait forever."""
    total = float(ray.cluster_resources().get("CPU", 0.0))
    need = engine.replicas * engine.cpus_per_replica
    if need > total:
        raise UsageError(f"{engine.replicas} replicas x {engine.cpus_per_replica:g} CPUs need "
                         f"{need:g} CPUs but the Ray cluster has {total:g}: lower --replicas or "
                         "engine.cpus_per_replica, or add nodes")


def count_rows(folder: Path) -> tuple[int, int]:
    """Rows and Parquet shards in a folder, from the files' footers."""
    import pyarrow.parquet as pq

    shards = sorted(folder.rglob("*.parquet"))
    return sum(pq.read_metadata(f).num_rows for f in shards), len(shards)


def predict_on_ray(
    student_dir: str | Path,
    source: str | Path,
    out: str | Path,
    engine: EngineConfig | None = None,
    *,
    text_column: str = DataConfig().text_column,
    backend: str = "auto",
    batch_size: int | None = None,
    rows_per_call: int = ROWS_PER_CALL,
    replica: type[StudentReplica] = StudentReplica,
) -> RayPrediction:
    """Label every row of `source` with `engine.replicas` student replicas; write OUTDIR shards.

    Everything that can be checked before work is (OUTDIR a new folder, not a file name, the input's
    shards and text column, the student folder, the cluster and its CPUs). `replica` is the
    actor class (a subclass may add behaviour, as the tests do to kill one mid-run). Ray
    restarts a replica that dies (up to `engine.max_restarts` times) and retries its batch, so
    no row is lost or written twice.
    """
    engine = engine or EngineConfig(name="ray")
    student_dir, out = Path(student_dir), Path(out)
    check_ray_output(out)
    files, root = input_shards(source)
    check_text_column(files, text_column)
    backend_name = backend_for(student_dir, backend)
    data = ray_data()
    cluster = connect(engine)
    try:
        _check_cluster(cluster.ray, engine)
        items = [{"path": str(f), "prefix": f"{f.relative_to(root).as_posix()}:" if root else ""}
                 for f in files]
        replica_kwargs = {"student_dir": str(student_dir.resolve()),
                          "threads": max(1, int(engine.cpus_per_replica)), "backend": backend,
                          "batch_size": batch_size or StudentConfig().inference_batch_size}
        dataset = _pipeline(data, items, text_column, replica, replica_kwargs, engine,
                            rows_per_call)
        with atomic_dir(out, overwrite=False) as tmp:
            _run(data, lambda: dataset.write_parquet(str(tmp), ray_remote_args={"num_cpus": 0}))
            rows, shards = count_rows(tmp)
            if rows == 0:
                raise DataError(f"--input {source} holds no texts: give shards with rows")
    finally:
        cluster.close()
    return RayPrediction(out=out, rows=rows, shards=shards, inputs=len(files),
                         backend=backend_name, replicas=engine.replicas)


def _pipeline(data: Any, items: list[dict], text_column: str, replica: type,
              replica_kwargs: dict, engine: EngineConfig, rows_per_call: int) -> Any:
    """The Ray Data plan: read tasks over the shards, then the fixed pool of student replicas.

    Reads reserve no CPU (nor does the write, in `predict_on_ray`): the replicas hold theirs for
    the whole job, and a task waiting for a CPU that a replica holds would never run.
    """
    read = data.from_items(items, override_num_blocks=len(items)).map_batches(
        _read_shards, batch_size=1, num_cpus=0,
        compute=data.TaskPoolStrategy(size=engine.replicas),
        fn_kwargs={"text_column": text_column, "chunk_rows": rows_per_call})
    with warnings.catch_warnings():
        # Ray Data's default is unlimited restarts and retries, which would loop on a batch
        # that kills every replica. Ray 2.60 deprecates passing these as keywords (removal
        # planned for 2.64) with no named replacement yet; the warning would reach every user.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated",
                                category=DeprecationWarning)
        return read.map_batches(
            replica, batch_size=rows_per_call, batch_format="pandas",
            # one call in flight per replica: a free replica takes the next batch, rather than
            # it queueing behind a busy one
            compute=data.ActorPoolStrategy(size=engine.replicas,
                                           max_tasks_in_flight_per_actor=1),
            num_cpus=engine.cpus_per_replica, fn_constructor_kwargs=replica_kwargs,
            max_restarts=engine.max_restarts, max_task_retries=engine.max_restarts)


def _run(data: Any, job: Callable[[], object]) -> None:
    """Run a Ray Data job; a user error raised in a task or replica comes back as itself.

    Ray Data is asked to raise a UDF's own exception rather than its `UserCodeException`
    wrapper (whose cause does not survive the trip to the driver); failing that, the error is
    found by name in the remote traceback.
    """
    ctx = data.DataContext.get_current()
    before = getattr(ctx, "raise_original_map_exception", False)
    ctx.raise_original_map_exception = True
    try:
        job()
    except Exception as e:
        found = _user_error(e) or _named_error(str(e))
        if found is e:
            raise
        if found is not None:
            raise type(found)(str(found)) from e
        raise UsageError(f"the Ray job failed ({type(e).__name__}: {first_line(e)}): rerun "
                         "with --debug for the replica's traceback, or run one shard without "
                         "--engine ray") from e
    finally:
        ctx.raise_original_map_exception = before


def _named_error(text: str) -> UsageError | None:
    """The last `llmdistill.errors.NAME: message` line of a remote traceback, rebuilt."""
    from llmdistill import errors

    found = re.findall(r"llmdistill\.errors\.(\w+): (.+)", text)
    if not found:
        return None
    name, message = found[-1]
    cls = getattr(errors, name, UsageError)
    return cls(message.strip()) if isinstance(cls, type) and issubclass(cls, UsageError) \
        else None
