"""The human review loop: ranking, the review folder, and reading labels back from a filled-in
CSV and from Label Studio's real export formats (checked with label-studio-sdk when installed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmdistill.data import text_hash
from llmdistill.errors import DataError, UsageError
from llmdistill.review import (
    CONFIG_XML,
    ID_KEY,
    REVIEW_CSV,
    TASKS_JSON,
    candidates,
    labelstudio_config,
    pick_for_review,
    read_anchor,
    write_review,
)

LABELS = ["negative", "neutral", "positive"]
SPLITS = ["test", "validation", "train", "train", "train"]


def make_store(n: int = 40, seed: int = 0, teachers: int = 0, issue: bool = False
               ) -> tuple[pd.DataFrame, np.ndarray]:
    """A store as `llmdistill run` writes it (one fifth test), and student probabilities."""
    rng = np.random.default_rng(seed)
    texts = [f"text number {i} about {LABELS[i % 3]} things" for i in range(n)]
    teacher = rng.dirichlet(np.ones(3) * 0.7, size=n)
    rows = {"id": [f"r{i}" for i in range(n)], "text": texts,
            "text_hash": [text_hash(t) for t in texts], "gold": [None] * n,
            "split": [SPLITS[i % 5] for i in range(n)],
            "label": [LABELS[j] for j in teacher.argmax(1)], "status": ["ok"] * n}
    for j, lab in enumerate(LABELS):
        rows[f"prob_{lab}"] = teacher[:, j]
    for t in range(teachers):
        own = rng.dirichlet(np.ones(3) * 0.7, size=n)
        rows[f"t{t}_label"] = [LABELS[j] for j in own.argmax(1)]
        rows[f"t{t}_status"] = ["ok"] * n
        for j, lab in enumerate(LABELS):
            rows[f"t{t}_prob_{lab}"] = own[:, j]
    if issue:
        rows["issue"] = rng.random(n) < 0.2
    return pd.DataFrame(rows), rng.dirichlet(np.ones(3) * 0.7, size=n)


def set_row(store: pd.DataFrame, probs: np.ndarray, i: int, teacher: list[float],
            student: list[float], split: str = "train") -> None:
    for j, lab in enumerate(LABELS):
        store.loc[i, f"prob_{lab}"] = teacher[j]
    store.loc[i, "label"] = LABELS[int(np.argmax(teacher))]
    store.loc[i, "split"] = split
    probs[i] = student


# -- ranking ---------------------------------------------------------------------------------

@pytest.mark.parametrize("teachers, issue", [(0, False), (3, True)])
def test_an_unsure_disagreement_ranks_above_a_confident_agreement(teachers, issue):
    store, probs = make_store(teachers=teachers, issue=issue)
    set_row(store, probs, 2, [0.30, 0.30, 0.40], [0.40, 0.35, 0.25])  # disagree, low margins
    set_row(store, probs, 3, [0.02, 0.03, 0.95], [0.02, 0.03, 0.95])  # agree, confident
    for t in range(teachers):  # the panel agrees on row 3
        store.loc[3, f"t{t}_label"] = "positive"
        for j, lab in enumerate(LABELS):
            store.loc[3, f"t{t}_prob_{lab}"] = [0.02, 0.03, 0.95][j]
    if issue:
        store.loc[3, "issue"] = False
    picked = pick_for_review(store, probs, LABELS, k=len(store))
    order = picked["id"].tolist()
    assert order.index("r2") < order.index("r3")
    row = picked.set_index("id").loc["r2"]
    assert "student≠teacher" in row["reasons"] and "low teacher margin" in row["reasons"]
    assert picked.set_index("id").loc["r3", "reasons"] == ""
    assert picked["score"].between(0, 1).all()
    assert picked["score"].is_monotonic_decreasing


@pytest.mark.parametrize("held_out", ["test", "validation"])
def test_picks_training_rows_only_and_respects_k_and_exclusions(held_out):
    store, probs = make_store()
    for i in store.index[store["split"] == held_out]:  # make held-out rows the most tempting
        set_row(store, probs, i, [0.34, 0.33, 0.33], [0.33, 0.34, 0.33], split=held_out)
    everything = pick_for_review(store, probs, LABELS, k=10_000)
    assert set(everything["split"]) == {"train"}
    assert len(everything) == int((store["split"] == "train").sum())
    assert len(pick_for_review(store, probs, LABELS, k=5)) == 5
    top = everything["id"].iloc[0]
    again = pick_for_review(store, probs, LABELS, k=5, exclude_ids={top})
    assert top not in set(again["id"]) and len(again) == 5
    assert len(candidates(store, {top})) == len(everything) - 1


def test_the_pick_depends_on_the_contents_not_the_row_order():
    store, probs = make_store(n=60, seed=3, teachers=2)
    set_row(store, probs, 7, [0.5, 0.5, 0.0], [0.5, 0.5, 0.0])  # two identical scores: a tie
    set_row(store, probs, 8, [0.5, 0.5, 0.0], [0.5, 0.5, 0.0])
    for i in (7, 8):
        for t in range(2):
            store.loc[i, f"t{t}_label"] = "negative"
            for j, lab in enumerate(LABELS):
                store.loc[i, f"t{t}_prob_{lab}"] = [0.5, 0.5, 0.0][j]
    first = pick_for_review(store, probs, LABELS, k=len(store))
    perm = np.random.default_rng(1).permutation(len(store))
    second = pick_for_review(store.iloc[perm].reset_index(drop=True), probs[perm], LABELS,
                             k=len(store))
    pd.testing.assert_frame_equal(first, second)
    tied = first[first["id"].isin(["r7", "r8"])]
    assert tied["score"].nunique() == 1
    assert tied["text_hash"].is_monotonic_increasing  # the tie goes to the smaller hash


def test_works_without_panel_or_flag_columns_and_counts_teacher_failures():
    store, probs = make_store()
    store.loc[2, ["status", "label"]] = ["refused", None]
    for lab in LABELS:
        store.loc[2, f"prob_{lab}"] = np.nan
    picked = pick_for_review(store, probs, LABELS, k=len(store)).set_index("id")
    assert "teacher failed (refused)" in picked.loc["r2", "reasons"]
    assert pd.isna(picked.loc["r2", "teacher"]) and picked.loc["r2", "suggestion"] in LABELS
    assert picked.loc["r2", "score"] >= picked["score"].median()
    assert not any("teachers disagree" in r or "confident" in r for r in picked["reasons"])


def test_panel_disagreement_and_flags_are_named():
    store, probs = make_store(teachers=2, issue=True)
    store.loc[2, ["t0_label", "t1_label", "issue"]] = ["negative", "positive", True]
    store.loc[2, ["t0_prob_negative", "t0_prob_neutral", "t0_prob_positive"]] = [0.9, 0.05, 0.05]
    store.loc[2, ["t1_prob_negative", "t1_prob_neutral", "t1_prob_positive"]] = [0.05, 0.05, 0.9]
    reasons = pick_for_review(store, probs, LABELS, k=len(store)).set_index("id").loc[
        "r2", "reasons"]
    assert "teachers disagree" in reasons and "flagged by confident learning" in reasons


@pytest.mark.parametrize("k, shape, message", [(0, None, "at least 1"),
                                               (5, (3, 3), "shape")])
def test_bad_arguments_are_usage_errors(k, shape, message):
    store, probs = make_store()
    with pytest.raises(UsageError, match=message):
        pick_for_review(store, np.ones(shape) / 3 if shape else probs, LABELS, k=k)


# -- the review folder ------------------------------------------------------------------------

@pytest.fixture
def review(tmp_path):
    store, probs = make_store(n=30, teachers=2)
    picked = pick_for_review(store, probs, LABELS, k=12)
    files = write_review(picked, tmp_path / "review", LABELS)
    return store, picked, files


def test_write_review_writes_the_three_files(review):
    store, picked, files = review
    sheet = pd.read_csv(files[REVIEW_CSV], dtype=str, keep_default_na=False)
    assert sheet["id"].tolist() == picked["id"].tolist()
    assert (sheet["label"] == "").all() and set(sheet["suggestion"]) <= set(LABELS)
    assert {"text", "reasons", "score", "teacher_prob_neutral", "student_prob_neutral"} <= set(
        sheet.columns)
    tasks = json.loads(files[TASKS_JSON].read_text(encoding="utf-8"))
    assert len(tasks) == len(picked)
    for task, row in zip(tasks, picked.itertuples(), strict=True):
        assert task["data"]["text"] == row.text and task["data"][ID_KEY] == row.id
        (pred,) = task["predictions"]
        assert 0 <= pred["score"] <= 1
        assert pred["result"] == [{"from_name": "label", "to_name": "text", "type": "choices",
                                   "value": {"choices": [row.suggestion]}}]
    xml = files[CONFIG_XML].read_text(encoding="utf-8")
    assert all(f'<Choice value="{lab}"/>' in xml for lab in LABELS)


def test_write_review_refuses_an_existing_folder_unless_overwrite(review):
    _, picked, files = review
    out = files[REVIEW_CSV].parent
    with pytest.raises(UsageError, match="already exists"):
        write_review(picked, out, LABELS)
    write_review(picked.head(3), out, LABELS, overwrite=True)
    assert len(pd.read_csv(out / REVIEW_CSV)) == 3
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_the_config_and_tasks_are_valid_for_label_studio(review):
    """label-studio-sdk's own parser and validators accept what we import."""
    pytest.importorskip("label_studio_sdk")
    from label_studio_sdk.label_interface import LabelInterface

    _, _, files = review
    li = LabelInterface(files[CONFIG_XML].read_text(encoding="utf-8"))
    li.validate()
    assert list(li.get_control("label").labels) == LABELS
    names = [obj.value_name for obj in li.objects]
    for task in json.loads(files[TASKS_JSON].read_text(encoding="utf-8")):
        assert all(task["data"].get(name) for name in names)
        for pred in task["predictions"]:
            assert li.validate_prediction(pred, return_errors=True) == []
    assert li.validate_annotation(annotation(1, "neutral", "2024-05-01T10:00:00Z"))


