"""Teacher behind any OpenAI-compatible server (vLLM, SGLang, llama.cpp, Ollama, hosted APIs).

Three ways to get class probabilities, recorded per row in the ledger (`raw["method"]`):
- `logprobs`: one token with its top logprobs; label spellings pooled, renormalised over labels,
  the mass outside them recorded. Falls back to votes when the server sends no logprobs or a
  token could start two labels.
- `votes`: k samples at temperature > 0; vote fractions are the probabilities.
- `reasoning`: a brief rationale then `{"reason", "label"}` (JSON schema where the server takes
  it, tolerant parsing otherwise); k samples give self-consistency probabilities.

The official SDK's async client does the HTTP, with its retries (exponential backoff with
jitter, `Retry-After` honoured) on 429, 5xx, timeouts and dropped connections. The API key is
read from the environment when the teacher is built and never written anywhere.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import re
import time
from urllib.parse import urlparse

from llmdistill.config import ApiConfig, TeacherConfig
from llmdistill.errors import TeacherError
from llmdistill.teachers.base import Annotation, Teacher
from llmdistill.teachers.prompts import Prompt, build_messages, system_message
from llmdistill.teachers.registry import TeacherRequest

# $ per million input / output tokens, list prices on 2026-11-01; override in the config.
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "meta-llama/Meta-Llama-3.1-405B-Instruct": (3.00, 3.00),
    "meta-llama/Meta-Llama-3.1-70B-Instruct": (0.88, 0.88),
    "meta-llama/Meta-Llama-3.1-8B-Instruct": (0.18, 0.18),
}
CHARS_PER_TOKEN = 4  # the stated approximation for --dry-run when no tokenizer is at hand
_REFUSAL = re.compile(r"\b(i can(?:no|')t|i'm sorry|i am sorry|as an ai|i won't|unable to)\b",
                      re.IGNORECASE)
OPENAI_URL = "https://api.openai.com/v1"


def parse_openai_spec(target: str) -> tuple[str, str]:
    """`MODEL@BASE_URL` (or just MODEL for the OpenAI API) → (model, base_url)."""
    model, _, url = target.partition("@")
    if not model:
        raise TeacherError(f"openai teacher {target!r} names no model: use openai:MODEL@BASE_URL")
    url = url or OPENAI_URL
    if urlparse(url).scheme not in ("http", "https"):
        raise TeacherError(f"base URL {url!r} is not http(s): use openai:MODEL@http://HOST:PORT/v1")
    return model, url.rstrip("/")


def from_spec(request: TeacherRequest) -> OpenAITeacher:
    """`openai:MODEL@BASE_URL` → a teacher; a dry run skips the preflight (sends nothing)."""
    return OpenAITeacher(request.target, request.labels, request.demos, request.cfg,
                         preflight=not request.dry_run)


def is_loopback(url: str) -> bool:
    return (urlparse(url).hostname or "") in ("127.0.0.1", "localhost", "::1")


def parse_label(text: str, labels: list[str]) -> str | None:
    """The one label a free-text reply names; None when it names none or several."""
    lower = {lab.lower(): lab for lab in labels}
    named = {lower[w] for w in re.findall(r"[\w-]+", text.lower()) if w in lower}
    return named.pop() if len(named) == 1 else None


class _RateLimiter:
    """Client-side token bucket: at most `per_minute` units a minute, bursts up to that."""

    def __init__(self, per_minute: float | None) -> None:
        self.rate = per_minute / 60 if per_minute else None
        self.level = per_minute or 0.0
        self.cap = per_minute or 0.0
        self.last = time.monotonic()

    async def take(self, n: float = 1.0) -> None:
        if self.rate is None:
            return
        while True:
            now = time.monotonic()
            self.level = min(self.cap, self.level + (now - self.last) * self.rate)
            self.last = now
            if self.level >= min(n, self.cap):
                self.level -= n
                return
            await asyncio.sleep((min(n, self.cap) - self.level) / self.rate)


class OpenAITeacher(Teacher):
    """Label probabilities from a chat-completions endpoint, concurrently and politely."""

    def __init__(self, target: str, labels: list[str], demos: list[dict],
                 cfg: TeacherConfig, preflight: bool = True) -> None:
        import openai
        from openai.types.chat import ChatCompletion

        self.model, self.base_url = parse_openai_spec(target)
        self.api: ApiConfig = cfg.api
        key = os.environ.get(self.api.api_key_env)
        if not key:
            if not is_loopback(self.base_url):
                raise TeacherError(f"no API key: set the environment variable "
                                   f"{self.api.api_key_env} (teacher.api.api_key_env names it)")
            key = "no-key"  # local servers (vLLM, llama.cpp) take any key
        self._secret = key
        self.labels, self.cfg, self.demos = labels, cfg, demos
        self._openai, self._completion = openai, ChatCompletion
        self._loop = asyncio.new_event_loop()
        self.api = cfg.api
        self._client = self._run(self._make_client(key))
        price = PRICES.get(self.model, (0.0, 0.0) if is_loopback(self.base_url) else (None, None))
        self.price_in = self.api.price_input_per_million
        self.price_out = self.api.price_output_per_million
        if self.price_in is None:
            self.price_in = price[0]
        if self.price_out is None:
            self.price_out = price[1]
        self._rpm = _RateLimiter(self.api.requests_per_minute)
        self._tpm = _RateLimiter(self.api.tokens_per_minute)
        self._sem: asyncio.Semaphore | None = None
        self._structured: bool | None = None  # does the server take a JSON schema? (reasoning)
        self.spent = 0.0
        decoding = {"mode": self.api.mode, "top_logprobs": self.api.top_logprobs,
                    "samples": self.api.samples, "temperature": self.api.sample_temperature,
                    "reasoning_max_tokens": self.api.reasoning_max_tokens}
        messages = build_messages(cfg, labels, demos, "")
        blob = json.dumps([messages, decoding], sort_keys=True)
        self.prompt_hash = hashlib.sha256(blob.encode()).hexdigest()[:16]
        # what the manifest records: the chat messages sent before each text (the text is last)
        self.prompt = Prompt(prefix=json.dumps(messages[:-1], ensure_ascii=False), suffix="",
                             demos=demos)
        self.id = f"openai:{self.model}@{self.base_url}"
        self.info = {"backend": "openai-compatible", "model": self.model,
                     "base_url": self.base_url, "decoding": decoding,
                     "price_per_million": {"input": self.price_in, "output": self.price_out},
                     "concurrency": self.api.concurrency}
        self.prompt_chars = len(system_message(cfg, labels)) + sum(
            len(d["text"]) + 20 for d in demos)
        if preflight:
            try:
                self._run(self._preflight())
            except TeacherError:
                self.close()
                raise

    async def _make_client(self, key: str):
        """The SDK's async client; on aiohttp where installed (several times httpx's rate)."""
        try:
            http = self._openai.DefaultAioHttpClient()
        except RuntimeError:  # the aiohttp extra is missing: the SDK's httpx default
            http = None
        return self._openai.AsyncOpenAI(api_key=key, base_url=self.base_url,
                                        max_retries=self.api.max_retries,
                                        timeout=self.api.timeout, http_client=http)

    @property
    def batch_size(self) -> int:
        """Texts handed over per call: enough to keep every concurrent slot busy."""
        return self.api.concurrency * 4

    def _run(self, coro):
        return self._loop.run_until_complete(coro)

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    async def _preflight(self) -> None:
        """Fail fast, in one line, on a wrong URL, a rejected key or an unknown model."""
        o = self._openai
        try:
            served = [m.id async for m in self._client.with_options(max_retries=1).models.list()]
        except o.APIConnectionError:
            raise TeacherError(f"cannot reach {self.base_url}: is the server running and the "
                               "URL right (it usually ends in /v1)?") from None
        except o.AuthenticationError:
            raise TeacherError(f"{self.base_url} rejected the API key in "
                               f"{self.api.api_key_env}: check it") from None
        except (o.NotFoundError, o.APIStatusError):
            return  # some servers have no /models: the first request will tell
        if served and self.model not in served:
            raise TeacherError(f"unknown model {self.model!r} at {self.base_url}: it serves "
                               f"{', '.join(served[:5])}")

    def over_budget(self) -> bool:
        return self.api.max_cost is not None and self.spent >= self.api.max_cost

    def estimate(self, texts: list[str]) -> dict:
        """--dry-run: tokens and dollars for labelling `texts` (chars/4 approximation)."""
        calls = 1 if self.api.mode == "logprobs" else self.api.samples
        out_tokens = {"logprobs": 1, "votes": 3,
                      "reasoning": self.api.reasoning_max_tokens // 2}[self.api.mode]
        tin = sum((self.prompt_chars + len(t)) / CHARS_PER_TOKEN for t in texts) * calls
        tout = out_tokens * calls * len(texts)
        dollars = None
        if self.price_in is not None and self.price_out is not None:
            dollars = (tin * self.price_in + tout * self.price_out) / 1e6
        return {"texts": len(texts), "input_tokens": int(tin), "output_tokens": int(tout),
                "dollars": dollars, "dollars_per_1000": dollars / len(texts) * 1000
                if dollars is not None and texts else None,
                "tokenizer": f"approximation: {CHARS_PER_TOKEN} characters per token"}

    def label_probs(self, texts: list[str]) -> list[Annotation]:
        return self._run(self._all(texts))

    async def _all(self, texts: list[str]) -> list[Annotation]:
        self._sem = self._sem or asyncio.Semaphore(self.api.concurrency)
        return list(await asyncio.gather(*(self._one(t) for t in texts)))

    async def _one(self, text: str) -> Annotation:
        start = time.perf_counter()
        messages = build_messages(self.cfg, self.labels, self.demos,
                                  text[: self.cfg.max_text_chars])
        usage = {"input": 0, "output": 0}
        try:
            if self.api.mode == "logprobs":
                ann = await self._by_logprobs(messages, usage)
            elif self.api.mode == "votes":
                ann = await self._by_votes(messages, usage)
            else:
                ann = await self._by_reasoning(messages, usage)
        except Exception as e:  # after the SDK's retries: recorded, never fatal for the run
            detail = getattr(e, "status_code", None) or type(e).__name__
            ann = Annotation(None, "error", 0.0,
                             raw=json.dumps({"error": self._scrub(f"{detail}: {e}")[:300]}))
        ann.seconds = time.perf_counter() - start
        ann.tokens = usage["input"] + usage["output"]
        ann.cost = self._cost(usage)
        self.spent += ann.cost
        return ann

    def _cost(self, usage: dict) -> float:
        if self.price_in is None or self.price_out is None:
            return 0.0
        return (usage["input"] * self.price_in + usage["output"] * self.price_out) / 1e6

    async def _create(self, messages: list[dict], usage: dict, **kw):
        client = self._client
        if "response_format" in kw and self._structured is None:
            client = client.with_options(max_retries=0)  # a probe: don't retry a refusal
        est = sum(len(m["content"]) for m in messages) / CHARS_PER_TOKEN + kw.get("max_tokens", 1)
        await self._rpm.take(1)
        await self._tpm.take(est)
        async with self._sem:
            for attempt in range(3):  # the SDK retries HTTP failures; this, undecodable bodies
                try:
                    # post() is the SDK's own call (auth, retries, typed reply) without
                    # create()'s per-request walk over the params, a third of the client's CPU
                    resp = await client.post(
                        "/chat/completions", cast_to=self._completion,
                        body={"model": self.model, "messages": messages, **kw})
                    break
                except (self._openai.APIResponseValidationError, json.JSONDecodeError):
                    if attempt == 2:
                        raise
                    await asyncio.sleep(0.5 * 2 ** attempt)
        if resp.usage:
            usage["input"] += resp.usage.prompt_tokens or 0
            usage["output"] += resp.usage.completion_tokens or 0
        return resp

    async def _by_logprobs(self, messages: list[dict], usage: dict) -> Annotation:
        resp = await self._create(messages, usage, max_tokens=1, temperature=0.0,
                                  logprobs=True, top_logprobs=self.api.top_logprobs)
        choice = resp.choices[0]
        content = getattr(choice.logprobs, "content", None) if choice.logprobs else None
        if not content or not content[0].top_logprobs:
            return await self._by_votes(messages, usage, reason="no logprobs")
        mass = [0.0] * len(self.labels)
        ambiguous, top = 0.0, []
        lower = [lab.lower() for lab in self.labels]
        for tl in content[0].top_logprobs:
            p, tok = math.exp(tl.logprob), tl.token.strip().lower()
            top.append([tl.token, round(tl.logprob, 4)])
            if not tok:
                continue
            hits = ([i for i, lab in enumerate(lower) if lab == tok]
                    or [i for i, lab in enumerate(lower) if lab.startswith(tok)])
            if len(hits) == 1:
                mass[hits[0]] += p
            elif len(hits) > 1:
                ambiguous += p
        total = sum(mass)
        if ambiguous > 0.05 * max(total, 1e-12):
            return await self._by_votes(messages, usage, reason="label prefixes collide")
        raw = {"method": "logprobs", "reply": choice.message.content, "top_logprobs": top}
        if total == 0:
            status = "refused" if _REFUSAL.search(choice.message.content or "") else "off_label"
            return Annotation(None, status, 0.0, label_mass=0.0, raw=json.dumps(raw))
        return Annotation([m / total for m in mass], "ok", 0.0, label_mass=total,
                          raw=json.dumps(raw))

    async def _samples(self, messages: list[dict], usage: dict, **kw) -> list[str]:
        """k replies at the sampling temperature: `n=k` where the server honours it."""
        k = self.api.samples
        resp = await self._create(messages, usage, n=k, temperature=self.api.sample_temperature,
                                  **kw)
        replies = [c.message.content or "" for c in resp.choices]
        while len(replies) < k:
            resp = await self._create(messages, usage, temperature=self.api.sample_temperature,
                                      seed=len(replies), **kw)
            replies.append(resp.choices[0].message.content or "")
        return replies[:k]

    def _tally(self, replies: list[str], labels_found: list[str | None], raw: dict) -> Annotation:
        votes = [lab for lab in labels_found if lab is not None]
        raw = {**raw, "replies": replies[:10]}
        if not votes:
            refused = sum(bool(_REFUSAL.search(r)) for r in replies)
            status = "refused" if refused > len(replies) / 2 else (
                "off_label" if any(r.strip() for r in replies) else "unparseable")
            return Annotation(None, status, 0.0, raw=json.dumps(raw))
        probs = [votes.count(lab) / len(votes) for lab in self.labels]
        return Annotation(probs, "ok", 0.0, label_mass=len(votes) / len(replies),
                          raw=json.dumps(raw))

    async def _by_votes(self, messages: list[dict], usage: dict, reason: str = "") -> Annotation:
        replies = await self._samples(messages, usage, max_tokens=5)
        return self._tally(replies, [parse_label(r, self.labels) for r in replies],
                           {"method": "votes", "fallback_reason": reason} if reason
                           else {"method": "votes"})

    async def _by_reasoning(self, messages: list[dict], usage: dict) -> Annotation:
        instruction = ("First think in one short sentence, then answer with JSON only: "
                       '{"reason": "<one sentence>", "label": "<one of: '
                       + ", ".join(self.labels) + '>"}')
        msgs = [{**messages[0], "content": messages[0]["content"] + "\n\n" + instruction},
                *messages[1:]]
        schema = {"type": "json_schema", "json_schema": {"name": "label", "strict": True,
                  "schema": {"type": "object", "additionalProperties": False,
                             "required": ["reason", "label"],
                             "properties": {"reason": {"type": "string"},
                                            "label": {"type": "string", "enum": self.labels}}}}}
        kw = {"max_tokens": self.api.reasoning_max_tokens}
        if self._structured is not False:
            try:
                kw_fmt = {**kw, "response_format": schema}
                replies = await self._replies(msgs, usage, kw_fmt)
                self._structured = True
            except self._openai.APIStatusError as e:
                if "response_format" not in str(e):
                    raise
                self._structured = False  # this server has no JSON schema: parse tolerantly
        if self._structured is False:
            replies = await self._replies(msgs, usage, kw)
        parsed = [self._parse_json_label(r) for r in replies]
        ann = self._tally(replies, [p[0] for p in parsed], {"method": "reasoning"})
        raw = json.loads(ann.raw)
        raw["reasons"] = [p[1] for p in parsed if p[1]][:5]  # the rationales, kept
        if ann.status == "off_label" and not any(p[2] for p in parsed):
            ann.status = "unparseable"
        ann.raw = json.dumps(raw)
        return ann

    async def _replies(self, msgs: list[dict], usage: dict, kw: dict) -> list[str]:
        """k samples for self-consistency, or one greedy reply when k is 1."""
        if self.api.samples > 1:
            return await self._samples(msgs, usage, **kw)
        resp = await self._create(msgs, usage, temperature=0.0, **kw)
        return [resp.choices[0].message.content or ""]

    def _parse_json_label(self, reply: str) -> tuple[str | None, str | None, bool]:
        """(label or None, reason, whether any JSON was found) from a possibly messy reply."""
        match = re.search(r"\{.*\}", reply, re.DOTALL)
        if not match:
            return None, None, False
        try:
            obj = json.loads(match.group(0))
        except json.JSONDecodeError:
            lab = re.search(r'"label"\s*:\s*"([^"]*)"', match.group(0))
            return (parse_label(lab.group(1), self.labels) if lab else None), None, bool(lab)
        if not isinstance(obj, dict):
            return None, None, False
        label = str(obj.get("label", "")).strip()
        lower = {lab.lower(): lab for lab in self.labels}
        return lower.get(label.lower()), str(obj.get("reason", ""))[:500] or None, True

    def close(self) -> None:
        self._run(self._client.close())
        self._loop.close()
