"""The one source of defaults: pydantic models of a run, read from YAML, overridden by flags."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from llmdistill.errors import UsageError

TWEET_LABELS: dict[str, str] = {
    "negative": "the author expresses a negative feeling or opinion: complaint, sadness, anger",
    "neutral": "no clear positive or negative feeling: facts, news, questions, plain statements",
    "positive": "the author expresses a positive feeling or opinion: joy, praise, gratitude",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    """Where the texts come from and how they are split."""

    source: str = Field("tweets", description="embedded dataset name or a CSV/JSONL/Parquet path")
    text_column: str = "text"
    label_column: str = "label"
    labels: list[str] | None = Field(None, description="label set; inferred from gold if unset")
    task: Literal["auto", "single_label", "multi_label"] = Field(
        "auto", description="single_label: one label per text; multi_label: any subset (gold "
                            "cells are lists or `a|b` strings); auto: multi_label when a gold "
                            "cell holds a list or a `|`, else single_label")
    allow_empty_labels: bool = Field(False, description="multi_label: a text may have no label")
    split_seed: int = 13
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    # The demo's sizes: its first report within 30 minutes of a fresh machine (set-up and 894
    # teacher calls at ≈ 1 s each on 2 cores); `full()` is the larger run.
    max_train: int | None = Field(500, description="seeded stratified subsample of train")
    max_validation: int | None = 100
    max_test: int | None = 300


class ApiConfig(_Strict):
    """How an `openai:MODEL@BASE_URL` teacher is called: politeness, method, price, budget."""

    api_key_env: str = Field("OPENAI_API_KEY", description="env var holding the key (never stored)")
    mode: str = Field("logprobs", pattern="^(logprobs|votes|reasoning)$",
                      description="logprobs: one token's top logprobs; votes: k samples; "
                                  "reasoning: rationale then a JSON label")
    top_logprobs: int = Field(20, ge=1, le=20, description="servers cap it at 20")
    samples: int = Field(5, ge=1, description="k for votes and reasoning self-consistency")
    sample_temperature: float = Field(0.7, gt=0.0)
    reasoning_max_tokens: int = 200
    concurrency: int = Field(16, ge=1)
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    max_retries: int = Field(6, ge=0, description="on 429, 5xx, timeouts, dropped connections")
    timeout: float = Field(60.0, gt=0, description="seconds per request")
    price_input_per_million: float | None = Field(None, description="$; else the price table")
    price_output_per_million: float | None = None
    max_cost: float | None = Field(None, description="$: stop cleanly when reached; rerun resumes")


class TeacherConfig(_Strict):
    """The LLM that labels: which model, and the prompt it sees."""

    spec: str = Field("qwen2.5-1.5b",
                      description="embedded name or BACKEND:TARGET (llamacpp:, hf:, openai:, "
                                  "replay:; see teachers/__init__.py)")
    task: str = "Classify the sentiment that the author of the tweet expresses."
    label_descriptions: dict[str, str] = Field(default_factory=lambda: dict(TWEET_LABELS))
    n_demos: int = Field(6, description="few-shot demonstrations from the training split")
    demo_seed: int = 7
    n_ctx: int = 2048
    n_threads: int | None = Field(None, description="CPU threads; all cores if unset")
    max_text_chars: int = 1000
    max_text_tokens: int | None = Field(
        None, ge=8, description="local teachers see at most this many tokens of a text (long "
                                "documents); truncated texts are counted in the ledger")
    label_question: str = Field(
        'Does the label "{label}" ({description}) apply to this text? Answer yes or no.',
        description="multi_label: the question asked once per label after the text "
                    "({label}, {description})")
    api: ApiConfig = Field(default_factory=ApiConfig)


class LoraConfig(_Strict):
    """LoRA adapters (peft) on the student: only they and the classification head train."""

    r: int = Field(8, ge=1, description="adapter rank")
    alpha: int = Field(16, ge=1, description="scaling numerator (scale = alpha / r)")
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | None = Field(
        None, description="module names to adapt; None: peft's default for the architecture")


class FeatureLossConfig(_Strict):
    """Feature distillation: align the student's pooled representation to the teacher's hidden
    state (a learned projection maps one onto the other)."""

    weight: float = Field(0.0, ge=0.0, description="weight of the auxiliary loss; 0: off")
    kind: Literal["cosine", "mse"] = Field("cosine", description="distance after projection")
    standardize: bool = Field(
        True, description="centre and scale each dimension of the teacher's states over the "
                          "training rows first: an LLM's mean-pooled states share a few huge "
                          "dimensions (SmolLM2-135M: two 40–60× the median; tweets' states at "
                          "cosine 0.83 to each other), which a raw cosine mostly asks to copy")
    teacher: str | None = Field(None, description="model giving the hidden states (embedded "
                                                  "GGUF, llamacpp:PATH, openai:MODEL@URL); "
                                                  "None: the run's first teacher")


class TfidfConfig(_Strict):
    """The `tfidf` student: word and character n-gram TF-IDF into logistic regression."""

    word_ngrams: int = Field(2, ge=1, description="word n-grams up to this n")
    char_ngrams: int = Field(5, ge=0, description="character n-grams (2..n) too; 0: none")
    max_features: int = Field(100_000, ge=1, description="per analyzer")


class StaticConfig(_Strict):
    """The `model2vec` student: static token embeddings distilled from an encoder (Model2Vec),
    mean-pooled, into logistic regression."""

    base: str = Field("minilm-l6", description="encoder to distil (embedded name or folder), "
                                               "or a Model2Vec folder to use as it is")
    pca_dims: int | None = Field(256, ge=2, description="embedding width after PCA; None: keep")


class StudentConfig(_Strict):
    """The student model and its distillation recipe."""

    model: str = Field("minilm-l6",
                       description="embedded name (minilm-l6, smollm2-135m), HF id or local "
                                   "folder, or a kind: tfidf, model2vec")
    lora: LoraConfig | None = Field(None, description="train LoRA adapters instead of all "
                                                      "weights; saved merged into a plain folder")
    feature_loss: FeatureLossConfig = Field(default_factory=FeatureLossConfig)
    rationale_weight: float = Field(
        0.0, ge=0.0, description="the teacher's rationales as extra training texts with its "
                                 "label, at this loss weight; 0: off")
    tfidf: TfidfConfig = Field(default_factory=TfidfConfig)
    static: StaticConfig = Field(default_factory=StaticConfig)
    head_c: list[float] = Field(
        default_factory=lambda: [0.25, 1.0, 4.0, 16.0],
        description="inverse regularisation strengths tried for the tfidf/model2vec head; the "
                    "one agreeing most with the teacher on validation is kept")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of the soft (KL) term")
    temperature: float = Field(2.0, gt=0.0)
    epochs: int = Field(6, ge=1)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(1e-4, gt=0.0)
    weight_decay: float = Field(0.01, ge=0.0)
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0, description="share of steps warming up")
    max_length: int = Field(128, ge=8, description="tokens per text (per window with "
                                                   "long_text: windows)")
    long_text: Literal["truncate", "windows"] = Field(
        "truncate", description="a text longer than max_length: keep its first max_length "
                                "tokens, or split it into overlapping windows whose logits are "
                                "pooled (training and prediction alike)")
    window_stride: int = Field(96, ge=1, description="tokens between window starts")
    max_windows: int = Field(8, ge=1, description="windows per text at most (the rest is cut)")
    window_pool: Literal["mean", "max"] = Field("mean", description="how windows' logits pool")
    thresholds: Literal["tuned", "fixed"] = Field(
        "tuned", description="multi_label: per-label thresholds tuned on validation for F1 "
                             "against the teacher, or `threshold` for every label")
    threshold: float = Field(0.5, ge=0.0, le=1.0,
                             description="multi_label: the decision threshold when fixed")
    seed: int = 42
    early_stopping_patience: int = Field(2, ge=1, description="epochs without a better agreement")
    threads: int | None = Field(None, ge=1,
                                description="torch CPU threads; torch's default if unset")
    inference_batch_size: int = Field(64, ge=1, description="texts per forward pass when "
                                                              "predicting")
    validation_fraction: float = Field(0.1, gt=0.0, lt=1.0,
                                       description="share of annotations held out to pick the "
                                                   "epoch when they carry no split column")
    # Noise-aware distillation (docs/distillation.md says which data chose each default).
    anchor_size: int = Field(200, ge=0,
                             description="gold-labelled training rows that measure the teacher's "
                                         "confusion; 0: none")
    anchor_targets: Literal["teacher", "gold"] = Field(
        "gold", description="what the anchor rows train on: their gold label (one-hot), or the "
                            "teacher's probabilities (chosen on the seed's dev split)")
    prior_correction: bool = Field(True, description="shift logits by log gold prior (anchor) "
                                                     "− log student prior; folded into the bias")
    forward_correction: bool = Field(False, description="train softmax(logits) @ confusion "
                                                        "against the teacher's labels")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0,
                                   description="mix the targets with uniform by this much")
    confidence_weighting: bool = Field(False, description="weight each text by the teacher's "
                                                          "top probability")
    class_weights: Literal["none", "balanced", "anchor"] = Field(
        "balanced", description="per-class loss weights by the teacher's label: balanced = "
                                "inverse frequency; anchor = gold prior / teacher prior")


class LabelModelConfig(_Strict):
    """How several teachers' answers (or one teacher's) become one soft label per text.

    Calibration and every method but `mean` without calibration fit on the anchor's gold
    (`student.anchor_size` gold training rows, or `--anchor FILE`); docs/distillation.md says
    which to use when.
    """

    method: Literal["auto", "first", "mean", "dawid_skene", "stacked", "snorkel"] = Field(
        "auto", description="auto: several teachers → stacked (mean without an anchor), one "
                            "teacher → first with a temperature (the benchmarks' choices on "
                            "dev); "
                            "first: the first teacher alone; mean: mean of the calibrated "
                            "probabilities; dawid_skene: EM over the teachers' answers with "
                            "confusion matrices started from the anchor; stacked: logistic "
                            "regression on the teachers' log-probabilities fitted on the anchor; "
                            "snorkel: snorkel's LabelModel on the teachers' votes (≥ 3 teachers)")
    calibration: Literal["none", "temperature", "temperature_bias"] = Field(
        "temperature_bias", description="per teacher, fitted on the anchor before aggregating "
                                        "(method auto with one teacher: temperature)")
    folds: int = Field(5, ge=2, description="cross-validation folds for `stacked` (its C and the "
                                            "anchor rows' own out-of-fold labels)")
    max_iter: int = Field(100, ge=1, description="EM iterations for dawid_skene")


class ConfidentConfig(_Strict):
    """Confident learning: likely teacher errors found from out-of-fold student probabilities."""

    action: Literal["off", "drop", "downweight"] = Field(
        "off", description="what happens to a text flagged as a likely teacher error")
    weight: float = Field(0.3, ge=0.0, le=1.0, description="loss weight of a flagged text "
                                                           "(downweight)")
    folds: int = Field(5, ge=2, description="folds of the out-of-fold probabilities")


class SelfTrainingConfig(_Strict):
    """Self-training: the student pseudo-labels unlabelled pool texts; a new student trains on
    teacher labels plus the confident pseudo-labels."""

    rounds: int = Field(0, ge=0, description="0: off")
    pool: str | None = Field(None, description="unlabelled texts (file or embedded split); "
                                               "None: the rest of the data's train split")
    max_pool: int | None = Field(5000, ge=1, description="at most this many pool texts")
    threshold: float = Field(0.9, ge=0.0, le=1.0,
                             description="a pseudo-label is kept when its top probability ≥ this")
    weight: float = Field(0.5, ge=0.0, le=1.0, description="loss weight of a pseudo-label")
    source: Literal["student", "ensemble"] = Field(
        "student", description="who pseudo-labels: the student, or the mean of student and "
                               "teacher where the teacher answered")


class ActiveConfig(_Strict):
    """Active distillation: the teacher labels only the pool texts the student is least sure of,
    until a budget of calls (or dollars, `teacher.api.max_cost`) is spent."""

    budget: int = Field(1000, ge=1, description="teacher calls in all, the seed set included")
    seed_size: int = Field(200, ge=1, description="texts labelled at random before the first "
                                                  "round")
    step: int = Field(200, ge=1, description="texts sent to the teacher per round")
    strategy: Literal["margin", "entropy", "random"] = Field(
        "margin", description="which unlabelled texts go to the teacher")
    diversity: float = Field(4.0, ge=1.0, description="pick `step` texts spread over the "
                                                      "`diversity × step` most uncertain ones "
                                                      "(k-means++ on the student's embeddings); "
                                                      "1: the most uncertain alone")
    max_pool: int | None = Field(None, ge=1, description="at most this many pool texts")


class EvaluateConfig(_Strict):
    """How the report is computed."""

    bootstrap: int = Field(1000, description="bootstrap resamples for every interval")
    ci: float = Field(0.95, gt=0.0, lt=1.0)
    seed: int = Field(0, description="bootstrap seed: the same resamples for every model")
    significance: float = Field(0.05, description="McNemar level for calling a difference")
    ece_bins: int = 15
    collapse_ratio: float = Field(0.6, description="warn when predicted share < ratio × gold share")
    speed_texts: int = 256
    speed_batch: int = 64
    latency_samples: int = 50


class ExportConfig(_Strict):
    """ONNX export of a trained student, int8 quantization and the parity check that gates them."""

    data: str = Field("tweets:validation",
                      description="texts the exported model must agree on (file or embedded split)")
    min_agreement: float = Field(0.99, gt=0.0, le=1.0,
                                 description="label agreement with PyTorch needed to use an export")
    int8: bool = Field(False, description="also write model.int8.onnx (int8 quantization)")
    openvino: bool = Field(False, description="also check each file on OpenVINO's runtime, so "
                                              "that `--backend openvino` can run the passing ones")
    int8_method: Literal["dynamic", "static"] = Field(
        "dynamic", description="dynamic: activation scales per batch at run time; static: QDQ "
                               "with scales fixed on the calibration texts (measured less exact "
                               "and no faster for MiniLM, bench/quantize.py)")
    per_channel: bool = Field(True, description="int8 scales per output channel (more accurate)")
    reduce_range: bool = Field(False, description="7-bit weights, for CPUs without VNNI")
    outlier_channels: int = Field(
        16, ge=0, description="per split MatMul input, this many channels with the largest "
                              "calibration |x| run in fp32 beside the int8 MatMul (0: no split)")
    outlier_ratio: float = Field(
        4.0, gt=0.0, description="split a MatMul input only when its largest channel |x| is at "
                                 "least this × the median channel's (MiniLM: 15 of its 24)")
    int8_exclude: Literal["auto"] | list[str] = Field(
        "auto", description="MatMuls kept in fp32: auto (activation × activation MatMuls; "
                            "Gemms and embeddings are never quantized), or node-name substrings "
                            "(e.g. 'layer.0/') kept in fp32 on top of those")
    calibration_data: str = Field(
        "tweets:train", description="training texts (file or embedded split) that calibrate int8 "
                                    "(outlier channels, static scales); never the parity texts")
    calibration_size: int = Field(256, ge=8, description="calibration texts used")
    calibrator: Literal["minmax", "entropy", "percentile"] = Field(
        "minmax", description="static: how activation ranges are chosen from the calibration")
    activation_type: Literal["uint8", "int8"] = Field(
        "uint8", description="static: activation type (asymmetric uint8 or symmetric int8)")
    confident_margin: float = Field(
        0.1, ge=0.0, lt=1.0, description="parity also reports agreement on texts whose top-2 "
                                         "PyTorch probabilities differ by at least this")
    opset: int = Field(17, ge=14)
    max_texts: int | None = Field(2000, ge=1, description="parity on at most this many texts")
    batch_size: int = Field(64, ge=1)


class ServeConfig(_Strict):
    """The HTTP service: where it listens, what a request may hold, the optional teacher cascade."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key_env: str | None = Field(
        None, description="env var holding the API key every request but GET /healthz must send "
                          "as `Authorization: Bearer <key>` (the key itself is never stored)")
    insecure: bool = Field(False, description="allow a non-loopback host without an API key "
                                              "(only behind a proxy that authenticates)")
    backend: Literal["auto", "torch", "onnx", "openvino"] = Field(
        "auto", description="auto: the int8/fp32 ONNX export that passed parity, else PyTorch; "
                            "openvino: an export that passed parity on OpenVINO")
    threads: int | None = Field(None, ge=1, description="inference threads; all cores if unset")
    max_texts: int = Field(64, ge=1, description="texts per request")
    max_chars: int = Field(2000, ge=1, description="characters per text")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="bytes per request body")
    batch_texts: int = Field(64, ge=1, description="texts the server batches together")
    batch_wait_ms: float = Field(2.0, ge=0.0,
                                 description="how long a batch waits for more requests")
    cascade_teacher: str | None = Field(
        None, description="teacher spec that answers texts the student is unsure about")
    cascade_threshold: float = Field(0.7, ge=0.0, le=1.0,
                                     description="student answers when its top probability ≥ this")
    curve_thresholds: list[float] = Field(
        default_factory=lambda: [0.0, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0],
        description="cascade thresholds the report's coverage/accuracy/cost curve shows")


