import time

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from llmdistill import evaluate
from llmdistill.config import EvaluateConfig
from llmdistill.errors import DataError
from llmdistill.evaluate import (
    NO_ANSWER,
    classification_metrics,
    collapse_warnings,
    compare,
    evaluate_predictions,
    measure_speed,
    model_size,
)

LABELS = ["negative", "neutral", "positive"]


def noisy(gold: np.ndarray, accuracy: float, seed: int = 0) -> np.ndarray:
    """Copy of gold with a share 1 - accuracy replaced by another label."""
    rng = np.random.default_rng(seed)
    pred = gold.copy()
    flip = rng.random(len(gold)) > accuracy
    pred[flip] = [LABELS[(LABELS.index(g) + 1) % 3] for g in gold[flip]]
    return pred


def gold_labels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).choice(np.array(LABELS, dtype=object), n)


def test_bootstrap_interval_contains_point_estimate_and_narrows_with_n():
    widths = []
    for n in (200, 3200):
        gold = gold_labels(n)
        m = classification_metrics(gold, noisy(gold, 0.7), LABELS, n_boot=500)
        for key in ("accuracy", "macro_f1"):
            assert m[key]["low"] <= m[key]["value"] <= m[key]["high"]
        widths.append(m["accuracy"]["high"] - m["accuracy"]["low"])
    assert widths[1] < widths[0] / 3  # width shrinks like 1/sqrt(n): 4x here


def test_bootstrap_formula_reproduces_sklearn_without_resampling(monkeypatch):
    gold = gold_labels(300)
    pred = noisy(gold, 0.6).astype(object)
    pred[:20] = None  # no answer
    pred[pred == "neutral"] = "positive"  # a class never predicted
    monkeypatch.setattr(evaluate, "_resample_weights", lambda n, b, s: iter([np.ones((1, n))]))
    accs, f1s = evaluate._bootstrap(gold, evaluate._as_pred(pred, LABELS), LABELS, 1, 0)
    as_str = np.where(pred == None, NO_ANSWER, pred)  # noqa: E711
    assert accs[0] == pytest.approx(np.mean(as_str == gold))
    expected = f1_score(gold, as_str, labels=LABELS, average="macro", zero_division=0)
    assert f1s[0] == pytest.approx(expected)


def test_per_class_scores_and_confusion_follow_label_order():
    gold = ["negative", "negative", "neutral", "positive"]
    pred = ["negative", "neutral", "neutral", "negative"]
    m = classification_metrics(gold, pred, LABELS, n_boot=50)
    assert m["n"] == 4 and m["accuracy"]["value"] == 0.5
    assert m["confusion"] == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]
    neg = m["per_class"]["negative"]
    assert (neg["precision"], neg["recall"], neg["support"]) == (0.5, 0.5, 2)
    assert (neg["predicted_share"], neg["gold_share"]) == (0.5, 0.5)
    assert m["per_class"]["positive"]["f1"] == 0.0


def test_bootstrap_is_fast_for_4000_rows_and_1000_resamples():
    gold = gold_labels(4000)
    t0 = time.perf_counter()
    classification_metrics(gold, noisy(gold, 0.65), LABELS, n_boot=1000)
    assert time.perf_counter() - t0 < 3.0


def test_mcnemar_detects_a_clearly_better_model():
    gold = gold_labels(300)
    good, bad = noisy(gold, 0.9, seed=1), noisy(gold, 0.6, seed=2)
    c = compare(good, bad, gold, LABELS, n_boot=200)
    assert c["verdict"] == "a_better" and c["p_value"] < 0.001 and c["b"] > c["c"]
    assert c["accuracy_difference"]["low"] > 0
    assert compare(bad, good, gold, LABELS, n_boot=200)["verdict"] == "b_better"


def test_mcnemar_finds_no_difference_for_identical_predictions():
    gold = gold_labels(300)
    pred = noisy(gold, 0.7)
    c = compare(pred, pred, gold, LABELS, n_boot=200)
    assert (c["b"], c["c"], c["p_value"], c["verdict"]) == (0, 0, 1.0, "no significant difference")
    assert c["kappa"] == pytest.approx(1.0) and c["agreement"] == 1.0
    assert c["accuracy_difference"] == {"value": 0.0, "low": 0.0, "high": 0.0}


def test_missing_answers_never_agree_and_appear_in_the_paired_confusion():
    gold = ["negative", "neutral", "positive"]
    c = compare([None, "neutral", "positive"], [None, "neutral", "negative"], gold, LABELS)
    assert c["agreement"] == pytest.approx(1 / 3)
    assert c["confusion_labels"][-1] == NO_ANSWER and c["confusion"][-1][-1] == 1