def test_labels_with_xml_characters_make_a_valid_config():
    pytest.importorskip("label_studio_sdk")
    from label_studio_sdk.label_interface import LabelInterface

    labels = ['a "b"', "c & d", "<e>"]
    li = LabelInterface(labelstudio_config(labels))
    li.validate()
    assert list(li.get_control("label").labels) == labels


# -- reading labels back ----------------------------------------------------------------------

def truth(store: pd.DataFrame) -> dict[str, str]:
    """A made-up human answer per id (any label will do: the test checks the round trip)."""
    return {r: LABELS[int(r[1:]) % 3] for r in store["id"]}


def test_round_trip_through_the_review_csv(review, tmp_path):
    store, picked, files = review
    answer = truth(store)
    sheet = pd.read_csv(files[REVIEW_CSV], dtype=str, keep_default_na=False)
    sheet["label"] = [answer[i].upper() if n % 4 else "" for n, i in enumerate(sheet["id"])]
    sheet.loc[1, "text"] = "  " + sheet.loc[1, "text"] + "  "  # edited by a spreadsheet
    filled = tmp_path / "filled.csv"
    sheet.to_csv(filled, index=False)
    anchor = read_anchor(filled, LABELS, data=store)
    assert list(anchor.columns) == ["id", "text", "text_hash", "gold"]
    assert anchor.attrs["skipped"] == 3 and len(anchor) == 9
    assert all(answer[i] == g for i, g in zip(anchor["id"], anchor["gold"], strict=True))
    by_id = store.set_index("id")
    assert (anchor["text_hash"] == by_id.loc[anchor["id"], "text_hash"].to_numpy()).all()
    without_store = read_anchor(filled, LABELS)
    assert without_store["gold"].tolist() == anchor["gold"].tolist()


