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


# ---- multi-label, truncation, the cache's migration --------------------------------------------

import sqlite3  # noqa: E402

import numpy as np  # noqa: E402

from llmdistill.annotate import merge_teachers, set_aggregate, to_frame  # noqa: E402
from llmdistill.data import text_hash  # noqa: E402


class MultiTeacher(Teacher):
    """Multi-label by keyword: one independent probability per label; long texts truncated."""

    id, labels, prompt_hash, info, task = "multi", ["a", "b", "c"], "m1", {}, "multi_label"

    def label_probs(self, texts):
        return [Annotation(None, "error", 0.0, raw="boom") if "boom" in t else
                Annotation([0.9 if "x" in t else 0.1, 0.2, 0.7 if "z" in t else 0.3], "ok", 0.0,
                           0.8, truncated=len(t) > 10)
                for t in texts]


def test_a_multi_label_store_decides_its_label_set_per_label(tmp_path):
    cache = AnnotationCache(tmp_path / "c.sqlite")
    out = annotate(texts("x z", "x", "nothing", "boom"), MultiTeacher(), cache)
    assert out["label"].tolist()[:3] == ["a|c", "a", ""] and out["label"].isna().tolist() == [
        False, False, False, True]  # "" is the empty set, a missing answer is NA
    assert out["prob_a"].tolist()[:3] == [0.9, 0.9, 0.1]  # independent, not renormalised
    assert out["prob_b"].tolist()[:3] == [0.2, 0.2, 0.2]


def test_truncated_is_cached_stored_and_counted_in_the_manifest(tmp_path):
    cache = AnnotationCache(tmp_path / "c.sqlite")
    t = MultiTeacher()
    first = annotate(texts("short", "a rather long text"), t, cache)
    assert first["truncated"].tolist() == [False, True]
    cache.close()
    again = annotate(texts("short", "a rather long text"), CountingNothing(),
                     AnnotationCache(tmp_path / "c.sqlite"))
    assert again["truncated"].tolist() == [False, True]  # read back from the cache
    _, manifest = read_annotations(write_annotations(again, tmp_path / "a.parquet", {}))
    assert manifest["truncated"] == 1


class CountingNothing(MultiTeacher):
    """MultiTeacher's identity, but it must never be asked: everything is cached."""

    def label_probs(self, texts):
        raise AssertionError(f"relabelled {texts}")


OLD_SCHEMA = ("CREATE TABLE annotations (teacher TEXT, prompt_hash TEXT, text_hash TEXT, "
              "status TEXT, probs TEXT, label_mass REAL, seconds REAL, tokens INTEGER, raw TEXT, "
              "created REAL, PRIMARY KEY (teacher, prompt_hash, text_hash))")


def test_a_cache_written_before_truncation_existed_opens_and_reads_as_not_truncated(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(OLD_SCHEMA)
        db.execute("INSERT INTO annotations VALUES (?,?,?,?,?,?,?,?,?,?)",
                   ["fake", "p1", text_hash("bad day"), "ok", "[0.9, 0.1]", 1.0, 0.01, 3, None,
                    0.0])
    cache = AnnotationCache(path)
    [old] = cache.get("fake", "p1", [text_hash("bad day")]).values()
    assert old.status == "ok" and old.probs == [0.9, 0.1] and old.truncated is False
    cache.put("fake", "p1", "h2", Annotation([0.5, 0.5], "ok", 0.0, truncated=True))
    assert cache.get("fake", "p1", ["h2"])["h2"].truncated is True
    cache.close()
    AnnotationCache(path).close()  # a second opening finds the column already there
    t = CountingTeacher()
    out = annotate(texts("bad day"), t, AnnotationCache(path))
    assert t.seen == [] and out["truncated"].tolist() == [False]


def test_set_aggregate_and_merge_decide_multi_label_sets_single_label_stays_argmax():
    labels = ["a", "b", "c"]
    frame = texts("one", "two x", "a long third text")
    hashes = frame["text"].map(text_hash)
    t = MultiTeacher()
    table = to_frame(frame, hashes, dict(zip(hashes, t.label_probs(list(frame["text"])),
                                             strict=True)), t)
    other = table.assign(truncated=[False, False, False])
    merged = merge_teachers([table, other], labels, task="multi_label")
    assert merged["truncated"].tolist() == [False, False, True]  # any teacher truncated it
    assert merged["t1_label"].tolist() == table["label"].tolist()
    probs = np.array([[0.6, 0.6, 0.1], [0.1, 0.2, 0.3], [np.nan] * 3])
    out = set_aggregate(merged, probs, np.zeros(3), labels, task="multi_label")
    assert out["label"].tolist()[:2] == ["a|b", ""] and out["label"].isna().tolist()[2]
    assert out["status"].tolist()[:2] == ["ok", "ok"]
    single = set_aggregate(merged, np.array([[0.2, 0.5, 0.3]] * 3), np.zeros(3), labels)
    assert single["label"].tolist() == ["b", "b", "b"]
