import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_lm import make_tiny_lm

from llmdistill import pipeline
from llmdistill.config import TeacherConfig
from llmdistill.errors import TeacherError
from llmdistill.teachers import (
    BACKENDS,
    EMBEDDED,
    Annotation,
    Teacher,
    TeacherRequest,
    load_teacher,
    parse_spec,
    register,
)
from llmdistill.teachers.base import file_fingerprint
from llmdistill.teachers.hf import HFTeacher, hf_teacher_id
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


# ---- the registry ----------------------------------------------------------------------------


class EchoTeacher(Teacher):
    """A backend defined in a test: uniform probabilities, records the request it was built from."""

    last: "EchoTeacher | None" = None

    def __init__(self, request: TeacherRequest) -> None:
        EchoTeacher.last = self
        self.request = request
        self.id = f"echo:{request.target}"
        self.labels = request.labels
        self.prompt_hash = "echo"
        self.info = {"backend": "echo"}

    def label_probs(self, texts: list[str]) -> list[Annotation]:
        n = len(self.labels)
        return [Annotation([1 / n] * n, "ok", 0.0) for _ in texts]


@pytest.fixture
def restore_registry():
    saved = dict(BACKENDS)
    yield
    BACKENDS.clear()
    BACKENDS.update(saved)


def test_a_backend_registered_in_one_line_is_parsed_and_loaded(restore_registry):
    register("echo", EchoTeacher, help="echo:NAME")
    assert parse_spec("echo:abc") == ("echo", "abc")
    teacher = load_teacher("echo:abc", LABELS, DEMOS, TeacherConfig(), None)
    assert isinstance(teacher, EchoTeacher) and teacher.id == "echo:abc"
    assert teacher.request.demos == DEMOS and teacher.request.dry_run is False
    assert teacher.prompt is None  # the protocol's default
    with pytest.raises(TeacherError, match="unknown teacher"):
        parse_spec("echo:")  # a prefix without a target


def test_unknown_teacher_message_lists_every_registered_backend(restore_registry):
    register("echo", EchoTeacher, help="echo:NAME")
    with pytest.raises(TeacherError, match="unknown teacher 'gpt5'") as err:
        parse_spec("gpt5")
    message = str(err.value)
    for form in [*EMBEDDED, *(b.help for b in BACKENDS.values())]:
        assert form in message
    assert {"llamacpp", "hf", "openai", "replay", "echo"} <= set(BACKENDS)


def test_a_registered_backend_check_runs_at_parse_time(restore_registry):
    def check(target: str) -> None:
        if not target.isdigit():
            raise TeacherError(f"echo target {target!r} must be a number")

    register("echo", EchoTeacher, help="echo:N", check=check)
    assert parse_spec("echo:7") == ("echo", "7")
    with pytest.raises(TeacherError, match="must be a number"):
        parse_spec("echo:x")


def test_a_broken_registration_names_the_fix(restore_registry):
    register("ghost", "llmdistill.teachers.no_such_module:from_spec", help="ghost:X")
    with pytest.raises(TeacherError, match="no module.*register"):
        load_teacher("ghost:x", LABELS, [], TeacherConfig(), None)
    with pytest.raises(TeacherError, match="lowercase"):
        register("Bad:Name", EchoTeacher, help="x")


def test_importing_teachers_imports_no_backend_library():
    code = ("import sys, llmdistill.teachers as t; t.parse_spec('hf:a/b'); "
            "t.parse_spec('openai:m@http://127.0.0.1:1/v1'); "
            "print(sorted(m for m in ('llama_cpp', 'torch', 'transformers', 'openai') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "[]"


def test_embedded_names_fall_back_to_transformers_without_llama_cpp(monkeypatch, tmp_path):
    import importlib.util

    from llmdistill import assets
    from llmdistill.teachers import hf, llamacpp

    gguf = tmp_path / "Packaged.Q4.gguf"
    gguf.write_bytes(b"GGUF")
    built = []
    monkeypatch.setattr(assets, "teacher_gguf", lambda name, cache_dir: gguf)
    monkeypatch.setattr(hf, "HFTeacher", lambda *a, **kw: built.append(("hf", a, kw)))
    monkeypatch.setattr(llamacpp, "LlamaCppTeacher", lambda *a, **kw: built.append(("ll", a)))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    load_teacher(EMBEDDED[-1], LABELS, [], TeacherConfig(), tmp_path)
    kind, args, kw = built.pop()
    assert kind == "hf" and args[0] == str(gguf)
    assert kw["teacher_id"] == "hf:Packaged.Q4.gguf"  # the id earlier versions used: caches stay
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "llama_cpp" else real(name, *a))
    load_teacher(EMBEDDED[-1], LABELS, [], TeacherConfig(), tmp_path)
    assert built.pop() == ("ll", (gguf, EMBEDDED[-1], LABELS, [], TeacherConfig()))


