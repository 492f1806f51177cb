"""Annotation on a Ray cluster: N teacher replicas (Ray actors), one driver that alone commits.

`RayTeacher` starts the replicas, each holding a teacher built by `load_teacher` (any backend),
and takes the teacher's identity (id, prompt hash, labels, prompt) from them, so the cache keys
are those of a one-process run. Its `label_stream` is the engine `annotate.annotate` takes: it
cuts the uncached texts into batches, keeps at most IN_FLIGHT batches queued at each replica,
and yields each batch as it finishes (`ray.wait`); the driver commits it at once with the same
code as one process, so resume, the ledger, the budget cap and the manifest do not change.

A replica that dies is restarted by Ray (`engine.max_restarts`) and reloads its model; the
batches queued at it run again there (`max_task_retries=-1`). Nothing reaches the cache but
through the driver, whose commits are idempotent, so no text is lost or stored twice.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmdistill.config import EngineConfig, TeacherConfig
from llmdistill.errors import TeacherError, UsageError
from llmdistill.scale.cluster import Cluster, connect, first_line
from llmdistill.teachers import Annotation, Teacher, load_teacher, parse_spec

if TYPE_CHECKING:  # the replicas import this module: keep pandas and pyarrow out of them
    from llmdistill.annotate import Labelled

IN_FLIGHT = 2  # batches queued per replica: one running, one waiting, so none idles on the driver


def replica_config(cfg: TeacherConfig, engine: EngineConfig) -> TeacherConfig:
    """One replica's share: `cpus_per_replica` threads, 1/N of an API's concurrency and limits.

    None of these settings is part of the teacher's id or prompt hash, so the cache is shared
    with one-process runs.
    """
    n = engine.replicas
    api = cfg.api
    share = {"concurrency": max(1, api.concurrency // n),
             "requests_per_minute": api.requests_per_minute / n
             if api.requests_per_minute else None,
             "tokens_per_minute": api.tokens_per_minute / n if api.tokens_per_minute else None}
    return cfg.model_copy(update={"n_threads": max(1, int(engine.cpus_per_replica)),
                                  "api": api.model_copy(update=share)})


class TeacherReplica:
    """The Ray actor: one teacher, loaded in the constructor (again after a restart).

    A load failure is kept and reported by `describe()` rather than raised, so the driver shows
    the backend's one-line message once instead of a dead actor's traceback.
    """

    def __init__(self, spec: str, labels: list[str], demos: list[dict], cfg: TeacherConfig,
                 cache_dir: Path | None, task: str = "single_label") -> None:
        self.teacher: Teacher | None = None
        self.error: str | None = None
        try:
            self.teacher = load_teacher(spec, labels, demos, cfg, cache_dir, task=task)
        except UsageError as e:
            self.error = str(e)
        except Exception as e:  # a backend's own failure: its type and first line
            self.error = f"{type(e).__name__}: {first_line(e)}"

    def describe(self) -> dict[str, Any]:
        """The teacher's identity and settings, or {"error": message} if it did not load."""
        t = self.teacher
        if t is None:
            return {"error": self.error}
        return {"id": t.id, "prompt_hash": t.prompt_hash, "labels": t.labels, "info": t.info,
                "prompt": t.prompt, "batch_size": t.batch_size,
                "max_cost": getattr(getattr(t, "api", None), "max_cost", None),
                "pid": os.getpid()}

    def label(self, texts: list[str]) -> list[Annotation]:
        """`label_probs` on this replica's teacher."""
        if self.teacher is None:
            raise TeacherError(f"this replica could not load the teacher: {self.error}")
        return self.teacher.label_probs(texts)

    def close(self) -> None:
        """Free the model."""
        if self.teacher is not None:
            self.teacher.close()