class EngineConfig(_Strict):
    """Where annotation and batch prediction run: this process, or a Ray cluster."""

    name: Literal["local", "ray"] = Field("local", description="local: one process; ray: "
                                                                "replicas on a Ray cluster")
    address: str | None = Field(None, description="Ray cluster address (ray://HOST:10001 or "
                                                  "HOST:6379); None starts a local cluster")
    replicas: int = Field(2, ge=1, description="teacher or student replicas (Ray actors)")
    cpus_per_replica: float = Field(1.0, gt=0.0, description="CPUs Ray reserves per replica; "
                                                             "also its thread count")
    max_restarts: int = Field(3, ge=0, description="times Ray restarts a replica that died")


class CompareConfig(_Strict):
    """`llmdistill compare`: which extra rows the table of students gets."""

    int8: bool = Field(True, description="an int8 ONNX row for each transformer student, shown "
                                         "only when it passes the export parity gate "
                                         "(export.min_agreement) on the validation rows")
    pipeline_baseline: bool = Field(True, description="time transformers.pipeline on the first "
                                                      "transformer student: the × pipeline "
                                                      "column")


class RunConfig(_Strict):
    """A whole run: data → teacher → student → evaluation."""

    out: Path = Path("runs/demo")
    cache_dir: Path | None = Field(None,
                                   description="annotation cache; $LLMDISTILL_CACHE or ~/.cache")
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    teachers: list[TeacherConfig] = Field(
        default_factory=list, description="several teachers, each merged over `teacher` (so an "
                                          "entry names only what differs); empty: `teacher` alone")
    label_model: LabelModelConfig = Field(default_factory=LabelModelConfig)
    confident: ConfidentConfig = Field(default_factory=ConfidentConfig)
    self_training: SelfTrainingConfig = Field(default_factory=SelfTrainingConfig)
    active: ActiveConfig = Field(default_factory=ActiveConfig)
    anchor: Path | None = Field(None, description="reviewed gold labels (review CSV or Label "
                                                  "Studio JSON export) used as the anchor")
    student: StudentConfig = Field(default_factory=StudentConfig)
    students: list[StudentConfig] = Field(
        default_factory=list, description="`llmdistill compare`: several students, each merged "
                                          "over `student`, trained on the same annotations")
    compare: CompareConfig = Field(default_factory=CompareConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)

    @field_validator("out", mode="before")
    @classmethod
    def _path(cls, v: Any) -> Any:
        return Path(v) if isinstance(v, str) else v

    @model_validator(mode="before")
    @classmethod
    def _merge_entries(cls, raw: Any) -> Any:
        """Each `teachers` (`students`) entry is a partial teacher (student) merged over
        `teacher` (`student`); a bare string is its spec (model)."""
        if not isinstance(raw, dict):
            return raw
        out = dict(raw)
        for many, one, key in (("teachers", "teacher", "spec"), ("students", "student", "model")):
            if out.get(many):
                out[many] = _merged_entries(out.get(one), out[many], key)
        return out

    def all_teachers(self) -> list[TeacherConfig]:
        """The teachers of this run, in order: `teachers`, or `teacher` alone."""
        return list(self.teachers) or [self.teacher]

    def resolved_cache_dir(self) -> Path:
        return self.cache_dir or user_cache_dir()