def test_ids_alone_are_matched_against_the_store(tmp_path):
    store, _ = make_store()
    path = tmp_path / "ids.jsonl"
    path.write_text('{"id": "r2", "label": "neutral"}\n{"id": "r3", "label": "positive"}\n')
    anchor = read_anchor(path, LABELS, data=store)
    assert anchor["text"].tolist() == store.set_index("id").loc[["r2", "r3"], "text"].tolist()


STAMP = "2024-05-0{}T10:00:00.000000Z"


def annotation(n: int, label: str, stamp: str, cancelled: bool = False,
               from_name: str = "label") -> dict:
    """One annotation as Label Studio's JSON export writes it
    (https://labelstud.io/guide/export#Label-Studio-JSON-format-of-annotated-tasks and
    https://labelstud.io/guide/task_format; the fields of a 1.x export)."""
    return {"id": n, "completed_by": 1,
            "result": [{"value": {"choices": [label]}, "id": f"r{n}x", "from_name": from_name,
                        "to_name": "text", "type": "choices", "origin": "manual"}],
            "was_cancelled": cancelled, "ground_truth": False, "created_at": stamp,
            "updated_at": stamp, "draft_created_at": None, "lead_time": 4.2, "prediction": {},
            "result_count": 0, "unique_id": f"u{n}", "import_id": None, "last_action": None,
            "task": n, "project": 1, "updated_by": 1, "parent_prediction": None,
            "parent_annotation": None, "last_created_by": None}


