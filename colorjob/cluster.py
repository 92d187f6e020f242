"""Which Ray a command runs on: the one place that calls ``ray.init``.

A command joins the cluster that ``RAY_ADDRESS`` names (``ray job submit`` sets it for the job's
driver; set it to ``auto`` to use a ``ray start`` cluster on this machine). Otherwise it starts a
private Ray for itself, listening on 127.0.0.1 only (:func:`loopback_only`), and never attaches
to some other Ray that happens to run on the machine.
"""

from __future__ import annotations

import os


def joins_cluster() -> bool:
    """Whether commands join a cluster (``RAY_ADDRESS`` set) instead of starting a private Ray."""
    return bool(os.environ.get("RAY_ADDRESS"))


def connect(log_to_driver: bool = True, **local) -> None:
    """Initialise Ray unless it already is; ``local`` (e.g. ``num_cpus=2``) shapes a private
    local Ray and is ignored when joining a cluster."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = os.environ.get("RAY_ADDRESS") or "local"
    extra = {"include_dashboard": False, **local} if address == "local" else {}
    if address == "local":
        loopback_only()
        extra.setdefault("dashboard_host", "127.0.0.1")
    if extra.get("include_dashboard"):
        # Ray's own State API clients in this Ray's workers (Ray Train's PlacementGroupCleaner)
        # find the dashboard through this variable (the processes inherit it), not through
        # "the latest Ray on this machine", which may be another one or long gone.
        port = extra.setdefault("dashboard_port", free_port())
        os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    ray.init(
        address=address,
        configure_logging=True,
        logging_level="warning",
        log_to_driver=log_to_driver,
        **extra,
    )


def loopback_only() -> None:
    """Make the private Ray about to start listen on 127.0.0.1 only (GCS, raylet, object manager,
    workers, agents, dashboard), unreachable from the network.

    Ray takes 127.0.0.1 as a node's address only where it treats the machine as a cluster of one
    (its ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: every server then binds to it); elsewhere it
    replaces a loopback ``_node_ip_address`` by the machine's LAN address and its gRPC servers
    listen on every interface. The switch is read when Ray is imported, so it is set for the
    processes this Ray starts and, in this process, on Ray's constant itself.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray._private.ray_constants as ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