def quick() -> RunConfig:
    """`--quick`: the small teacher and a few hundred tweets, for a look in minutes."""
    cfg = RunConfig(out=Path("runs/quick"))
    cfg.teacher.spec = "smollm2-135m"
    cfg.data.max_train, cfg.data.max_validation, cfg.data.max_test = 300, 100, 200
    cfg.student.epochs = 3
    return cfg


def full() -> RunConfig:
    """`--full`: the demo at 1,200 / 200 / 600 tweets (≈ 45 minutes from nothing on 2 cores)."""
    cfg = RunConfig(out=Path("runs/full"))
    cfg.data.max_train, cfg.data.max_validation, cfg.data.max_test = 1200, 200, 600
    return cfg


def user_cache_dir() -> Path:
    """Where joined model files and the annotation cache live."""
    root = os.environ.get("LLMDISTILL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "llmdistill"
    )
    return Path(root)


def load_config(path: Path | None, base: RunConfig | None = None) -> RunConfig:
    """Read a YAML run config on top of `base` (the defaults); unknown keys are errors."""
    base = base or RunConfig()
    if path is None:
        return base
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise UsageError(f"config file {path} not found: check the path") from None
    except yaml.YAMLError as e:
        raise UsageError(f"config file {path} is not valid YAML ({e}): fix its syntax") from None
    if not isinstance(raw, dict):
        raise UsageError(f"config file {path} must be a mapping of options")
    merged = _deep_merge(base.model_dump(mode="json"), raw)
    try:
        return RunConfig.model_validate(merged)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise UsageError(f"config {path}: {where}: {err['msg']}") from None


def _merged_entries(base: Any, entries: list, key: str) -> list:
    """Partial entries (dicts, models or bare `key` strings) merged over `base`."""
    base = base or {}
    if isinstance(base, BaseModel):
        base = base.model_dump(mode="json")
    out = []
    for e in entries:
        if isinstance(e, str):
            e = {key: e}
        if isinstance(e, BaseModel):
            e = e.model_dump(mode="json", exclude_unset=True)
        out.append(_deep_merge(base, e) if isinstance(e, dict) else e)
    return out


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        nested = isinstance(v, dict) and isinstance(out.get(k), dict)
        out[k] = _deep_merge(out[k], v) if nested else v
    return out