def ls_export(tasks: list[dict], answer: dict[str, str], from_name: str = "label"
              ) -> list[dict]:
    """What Label Studio's Export → JSON gives for our imported tasks once people labelled them:
    task 1 plainly; task 2 relabelled (the later answer counts); task 3 answered then skipped
    (the cancelled one does not count); the last task not labelled at all."""
    out = []
    for n, task in enumerate(tasks, start=1):
        gold = answer[task["data"][ID_KEY]]
        wrong = LABELS[(LABELS.index(gold) + 1) % 3]
        anns = [annotation(100 + n, gold, STAMP.format(2), from_name=from_name)]
        if n % 3 == 2:
            anns = [annotation(200 + n, wrong, STAMP.format(1), from_name=from_name), *anns]
        if n % 3 == 0:
            anns.append(annotation(300 + n, wrong, STAMP.format(3), cancelled=True,
                                   from_name=from_name))
        if n == len(tasks):
            anns = []
        out.append({"id": n, "annotations": anns, "file_upload": "abc-tasks.json",
                    "drafts": [], "predictions": [n], "data": task["data"], "meta": {},
                    "created_at": STAMP.format(1), "updated_at": STAMP.format(2), "inner_id": n,
                    "total_annotations": len(anns), "cancelled_annotations": int(n % 3 == 0),
                    "total_predictions": 1, "comment_count": 0, "unresolved_comment_count": 0,
                    "last_comment_updated_at": None, "project": 1, "updated_by": 1,
                    "comment_authors": []})
    return out


@pytest.fixture
def exported(review, tmp_path):
    store, picked, files = review
    tasks = json.loads(files[TASKS_JSON].read_text(encoding="utf-8"))
    path = tmp_path / "project-1-at-2024-05-03.json"
    path.write_text(json.dumps(ls_export(tasks, truth(store))), encoding="utf-8")
    return store, picked, path


