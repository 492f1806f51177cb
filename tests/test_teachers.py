import numpy as np
import pytest
import torch
from tiny_lm import make_tiny_lm

from llmdistill.config import TeacherConfig
from llmdistill.errors import TeacherError
from llmdistill.teachers import load_teacher, parse_spec
from llmdistill.teachers.hf import HFTeacher
from llmdistill.teachers.prompts import label_variants, pick_demos, render_prompt

LABELS = ["negative", "neutral", "positive"]
DEMOS = [{"id": "d1", "text": "i love it", "label": "positive"},
         {"id": "d2", "text": "the flight was awful", "label": "negative"}]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    return make_tiny_lm(tmp_path_factory.mktemp("lm"))


def full_forward_label_probs(teacher: HFTeacher, text: str) -> np.ndarray:
    """Reference: the whole prompt in one forward pass, no cache reuse."""
    ids = teacher._tokenize(teacher.prompt.prefix, special=True, bos=True)
    ids += teacher._tokenize(text + teacher.prompt.suffix, special=True)
    with torch.inference_mode():
        logp = torch.log_softmax(teacher.model(torch.tensor([ids])).logits[0, -1].double(), -1)
    firsts = [sorted({s[0] for s in lt.sequences}) for lt in teacher._label_tokens]
    p = np.array([np.exp(logp[f].numpy()).sum() for f in firsts])
    return p / p.sum()


def test_cached_prefix_gives_the_same_probabilities_as_a_full_forward(tiny_lm):
    teacher = HFTeacher(str(tiny_lm), LABELS, DEMOS, TeacherConfig())
    texts = ["the movie was great", "it was a bad day", "i hate this flight"]
    for text, ann in zip(texts, teacher.label_probs(texts), strict=True):
        assert ann.status == "ok"
        np.testing.assert_allclose(ann.probs, full_forward_label_probs(teacher, text), atol=1e-5)


def test_label_probabilities_are_deterministic_and_sum_to_one(tiny_lm):
    teacher = HFTeacher(str(tiny_lm), LABELS, DEMOS, TeacherConfig())
    a = teacher.label_probs(["good day", "awful movie"])
    b = teacher.label_probs(["awful movie", "good day"])
    assert a[0].probs == b[1].probs and a[1].probs == b[0].probs
    assert all(abs(sum(x.probs) - 1) < 1e-9 and 0 < x.label_mass <= 1 for x in a)


def test_labels_with_colliding_first_tokens_are_scored_over_whole_sequences(tiny_lm):
    labels = ["very good", "very bad"]
    teacher = HFTeacher(str(tiny_lm), labels, [], TeacherConfig())
    assert teacher.whole_sequences
    [ann] = teacher.label_probs(["the flight"])
    assert ann.status == "ok" and abs(sum(ann.probs) - 1) < 1e-9
    # reference: every spelling's whole sequence scored by full forwards, pooled per label
    base = teacher._tokenize(teacher.prompt.prefix, special=True, bos=True)
    base += teacher._tokenize("the flight" + teacher.prompt.suffix, special=True)

    def seq_logp(seq):
        with torch.inference_mode():
            logits = teacher.model(torch.tensor([base + seq])).logits[0].double()
        logp = torch.log_softmax(logits, -1)
        return sum(float(logp[len(base) - 1 + k, t]) for k, t in enumerate(seq))

    pooled = [np.logaddexp.reduce([seq_logp(s) for s in lt.sequences])
              for lt in teacher._label_tokens]
    expected = np.exp(pooled - np.max(pooled))
    np.testing.assert_allclose(ann.probs, expected / expected.sum(), atol=1e-5)


def test_a_label_the_tokenizer_cannot_separate_is_refused(tiny_lm):
    with pytest.raises(TeacherError, match="same sequence"):  # unknown words: both → [UNK]
        HFTeacher(str(tiny_lm), ["zzz", "qqq"], [], TeacherConfig())


def test_prompt_is_cut_around_the_text_and_its_hash_tracks_the_demos():
    def apply(msgs):
        return "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in msgs) + "<assistant>"

    cfg = TeacherConfig()
    p1 = render_prompt(cfg, LABELS, DEMOS, apply)
    p2 = render_prompt(cfg, LABELS, DEMOS[:1], apply)
    assert p1.prefix.endswith("<user>Text: ") and p1.suffix == "</user><assistant>"
    assert "negative:" in p1.prefix and p1.hash != p2.hash


def test_demos_are_balanced_over_labels_and_seeded():
    import pandas as pd

    train = pd.DataFrame({"id": [f"r{i}" for i in range(30)], "text": [f"t{i}" for i in range(30)],
                          "label": LABELS * 10})
    d1 = pick_demos(train, LABELS, 6, seed=1)
    assert sorted(d["label"] for d in d1) == sorted(LABELS * 2)
    assert d1 == pick_demos(train, LABELS, 6, seed=1) != pick_demos(train, LABELS, 6, seed=2)


def test_label_variants_pool_case_and_leading_space():
    v = label_variants("Neutral")
    assert {"neutral", "Neutral", "NEUTRAL", " neutral", " Neutral"} <= set(v)


def test_unknown_teacher_spec_is_a_usage_error():
    with pytest.raises(TeacherError, match="unknown teacher"):
        parse_spec("gpt5")
    with pytest.raises(TeacherError, match="not found"):
        load_teacher("llamacpp:/nonexistent.gguf", LABELS, [], TeacherConfig(), None)
