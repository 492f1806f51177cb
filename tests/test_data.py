import pandas as pd
import pytest

from llmdistill.config import DataConfig
from llmdistill.data import clean_text, load_dataset, read_table, resolve, split_frame
from llmdistill.errors import DataError


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
