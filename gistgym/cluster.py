"""Ray, the engine for work that outgrows one machine: one way to start or join it.

``--ray`` alone starts a local instance for this command (and shuts it down afterwards);
``--ray ADDRESS`` joins a running cluster (``ray start --head`` prints its address). Both
``gistgym cache build`` (per-video tasks) and ``gistgym train`` / ``gistgym sweep``
(per-run tasks) go through :func:`ray_session`.

An address is checked with a plain TCP connection first: ``ray.init`` keeps retrying an
address nobody listens on for many minutes, where a user wants one line now.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gistgym.errors import ConfigError

LOCAL = "local"
"""The ``--ray`` value that starts a local instance (what ``--ray`` with no address means)."""
DEFAULT_PORT = 6379
"""The port of ``ray start --head`` when an address names only a host."""
CONNECT_TIMEOUT = 3.0
"""Seconds to wait for a TCP connection to the cluster's address before giving up."""


def import_ray() -> Any:
    """The ``ray`` module.

    Raises:
        ConfigError: Ray is not installed or fails to import.
    """
    try:
        import ray
    except Exception as exc:  # ImportError, or a broken install
        raise ConfigError(f"--ray needs Ray: pip install 'gistgym[ray]' (or ray>=2.9); import failed: {exc}") from exc
    return ray


def split_address(address: str) -> tuple[str, int]:
    """``(host, port)`` of ``HOST[:PORT]`` or ``ray://HOST[:PORT]``.

    Raises:
        ConfigError: Not a host with an optional port.
    """
    text = address.removeprefix("ray://")
    host, sep, port = text.rpartition(":") if ":" in text else (text, "", "")
    host = host.strip("[]")
    if not host:
        raise ConfigError(f"--ray {address!r}: expected HOST:PORT, e.g. 127.0.0.1:{DEFAULT_PORT}")
    if not sep:
        return host, DEFAULT_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--ray {address!r}: the port must be a number in 1-65535, got {port!r}")
    return host, int(port)


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Refuse an address where no Ray head listens, in ``timeout`` seconds rather than ray.init's minutes.

    Raises:
        ConfigError: Nothing accepts a connection there.
    """
    host, port = split_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise ConfigError(
            f"--ray {address}: no Ray cluster answers at {host}:{port} ({exc.strerror or exc}); "
            "start one with `ray start --head`, or give --ray alone for a local instance"
        ) from exc


AUTH_TOKEN_FILE = Path.home() / ".ray" / "auth_token"
"""Where ``ray start --head`` keeps the cluster's authentication token (Ray >= 2.5x)."""


def use_auth_token() -> None:
    """Send the cluster's token when joining one: ``RAY_AUTH_MODE=token`` if a token is at hand and no mode is set.

    ``ray start --head`` turns token authentication on and writes the token to
    ``~/.ray/auth_token``, but a client sends it only with ``RAY_AUTH_MODE=token``; without it
    ``ray.init(address=...)`` fails after 20 s. A client in token mode still joins a cluster
    that does not check tokens.
    """
    if "RAY_AUTH_MODE" in os.environ:
        return
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") or AUTH_TOKEN_FILE.is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


@contextmanager
def ray_session(address: str | None, workers: int = 0) -> Iterator[Any]:
    """Ray, initialised for the block: a local instance (``address`` ``"local"``/``""``) or a cluster.

    A Ray the caller already initialised is used as it is and left running; an instance
    started here is shut down when the block ends.

    Args:
        address: ``"local"`` (or ``""``) for a local instance, else the cluster's address.
        workers: CPUs of a local instance (0: all of this machine's).

    Raises:
        ConfigError: Ray is missing, the address is unreachable, or Ray fails to start.
    """
    local = address in (None, "", LOCAL)
    if not local:
        check_reachable(str(address))  # first: an unreachable address changes nothing
        use_auth_token()  # before ray is imported: it reads RAY_AUTH_MODE once
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    try:
        if local:
            ray.init(num_cpus=workers or None, include_dashboard=False, log_to_driver=False, configure_logging=False)
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    except Exception as exc:  # ray raises ConnectionError, RuntimeError, ValueError, ...
        hint = ""
        if "auth" in f"{exc} {exc.__cause__}".lower():
            hint = "; the cluster checks a token: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or ~/.ray/auth_token)"
        raise ConfigError(f"cannot start or reach Ray at {address or 'a local instance'!r}: {exc}{hint}") from exc
    try:
        yield ray
    finally:
        ray.shutdown()


def cluster_cpus(ray: Any) -> int:
    """CPUs of the cluster Ray is connected to (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def alive_nodes(ray: Any) -> list[dict[str, Any]]:
    """The cluster's live nodes that have CPUs (where tasks run)."""
    return [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
