import pandas as pd
import pytest

from llmdistill.annotate import AnnotationCache, annotate, read_annotations, write_annotations
from llmdistill.errors import UsageError
from llmdistill.teachers import Annotation, Teacher


class CountingTeacher(Teacher):
    """Scores by keyword; fails on texts containing 'boom'; counts every text it sees."""

    id, labels, prompt_hash, info = "fake", ["neg", "pos"], "p1", {}

    def __init__(self):
        self.seen: list[str] = []

    def label_probs(self, texts):
        self.seen += texts
        return [Annotation(None, "error", 0.0, raw="boom") if "boom" in t else
                Annotation([0.9, 0.1] if "bad" in t else [0.2, 0.8], "ok", 0.01, 1.0)
                for t in texts]


def texts(*ts):
    return pd.DataFrame({"id": [f"r{i}" for i in range(len(ts))], "text": list(ts)})


def test_rerun_labels_nothing_already_cached(tmp_path):
    cache = AnnotationCache(tmp_path / "c.sqlite")
    t = CountingTeacher()
    annotate(texts("bad day", "good day"), t, cache)
    out = annotate(texts("bad day", "good day", "new good"), t, cache)
    assert t.seen == ["bad day", "good day", "new good"]
    assert out["label"].tolist() == ["neg", "pos", "pos"]
    assert out["prob_neg"].tolist() == [0.9, 0.2, 0.2]


def test_failures_are_recorded_not_dropped_and_retried_on_request(tmp_path):
    cache = AnnotationCache(tmp_path / "c.sqlite")
    t = CountingTeacher()
    out = annotate(texts("boom", "good"), t, cache)
    assert out["status"].tolist() == ["error", "ok"] and out["label"].isna().tolist() == [True,
                                                                                            False]
    annotate(texts("boom", "good"), t, cache)
    assert t.seen.count("boom") == 1
    annotate(texts("boom", "good"), t, cache, retry_failed=True)
    assert t.seen.count("boom") == 2 and t.seen.count("good") == 1


def test_duplicate_texts_are_labelled_once_and_keep_row_order(tmp_path):
    t = CountingTeacher()
    out = annotate(texts("good", "bad", "good"), t, AnnotationCache(tmp_path / "c.sqlite"))
    assert t.seen == ["good", "bad"] and out["id"].tolist() == ["r0", "r1", "r2"]


def test_store_roundtrips_with_manifest_and_refuses_to_overwrite(tmp_path):
    out = annotate(texts("good", "bad"), CountingTeacher(), AnnotationCache(tmp_path / "c.db"))
    path = write_annotations(out, tmp_path / "a.parquet", {"labels": ["neg", "pos"]})
    df, manifest = read_annotations(path)
    assert manifest["labels"] == ["neg", "pos"] and manifest["status_counts"] == {"ok": 2}
    pd.testing.assert_frame_equal(df, out)
    with pytest.raises(UsageError, match="already exists"):
        write_annotations(out, path, {})
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_rationale_comes_from_a_reasoning_record_or_replayed_text_and_nothing_else() -> None:
    import json as _json

    from llmdistill.annotate import rationale_of

    assert rationale_of(_json.dumps({"method": "reasoning", "reasons": ["sad words", "x"]})) \
        == "sad words"
    assert rationale_of(_json.dumps({"method": "logprobs", "top": []})) is None
    assert rationale_of("the author is happy") == "the author is happy"
    assert rationale_of(None) is None and rationale_of("") is None