def test_collapse_warning_fires_for_underpredicted_class_only():
    gold = ["neutral"] * 40 + ["negative"] * 30 + ["positive"] * 30
    pred = ["neutral"] * 10 + ["negative"] * 30 + ["negative"] * 30 + ["positive"] * 30
    warnings = collapse_warnings(pred, gold, LABELS, ratio=0.6)
    assert len(warnings) == 1
    assert warnings[0].startswith("neutral: predicted for 10% of texts but 40% of gold")
    assert "(recall 0.25)" in warnings[0] and "collapsing" in warnings[0]
    assert collapse_warnings(gold, gold, LABELS, ratio=0.6) == []


def test_ece_is_zero_for_perfectly_calibrated_bins():
    # 10 texts at confidence 0.8 (8 right) and 10 at 0.6 (6 right): each bin is calibrated
    probs = np.array([[0.8, 0.2, 0.0]] * 10 + [[0.6, 0.4, 0.0]] * 10)
    gold = ["negative"] * 8 + ["neutral"] * 2 + ["negative"] * 6 + ["neutral"] * 4
    m = classification_metrics(gold, ["negative"] * 20, LABELS, probs=probs, n_boot=10)
    assert m["ece"] == pytest.approx(0.0)
    assert m["mean_confidence"] == pytest.approx(0.7)
    assert [b["count"] for b in m["reliability"]] == [10, 10]


def test_ece_is_the_confidence_gap_of_an_overconfident_model():
    probs = np.array([[0.9, 0.05, 0.05]] * 10)
    gold = ["negative"] * 5 + ["positive"] * 5
    m = classification_metrics(gold, ["negative"] * 10, LABELS, probs=probs, n_boot=10)
    assert m["ece"] == pytest.approx(0.4)


def _gold_df(n: int = 8) -> pd.DataFrame:
    gold = gold_labels(n, seed=3)
    return pd.DataFrame({"id": [f"t{i}" for i in range(n)], "text": ["x"] * n, "label": gold})


def test_teacher_rows_not_ok_count_as_errors():
    gold_df = _gold_df()
    teacher = gold_df[["id", "label"]].assign(status="ok")
    teacher.loc[0, ["status", "label"]] = ["error", None]
    teacher.loc[1, "status"] = "refused"  # a label but not ok: still an error
    teacher = teacher.drop(index=2).iloc[::-1]  # one row missing, order shuffled
    for lab in LABELS:
        teacher[f"prob_{lab}"] = (teacher["label"] == lab).astype(float)
    m = evaluate_predictions(gold_df, teacher, None, LABELS, EvaluateConfig(bootstrap=50), {})
    assert m["teacher"]["accuracy"]["value"] == pytest.approx(5 / 8)
    assert m["teacher"]["unanswered"] == 3 and m["teacher"]["calibrated_n"] == 5
    assert m["teacher_not_ok"] == {"count": 3,
                                   "by_status": {"error": 1, "refused": 1, "missing": 1}}
    assert any("3 of 8 texts got no usable answer" in w for w in m["warnings"])
    assert m["student"] is None and m["student_vs_teacher"] is None


def test_evaluate_predictions_compares_student_with_teacher_and_passes_info_through():
    gold_df = _gold_df(200)
    teacher = gold_df[["id", "label"]].assign(status="ok",
                                              label=noisy(gold_df["label"].to_numpy(), 0.7))
    probs = np.eye(3)[[LABELS.index(g) for g in gold_df["label"]]] * 0.8 + 0.2 / 3
    info = {"student": {"name": "s", "parameters": 10}}
    m = evaluate_predictions(gold_df, teacher, probs, LABELS, EvaluateConfig(bootstrap=100), info)
    assert m["student"]["accuracy"]["value"] == 1.0
    assert "ece" in m["student"] and "ece" not in m["teacher"]  # teacher gave no probabilities
    assert m["student_vs_teacher"]["verdict"] == "a_better"
    assert m["student_vs_teacher"]["a_model"] == "student"
    assert m["majority"]["accuracy"]["value"] == max(m["gold"]["shares"].values())
    assert m["info"] is info and m["settings"]["bootstrap"] == 100


def test_bad_inputs_are_rejected_with_data_errors():
    gold_df = _gold_df()
    cfg = EvaluateConfig(bootstrap=10)
    with pytest.raises(DataError, match="shape"):
        evaluate_predictions(gold_df, None, np.zeros((3, 3)), LABELS, cfg, {})
    with pytest.raises(DataError, match="not in the label set"):
        evaluate_predictions(gold_df.assign(label="joy"), None, None, LABELS, cfg, {})
    dup = pd.DataFrame({"id": ["t0", "t0"], "status": "ok", "label": "neutral"})
    with pytest.raises(DataError, match="repeat an id"):
        evaluate_predictions(gold_df, dup, None, LABELS, cfg, {})