def check_anchor(anchor: pd.DataFrame, store: pd.DataFrame, picked: pd.DataFrame) -> None:
    answer = truth(store)
    assert anchor["id"].tolist() == picked["id"].tolist()[:-1]  # the last task is unlabelled
    assert anchor["gold"].tolist() == [answer[i] for i in anchor["id"]]


def test_round_trip_through_a_label_studio_json_export(exported):
    store, picked, path = exported
    anchor = read_anchor(path, LABELS, data=store)
    check_anchor(anchor, store, picked)
    assert anchor.attrs["skipped"] == 1 and anchor.attrs["format"] == "label-studio-json"


def test_a_hand_written_json_min_export_is_read(tmp_path):
    """JSON-MIN as https://labelstud.io/guide/export#JSON-MIN shows it: flat rows, the task
    data's keys, the control's name holding the choice, `id` the Label Studio task id."""
    store, _ = make_store()
    rows = [{"text": store.loc[i, "text"], ID_KEY: f"r{i}", "id": 50 + i, "label": lab,
             "annotator": 1, "annotation_id": 9 + i, "created_at": STAMP.format(1),
             "updated_at": STAMP.format(1), "lead_time": 3.5}
            for i, lab in [(2, "neutral"), (3, "positive"), (4, "negative")]]
    path = tmp_path / "min.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    anchor = read_anchor(path, LABELS, data=store)
    assert anchor["id"].tolist() == ["r2", "r3", "r4"]
    assert anchor["gold"].tolist() == ["neutral", "positive", "negative"]
    assert anchor.attrs["format"] == "label-studio-json-min"


@pytest.mark.parametrize("fmt", ["JSON_MIN", "CSV", "TSV"])
def test_round_trip_through_label_studios_own_converter(exported, tmp_path, fmt):
    """Label Studio writes JSON-MIN and CSV exports with the SDK's Converter: run it on the
    JSON export and read what it gives."""
    pytest.importorskip("label_studio_sdk")
    from label_studio_sdk.converter import Converter

    store, picked, path = exported
    out = tmp_path / fmt
    config = labelstudio_config(LABELS)
    Converter(config=config, project_dir=str(tmp_path), download_resources=False).convert(
        str(path), str(out), fmt, is_dir=False)
    (result,) = [p for p in out.iterdir() if p.name.startswith("result")]
    if fmt == "TSV":
        result = result.rename(result.with_suffix(".tsv"))
    anchor = read_anchor(result, LABELS, data=store)
    check_anchor(anchor, store, picked)


# -- errors ------------------------------------------------------------------------------------

def write(tmp_path: Path, name: str, content: object) -> Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content),
                    encoding="utf-8")
    return path


def test_read_anchor_errors_name_the_problem(review, exported, tmp_path):
    store, picked, files = review
    tasks = json.loads(files[TASKS_JSON].read_text(encoding="utf-8"))
    text = picked["text"].iloc[0]
    cases = [
        (write(tmp_path, "empty.csv", ""), "is empty"),
        (write(tmp_path, "empty.json", []), "holds no tasks"),
        (write(tmp_path, "header.csv", "text,label\n"), "no rows"),
        (write(tmp_path, "blank.csv", f"text,label\n{text},\n"), "no labelled rows"),
        (write(tmp_path, "off.csv", f"text,label\n{text},mixed\n"), "outside the label set"),
        (write(tmp_path, "alien.csv", "text,label\nnot from this run,neutral\n"),
         "not in the run's data"),
        (write(tmp_path, "nolabel.csv", f"text,sentiment\n{text},neutral\n"),
         "no 'label' column"),
        (files[TASKS_JSON], "without annotations"),
        (write(tmp_path, "other.json", ls_export(tasks, truth(store), from_name="sentiment")),
         "choices under ['sentiment']"),
        (write(tmp_path, "image.json", [{"id": 1, "data": {"image": "https://x/1.jpg"},
                                         "annotations": []}]), "not a text project"),
        (write(tmp_path, "boxes.json", [{"id": 1, "data": {"text": text}, "annotations": [
            {"result": [{"from_name": "box", "to_name": "text", "type": "labels",
                         "value": {"start": 0, "end": 3, "labels": ["x"]}}]}]}]),
         "results of type ['labels']"),
        (write(tmp_path, "broken.json", "[{"), "not valid JSON"),
        (write(tmp_path, "pickle.pkl", "x"), "unknown format"),
        (tmp_path / "missing.csv", "not found"),
        (write(tmp_path, "two.csv", f"text,label\n{text},neutral\n{text},positive\n"),
         "conflicting labels"),
        (write(tmp_path, "multi.jsonl", json.dumps({"text": text, "label": ["a", "b"]})),
         "exactly one"),
    ]
    test_text = store.loc[store["split"] == "test", "text"].iloc[0]
    cases.append((write(tmp_path, "test.csv", f"text,label\n{test_text},neutral\n"),
                  "test texts"))
    for path, message in cases:
        with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]")) as e:
            read_anchor(path, LABELS, data=store)
        assert "\n" not in str(e.value), path