class RayTeacher(Teacher):
    """`engine.replicas` copies of the teacher `spec` on Ray, seen by the driver as one teacher.

    The budget is the driver's: `spent` sums the cost of the answers it has received, and no
    batch is sent once it reaches the teacher's `max_cost` (batches already sent are committed).
    `batch_size` overrides the replicas' own (benchmarks).
    """

    def __init__(self, spec: str, labels: list[str], demos: list[dict], cfg: TeacherConfig,
                 cache_dir: Path | None, engine: EngineConfig,
                 batch_size: int | None = None, task: str = "single_label") -> None:
        parse_spec(spec)  # a malformed spec fails here, before any cluster is touched
        self.engine = engine
        self.actors: list[Any] = []
        self.cluster: Cluster | None = connect(engine)
        ray = self.cluster.ray
        try:
            self._check_resources(ray)
            actor = ray.remote(TeacherReplica).options(
                num_cpus=engine.cpus_per_replica, max_restarts=engine.max_restarts,
                max_task_retries=-1, scheduling_strategy="SPREAD")
            rcfg = replica_config(cfg, engine)
            self.task = task
            self.actors = [actor.remote(spec, labels, demos, rcfg, cache_dir, task)
                           for _ in range(engine.replicas)]
            described = self._get([a.describe.remote() for a in self.actors], "loading")
            self._adopt(described, spec)
        except BaseException:
            self.close()
            raise
        self.batch_size = batch_size or described[0]["batch_size"]
        self.max_cost = described[0]["max_cost"]
        self.spent = 0.0
        self.replica_pids = [d["pid"] for d in described]
        self.engine_info = {"name": "ray", "address": self.cluster.address,
                            "replicas": engine.replicas,
                            "cpus_per_replica": engine.cpus_per_replica,
                            "max_restarts": engine.max_restarts, "ray": ray.__version__,
                            "nodes": sum(1 for n in ray.nodes() if n.get("Alive"))}

    def _check_resources(self, ray: Any) -> None:
        have = ray.cluster_resources().get("CPU", 0.0)
        need = self.engine.replicas * self.engine.cpus_per_replica
        if need > have:
            raise UsageError(f"the Ray cluster has {have:g} CPUs but {self.engine.replicas} "
                             f"replicas × {self.engine.cpus_per_replica:g} CPUs need {need:g}: "
                             "lower --replicas or engine.cpus_per_replica, or add workers "
                             "(`ray start --address HEAD:6379` on each)")

    def _adopt(self, described: list[dict], spec: str) -> None:
        """Take the replicas' teacher identity; all must have loaded the same model and prompt."""
        errors = [d["error"] for d in described if "error" in d]
        if errors:
            raise TeacherError(f"{len(errors)} of {len(described)} Ray replicas cannot load the "
                               f"teacher {spec}: {errors[0]}")
        ids = {(d["id"], d["prompt_hash"]) for d in described}
        if len(ids) > 1:
            raise TeacherError(f"the Ray replicas loaded different teachers {sorted(ids)}: "
                               "install the same model file on every node")
        first = described[0]
        self.id, self.prompt_hash, self.labels = first["id"], first["prompt_hash"], first["labels"]
        self.info, self.prompt = first["info"], first["prompt"]

    def over_budget(self) -> bool:
        return self.max_cost is not None and self.spent >= self.max_cost

    def label_stream(self, todo: list[tuple[str, str]]) -> Iterator[Labelled]:
        """The Ray engine for `annotate.annotate`: (hashes, annotations) per batch, as they finish.

        Batches go to the least-loaded replica, at most IN_FLIGHT queued at each; a new one is
        sent only while the budget allows. Order of arrival is not order of input.
        """
        assert self.cluster is not None, "RayTeacher is closed"
        ray = self.cluster.ray
        waiting = deque(todo[i:i + self.batch_size] for i in range(0, len(todo), self.batch_size))
        flying: dict[Any, tuple[int, list[str]]] = {}
        load = [0] * len(self.actors)
        while waiting or flying:
            while waiting and not self.over_budget():
                r = min(range(len(self.actors)), key=load.__getitem__)
                if load[r] >= IN_FLIGHT:
                    break
                batch = waiting.popleft()
                flying[self.actors[r].label.remote([t for _, t in batch])] = (
                    r, [h for h, _ in batch])
                load[r] += 1
            if not flying:
                return  # over budget: the rest stays unsent
            [ref], _ = ray.wait(list(flying), num_returns=1)
            r, hashes = flying.pop(ref)
            load[r] -= 1
            [anns] = self._get([ref], f"labelling on replica {r}")
            self.spent += sum(a.cost for a in anns)
            yield hashes, anns

    def label_probs(self, texts: list[str]) -> list[Annotation]:
        """Score `texts` on the replicas; texts the budget left unsent get status "error"."""
        keyed = [(str(i), t) for i, t in enumerate(texts)]
        out = dict(part for hashes, anns in self.label_stream(keyed)
                   for part in zip(hashes, anns, strict=True))
        return [out.get(k) or Annotation(None, "error", 0.0, raw="budget reached before sending")
                for k, _ in keyed]

    def _get(self, refs: list[Any], doing: str) -> list[Any]:
        """`ray.get`, with Ray's failures as one-line TeacherErrors."""
        ray = self.cluster.ray
        try:
            return ray.get(refs)
        except ray.exceptions.RayActorError as e:
            raise TeacherError(
                f"a Ray replica died while {doing} and was not restarted (engine.max_restarts="
                f"{self.engine.max_restarts}; {first_line(e)}): what was labelled is cached, "
                "rerun to resume; the worker logs are in /tmp/ray/session_latest/logs") from None
        except ray.exceptions.RayTaskError as e:
            raise TeacherError(f"a Ray replica failed while {doing}: "
                               f"{first_line(e.cause or e)}") from None

    def close(self) -> None:
        """Stop the replicas and leave the cluster (stopping it if this process started it)."""
        if self.cluster is None:
            return
        for a in self.actors:
            try:
                self.cluster.ray.kill(a)
            except Exception:  # already dead: nothing to free
                continue
        self.actors = []
        self.cluster.close()
        self.cluster = None
