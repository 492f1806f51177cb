"""A tiny random chat LM (word-level tokenizer, Llama architecture) for teacher tests."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

WORDS = [
    "text", ":", "the", "a", "is", "was", "very", "good", "bad", "fine", "great", "awful", "okay",
    "flight", "movie", "day", "i", "love", "hate", "it", "this", "negative", "neutral",
    "positive", "Negative", "Neutral", "Positive", "NEGATIVE", "NEUTRAL", "POSITIVE", "labels",
    "answer", "with", "exactly", "one", "word", "classify", "sentiment", "of", "-", ",", ".", "!",
    "?", "system", "user", "assistant",
]
TEMPLATE = ("{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> "
            "{% endfor %}{% if add_generation_prompt %}<|im_start|> assistant {% endif %}")


def make_tiny_lm(path: Path, seed: int = 0) -> Path:
    specials = ["[UNK]", "[PAD]", "<|im_start|>", "<|im_end|>"]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(specials + WORDS))}
    tk = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]",
                                  additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    tok.chat_template = TEMPLATE
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                      max_position_embeddings=1024, pad_token_id=1)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path
