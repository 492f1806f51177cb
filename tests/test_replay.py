"""The replay teacher: labels bought elsewhere go through the same annotation store and report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmdistill.annotate import AnnotationCache, annotate, read_annotations, write_annotations
from llmdistill.config import TeacherConfig
from llmdistill.data import read_table
from llmdistill.errors import TeacherError
from llmdistill.teachers import load_teacher, parse_spec
from llmdistill.teachers.replay import NOT_IN_FILE, ReplayTeacher, parse_replay_target

LABELS = ["negative", "neutral", "positive"]
SEED_TRAIN = Path(__file__).resolve().parents[2] / "shared" / "seed" / "train.csv"


@pytest.fixture
def labelled_csv(tmp_path: Path) -> Path:
    rows = [
        {"id": "a", "text": "  I love   this ", "teacher": "Positive ", "why": "love",
         "p_neg": "0.1", "p_neu": "0.1", "p_pos": "0.6"},
        {"id": "b", "text": "awful day", "teacher": "NEGATIVE", "why": "awful",
         "p_neg": "2", "p_neu": "1", "p_pos": "1"},
        {"id": "c", "text": "the bus is at 5", "teacher": "neutral", "why": "",
         "p_neg": "0", "p_neu": "1", "p_pos": "0"},
        {"id": "d", "text": "meh whatever", "teacher": "mixed", "why": "both",
         "p_neg": "0.3", "p_neu": "0.4", "p_pos": "0.3"},
        {"id": "e", "text": "so so", "teacher": "neutral.", "why": "",
         "p_neg": "0", "p_neu": "1", "p_pos": "0"},
        {"id": "f", "text": "twice said", "teacher": "positive", "why": "",
         "p_neg": "0", "p_neu": "0", "p_pos": "1"},
        {"id": "g", "text": "twice  said", "teacher": "negative", "why": "",
         "p_neg": "1", "p_neu": "0", "p_pos": "0"},
        {"id": "h", "text": "broken probs", "teacher": "neutral", "why": "",
         "p_neg": "x", "p_neu": "1", "p_pos": "0"},
    ]
    path = tmp_path / "bought.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_spec_parses_path_column_and_options() -> None:
    spec = parse_replay_target("dir/f.csv#label?probs=a, b,c&rationale=why&text=tweet")
    assert (spec.path, spec.label_column) == (Path("dir/f.csv"), "label")
    assert spec.prob_columns == ("a", "b", "c")
    assert (spec.rationale_column, spec.text_column) == ("why", "tweet")
    assert parse_spec("replay:x.csv#y") == ("replay", "x.csv#y")
    for bad in ("replay:x.csv", "replay:x.csv#", "replay:x.csv#y?colour=red",
                "replay:x.csv#y?probs=a&probs=b"):
        with pytest.raises(TeacherError, match="replay"):
            parse_spec(bad)


def test_labels_are_matched_up_to_case_and_whitespace_only(labelled_csv: Path) -> None:
    teacher = ReplayTeacher(f"{labelled_csv}#teacher?rationale=why", LABELS)
    texts = ["I love this", "awful day", "the bus is at 5", "meh whatever", "so so",
             "never seen"]
    got = teacher.label_probs(texts)
    assert [a.status for a in got] == ["ok", "ok", "ok", "off_label", "off_label", "error"]
    assert got[0].probs == [0.0, 0.0, 1.0] and got[1].probs == [1.0, 0.0, 0.0]
    assert got[0].raw == "love" and got[2].raw == ""  # the rationale, kept verbatim
    assert got[3].raw == "mixed" and got[4].raw == "neutral."  # the raw answer, never coerced
    assert got[3].probs is None and got[5].raw == NOT_IN_FILE


def test_probability_columns_are_normalised_and_checked(labelled_csv: Path) -> None:
    teacher = ReplayTeacher(f"{labelled_csv}#teacher?probs=p_neg,p_neu,p_pos", LABELS)
    a, b, h = teacher.label_probs(["I love this", "awful day", "broken probs"])
    np.testing.assert_allclose(a.probs, [0.125, 0.125, 0.75])
    np.testing.assert_allclose(b.probs, [0.5, 0.25, 0.25])
    assert h.status == "unparseable" and "bad probabilities" in h.raw
    with pytest.raises(TeacherError, match="one per label"):
        ReplayTeacher(f"{labelled_csv}#teacher?probs=p_neg,p_pos", LABELS)


def test_contradicting_rows_for_one_text_are_an_error(labelled_csv: Path) -> None:
    teacher = ReplayTeacher(f"{labelled_csv}#teacher", LABELS)
    [ann] = teacher.label_probs(["twice said"])  # two rows once whitespace is cleaned
    assert ann.status == "error" and "conflicting" in ann.raw
    assert teacher.info["conflicting_texts"] == 1


def test_teacher_id_carries_the_file_content_hash(labelled_csv: Path, tmp_path: Path) -> None:
    first = ReplayTeacher(f"{labelled_csv}#teacher", LABELS).id
    labelled_csv.write_text(labelled_csv.read_text().replace("awful", "dreadful"))
    second = ReplayTeacher(f"{labelled_csv}#teacher", LABELS).id
    assert first != second and first.startswith("replay:bought.csv#teacher@")


def test_bad_files_and_columns_name_the_fix(labelled_csv: Path, tmp_path: Path) -> None:
    with pytest.raises(TeacherError, match="not found"):
        ReplayTeacher(f"{tmp_path / 'nope.csv'}#teacher", LABELS)
    with pytest.raises(TeacherError, match="no column.*nope"):
        ReplayTeacher(f"{labelled_csv}#nope", LABELS)


def test_replay_goes_through_the_annotation_store(labelled_csv: Path, tmp_path: Path) -> None:
    frame = read_table(labelled_csv, label_column=None)
    teacher = load_teacher(f"replay:{labelled_csv}#teacher?rationale=why", LABELS, [],
                           TeacherConfig(), tmp_path)
    cache = AnnotationCache(tmp_path / "cache.sqlite")
    try:
        table = annotate(frame, teacher, cache)
    finally:
        cache.close()
    assert table.set_index("id").loc["a", "label"] == "positive"
    assert table.set_index("id").loc["a", "raw"] == "love"
    counts = table["status"].value_counts().to_dict()
    assert counts == {"ok": 4, "off_label": 2, "error": 2}
    path = write_annotations(table, tmp_path / "ann.parquet", {"teacher": teacher.info})
    back, manifest = read_annotations(path)
    assert manifest["teacher"]["backend"] == "replay" and len(back) == len(frame)


@pytest.mark.skipif(not SEED_TRAIN.exists(), reason="the seed's data is not checked out")
def test_the_seed_csv_replays_completely() -> None:
    frame = read_table(SEED_TRAIN, label_column="label_text")
    teacher = ReplayTeacher(f"{SEED_TRAIN}#Llama_405B_label_text?rationale=Llama_405B_reason",
                            LABELS)
    anns = teacher.label_probs(frame["text"].tolist())
    assert {a.status for a in anns} == {"ok"}
    agree = np.mean([LABELS[int(np.argmax(a.probs))] == g
                     for a, g in zip(anns, frame["label"], strict=True)])
    assert agree == pytest.approx(0.644, abs=0.001)  # the seed README's figure
    assert teacher.info["statuses"] == {"ok": 4988}  # 4,992 rows, 4 repeated texts


def test_replay_has_no_prompt_and_dry_runs_without_special_cases(labelled_csv: Path,
                                                                 tmp_path: Path) -> None:
    from llmdistill import pipeline

    cfg = TeacherConfig(spec=f"replay:{labelled_csv}#teacher", n_demos=0)
    frame = read_table(labelled_csv, label_column=None)
    est = pipeline.estimate(frame, LABELS, [], cfg, tmp_path)
    assert est["dollars"] == 0.0 and est["in_file"] == len(frame)
    table, manifest = pipeline.annotate_texts(frame, LABELS, [], cfg, tmp_path)
    assert len(table) == len(frame)
    assert manifest["prompt"]["prefix"] is None and manifest["prompt"]["suffix"] is None
    assert manifest["teacher"]["backend"] == "replay"


# ---- multi-label -------------------------------------------------------------------------------

TAGS = ["billing", "bug", "praise"]


@pytest.fixture
def tagged_csv(tmp_path: Path) -> Path:
    rows = [
        {"text": "charged twice and the app crashes", "tags": "billing|bug", "p_b": 0.9,
         "p_g": 0.8, "p_p": 0.1},
        {"text": "love it", "tags": '["Praise"]', "p_b": 0.0, "p_g": 0.1, "p_p": 0.95},
        {"text": "just a question", "tags": "", "p_b": 0.2, "p_g": 0.2, "p_p": 0.2},
        {"text": "empty list", "tags": "[]", "p_b": 0.1, "p_g": 0.1, "p_p": 0.1},
        {"text": "something else", "tags": "bug|shipping", "p_b": 0.1, "p_g": 0.9, "p_p": 0.1},
        {"text": "broken json", "tags": '["bug", ', "p_b": 0.1, "p_g": 0.9, "p_p": 0.1},
        {"text": "bad probability", "tags": "bug", "p_b": 0.1, "p_g": 1.5, "p_p": 0.1},
    ]
    path = tmp_path / "tags.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_a_replayed_label_list_gives_one_or_zero_per_label(tagged_csv: Path) -> None:
    teacher = ReplayTeacher(f"{tagged_csv}#tags", TAGS, task="multi_label")
    got = teacher.label_probs(["charged twice and the app crashes", "love it", "just a question",
                               "empty list", "something else", "broken json"])
    assert [a.status for a in got] == ["ok", "ok", "ok", "ok", "off_label", "unparseable"]
    assert got[0].probs == [1.0, 1.0, 0.0] and got[1].probs == [0.0, 0.0, 1.0]
    assert got[2].probs == got[3].probs == [0.0, 0.0, 0.0]  # an empty cell is the empty set
    assert got[4].raw == "bug|shipping" and got[4].probs is None  # the raw answer, kept
    assert teacher.task == "multi_label"


def test_replayed_multi_label_probabilities_are_per_label_not_normalised(tagged_csv: Path) -> None:
    teacher = ReplayTeacher(f"{tagged_csv}#tags?probs=p_b,p_g,p_p", TAGS, task="multi_label")
    a, b, bad = teacher.label_probs(["charged twice and the app crashes", "love it",
                                     "bad probability"])
    np.testing.assert_allclose(a.probs, [0.9, 0.8, 0.1])
    np.testing.assert_allclose(b.probs, [0.0, 0.1, 0.95])
    assert bad.status == "unparseable" and "[0, 1]" in bad.raw


def test_a_parquet_list_column_replays_and_the_task_is_part_of_the_identity(
        tmp_path: Path, tagged_csv: Path) -> None:
    path = tmp_path / "tags.parquet"
    pd.DataFrame({"text": ["crash", "thanks"], "tags": [["bug"], ["praise", "billing"]]}
                 ).to_parquet(path)
    teacher = load_teacher(f"replay:{path}#tags", TAGS, [], TeacherConfig(), tmp_path,
                           task="multi_label")
    crash, thanks = teacher.label_probs(["crash", "thanks"])
    assert crash.probs == [0.0, 1.0, 0.0] and thanks.probs == [1.0, 0.0, 1.0]
    single = ReplayTeacher(f"{tagged_csv}#tags", TAGS)
    multi = ReplayTeacher(f"{tagged_csv}#tags", TAGS, task="multi_label")
    assert single.prompt_hash != multi.prompt_hash and single.id == multi.id
    table = annotate(read_table(path, label_column=None), teacher,
                     AnnotationCache(tmp_path / "c.sqlite"))
    assert table["label"].tolist() == ["bug", "billing|praise"]  # canonical: label-set order