# ---- cache identity ----------------------------------------------------------------------------


def test_hf_ids_name_the_whole_model_not_its_basename(tmp_path):
    assert hf_teacher_id("org-a/model") == "hf:org-a/model"
    assert hf_teacher_id("org-a/model") != hf_teacher_id("org-b/model")
    a = make_tiny_lm(tmp_path / "a" / "model", seed=0)
    b = make_tiny_lm(tmp_path / "b" / "model", seed=1)
    ida, idb = hf_teacher_id(str(a)), hf_teacher_id(str(b))
    assert ida != idb and ida.startswith("hf:model@") and idb.startswith("hf:model@")
    moved = shutil.copytree(a, tmp_path / "moved" / "model")
    assert hf_teacher_id(str(moved)) == ida  # same files elsewhere: same cache entries


def test_a_loaded_hf_teacher_uses_that_id(tiny_lm):
    teacher = HFTeacher(str(tiny_lm), LABELS, [], TeacherConfig())
    assert teacher.id == hf_teacher_id(str(tiny_lm)) != f"hf:{Path(tiny_lm).name}"


def test_model_files_of_the_same_name_get_different_fingerprints(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    fa, fb = tmp_path / "a" / "m.gguf", tmp_path / "b" / "m.gguf"
    fa.write_bytes(b"GGUF" + bytes(3 << 20))
    fb.write_bytes(b"GGUF" + bytes(3 << 20) + b"x")
    assert file_fingerprint(fa) != file_fingerprint(fb)
    assert hf_teacher_id(str(fa)) != hf_teacher_id(str(fb))


# ---- dry runs ------------------------------------------------------------------------------------


def frame(*texts: str) -> pd.DataFrame:
    return pd.DataFrame({"id": [f"r{i}" for i in range(len(texts))], "text": list(texts)})


def test_estimate_of_a_local_teacher_costs_no_dollars(restore_registry):
    register("echo", EchoTeacher, help="echo:NAME")
    cfg = TeacherConfig(spec="echo:local")
    est = pipeline.estimate(frame("a", "b", "c"), LABELS, [], cfg, None)
    assert est["texts"] == 3 and est["dollars"] == 0.0 and "echo:local" in est["note"]
    assert EchoTeacher.last.request.dry_run is True


def test_estimate_of_an_api_teacher_sends_nothing():
    pytest.importorskip("openai")
    cfg = TeacherConfig(spec="openai:gpt-4o-mini@http://127.0.0.1:9/v1", n_demos=0)
    est = pipeline.estimate(frame("good flight", "bad bag"), LABELS, [], cfg, None)  # no server
    assert est["texts"] == 2 and est["input_tokens"] > 0 and est["dollars"] > 0


# ---- multi-label, long texts, many labels ------------------------------------------------------

ML_LABELS = ["good", "bad", "awful"]
ML_DEMOS = [{"id": "d1", "text": "i love it", "label": "good"},
            {"id": "d2", "text": "the flight was awful", "label": "bad|awful"}]


@pytest.fixture(scope="module")
def yes_no_lm(tmp_path_factory):
    """The tiny chat LM with yes/no (and the question's words) in its vocabulary."""
    import tiny_lm

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tiny_lm, "WORDS", [*tiny_lm.WORDS, "yes", "no", "Yes", "No", "does", "Does",
                                      "label", "apply", "to", "or", '"', "(", ")"])
        return make_tiny_lm(tmp_path_factory.mktemp("lm-yes-no"))


def multi_teacher(path, **cfg) -> HFTeacher:
    return HFTeacher(str(path), ML_LABELS, ML_DEMOS, TeacherConfig(**cfg), task="multi_label")