def test_speed_measures_positive_throughput():
    calls = []

    def predict(texts: list[str], batch: int) -> np.ndarray:
        calls.append((len(texts), batch))
        return np.full((len(texts), 3), 1 / 3)

    s = measure_speed(predict, ["a tweet"] * 100, batch=32, latency_samples=7)
    assert s["throughput_texts_per_s"] > 0 and s["batch"] == 32 and s["n_texts"] == 100
    assert 0 <= s["latency_ms"]["p50"] <= s["latency_ms"]["p90"] <= s["latency_ms"]["p99"]
    assert calls.count((1, 1)) == 7 and calls.count((100, 32)) == 3
    assert s["hardware"]["cores"] >= 1 and s["hardware"]["torch_threads"] >= 1
    assert s["hardware"]["cpu"]


def test_model_size_counts_the_folders_weights_not_tokenizer_or_exports(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "model.onnx").write_bytes(b"x" * 500)
    (tmp_path / "tokenizer.json").write_bytes(b"x" * 9999)
    assert model_size(tmp_path) == {"bytes": 1000, "mb": 0.001, "files": 1}
    assert model_size(tmp_path / "onnx" / "model.onnx")["bytes"] == 500


# --- multi-label ---------------------------------------------------------------------------

def _sets(seed: int, n: int = 120, k: int = 4):
    rng = np.random.default_rng(seed)
    gold = rng.random((n, k)) < 0.35
    flip = rng.random((n, k)) < 0.2
    return gold, gold ^ flip, rng


@pytest.mark.parametrize("seed", range(4))
def test_set_metrics_match_sklearn(seed):
    from sklearn.metrics import accuracy_score, f1_score, hamming_loss

    from llmdistill.evaluate import set_metrics

    gold, pred, _ = _sets(seed)
    m = set_metrics(gold, pred, list("abcd"), n_boot=200)
    assert m["micro_f1"]["value"] == pytest.approx(f1_score(gold, pred, average="micro"))
    assert m["macro_f1"]["value"] == pytest.approx(
        f1_score(gold, pred, average="macro", zero_division=0))
    assert m["subset_accuracy"]["value"] == pytest.approx(accuracy_score(gold, pred))
    assert m["hamming_loss"]["value"] == pytest.approx(hamming_loss(gold, pred))
    for key in ("micro_f1", "macro_f1", "subset_accuracy", "hamming_loss"):
        assert m[key]["low"] <= m[key]["value"] <= m[key]["high"]
    assert m["cardinality"]["gold"] == pytest.approx(gold.sum(1).mean())


def test_set_metrics_of_a_perfect_model_are_exact():
    from llmdistill.evaluate import set_metrics

    gold, _, _ = _sets(0)
    m = set_metrics(gold, gold, list("abcd"), n_boot=100)
    assert m["micro_f1"] == {"value": 1.0, "low": 1.0, "high": 1.0}
    assert m["hamming_loss"]["value"] == 0.0


def test_compare_sets_is_antisymmetric_and_counts_discordant_texts():
    from llmdistill.evaluate import compare_sets

    gold, a, rng = _sets(3)
    b = gold ^ (rng.random(gold.shape) < 0.1)
    ab, ba = compare_sets(a, b, gold, n_boot=200), compare_sets(b, a, gold, n_boot=200)
    assert (ab["b"], ab["c"]) == (ba["c"], ba["b"])
    assert ab["micro_f1_difference"]["value"] == pytest.approx(
        -ba["micro_f1_difference"]["value"])
    assert ab["agreement"] == ba["agreement"]


def test_cardinality_warning_when_the_student_predicts_too_few_labels():
    from llmdistill.evaluate import cardinality_warnings

    gold, _, _ = _sets(1)
    empty = np.zeros_like(gold)
    warnings = cardinality_warnings(empty, gold, list("abcd"), 0.6)
    assert any("labels per text" in w for w in warnings)
    assert cardinality_warnings(gold, gold, list("abcd"), 0.6) == []


def test_evaluate_sets_counts_teacher_failures_as_empty_sets():
    from llmdistill.evaluate import evaluate_sets

    labels = ["x", "y", "z"]
    gold_df = pd.DataFrame({"id": ["1", "2", "3", "4"], "text": list("abcd"),
                            "label": ["x", "x|y", "z", "y|z"]})
    teacher = pd.DataFrame({"id": ["1", "2", "3", "4"], "status": ["ok", "ok", "error", "ok"],
                            "label": ["x", "x|y", None, "y"],
                            "prob_x": [0.9, 0.8, np.nan, 0.1], "prob_y": [0.1, 0.7, np.nan, 0.9],
                            "prob_z": [0.2, 0.1, np.nan, 0.3]})
    student = np.array([[0.9, 0.1, 0.1], [0.9, 0.9, 0.1], [0.1, 0.1, 0.9], [0.1, 0.9, 0.9]])
    m = evaluate_sets(gold_df, teacher, student, labels, EvaluateConfig(bootstrap=50), {})
    assert m["task"] == "multi_label"
    assert m["student"]["subset_accuracy"]["value"] == 1.0
    assert m["teacher"]["subset_accuracy"]["value"] == 0.5
    assert m["teacher_not_ok"]["count"] == 1
    assert m["student_vs_teacher"]["b"] == 2
