"""README.md for a distilled student: what it learned from, how, how well, and how to load it."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llmdistill.files import atomic_write
from llmdistill.student.record import StudentRecord
from llmdistill.student.windows import Windowing
from llmdistill.student.zoo import TRANSFORMERS, kind_of
from llmdistill.tasks import get_task

LICENSE = "Apache-2.0"
_HF_USE = ["```python", "from transformers import pipeline", "",
           'clf = pipeline("text-classification", model="PATH/TO/THIS/FOLDER")',
           'clf(["an example text"], truncation=True, top_k=None)  # all labels with scores',
           "```", "", "No llmdistill and no remote code are needed to load it."]
_ZOO_USE = ["```python", "from llmdistill import StudentClassifier", "",
            'clf = StudentClassifier.load("PATH/TO/THIS/FOLDER")',
            'clf.predict_proba(["an example text"])  # one probability per label', "```", "",
            "It runs in numpy (no PyTorch); its weights are safetensors and JSON, never pickles."]
_HF_LOSS = ("Loss: `alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, teacher "
            "label)`, with teacher_T = softmax(log p / T). The best epoch is chosen by agreement "
            "with the teacher on a validation split. ")
_ZOO_LOSS = ("A logistic-regression head fitted to the teacher's soft labels (each text weighted "
             "once per label by its probability); its regularisation is chosen by agreement with "
             "the teacher on a validation split. ")
_HF_LOSS_MULTI = ("Loss, per label: `alpha * BCE(sigmoid(z), p_teacher) + (1 - alpha) * "
                  "BCE(sigmoid(z), teacher label)`, where p_teacher is the teacher's probability "
                  "that the label applies and the teacher label is p_teacher ≥ 0.5. The best "
                  "epoch is chosen by micro-F1 with the teacher's label sets on a validation "
                  "split. ")
_ZOO_LOSS_MULTI = ("One logistic regression per label (one-vs-rest) fitted to the teacher's "
                   "probability that the label applies; the regularisation is chosen by micro-F1 "
                   "with the teacher's label sets on a validation split. ")


def render_model_card(
    labels: list[str],
    settings: Mapping[str, Any],
    result: Mapping[str, Any],
    manifest: Mapping[str, Any] | None = None,
    *,
    task: str = "single_label",
    thresholds: list[float] | None = None,
) -> str:
    """The model card as Markdown with Hugging Face front matter.

    `settings` are the distillation settings (the StudentConfig), `result` the TrainResult fields,
    `manifest` what the caller knows about the run: optional keys `data`, `teacher`, `metrics`
    (a dict, nested dicts allowed), `license` and `base_model`; other keys are listed as they are.
    `task` and `thresholds` (multi-label) say how the student decides (a `task` key of the
    manifest stands in for an unset `task`).
    """
    manifest = dict(manifest or {})
    named = manifest.pop("task", None)
    task = str(named) if named and task == "single_label" else task
    thresholds = manifest.pop("thresholds", thresholds)
    multi = not get_task(task).exclusive
    license_name = str(manifest.pop("license", LICENSE))
    base_model = manifest.pop("base_model", settings.get("model"))
    data = manifest.pop("data", None)
    teacher = manifest.pop("teacher", None)
    metrics = manifest.pop("metrics", None)

    kind = kind_of(str(settings.get("model", "")))
    hf = kind == TRANSFORMERS
    lines = [
        "---",
        f"license: {license_name.lower()}",
        *(["library_name: transformers"] if hf else []),
        "pipeline_tag: text-classification",
        "tags:",
        "- llmdistill",
        "- knowledge-distillation",
        "---",
        "",
        "# Distilled text classifier",
        "",
        f"A {result.get('parameters', 0) / 1e6:.1f}M-parameter "
        f"{'model' if hf else kind + ' model'} (from `{base_model}`) "
        "trained by [llmdistill](https://pypi.org/project/llmdistill/) to copy an LLM teacher's "
        "class probabilities (soft labels) and labels.",
        "",
        f"Labels (in id order): {', '.join(f'`{lab}`' for lab in labels)}.",
        "",
        "## Task",
        "",
        *_describe_task(labels, multi, thresholds, settings, hf),
        "",
        "## Use",
        "",
        *(_HF_USE if hf else _ZOO_USE),
        *(_MULTI_USE if multi else []),
        "",
        "## Teacher",
        "",
        *_describe(teacher, "not recorded"),
        "",
        "## Data",
        "",
        *_describe(data, "not recorded"),
        "",
        f"Trained on {result.get('used', '?')} texts the teacher labelled; "
        f"{result.get('skipped', '?')} texts it failed on (refusals, unparseable replies, errors) "
        "were skipped, not guessed.",
        "",
        "## Distillation",
        "",
        ((_HF_LOSS_MULTI if multi else _HF_LOSS) if hf
         else (_ZOO_LOSS_MULTI if multi else _ZOO_LOSS)) + _gold_use(result.get("noise")),
        "",
        "| setting | value |",
        "| --- | --- |",
        *(f"| {k} | {_fmt(v)} |" for k, v in settings.items()),
        "",
        "## Training",
        "",
        "| quantity | value |",
        "| --- | --- |",
        *(f"| {k} | {_fmt(v)} |" for k, v in result.items() if k != "model_dir"),
        "",
    ]
    if metrics:
        lines += [
            "## Metrics",
            "",
            "| metric | value |",
            "| --- | --- |",
            *(f"| {k} | {_fmt(v)} |" for k, v in _flatten(metrics).items()),
            "",
        ]
    if manifest:
        lines += ["## Run", "", *_describe(manifest, ""), ""]
    lines += [
        "## License",
        "",
        f"{license_name}. Check the licence of the base model and the teacher's terms of use too.",
        "",
    ]
    return "\n".join(lines)


_MULTI_USE = ["", "Each score is that label's own probability (a sigmoid; scores do not sum to "
              "1): a label applies when its score reaches its threshold (see Task)."]


def _describe_task(labels: list[str], multi: bool, thresholds: list[float] | None,
                   settings: Mapping[str, Any], hf: bool) -> list[str]:
    """What the student decides, its thresholds, and how it reads long texts."""
    if multi:
        lines = ["Multi-label: any subset of the labels per text (a sigmoid per label)."]
        if thresholds is not None:
            how = ("tuned per label on validation for F1 against the teacher"
                   if settings.get("thresholds", "tuned") == "tuned" else "fixed")
            lines += ["", f"Thresholds ({how}):", "", "| label | threshold |", "| --- | --- |",
                      *(f"| {_fmt(lab)} | {float(t):.4g} |"
                        for lab, t in zip(labels, thresholds, strict=True))]
    else:
        lines = ["Single-label: one label per text (a softmax over the labels, the most "
                 "probable label wins)."]
    windowing = Windowing.from_settings(settings)
    if not hf:
        if windowing is not None:
            lines += ["", "`long_text: windows` applies to transformer students only; this one "
                          "reads each text as its features allow."]
        return lines
    if windowing is None:
        lines += ["", f"Texts longer than {settings.get('max_length', '?')} tokens are "
                      "truncated."]
    else:
        w = windowing
        lines += ["", f"Texts longer than {w.max_length} tokens are read as up to "
                      f"{w.max_windows} overlapping windows of {w.max_length} tokens whose starts "
                      f"are {w.stride} tokens apart; the windows' logits are pooled ({w.pool}) "
                      "before the activation. llmdistill's `StudentClassifier` (predict, serve) "
                      "does this; a plain `transformers` pipeline truncates instead."]
    return lines


def _gold_use(noise: Mapping[str, Any] | None) -> str:
    """One sentence on what gold labels were used for."""
    n = (noise or {}).get("anchor_size", 0)
    if not n:
        return "Gold labels are never used for training or selection."
    used = [k.replace("_", " ") for k in ("prior_correction", "forward_correction")
            if noise.get(k)] + (["class weights"] if noise.get("class_weights") == "anchor" else [])
    if noise.get("anchor_targets") == "gold":
        used.append("training targets (their gold label replaced the teacher's)")
    return (f"{n} gold-labelled training texts (the anchor) measured the teacher's confusion"
            f"{' for ' + ', '.join(used) if used else ''}; no validation or test gold was used.")


def update_metrics(model_dir: str | Path, metrics: Mapping[str, Any]) -> None:
    """Record evaluation metrics in a trained folder's llmdistill.json and README.md.

    Training comes before evaluation, so the card written at training time has no test metrics;
    call this once they are known. Both files are replaced atomically.
    """
    record = StudentRecord.load(model_dir)
    record.metrics = dict(metrics)
    card = render_model_card(record.labels, record.student_config, record.result,
                             record.manifest, task=record.task, thresholds=record.thresholds)
    record.save(model_dir)
    atomic_write(Path(model_dir) / "README.md", card)


def _describe(value: Any, missing: str) -> list[str]:
    if value is None or value == {}:
        return [missing]
    if isinstance(value, Mapping):
        return [f"- {k}: {_fmt(v)}" for k, v in _flatten(value).items()]
    return [str(value)]


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        text = "n/a" if math.isnan(v) else f"{v:.4g}"
    elif isinstance(v, list | tuple | dict):
        text = json.dumps(v, default=str)
    else:
        text = str(v)
    return text.replace("|", "\\|").replace("\n", " ")