def full_forward_yes_probs(teacher: HFTeacher, text: str) -> np.ndarray:
    """Reference: for each label the whole prompt, question included, in one forward pass."""
    out = []
    for question in teacher.prompt.questions:
        ids = teacher._tokenize(teacher.prompt.prefix, special=True, bos=True)
        ids += teacher._tokenize(text + teacher.prompt.between, special=True)
        ids += teacher._tokenize(question + teacher.prompt.suffix, special=True)
        with torch.inference_mode():
            logp = torch.log_softmax(teacher.model(torch.tensor([ids])).logits[0, -1].double(), -1)
        yes, no = (np.exp(logp[sorted({s[0] for s in lt.sequences})].numpy()).sum()
                   for lt in teacher._yes_no)
        out.append(yes / (yes + no))
    return np.array(out)


def test_multi_label_scorer_gives_one_independent_probability_per_label(yes_no_lm):
    teacher = multi_teacher(yes_no_lm)
    assert teacher.task == "multi_label" and len(teacher.prompt.questions) == len(ML_LABELS)
    texts = ["the movie was great", "it was a bad day", "i hate this flight"]
    for text, ann in zip(texts, teacher.label_probs(texts), strict=True):
        assert ann.status == "ok" and len(ann.probs) == len(ML_LABELS)
        assert all(0.0 <= p <= 1.0 for p in ann.probs) and 0 < ann.label_mass <= 1
        np.testing.assert_allclose(ann.probs, full_forward_yes_probs(teacher, text), atol=1e-5)
    again = teacher.label_probs(texts[::-1])  # the cache is cut back: order does not matter
    assert [a.probs for a in again[::-1]] == [a.probs for a in teacher.label_probs(texts)]


def test_multi_label_evaluates_the_text_once_and_only_each_labels_question(yes_no_lm):
    teacher = multi_teacher(yes_no_lm)
    evaluated = []
    real = teacher._eval
    teacher._eval = lambda tokens: (evaluated.append(len(tokens)), real(tokens))[1]
    text = " ".join(["the flight was very good and i love it"] * 20)
    [ann] = teacher.label_probs([text])
    body = len(teacher._tokenize(text + teacher.prompt.between, special=True))
    questions = [len(q) for q in teacher._questions]
    assert ann.status == "ok" and not teacher.whole_sequences
    assert sum(evaluated) == body + sum(questions) == ann.tokens
    assert sum(evaluated) < 2 * body  # one text pass and k short questions, not k text passes
    assert evaluated.count(body) == 1


def test_multi_label_prompt_says_any_number_may_apply_and_has_its_own_hash(yes_no_lm):
    single = HFTeacher(str(yes_no_lm), ML_LABELS, [], TeacherConfig())
    multi = multi_teacher(yes_no_lm)
    asked = multi_teacher(yes_no_lm, label_question="Is it {label}? Answer yes or no.")
    assert len({single.prompt_hash, multi.prompt_hash, asked.prompt_hash}) == 3
    assert "Any number of these labels may apply" in multi.prompt.prefix
    assert "Any number" not in single.prompt.prefix
    assert "Labels: bad, awful" in multi.prompt.prefix  # a demo's label set
    assert multi.prompt.questions[0].startswith('Does the label "good"')
    assert single.prompt_hash == single.prompt.hash  # single-label: the hash of earlier versions


def test_a_label_question_with_stray_braces_is_a_one_line_error(yes_no_lm):
    with pytest.raises(TeacherError, match="label_question") as err:
        multi_teacher(yes_no_lm, label_question="Is {label} in {set}?")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("task", ["single_label", "multi_label"])
def test_truncated_is_set_exactly_when_a_text_has_more_than_max_text_tokens(yes_no_lm, task):
    cfg = TeacherConfig(max_text_tokens=8)
    teacher = HFTeacher(str(yes_no_lm), ML_LABELS, [], cfg, task=task)
    long_words = ["the", "flight", "was", "very", "good", "and", "i", "love", "it", "a", "lot"]
    short, exact, long = "i love it", " ".join(long_words[:8]), " ".join(long_words)
    a_short, a_exact, a_long = teacher.label_probs([short, exact, long])
    assert [a.truncated for a in (a_short, a_exact, a_long)] == [False, False, True]
    assert a_long.probs == a_exact.probs  # the teacher saw exactly its first 8 tokens
    untruncated = HFTeacher(str(yes_no_lm), ML_LABELS, [], TeacherConfig(), task=task)
    assert untruncated.prompt_hash != teacher.prompt_hash  # the limit is part of the identity
    [full] = untruncated.label_probs([long])
    assert not full.truncated and full.probs != a_long.probs


