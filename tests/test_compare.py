"""`llmdistill compare`: a zoo of students on one run's annotations, one table and one chart.

A tiny random BERT is the transformer kind; a second kind, `fake[:SMOOTHING]`, is defined in
this file (`train` and `load` below, registered with the zoo for these tests): a naive Bayes
over words, trained from the teacher's soft labels, saved as safetensors + JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TOY_LABELS, toy_annotations

from llmdistill import pipeline
from llmdistill.compare import (
    INT8_SUFFIX,
    compare,
    pareto_frontier,
    student_names,
    with_students,
)
from llmdistill.config import (
    CompareConfig,
    DataConfig,
    EvaluateConfig,
    ExportConfig,
    RunConfig,
    StudentConfig,
    TeacherConfig,
)
from llmdistill.errors import UsageError
from llmdistill.files import atomic_dir
from llmdistill.student import zoo
from llmdistill.student.record import StudentRecord
from llmdistill.student.targets import TrainResult

FAKE = "fake"
trained: list[str] = []  # folders the fake kind trained, in order (to see what was reused)
INTERRUPT = "fake:interrupt"  # a fake student whose training is killed midway


# ---- the fake zoo kind: `train` and `load`, as student/zoo.py asks of a kind's module ----

class FakeClassifier:
    """Multinomial naive Bayes over lower-cased words: the zoo's classifier attributes."""

    backend = "numpy"
    onnx_path = None

    def __init__(self, vocab: dict[str, int], weights: np.ndarray, bias: np.ndarray,
                 labels: list[str]) -> None:
        self.vocab, self.weights, self.bias, self.labels = vocab, weights, bias, labels
        self.parameters = int(weights.size + bias.size)

    def _counts(self, texts: list[str]) -> np.ndarray:
        x = np.zeros((len(texts), len(self.vocab)))
        for i, t in enumerate(texts):
            for w in str(t).lower().split():
                if w in self.vocab:
                    x[i, self.vocab[w]] += 1
        return x

    def predict_proba(self, texts: list[str], batch_size: int = 64,
                      progress: bool = False) -> np.ndarray:
        logits = self._counts(texts) @ self.weights + self.bias
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, texts: list[str], batch_size: int = 64) -> list[str]:
        return [self.labels[i] for i in self.predict_proba(texts).argmax(axis=1)]

    def flops_per_text(self, texts: list[str]) -> float:
        return 2.0 * len(self.labels) * float(np.mean([len(str(t).split()) for t in texts]))


def train(train: pd.DataFrame, validation: pd.DataFrame, labels: list[str], cfg: StudentConfig,
          out_dir: Path, manifest: dict | None, *, anchor: pd.DataFrame | None = None,
          overwrite: bool = False) -> TrainResult:
    from safetensors.numpy import save_file

    start = time.perf_counter()
    arg = cfg.model.partition(":")[2]
    ok = train[train["status"].astype(str) == "ok"]
    probs = ok[[f"prob_{lab}" for lab in labels]].to_numpy(float)
    vocab = {w: i for i, w in enumerate(sorted({w for t in ok["text"] for w in t.lower().split()}))}
    clf = FakeClassifier(vocab, np.zeros((len(vocab), len(labels))), np.zeros(len(labels)), labels)
    soft = clf._counts(ok["text"].tolist()).T @ probs + float(arg if arg != "interrupt" else 1)
    clf.weights = np.log(soft / soft.sum(axis=0, keepdims=True))
    clf.bias = np.log(probs.mean(axis=0))
    val = validation[validation["status"].astype(str) == "ok"]
    agreement = float(np.mean(np.array(clf.predict(val["text"].tolist()))
                              == val["label"].to_numpy()))
    result = TrainResult(model_dir=Path(out_dir), used=len(ok), skipped=len(train) - len(ok),
                         best_epoch=0.0, validation_agreement=agreement,
                         samples_per_second=len(ok) / max(time.perf_counter() - start, 1e-9),
                         train_seconds=time.perf_counter() - start, parameters=clf.parameters)
    record = StudentRecord.model_validate({
        **(manifest or {}), "llmdistill_version": "test", "labels": labels, "kind": FAKE,
        "student_config": cfg.model_dump(mode="json"), **result.to_dict()})
    with atomic_dir(Path(out_dir), overwrite=overwrite) as tmp:
        save_file({"weights": clf.weights, "bias": clf.bias}, str(tmp / "model.safetensors"))
        (tmp / "vocab.json").write_text(json.dumps(vocab))
        record.save(tmp)
        if cfg.model == INTERRUPT:
            raise KeyboardInterrupt  # Ctrl-C with the folder half written
    trained.append(Path(out_dir).name)
    return result


