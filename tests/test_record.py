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