def test_a_text_cut_at_max_text_chars_is_marked_truncated(yes_no_lm):
    teacher = HFTeacher(str(yes_no_lm), ML_LABELS, [], TeacherConfig(max_text_chars=10))
    short, long = teacher.label_probs(["i love it", "i love it and the flight"])
    assert not short.truncated and long.truncated


def many_labels(n: int) -> list[str]:
    """n two-word labels whose first words collide (three first words for all of them)."""
    seconds = ["good", "bad", "fine", "great", "awful", "okay", "flight", "movie", "day", "word"]
    return [f"{a} {b}" for a in ("very", "the", "a") for b in seconds][:n]


def test_thirty_labels_with_colliding_first_tokens_are_scored(tiny_lm):
    labels = many_labels(30)
    teacher = HFTeacher(str(tiny_lm), labels, [], TeacherConfig())
    assert teacher.whole_sequences
    for ann in teacher.label_probs(["the flight was great", "i hate it"]):
        assert ann.status == "ok" and len(ann.probs) == 30
        assert abs(sum(ann.probs) - 1) < 1e-9 and min(ann.probs) > 0


def test_a_prompt_too_long_for_the_context_names_the_sizes_and_the_fix(tiny_lm):
    labels = many_labels(30)
    described = {lab: " ".join(["the flight was very good"] * 8) for lab in labels}
    cfg = TeacherConfig(label_descriptions=described, n_ctx=1024)
    with pytest.raises(TeacherError, match="n_ctx is 1024") as err:
        HFTeacher(str(tiny_lm), labels, [], cfg)
    message = str(err.value)
    assert "\n" not in message and "30 label descriptions" in message
    assert "label descriptions" in message and "n_demos" in message and "max_text_tokens" in message
    HFTeacher(str(tiny_lm), labels, [], cfg.model_copy(update={"n_ctx": 4096}))  # fits


def test_load_teacher_passes_the_task_and_refuses_a_backend_that_ignores_it(restore_registry,
                                                                            yes_no_lm):
    teacher = load_teacher(f"hf:{yes_no_lm}", ML_LABELS, [], TeacherConfig(), None,
                           task="multi_label")
    assert teacher.task == "multi_label" and len(teacher.label_probs(["good"])[0].probs) == 3
    register("echo", EchoTeacher, help="echo:NAME")
    with pytest.raises(TeacherError, match="answers single_label, not multi_label"):
        load_teacher("echo:x", LABELS, [], TeacherConfig(), None, task="multi_label")
    assert EchoTeacher.last.request.task == "multi_label"
    from llmdistill.errors import UsageError
    with pytest.raises(UsageError, match="unknown task"):
        load_teacher("echo:x", LABELS, [], TeacherConfig(), None, task="ranking")


def test_multi_label_demos_are_balanced_over_the_labels_they_hold():
    train = pd.DataFrame({"id": [f"r{i}" for i in range(6)], "text": [f"t{i}" for i in range(6)],
                          "label": ["good|bad", "bad", "awful", "good", "", "bad|awful"]})
    demos = pick_demos(train, ML_LABELS, 3, seed=1, task="multi_label")
    assert len({d["id"] for d in demos}) == len(demos) == 3
    held = {lab for d in demos for lab in d["label"].split("|")}
    assert set(ML_LABELS) <= held


@pytest.mark.integration
def test_llama_cpp_multi_label_reuses_the_text_cache_exactly():
    from llmdistill import assets
    from llmdistill.teachers.llamacpp import LlamaCppTeacher

    teacher = LlamaCppTeacher(assets.smollm2_gguf(), "smol", LABELS, [],
                              TeacherConfig(n_threads=2, n_demos=0), task="multi_label")
    try:
        texts = ["I hate mondays so much", "what a wonderful day :)"]
        for text, ann in zip(texts, teacher.label_probs(texts), strict=True):
            assert ann.status == "ok" and all(0 <= p <= 1 for p in ann.probs)
            body, _ = teacher._body(text, teacher.prompt.between)
            for question, got in zip(teacher._questions, ann.probs, strict=True):
                teacher._reset_to(0)  # reference: the whole prompt evaluated afresh
                logp = teacher._eval(teacher._prefix + body + question)
                yes, no = teacher._score(logp, 0, teacher._yes_no, teacher._yes_no_whole)
                assert got == pytest.approx(1 / (1 + np.exp(no - yes)), abs=1e-4)
    finally:
        teacher.close()