def load(model_dir: Path, threads: int | None = None) -> FakeClassifier:
    from safetensors.numpy import load_file

    t = load_file(str(Path(model_dir) / "model.safetensors"))
    vocab = json.loads((Path(model_dir) / "vocab.json").read_text())
    return FakeClassifier(vocab, t["weights"], t["bias"], StudentRecord.load(model_dir).labels)


# ---- fixtures: a real run folder, and one compare over it ----

@pytest.fixture(scope="module", autouse=True)
def fake_kind():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(zoo, "_KINDS", dict(zoo._KINDS))
        zoo.register(FAKE, __name__)
        yield


def _toy_csv(path: Path) -> Path:
    """150 toy texts with gold labels and a replayable teacher that is wrong on 15% of them."""
    rng = np.random.default_rng(0)
    frame = toy_annotations(150, seed=11)
    wrong = rng.random(len(frame)) < 0.15
    teacher = [TOY_LABELS[(TOY_LABELS.index(g) + 1) % 3] if w else g
               for g, w in zip(frame["gold"], wrong, strict=True)]
    out = pd.DataFrame({"text": frame["text"], "label": frame["gold"], "teacher": teacher})
    for lab in TOY_LABELS:
        out[f"p_{lab}"] = [0.7 if t == lab else 0.15 for t in teacher]
    out.to_csv(path, index=False)
    return path


def _config(root: Path, csv: Path) -> RunConfig:
    """The run's config: the replayed teacher, the fake student, small evaluation settings."""
    spec = f"replay:{csv}#teacher?probs=" + ",".join(f"p_{lab}" for lab in TOY_LABELS)
    return RunConfig(
        out=root / "run", cache_dir=root / "cache",
        data=DataConfig(source=str(csv), max_train=None, max_validation=None, max_test=None,
                        validation_fraction=0.15, test_fraction=0.2),
        teacher=TeacherConfig(spec=spec, n_demos=0),
        student=StudentConfig(model="fake:1", anchor_size=20),
        evaluate=EvaluateConfig(bootstrap=200, speed_texts=32, latency_samples=5),
        export=ExportConfig(min_agreement=0.5),
    )


@pytest.fixture(scope="module")
def run_cfg(tmp_path_factory) -> RunConfig:
    """A finished `llmdistill run` (replay teacher, fake student): its folder is cfg.out."""
    root = tmp_path_factory.mktemp("compare-run")
    cfg = _config(root, _toy_csv(root / "toy.csv"))
    pipeline.run(cfg)
    return cfg


def _students(tiny_bert_dir: Path) -> list:
    return [{"model": str(tiny_bert_dir), "epochs": 1, "batch_size": 16, "learning_rate": 3e-3,
             "warmup_ratio": 0.2, "max_length": 32}, "fake:0.5"]


@pytest.fixture(scope="module")
def compared(run_cfg, tiny_bert_dir, tmp_path_factory) -> tuple[RunConfig, Path, dict]:
    """compare over a copy of the run: the tiny BERT (with its int8 row) and the fake kind."""
    folder = tmp_path_factory.mktemp("compared") / "run"
    shutil.copytree(run_cfg.out, folder)
    cfg = RunConfig.model_validate(run_cfg.model_dump(mode="json")
                                   | {"students": _students(tiny_bert_dir)})
    return cfg, folder, compare(cfg, folder)


