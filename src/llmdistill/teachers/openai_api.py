"""Teacher behind any OpenAI-compatible server (vLLM, SGLang, llama.cpp, Ollama, hosted APIs).

Three ways to get class probabilities, recorded per row in the ledger (`raw["method"]`):
- `logprobs`: one token with its top logprobs; label spellings pooled, renormalised over labels,
  the mass outside them recorded. Falls back to votes when the server sends no logprobs or a
  token could start two labels.
- `votes`: k samples at temperature > 0; vote fractions are the probabilities.
- `reasoning`: a brief rationale then `{"reason", "label"}` (JSON schema where the server takes
  it, tolerant parsing otherwise); k samples give self-consistency probabilities.

Multi-label (`task="multi_label"`): `logprobs` asks one yes/no question per label (k requests a
text, each reading the first token's top logprobs: probs[j] = P(yes) / (P(yes) + P(no)));
`votes` and `reasoning` ask for a JSON list of the labels that apply, and probs[j] is the share of
the samples naming label j.

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
from llmdistill.tasks import get_task
from llmdistill.teachers.base import Annotation, Teacher
from llmdistill.teachers.prompts import (
    LIST,
    YES_NO,
    Prompt,
    build_messages,
    label_questions,
    system_message,
)
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
                         preflight=not request.dry_run, task=request.task)


def is_loopback(url: str) -> bool:
    return (urlparse(url).hostname or "") in ("127.0.0.1", "localhost", "::1")


def parse_label(text: str, labels: list[str]) -> str | None:
    """The one label a free-text reply names; None when it names none or several."""
    lower = {lab.lower(): lab for lab in labels}
    named = {lower[w] for w in re.findall(r"[\w-]+", text.lower()) if w in lower}
    return named.pop() if len(named) == 1 else None


def parse_label_list(reply: str, labels: list[str]) -> tuple[list[str] | None, list[str]]:
    """(the labels a reply's JSON list names, in label order, or None when it holds no list of
    strings; the names outside the label set). A dict with a `labels` list counts too."""
    match = re.search(r"\[.*?\]", reply, re.DOTALL)
    obj = None
    if "{" in reply:
        try:
            obj = json.loads(reply[reply.index("{"): reply.rindex("}") + 1]).get("labels")
        except (ValueError, AttributeError):
            obj = None
    if obj is None and match:
        try:
            obj = json.loads(match.group(0))
        except json.JSONDecodeError:
            obj = None
    if not isinstance(obj, list) or not all(isinstance(v, str) for v in obj):
        return None, []
    lower = {lab.lower(): lab for lab in labels}
    found = {lower[v.strip().lower()] for v in obj if v.strip().lower() in lower}
    unknown = [v for v in obj if v.strip() and v.strip().lower() not in lower]
    return [lab for lab in labels if lab in found], unknown


def yes_no_mass(top_logprobs: list) -> tuple[float, float]:
    """P(yes) and P(no) from one token's top logprobs, spellings (" Yes", "no", …) pooled."""
    yes = no = 0.0
    for tl in top_logprobs:
        tok = tl.token.strip().lower()
        if tok == "yes":
            yes += math.exp(tl.logprob)
        elif tok == "no":
            no += math.exp(tl.logprob)
    return yes, no


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
                 cfg: TeacherConfig, preflight: bool = True, task: str = "single_label") -> None:
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
        self.task = task
        self.multi = not get_task(task).exclusive
        # multi-label: logprobs asks yes/no per label, votes/reasoning ask for a JSON list
        self._style = YES_NO if cfg.api.mode == "logprobs" else LIST
        self._questions = label_questions(cfg, labels) if self.multi else []
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
        messages = build_messages(cfg, labels, demos, "", task, style=self._style)
        if self.multi:  # single-label hashes stay those of earlier versions
            decoding = {**decoding, "task": task, "questions": self._questions
                        if self._style == YES_NO else None}
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
        self.prompt_chars = len(system_message(cfg, labels, task, self._style)) + sum(
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
        question = 0
        if self.multi and self.api.mode == "logprobs":  # one yes/no request per label
            calls = len(self.labels)
            question = sum(map(len, self._questions)) / max(len(self._questions), 1)
        elif self.multi and self.api.mode == "votes":
            out_tokens = self._list_tokens() // 2
        tin = sum((self.prompt_chars + question + len(t)) / CHARS_PER_TOKEN
                  for t in texts) * calls
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
        cut = text[: self.cfg.max_text_chars]
        messages = build_messages(self.cfg, self.labels, self.demos, cut, self.task,
                                  style=self._style)
        usage = {"input": 0, "output": 0}
        try:
            if self.multi and self.api.mode == "logprobs":
                ann = await self._multi_by_logprobs(cut, usage)
            elif self.multi and self.api.mode == "votes":
                ann = await self._multi_by_votes(messages, usage)
            elif self.multi:
                ann = await self._multi_by_reasoning(messages, usage)
            elif self.api.mode == "logprobs":
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
        ann.truncated = len(cut) < len(text)
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

    # ---- multi-label ------------------------------------------------------------------------

    def _list_tokens(self) -> int:
        """max_tokens for a JSON list that may name every label."""
        return 8 + sum(len(lab) // CHARS_PER_TOKEN + 3 for lab in self.labels)

    async def _multi_by_logprobs(self, text: str, usage: dict) -> Annotation:
        """One request per label (concurrently, under the same limits): the yes/no question."""
        asked = [build_messages(self.cfg, self.labels, self.demos, text, self.task,
                                question=q, style=YES_NO) for q in self._questions]
        resps = await asyncio.gather(*(
            self._create(m, usage, max_tokens=1, temperature=0.0, logprobs=True,
                         top_logprobs=self.api.top_logprobs) for m in asked))
        probs, masses, answers = [], [], []
        for lab, resp in zip(self.labels, resps, strict=True):
            choice = resp.choices[0]
            content = getattr(choice.logprobs, "content", None) if choice.logprobs else None
            if not content or not content[0].top_logprobs:
                messages = build_messages(self.cfg, self.labels, self.demos, text, self.task,
                                          style=LIST)
                return await self._multi_by_votes(messages, usage, reason="no logprobs")
            yes, no = yes_no_mass(content[0].top_logprobs)
            reply = (choice.message.content or "").strip().lower()
            if yes + no == 0 and reply in ("yes", "no"):  # the reply itself, outside the top
                yes, no = float(reply == "yes"), float(reply == "no")
            answers.append([lab, choice.message.content, round(yes, 6), round(no, 6)])
            if yes + no == 0:
                raw = {"method": "logprobs", "unanswered": lab, "answers": answers[-20:]}
                status = "refused" if _REFUSAL.search(choice.message.content or "") \
                    else "off_label"
                return Annotation(None, status, 0.0, label_mass=0.0, raw=json.dumps(raw))
            probs.append(yes / (yes + no))
            masses.append(yes + no)
        raw = {"method": "logprobs", "answers": answers[:20]}
        return Annotation(probs, "ok", 0.0, label_mass=sum(masses) / len(masses),
                          raw=json.dumps(raw))

    def _tally_sets(self, replies: list[str], parsed: list[tuple[list[str] | None, list[str]]],
                    raw: dict) -> Annotation:
        """probs[j] = the share of the parsed samples naming label j. A sample naming only
        labels outside the set is off-label and not counted."""
        counted = [p for p, unknown in parsed if p is not None and (p or not unknown)]
        raw = {**raw, "replies": replies[:10],
               "unknown_labels": sorted({u for _, us in parsed for u in us})[:10]}
        if not counted:
            refused = sum(bool(_REFUSAL.search(r)) for r in replies)
            status = "refused" if refused > len(replies) / 2 else (
                "off_label" if any(p is not None for p, _ in parsed) else "unparseable")
            return Annotation(None, status, 0.0, raw=json.dumps(raw))
        probs = [sum(lab in p for p in counted) / len(counted) for lab in self.labels]
        return Annotation(probs, "ok", 0.0, label_mass=len(counted) / len(replies),
                          raw=json.dumps(raw))

    async def _multi_by_votes(self, messages: list[dict], usage: dict,
                              reason: str = "") -> Annotation:
        replies = await self._samples(messages, usage, max_tokens=self._list_tokens())
        return self._tally_sets(replies, [parse_label_list(r, self.labels) for r in replies],
                                {"method": "votes", "fallback_reason": reason} if reason
                                else {"method": "votes"})

    async def _multi_by_reasoning(self, messages: list[dict], usage: dict) -> Annotation:
        instruction = ("First think in one short sentence, then answer with JSON only: "
                       '{"reason": "<one sentence>", "labels": ["<label>", ...]}, listing the '
                       "labels that apply (none: []) from: " + ", ".join(self.labels))
        msgs = [{**messages[0], "content": messages[0]["content"] + "\n\n" + instruction},
                *messages[1:]]
        item = {"type": "string", "enum": self.labels}
        schema = {"type": "json_schema", "json_schema": {"name": "labels", "strict": True,
                  "schema": {"type": "object", "additionalProperties": False,
                             "required": ["reason", "labels"],
                             "properties": {"reason": {"type": "string"},
                                            "labels": {"type": "array", "items": item}}}}}
        kw = {"max_tokens": self.api.reasoning_max_tokens + self._list_tokens()}
        if self._structured is not False:
            try:
                replies = await self._replies(msgs, usage, {**kw, "response_format": schema})
                self._structured = True
            except self._openai.APIStatusError as e:
                if "response_format" not in str(e):
                    raise
                self._structured = False  # this server has no JSON schema: parse tolerantly
        if self._structured is False:
            replies = await self._replies(msgs, usage, kw)
        ann = self._tally_sets(replies, [parse_label_list(r, self.labels) for r in replies],
                               {"method": "reasoning"})
        raw = json.loads(ann.raw)
        raw["reasons"] = [r for r in map(_reason_of, replies) if r][:5]
        ann.raw = json.dumps(raw)
        return ann

    def close(self) -> None:
        self._run(self._client.close())
        self._loop.close()


def _reason_of(reply: str) -> str | None:
    """The `reason` of a JSON reply, where there is one."""
    try:
        obj = json.loads(reply[reply.index("{"): reply.rindex("}") + 1])
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    return str(obj.get("reason", ""))[:500] or None
