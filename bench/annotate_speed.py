"""How fast can a local teacher label? Three ways on the same tweets with the same GGUF model:

(a) llmdistill's label scoring: prompt prefix evaluated once, one forward pass per tweet;
(b) the seed's way: a short rationale then a JSON label, generated per tweet, no prefix reuse;
(c) generating one label word per tweet, no prefix reuse.

Prints texts/s, ratios against (b), and the FLOP-bound rate for the new tokens on this CPU
(peak fp32 GFLOP/s measured in the same run with a torch matmul).

    .venv/bin/python bench/annotate_speed.py --teacher qwen2.5-1.5b --n 200
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import time

import torch
from tqdm import tqdm

from llmdistill import assets
from llmdistill.config import RunConfig
from llmdistill.data import load_dataset
from llmdistill.teachers.llamacpp import LlamaCppTeacher
from llmdistill.teachers.prompts import build_messages, pick_demos

SEED_STYLE = ("First give a one-sentence reason, then the label. Reply only with JSON: "
              '{"reason": "...", "label": "<one of: %s>"}')


def peak_gflops(n: int = 1536, reps: int = 8) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times) / 1e9


def generate(teacher: LlamaCppTeacher, messages: list[dict], max_tokens: int) -> tuple[str, int]:
    """Greedy generation from a cold context (no prefix reuse): the baseline's cost."""
    teacher.llm.reset()
    out = teacher.llm.create_chat_completion(messages=messages, max_tokens=max_tokens,
                                             temperature=0.0, seed=0)
    return out["choices"][0]["message"]["content"], out["usage"]["prompt_tokens"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default="qwen2.5-1.5b", choices=["qwen2.5-1.5b", "smollm2-135m"])
    ap.add_argument("--n", type=int, default=200, help="tweets (the same for all three ways)")
    ap.add_argument("--max-reason-tokens", type=int, default=60)
    args = ap.parse_args()

    cfg = RunConfig()
    ds = load_dataset(cfg.data)
    labels = ds.labels
    demos = pick_demos(ds.splits["train"], labels, cfg.teacher.n_demos, cfg.teacher.demo_seed)
    texts = ds.splits["test"]["text"].head(args.n).tolist()
    path = assets.teacher_gguf(args.teacher, cfg.resolved_cache_dir())
    teacher = LlamaCppTeacher(path, args.teacher, labels, demos, cfg.teacher)

    # (a) label scoring with the cached prefix
    t0 = time.perf_counter()
    anns = teacher.label_probs(texts)
    a_s = time.perf_counter() - t0
    a_tokens = statistics.mean(a.tokens for a in anns)

    # (b) rationale + JSON label, full prompt every time
    seed_cfg = cfg.teacher.model_copy(update={"task": cfg.teacher.task + " " +
                                              SEED_STYLE % ", ".join(labels)})
    parsed, t0 = 0, time.perf_counter()
    for text in tqdm(texts, desc="(b) rationale + JSON", unit="text"):
        msgs = build_messages(seed_cfg, labels, [], text)
        reply, _ = generate(teacher, msgs, args.max_reason_tokens)
        m = re.search(r'"label"\s*:\s*"(\w+)"', reply)
        parsed += bool(m and m.group(1).lower() in labels)
    b_s = time.perf_counter() - t0

    # (c) one label word, full prompt (with the same demos) every time
    t0 = time.perf_counter()
    for text in tqdm(texts, desc="(c) one label word", unit="text"):
        generate(teacher, build_messages(cfg.teacher, labels, demos, text), 3)
    c_s = time.perf_counter() - t0

    gflops = peak_gflops()
    params = teacher.info["parameters"]
    import llama_cpp

    n_embd = llama_cpp.llama_model_n_embd(teacher.llm.model)
    non_embedding = params - teacher.llm.n_vocab() * n_embd
    bound = gflops * 1e9 / (2 * non_embedding * a_tokens)
    rate = {k: args.n / s for k, s in (("a", a_s), ("b", b_s), ("c", c_s))}
    result = {
        "teacher": args.teacher, "n": args.n, "hardware": {
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "threads": teacher.info["threads"], "peak_fp32_gflops_measured": round(gflops, 1)},
        "texts_per_s": {"a_label_scoring_cached_prefix": rate["a"],
                        "b_seed_rationale_json": rate["b"],
                        "c_one_label_word_no_reuse": rate["c"]},
        "ratio_a_over_b": rate["a"] / rate["b"], "ratio_a_over_c": rate["a"] / rate["c"],
        "seed_style_parsed_share": parsed / args.n,
        "new_tokens_per_text_a": a_tokens,
        "flop_bound_texts_per_s_a": bound,
        "a_share_of_flop_bound": rate["a"] / bound,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