# ---- pure parts ----

def test_the_pareto_frontier_keeps_exactly_the_undominated_points():
    rng = np.random.default_rng(3)
    for _ in range(50):
        points = [tuple(p) for p in rng.integers(0, 5, (8, 2)).astype(float)]
        on = pareto_frontier(points)
        assert any(on)
        for (a, s), flag in zip(points, on, strict=True):
            dominated = any(a2 >= a and s2 >= s and (a2, s2) != (a, s) for a2, s2 in points)
            assert flag == (not dominated)
    assert pareto_frontier([(0.9, 10.0), (0.8, 100.0), (0.7, 50.0)]) == [True, True, False]


def test_student_names_are_unique_and_name_what_differs_from_the_base_student():
    base = StudentConfig(model="minilm-l6")
    students = RunConfig.model_validate({"student": base.model_dump(), "students": [
        "minilm-l6", {"model": "minilm-l6", "epochs": 3}, "tfidf", "model2vec:minilm-l6",
        {"model": "minilm-l6", "lora": {"r": 4}}, "/models/enc/", "minilm-l6"]}).students
    names = student_names(students, base)
    assert names == ["minilm-l6", "minilm-l6+epochs=3", "tfidf", "model2vec-minilm-l6",
                     "minilm-l6+lora.r=4", "enc", "minilm-l6-2"]
    assert student_names(students, base) == names  # stable: a rerun finds its folders
    alone = [StudentConfig(model="/models/enc", epochs=2), StudentConfig(model="tfidf")]
    assert student_names(alone, base) == ["enc", "tfidf"]  # nothing to tell apart
    long = [StudentConfig(model="x" * 200, epochs=e) for e in (1, 2)]
    assert len(student_names(long, base)[0]) <= 80


def test_with_students_merges_each_model_over_the_student_section():
    cfg = RunConfig(student=StudentConfig(epochs=3))
    out = with_students(cfg, ["tfidf", "minilm-l6"])
    assert [s.model for s in out.students] == ["tfidf", "minilm-l6"]
    assert all(s.epochs == 3 for s in out.students)


# ---- compare over a real run ----

def test_compare_writes_every_field_for_every_student(compared):
    cfg, folder, result = compared
    assert json.loads((folder / "compare.json").read_text()) == result
    test_rows = pd.read_parquet(folder / "annotations.parquet").query("split == 'test'")
    assert result["n"] == len(test_rows) == json.loads((folder / "metrics.json").read_text())["n"]
    assert {"cpu", "cores", "torch_threads", "peak_gflops"} <= set(result["hardware"])
    kinds = {r["kind"] for r in result["rows"]}
    assert kinds == {"transformers", FAKE}
    for r in result["rows"]:
        assert Path(r["model_dir"]).parent == folder / "students"
        assert r["parameters"] > 0 and r["size"]["mb"] > 0
        assert r["speed"]["throughput_texts_per_s"] > 0 and r["speed"]["batch"] == 64
        assert r["speed"]["latency_ms"]["p50"] > 0
        assert 0 <= r["vs_teacher"]["agreement"] <= 1
        for metric in ("accuracy", "macro_f1"):
            iv = r[metric]
            assert iv["low"] <= iv["value"] <= iv["high"]
        assert r["vs_pipeline"] > 0  # a transformer student gives the baseline
        assert r["flops_per_text"] > 0 and r["flop_bound_share"] > 0
    assert result["baseline"]["speed"]["throughput_texts_per_s"] > 0
    t = result["teacher"]
    assert t["name"].startswith("replay:") and t["accuracy"]["low"] <= t["accuracy"]["value"]
    assert t["accuracy"]["value"] <= t["accuracy"]["high"]


