"""The same training under torchrun: 2 CPU processes (gloo DDP) match one process, and only
rank 0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from llmdistill.config import StudentConfig
from llmdistill.student.predict import StudentClassifier
from llmdistill.student.train import train_student

LABELS = ["negative", "neutral", "positive"]

# Run by torchrun in every rank: train, then say what this rank saw and whether it wrote.
WORKER = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path

    import pandas as pd
    import torch.distributed as dist

    import llmdistill.student.train as train_mod
    from llmdistill.config import StudentConfig

    job = json.loads(Path(sys.argv[1]).read_text())
    rank = int(os.environ["RANK"])
    write = train_mod.write_model_folder

    def spy(*args, **kwargs):
        Path(job["writers"], f"rank{rank}").touch()
        return write(*args, **kwargs)

    train_mod.write_model_folder = spy
    train = pd.read_parquet(job["train"])
    result = train_mod.train_student(train, pd.read_parquet(job["validation"]),
                                     job["labels"], StudentConfig(**job["config"]),
                                     Path(job["out"]), anchor=train)
    Path(job["writers"], f"result{rank}.json").write_text(json.dumps({
        "world_size": dist.get_world_size() if dist.is_initialized() else 1,
        "agreement": result.validation_agreement, "noise": result.noise}))
""")


def cfg(model_dir: Path, batch_size: int) -> dict:
    return {"model": str(model_dir), "epochs": 6, "batch_size": batch_size,
            "learning_rate": 3e-3, "warmup_ratio": 0.2, "early_stopping_patience": 6,
            "max_length": 32, "threads": 1, "anchor_size": 48}


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_two_process_ddp_matches_one_process_and_only_rank0_writes(
        tiny_bert_dir, toy_annotations, tmp_path) -> None:
    train, validation = toy_annotations(128, seed=1), toy_annotations(30, seed=2)
    train.to_parquet(tmp_path / "train.parquet")
    validation.to_parquet(tmp_path / "validation.parquet")
    writers = tmp_path / "writers"
    writers.mkdir()
    runs = tmp_path / "ddp"
    runs.mkdir()
    job = {"train": str(tmp_path / "train.parquet"),
           "validation": str(tmp_path / "validation.parquet"), "labels": LABELS,
           "config": cfg(tiny_bert_dir, 8), "out": str(runs / "student"), "writers": str(writers)}
    (tmp_path / "job.json").write_text(json.dumps(job))
    (tmp_path / "worker.py").write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(tmp_path / "worker.py"), str(tmp_path / "job.json")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]

    ranks = [json.loads((writers / f"result{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]  # real DDP, not two lone processes
    assert ranks[0] == ranks[1]  # both ranks agree on the outcome and the correction
    assert sorted(p.name for p in writers.iterdir() if p.name.startswith("rank")) == ["rank0"]
    assert [p.name for p in runs.iterdir()] == ["student"]  # no leftovers from any rank

    single = train_student(train, validation, LABELS, StudentConfig(**cfg(tiny_bert_dir, 16)),
                           tmp_path / "single", anchor=train)
    assert single.validation_agreement >= 0.8  # it learned (chance is 1/3)
    # the same global batches in the same order: only float reduction order differs
    assert ranks[0]["agreement"] == pytest.approx(single.validation_agreement, abs=0.01)
    np.testing.assert_allclose(ranks[0]["noise"]["prior_shift"], single.noise["prior_shift"],
                               atol=1e-3)
    texts = validation["text"].tolist()
    ddp_probs = StudentClassifier.load(runs / "student").predict_proba(texts)
    one_probs = StudentClassifier.load(tmp_path / "single").predict_proba(texts)
    np.testing.assert_allclose(ddp_probs, one_probs, atol=1e-3)
