"""The one owner of a student folder's `llmdistill.json`: what was trained, from what, how well.

Training writes it, evaluation adds metrics, and every reader (pipeline reuse, predict's
max_length, serve's model name, the report's manifest) goes through `StudentRecord.load`, so the
file's keys are named once, here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmdistill.errors import UsageError
from llmdistill.files import atomic_write
from llmdistill.tasks import TASKS

MANIFEST_FILE = "llmdistill.json"


class StudentRecord(BaseModel):
    """llmdistill.json. Fields beyond these are the caller's manifest (teacher, data, ...)."""

    model_config = ConfigDict(extra="allow")

    llmdistill_version: str
    labels: list[str]
    kind: str = Field("transformers", description="the zoo kind that loads it (student/zoo.py)")
    base_model: str | None = None
    student_config: dict[str, Any] = Field(default_factory=dict,
                                           description="the StudentConfig it was trained with")
    run_key: dict[str, Any] | None = Field(None, description="what `run` compares to reuse it")
    # the TrainResult fields
    model_dir: str | None = None
    used: int | None = None
    skipped: int | None = None
    best_epoch: float | None = None
    validation_agreement: float | None = None
    samples_per_second: float | None = None
    train_seconds: float | None = None
    parameters: int | None = None
    flop_bound_samples_per_second: float | None = None
    peak_gflops: float | None = None
    tokens_per_text: float | None = None
    noise: dict[str, Any] | None = None
    task: str = Field("single_label", description="the task type it decides (llmdistill.tasks); "
                                                  "older records are single-label")
    thresholds: list[float] | None = Field(None, description="multi_label: one decision "
                                                             "threshold per label, in [0, 1]")
    metrics: dict[str, Any] | None = Field(None, description="test metrics, after evaluation")

    @classmethod
    def path(cls, model_dir: str | Path) -> Path:
        return Path(model_dir) / MANIFEST_FILE

    @classmethod
    def exists(cls, model_dir: str | Path) -> bool:
        return cls.path(model_dir).is_file()

    @classmethod
    def load(cls, model_dir: str | Path) -> StudentRecord:
        """Read a trained folder's record; a one-line UsageError if it is missing or broken."""
        path = cls.path(model_dir)
        try:
            record = cls.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise UsageError(f"{model_dir} has no {MANIFEST_FILE}: give a folder that "
                             "`llmdistill train` wrote") from None
        except (OSError, ValueError, ValidationError) as e:
            raise UsageError(f"{path} is unreadable ({type(e).__name__}): retrain the student "
                             "or restore the file") from None
        record.check_decision(path)
        return record

    @classmethod
    def load_if_present(cls, model_dir: str | Path) -> StudentRecord | None:
        """The record, or None for a plain HF folder that llmdistill did not train."""
        return cls.load(model_dir) if cls.exists(model_dir) else None

    def check_decision(self, where: str | Path = MANIFEST_FILE) -> None:
        """A known task and, if any, one threshold in [0, 1] per label; else a one-line
        UsageError naming the file and the fix."""
        if self.task not in TASKS:
            raise UsageError(f"{where} names the unknown task {self.task!r} (known: "
                             f"{', '.join(TASKS)}): fix the file or retrain the student")
        t = self.thresholds
        if t is None:
            return
        if len(t) != len(self.labels) or not all(0.0 <= float(x) <= 1.0 for x in t):
            raise UsageError(f"{where} has thresholds {list(t)} for {len(self.labels)} labels: "
                             "give one value in [0, 1] per label, or retrain the student")

    @property
    def threshold_array(self) -> np.ndarray | None:
        """The thresholds as an array (None: the task's default decision)."""
        return None if self.thresholds is None else np.asarray(self.thresholds, dtype=float)

    def save(self, model_dir: str | Path) -> Path:
        """Write (atomically) as indented JSON."""
        return atomic_write(self.path(model_dir), self.to_json())

    def to_json(self) -> str:
        return json.dumps(self.model_dump(exclude_none=True), indent=2, default=_jsonable) + "\n"

    @property
    def model_name(self) -> str | None:
        """The student model it was trained from (embedded name, HF id or folder)."""
        return self.student_config.get("model")

    @property
    def result(self) -> dict[str, Any]:
        """The training result (TrainResult fields that are set)."""
        return {k: getattr(self, k) for k in RESULT_FIELDS if getattr(self, k) is not None}

    @property
    def manifest(self) -> dict[str, Any]:
        """What the caller recorded about the run (teacher, data, metrics, base_model, ...)."""
        own = set(RESULT_FIELDS) | {"llmdistill_version", "labels", "kind", "student_config",
                                    "task", "thresholds"}
        return {k: v for k, v in self.model_dump(exclude_none=True).items() if k not in own}

    def summary(self) -> dict[str, Any]:
        """The settings and training outcome that evaluation manifests repeat."""
        keys = ("base_model", "student_config", "used", "skipped", "best_epoch",
                "validation_agreement", "samples_per_second", "task", "thresholds")
        dumped = self.model_dump(exclude_none=True)
        return {k: dumped[k] for k in keys if k in dumped}


RESULT_FIELDS = ("model_dir", "used", "skipped", "best_epoch", "validation_agreement",
                 "samples_per_second", "train_seconds", "parameters",
                 "flop_bound_samples_per_second", "peak_gflops", "tokens_per_text", "noise")


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)