def test_the_int8_row_appears_only_when_its_export_passed_parity(compared):
    _, folder, result = compared
    bert = next(r for r in result["rows"] if r["variant"] == "pytorch")
    parity = json.loads((Path(bert["model_dir"]) / "onnx" / "parity.json").read_text())
    passed = next(v for v in parity["variants"] if v["file"] == "model.int8.onnx")["passed"]
    int8 = [r for r in result["rows"] if r["variant"] == "int8"]
    assert len(int8) == int(passed)
    if passed:
        assert int8[0]["name"] == bert["name"] + INT8_SUFFIX and int8[0]["of"] == bert["name"]
        assert int8[0]["backend"] == "onnx-int8" and int8[0]["onnx_path"].endswith(".int8.onnx")
    else:
        assert [s["name"] for s in result["skipped"]] == [bert["name"] + INT8_SUFFIX]
    assert parity["data"].endswith("validation rows of the run")  # never the test texts


def test_every_model_is_scored_on_the_same_resamples(compared):
    _, folder, result = compared
    metrics = json.loads((folder / "metrics.json").read_text())
    assert result["settings"]["evaluate"]["seed"] == metrics["settings"]["seed"]
    assert result["settings"]["evaluate"]["bootstrap"] == 200
    # the teacher row is the run's own teacher row: same texts, same resamples
    assert result["teacher"]["accuracy"] == metrics["teacher"]["accuracy"]


def test_the_frontier_is_marked_and_consistent_with_its_definition(compared):
    _, _, result = compared
    rows = result["rows"]
    assert any(r["pareto"] for r in rows)
    for r in rows:
        better = [o for o in rows if o is not r
                  and o["accuracy"]["value"] >= r["accuracy"]["value"]
                  and o["speed"]["throughput_texts_per_s"] >= r["speed"]["throughput_texts_per_s"]
                  and (o["accuracy"]["value"], o["speed"]["throughput_texts_per_s"])
                  != (r["accuracy"]["value"], r["speed"]["throughput_texts_per_s"])]
        assert r["pareto"] == (not better)
    assert set(result["frontier"]) == {r["name"] for r in rows if r["pareto"]}


def test_the_report_gets_the_section_and_the_chart(compared):
    _, folder, result = compared
    md = (folder / "report.md").read_text()
    assert "## Students compared" in md and "](compare.svg)" in md
    assert (folder / "compare.svg").read_bytes().startswith(b"<?xml")
    for r in result["rows"]:
        assert f"| {r['name']} |" in md
    assert "## Summary" in md and "## Per class" in md  # the rest of the report is still there
    page = (folder / "report.html").read_text()
    assert 'id="compare"' in page and "Students compared" in page
    assert 'alt="Accuracy with its interval against texts per second' in page
    assert json.loads((folder / "metrics.json").read_text())["compare"] == result


def test_a_rerun_reuses_the_trained_folders_and_the_export(compared, tmp_path, monkeypatch):
    cfg, folder, first = compared
    again = tmp_path / "run"
    shutil.copytree(folder, again)
    bert = next(r for r in first["rows"] if r["variant"] == "pytorch")
    parity_file = again / "students" / bert["name"] / "onnx" / "parity.json"
    parity = json.loads(parity_file.read_text())
    for v in parity["variants"]:  # as if int8 had missed the gate: no row, and a reason
        if v["file"] == "model.int8.onnx":
            v.update(passed=False, agreement=0.25)
    parity_file.write_text(json.dumps(parity))

    def no_training(*args, **kwargs):
        raise AssertionError("a rerun must not train")

    monkeypatch.setattr("llmdistill.student.train.train_student", no_training)
    monkeypatch.setattr("llmdistill.student.export.export_student", no_training)
    before = list(trained)
    result = compare(cfg, again)
    assert trained == before
    assert all(r["training"]["reused"] for r in result["rows"] if r["variant"] != "int8")
    assert [r["name"] for r in result["rows"]] == [r["name"] for r in first["rows"]
                                                   if r["variant"] != "int8"]
    skipped = {s["name"]: s["reason"] for s in result["skipped"]}
    assert "25.00%" in skipped[bert["name"] + INT8_SUFFIX]
    assert "Not shown: " + bert["name"] + INT8_SUFFIX in (again / "report.md").read_text()


