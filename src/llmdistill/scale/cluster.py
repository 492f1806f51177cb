"""Connecting to Ray: the version check, the cluster address, a private local cluster.

Ray is imported only inside these functions, so `--engine local` never loads it.
"""

from __future__ import annotations

import os
import re
import socket
from types import ModuleType
from typing import Any

from llmdistill.config import EngineConfig
from llmdistill.errors import UsageError

MIN_RAY = (2, 40)
INSTALL = "pip install 'llmdistill[ray]'"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def require_ray() -> ModuleType:
    """The `ray` module, or a one-line UsageError when it is missing or older than MIN_RAY."""
    try:
        import ray
    except ImportError:
        raise UsageError(f"--engine ray needs Ray, which is not installed: {INSTALL} "
                         "(or use --engine local)") from None
    if ray_version(ray.__version__) < MIN_RAY:
        need = ".".join(map(str, MIN_RAY))
        raise UsageError(f"Ray {ray.__version__} is too old for --engine ray (it needs "
                         f"{need} or newer): pip install -U 'ray[data]>={need}'")
    return ray


def ray_version(text: str) -> tuple[int, ...]:
    """`2.60.0` → (2, 60); anything unparseable → (0,)."""
    parts = re.match(r"(\d+)\.(\d+)", text)
    return (int(parts[1]), int(parts[2])) if parts else (0,)


class Cluster:
    """This process's connection to Ray; `close()` ends it only if `connect` opened it."""

    def __init__(self, ray: ModuleType, address: str, owned: bool) -> None:
        self.ray, self.address, self.owned = ray, address, owned

    def close(self) -> None:
        """Disconnect (and stop a local cluster this process started)."""
        if self.owned and self.ray.is_initialized():
            self.ray.shutdown()
        self.owned = False


def start_local(ray: Any, **init_kwargs: Any) -> None:
    """Start a one-node Ray cluster whose servers all listen on 127.0.0.1, without a dashboard.

    Ray 2.60 replaces `_node_ip_address="127.0.0.1"` by the machine's routable address and
    listens on every interface whenever it thinks a multi-node cluster is possible; in its
    single-machine mode (`ENABLE_RAY_CLUSTER` off: its Windows/macOS default) every server stays
    on loopback. The environment variable reaches the raylet and the workers; the constant, this
    process, which imported ray already. The nodes are checked afterwards.
    """
    from ray._private import ray_constants

    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1",
             **init_kwargs)
    where = sorted({str(n.get("NodeManagerAddress")) for n in ray.nodes()})
    if where != ["127.0.0.1"]:
        ray.shutdown()
        raise UsageError(f"the local Ray cluster listens on {', '.join(where)}, not only "
                         "127.0.0.1: start one with `ray start --head --node-ip-address "
                         "127.0.0.1` and pass --ray-address 127.0.0.1:6379")


def connect(engine: EngineConfig) -> Cluster:
    """Connect to the cluster `engine.address` names, or to `$RAY_ADDRESS`, or start one here.

    A Ray this process already initialised (a notebook, a test) is used as it is. A cluster
    started here listens on 127.0.0.1 only, without a dashboard, and stops on `close()`. The
    workers' output stays in their log files (/tmp/ray/session_latest/logs), off the terminal.
    """
    ray = require_ray()
    if ray.is_initialized():
        return Cluster(ray, "this process's Ray", owned=False)
    address = engine.address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        start_local(ray, logging_level="error", log_to_driver=False)
        return Cluster(ray, "local", owned=True)
    host = probe(address)
    extra = {"_node_ip_address": "127.0.0.1"} if host in LOOPBACK and \
        not address.startswith("ray://") else {}
    try:
        ray.init(address=address, logging_level="warning", log_to_driver=False, **extra)
    except Exception as e:
        raise UsageError(f"cannot join the Ray cluster at {address} ({first_line(e)}): check "
                         "--ray-address and that the cluster runs Ray "
                         f"{ray.__version__}") from None
    return Cluster(ray, address, owned=True)


def probe(address: str, timeout: float = 5.0) -> str:
    """Fail fast, in one line, when nothing listens at a HOST:PORT address; returns the host."""
    if address == "auto":
        return "auto"
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit():
        raise UsageError(f"Ray address {address!r} is not HOST:PORT: give the head node's "
                         "address that `ray start --head` prints (HOST:6379), or "
                         "ray://HOST:10001")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise UsageError(f"no Ray cluster at {address} ({e.strerror or type(e).__name__}): "
                         "start one there with `ray start --head`, or fix --ray-address "
                         "(engine.address)") from None
    return host


def first_line(e: BaseException) -> str:
    """An exception as one short line, for error messages."""
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]
