"""Which Ray a command runs on: the one place that calls ``ray.init``.

A command joins the cluster that ``RAY_ADDRESS`` names (``ray job submit`` sets it for the job's
driver; set it to ``auto`` to use a ``ray start`` cluster on this machine). Otherwise it starts a
private Ray for itself, and never attaches to some other Ray that happens to run on the machine.
"""

from __future__ import annotations

import os


def connect(log_to_driver: bool = True, **local) -> None:
    """Initialise Ray unless it already is; ``local`` (e.g. ``num_cpus=2``) shapes a private
    local Ray and is ignored when joining a cluster."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = os.environ.get("RAY_ADDRESS") or "local"
    extra = {"include_dashboard": False, **local} if address == "local" else {}
    ray.init(
        address=address,
        configure_logging=True,
        logging_level="warning",
        log_to_driver=log_to_driver,
        **extra,
    )
