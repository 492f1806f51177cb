"""Active distillation: budget accounting, selection, resume, errors (tiny students, replay)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmdistill.active import (
    ROUNDS_DIR,
    STATE_FILE,
    active_distill,
    check_inputs,
    select_texts,
    uncertainty,
)
from llmdistill.annotate import read_annotations
from llmdistill.config import ActiveConfig, StudentConfig, TeacherConfig
from llmdistill.data import text_hash
from llmdistill.errors import UsageError
from llmdistill.teachers import register, unregister
from llmdistill.teachers.base import Annotation
from llmdistill.teachers.replay import ReplayTeacher

TOY_LABELS = ["negative", "neutral", "positive"]
VAL, SEED, STEP = 9, 12, 8


class Recorder:
    """What the counting teacher was asked, and how it should misbehave."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.fail_after: int | None = None  # KeyboardInterrupt once this many were sent
        self.cost = 0.0  # dollars per text

    def reset(self) -> None:
        self.__init__()


class CountingTeacher(ReplayTeacher):
    """A replay teacher that logs every text it is sent, in small batches, optionally priced."""

    batch_size = 4

    def __init__(self, target: str, labels: list[str], recorder: Recorder,
                 max_cost: float | None) -> None:
        super().__init__(target, labels)
        self.recorder, self.max_cost = recorder, max_cost

    def over_budget(self) -> bool:
        return self.max_cost is not None and self.spent >= self.max_cost

    def label_probs(self, texts: list[str]) -> list[Annotation]:
        rec = self.recorder
        if rec.fail_after is not None and len(rec.sent) + len(texts) > rec.fail_after:
            raise KeyboardInterrupt
        rec.sent.extend(texts)
        anns = [dataclasses.replace(a, cost=rec.cost) for a in super().label_probs(texts)]
        self.spent += rec.cost * len(texts)
        return anns


@pytest.fixture(scope="module")
def recorder():
    rec = Recorder()
    register("counting", lambda req: CountingTeacher(req.target, req.labels, rec,
                                                     req.cfg.api.max_cost),
             help="counting:PATH#COLUMN")
    yield rec
    unregister("counting")


@pytest.fixture(scope="module")
def data(tmp_path_factory, toy_annotations):
    """48 pool texts, 9 validation texts, 30 gold test texts, and the replay file for all."""
    root = tmp_path_factory.mktemp("active-data")
    pool = toy_annotations(48, seed=11)[["id", "text", "label"]]
    val = toy_annotations(VAL, seed=12)[["id", "text", "label"]].assign(id=lambda d: "v" + d.id)
    test = toy_annotations(30, seed=13)[["id", "text", "label"]]
    replay = pd.concat([pool, val]).rename(columns={"label": "teacher"})
    replay.to_csv(root / "teacher.csv", index=False)
    pd.concat([pool, val]).to_csv(root / "data.csv", index=False)
    return {"root": root, "pool": pool, "val": val, "test": test,
            "spec": f"counting:{root / 'teacher.csv'}#teacher"}


@pytest.fixture(scope="module")
def student_cfg(tiny_bert_dir):
    return StudentConfig(model=str(tiny_bert_dir), epochs=1, batch_size=8, max_length=16,
                         threads=1, learning_rate=3e-3, inference_batch_size=32)


def run(data, student_cfg, out, cache, *, budget, strategy="margin", diversity=1.0,
        max_cost=None, seed=0, **kw):
    teacher = TeacherConfig(spec=data["spec"], n_demos=0)
    teacher.api.max_cost = max_cost
    cfg = ActiveConfig(budget=budget, seed_size=SEED, step=STEP, strategy=strategy,
                       diversity=diversity)
    return active_distill(data["pool"], data["val"], TOY_LABELS, teacher, student_cfg, cfg,
                          cache, out, seed=seed, evaluate_on=data["test"], **kw)


def state(out: Path) -> dict:
    return json.loads((out / STATE_FILE).read_text())


@pytest.fixture(scope="module")
def margin_run(data, student_cfg, recorder, tmp_path_factory):
    """Margin, diversity 1, budget 40: rounds of 21, 29, 37 and 40 calls; students kept."""
    recorder.reset()
    root = tmp_path_factory.mktemp("margin")
    result = run(data, student_cfg, root / "out", root / "cache", budget=40, keep_rounds=True)
    return result, list(recorder.sent)


