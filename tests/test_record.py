"""student/record.py: llmdistill.json has one owner, and bad files give one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmdistill.errors import UsageError
from llmdistill.student.record import MANIFEST_FILE, StudentRecord


def record() -> StudentRecord:
    return StudentRecord.model_validate({
        "llmdistill_version": "0.1.0", "labels": ["a", "b"], "base_model": "tiny",
        "student_config": {"model": "minilm-l6", "max_length": 64}, "used": 10, "skipped": 1,
        "teacher": {"spec": "replay:x.csv#y"}, "run_key": {"k": 1}})


def test_save_and_load_round_trip_keeps_the_callers_manifest(tmp_path: Path) -> None:
    record().save(tmp_path)
    back = StudentRecord.load(tmp_path)
    assert back == record()
    assert back.model_name == "minilm-l6"
    assert back.result == {"used": 10, "skipped": 1}
    assert back.manifest == {"base_model": "tiny", "teacher": {"spec": "replay:x.csv#y"},
                             "run_key": {"k": 1}}
    assert json.loads((tmp_path / MANIFEST_FILE).read_text())["labels"] == ["a", "b"]


def test_a_folder_without_a_record_is_none_or_a_one_line_error(tmp_path: Path) -> None:
    assert StudentRecord.load_if_present(tmp_path) is None
    with pytest.raises(UsageError, match="llmdistill train"):
        StudentRecord.load(tmp_path)


@pytest.mark.parametrize("text", ["{not json", "[]", '{"labels": ["a"]}'])
def test_a_broken_record_names_the_file_and_the_fix(tmp_path: Path, text: str) -> None:
    (tmp_path / MANIFEST_FILE).write_text(text)
    with pytest.raises(UsageError, match="unreadable.*retrain") as e:
        StudentRecord.load(tmp_path)
    assert "\n" not in str(e.value)


def test_a_record_from_before_tasks_loads_as_single_label(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({"llmdistill_version": "0.1.0",
                                                      "labels": ["a", "b"]}))
    back = StudentRecord.load(tmp_path)
    assert back.task == "single_label" and back.thresholds is None
    assert back.threshold_array is None


def test_a_multilabel_record_keeps_its_thresholds_out_of_the_callers_manifest(
        tmp_path: Path) -> None:
    r = record()
    r.task, r.thresholds = "multi_label", [0.35, 0.6]
    r.save(tmp_path)
    back = StudentRecord.load(tmp_path)
    assert back.task == "multi_label" and back.thresholds == [0.35, 0.6]
    assert back.threshold_array.tolist() == [0.35, 0.6]
    assert "task" not in back.manifest and "thresholds" not in back.manifest
    assert back.summary()["thresholds"] == [0.35, 0.6]


@pytest.mark.parametrize("fields, message", [
    ({"task": "multi_label", "thresholds": [0.5, 1.5]}, "one value in \\[0, 1\\] per label"),
    ({"task": "multi_label", "thresholds": [-0.1, 0.5]}, "one value in \\[0, 1\\] per label"),
    ({"task": "multi_label", "thresholds": [0.5]}, "for 2 labels"),
    ({"task": "regression"}, "unknown task 'regression'"),
])
def test_bad_thresholds_or_an_unknown_task_are_a_one_line_error(tmp_path: Path, fields: dict,
                                                                 message: str) -> None:
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({"llmdistill_version": "0.1.0",
                                                      "labels": ["a", "b"], **fields}))
    with pytest.raises(UsageError, match=message) as e:
        StudentRecord.load(tmp_path)
    assert "\n" not in str(e.value) and MANIFEST_FILE in str(e.value)