def test_an_interrupted_compare_keeps_the_students_already_trained(run_cfg, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(run_cfg.out, folder)
    cfg = with_students(run_cfg, ["fake:2", INTERRUPT])
    with pytest.raises(KeyboardInterrupt):
        compare(cfg, folder)
    assert StudentRecord.exists(folder / "students" / "fake-2")
    assert sorted(p.name for p in (folder / "students").iterdir()) == ["fake-2"]  # no half one
    assert not (folder / "compare.json").exists()
    before = list(trained)
    cfg = with_students(run_cfg, ["fake:2"]).model_copy(
        update={"compare": CompareConfig(int8=False, pipeline_baseline=False)})
    result = compare(cfg, folder)
    assert trained == before and result["rows"][0]["training"]["reused"]
    assert result["baseline"] is None and result["rows"][0]["vs_pipeline"] is None


@pytest.mark.parametrize(("students", "message"), [
    ([], "no students to compare"),
    (["fake:1", "/no/such/encoder"], "no such student folder"),
])
def test_bad_students_stop_before_any_training(run_cfg, tmp_path, students, message):
    folder = tmp_path / "run"
    shutil.copytree(run_cfg.out, folder)
    before = list(trained)
    with pytest.raises(UsageError, match=message):
        compare(with_students(run_cfg, students) if students else run_cfg, folder)
    assert trained == before and not (folder / "students").exists()


def test_a_folder_without_a_run_store_is_refused(run_cfg, tmp_path):
    with pytest.raises(UsageError, match="no annotations.parquet"):
        compare(with_students(run_cfg, ["fake:1"]), tmp_path)


def test_a_multi_label_run_is_refused_naming_what_to_use(run_cfg, tmp_path):
    from llmdistill.annotate import read_annotations, write_annotations

    folder = tmp_path / "run"
    shutil.copytree(run_cfg.out, folder)
    store, manifest = read_annotations(folder / "annotations.parquet")
    write_annotations(store, folder / "annotations.parquet", {**manifest, "task": "multi_label"},
                      overwrite=True)
    with pytest.raises(UsageError, match="multi_label run"):
        compare(with_students(run_cfg, ["fake:1"]), folder)


# ---- the command line ----

def cli(*args: str, register: bool = False) -> subprocess.CompletedProcess:
    """`llmdistill ARGS` in a fresh process (with the fake kind registered, if asked)."""
    code = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
            + ("from llmdistill.student import zoo; zoo.register('fake', 'test_compare'); "
               if register else "")
            + "from llmdistill.cli import main; sys.argv[0] = 'llmdistill'; main()")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), *args],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize(("args", "message"), [
    (["compare", "{empty}", "--student", "minilm-l6"], "has no annotations.parquet"),
    (["compare", "{run}", "--student", "no-such-student-model"], "unknown student"),
    (["compare", "{run}"], "no students to compare"),
])
def test_cli_bad_input_exits_2_with_one_line(run_cfg, tmp_path, args, message):
    args = [a.format(empty=tmp_path, run=run_cfg.out) for a in args]
    r = cli(*args)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_cli_compare_prints_the_table_and_rerenders_the_report(run_cfg, tmp_path):
    import yaml

    folder = tmp_path / "run"
    shutil.copytree(run_cfg.out, folder)
    config = tmp_path / "compare.yaml"
    config.write_text(yaml.safe_dump(run_cfg.model_dump(mode="json") | {
        "compare": {"int8": False, "pipeline_baseline": False}}))
    r = cli("compare", str(folder), "--config", str(config), "--student", "fake:3",
            "--student", "fake:0.2", register=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "students compared" in r.stdout and "fake-3" in r.stdout and "fake-0.2" in r.stdout
    assert "wrote" in r.stderr and (folder / "compare.json").exists()
    assert "## Students compared" in (folder / "report.md").read_text()
    assert "fake-0.2" in (folder / "report.html").read_text()