def test_stops_exactly_at_the_budget_and_never_sends_a_text_twice(margin_run):
    result, sent = margin_run
    calls = [h["calls"] for h in result.history]
    assert calls == [VAL + SEED, VAL + SEED + STEP, VAL + SEED + 2 * STEP, 40]
    assert result.calls == 40 and result.stopped_by == "budget"
    assert len(sent) == 40 and len(set(sent)) == 40
    table, manifest = read_annotations(result.annotations)
    assert len(table) == 40 and table["text_hash"].is_unique
    assert (table["split"] == "validation").sum() == VAL
    assert manifest["active"]["validation_calls"] == VAL
    assert (result.student_dir / "config.json").exists()
    for h in result.history:
        assert 0.0 <= h["agreement"] <= 1.0 and 0.0 <= h["accuracy"]["gold"] <= 1.0
    st = state(result.out_dir)
    assert "validation" in st["budget_note"] and st["validation_calls"] == VAL
    assert [len(b) for b in st["batches"]] == [SEED, STEP, STEP, 3]


def test_margin_selects_the_lowest_margin_texts_of_the_students_own_probabilities(
        margin_run, data):
    from llmdistill.student.predict import StudentClassifier

    result, _ = margin_run
    batches = state(result.out_dir)["batches"]
    pool = data["pool"].assign(h=data["pool"]["text"].map(text_hash))
    for r in (0, 1):
        done = {h for b in batches[: r + 1] for h in b}
        rest = pool[~pool["h"].isin(done)]
        clf = StudentClassifier.load(result.out_dir / ROUNDS_DIR / f"round-{r:02d}")
        probs = clf.predict_proba(rest["text"].tolist())
        top = np.sort(probs, axis=1)
        margin = top[:, -1] - top[:, -2]
        picked = rest["h"].isin(set(batches[r + 1])).to_numpy()
        assert picked.sum() == STEP
        assert margin[picked].max() <= margin[~picked].min() + 1e-6


def test_resume_after_an_interruption_spends_nothing_twice(data, student_cfg, recorder,
                                                             tmp_path):
    recorder.reset()
    recorder.fail_after = VAL + SEED + 4  # killed half-way through round 1's texts
    out, cache = tmp_path / "out", tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        run(data, student_cfg, out, cache, budget=37)
    first, before = list(recorder.sent), state(out)["batches"]
    assert len(first) == VAL + SEED + 4
    recorder.reset()
    result = run(data, student_cfg, out, cache, budget=37)
    assert not set(recorder.sent) & set(first)
    assert len(first) + len(recorder.sent) == 37 == result.calls
    assert state(out)["batches"][: len(before)] == before
    recorder.reset()
    again = run(data, student_cfg, out, cache, budget=37)  # complete: nothing to do
    assert recorder.sent == [] and again.history == result.history


def test_random_and_margin_share_the_seed_set_then_differ(data, student_cfg, recorder,
                                                         margin_run, tmp_path):
    recorder.reset()
    result = run(data, student_cfg, tmp_path / "out", tmp_path / "cache", budget=29,
                 strategy="random")
    rand, marg = state(result.out_dir)["batches"], state(margin_run[0].out_dir)["batches"]
    assert rand[0] == marg[0]
    assert len(rand[1]) == STEP and set(rand[1]) != set(marg[1])


def test_diversity_picks_spread_texts_among_the_most_uncertain(data, student_cfg, recorder,
                                                               tmp_path):
    from llmdistill.student.predict import StudentClassifier

    recorder.reset()
    result = run(data, student_cfg, tmp_path / "out", tmp_path / "cache", budget=29,
                 strategy="entropy", diversity=2.0, keep_rounds=True)
    batches = state(result.out_dir)["batches"]
    pool = data["pool"].assign(h=data["pool"]["text"].map(text_hash))
    rest = pool[~pool["h"].isin(set(batches[0]))]
    clf = StudentClassifier.load(result.out_dir / ROUNDS_DIR / "round-00")
    score = uncertainty(clf.predict_proba(rest["text"].tolist()), "entropy")
    top = set(rest["h"].to_numpy()[np.argsort(-score, kind="stable")[: 2 * STEP]])
    assert len(set(batches[1])) == STEP and set(batches[1]) <= top