# -- the command -------------------------------------------------------------------------------

@pytest.fixture
def run_dir(tmp_path, tiny_bert_dir, toy_annotations):
    """A run folder: a store of toy texts with splits, and an untrained tiny classifier (the
    review needs probabilities, not good ones)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from llmdistill.annotate import write_annotations

    run = tmp_path / "run"
    store = toy_annotations(60, seed=5).assign(split=[SPLITS[i % 5] for i in range(60)])
    store.insert(2, "text_hash", store["text"].map(text_hash))
    write_annotations(store, run / "annotations.parquet", {"labels": LABELS})
    config = BertConfig.from_pretrained(str(tiny_bert_dir), num_labels=3,
                                        id2label=dict(enumerate(LABELS[::-1])),
                                        label2id={lab: i for i, lab in
                                                  enumerate(LABELS[::-1])})
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(run / "student")
    AutoTokenizer.from_pretrained(str(tiny_bert_dir)).save_pretrained(run / "student")
    return run


def test_review_command_writes_the_folder(run_dir, tmp_path):
    from typer.testing import CliRunner

    from llmdistill.cli import app

    result = CliRunner().invoke(app, ["review", str(run_dir), "--k", "7"])
    assert result.exit_code == 0, result.output
    folder = run_dir / "review"
    sheet = pd.read_csv(folder / REVIEW_CSV, dtype=str, keep_default_na=False)
    assert len(sheet) == 7 and set(sheet["split"]) == {"train"}
    assert "--anchor" in result.output and "labelstudio_tasks.json" in result.output
    probs = sheet[[f"student_prob_{lab}" for lab in LABELS]].astype(float).to_numpy()
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-3)
    sheet["label"] = sheet["suggestion"]
    sheet.to_csv(tmp_path / "round1.csv", index=False)
    again = CliRunner().invoke(app, ["review", str(run_dir), "--k", "7", "--out",
                                     str(tmp_path / "round2"), "--exclude",
                                     str(tmp_path / "round1.csv")])
    assert again.exit_code == 0, again.output
    second = pd.read_csv(tmp_path / "round2" / REVIEW_CSV, dtype=str)
    assert not set(second["id"]) & set(sheet["id"])


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmdistill.cli", *args], capture_output=True,
                          text=True, timeout=120)


def test_review_command_errors_are_one_line(run_dir, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "annotations.parquet").write_bytes((run_dir / "annotations.parquet").read_bytes())
    (run_dir / "review").mkdir()
    for args, message in [((str(run_dir), "--k", "0"), "at least 1"),
                          ((str(tmp_path / "nope"),), "no such run folder"),
                          ((str(tmp_path),), "no annotations.parquet"),
                          ((str(bare),), "no trained student"),
                          ((str(run_dir),), "already exists")]:
        r = cli("review", *args)
        assert r.returncode == 2, r.stderr
        assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