def test_the_dollar_cap_ends_the_run_cleanly_and_a_rerun_spends_nothing(
        data, student_cfg, recorder, tmp_path):
    recorder.reset()
    recorder.cost = 0.01
    out, cache = tmp_path / "out", tmp_path / "cache"
    result = run(data, student_cfg, out, cache, budget=40, max_cost=0.245)
    assert result.stopped_by == "max_cost"
    assert result.calls == len(recorder.sent) == VAL + SEED + 4  # one batch of 4 past 0.21
    assert result.dollars == pytest.approx(0.25)
    assert (result.student_dir / "config.json").exists()
    recorder.reset()
    again = run(data, student_cfg, out, cache, budget=40, max_cost=0.245)
    assert recorder.sent == [] and again.calls == result.calls


def test_a_folder_of_another_run_is_refused(margin_run, data, student_cfg, tmp_path):
    with pytest.raises(UsageError, match="other data or settings"):
        run(data, student_cfg, margin_run[0].out_dir, tmp_path / "c", budget=40, seed=1)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("mine")
    with pytest.raises(UsageError, match="holds no active run"):
        run(data, student_cfg, tmp_path / "busy", tmp_path / "c", budget=40)


@pytest.mark.parametrize("pool, val, cfg, message", [
    (100, 10, {"budget": 15, "seed_size": 10}, "less than the validation split"),
    (5, 10, {"budget": 40, "seed_size": 10}, "fewer than the seed set"),
    (20, 10, {"budget": 40, "seed_size": 10}, "lower the budget or give more texts"),
    (100, 10, {"budget": 40, "seed_size": 10, "step": 0}, "at least 1 text per round"),
    (100, 0, {"budget": 40, "seed_size": 10}, "validation split of at least 1"),
])
def test_bad_budgets_and_sizes_are_one_line_usage_errors(pool, val, cfg, message):
    with pytest.raises(UsageError, match=message) as e:
        check_inputs(pool, val, ActiveConfig.model_construct(**{**ActiveConfig().model_dump(),
                                                               **cfg}))
    assert "\n" not in str(e.value)


def test_active_distill_checks_before_calling_the_teacher(data, student_cfg, recorder, tmp_path):
    recorder.reset()
    with pytest.raises(UsageError, match="lower the budget"):
        run(data, student_cfg, tmp_path / "out", tmp_path / "cache", budget=500)
    assert recorder.sent == [] and not (tmp_path / "out").exists()


def test_selection_rules_on_known_probabilities():
    probs = np.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25], [0.34, 0.33, 0.33],
                      [0.6, 0.3, 0.1], [0.5, 0.5, 0.0]])
    assert list(select_texts(2, "margin", 0, 1, probs=probs, diversity=1.0)) == [4, 2]
    assert list(select_texts(1, "entropy", 0, 1, probs=probs, diversity=1.0)) == [2]
    a = select_texts(3, "random", 5, 2, size=50)
    assert list(a) == list(select_texts(3, "random", 5, 2, size=50))
    assert len(set(a)) == 3 and list(a) != list(select_texts(3, "random", 5, 3, size=50))
    same = select_texts(3, "margin", 0, 1, probs=probs, diversity=5.0,
                        embed_rows=lambda i: np.ones((len(i), 4)))
    assert len(set(same.tolist())) == 3  # identical embeddings: still 3 distinct texts


def test_cli_active_runs_and_prints_the_learning_curve(data, tiny_bert_dir, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"cache_dir: {tmp_path / 'cache'}\nstudent:\n  model: {tiny_bert_dir}\n"
                   "  epochs: 1\n  max_length: 16\n  threads: 1\n  batch_size: 8\n")
    spec = f"replay:{data['root'] / 'teacher.csv'}#teacher"
    args = [sys.executable, "-m", "llmdistill.cli", "active", str(data["root"] / "data.csv"),
            "--budget", "21", "--seed-size", "10", "--step", "8", "--teacher", spec,
            "--out", str(tmp_path / "out"), "--config", str(cfg)]
    r = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "calls" in r.stdout and (tmp_path / "out" / STATE_FILE).exists()
    assert state(tmp_path / "out")["history"][-1]["calls"] == 21
    bad = subprocess.run(args[:5] + ["--budget", "0"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "budget" in bad.stderr
