"""Hardening of the MONAI Label server that serves this app (installed by `harden_server`).

`harden_server` runs once, when the server constructs the app in its lifespan (``server_mode(True)``):
it checks the installed MONAI Label's routes against what the hardening was written for
(`routes.check_monailabel_contract`; a mismatch stops the server with the reason), then replaces the
routes listed in `routes` and the CORS layer (`guard`). Train and scoring jobs construct the app in
subprocesses without a server: nothing is installed there.
"""

from __future__ import annotations

import logging
import sys
from typing import Iterable

from .lanes import RequestLanes

logger = logging.getLogger(__name__)


def serving_fastapi_app():
    """MONAI Label's FastAPI app when this process is its server (``monailabel.app`` imported), else None."""
    module = sys.modules.get("monailabel.app")
    return getattr(module, "app", None) if module is not None else None


def harden_server(fastapi_app, *, lanes: RequestLanes, allowed_origins: Iterable[str], max_body_bytes: int,
                  expose_logs: bool) -> None:
    """Install the route and origin hardening on ``fastapi_app`` (see the module docstring)."""
    from .guard import install_guard
    from .routes import check_monailabel_contract, harden_routes

    if getattr(fastapi_app.state, "samri_hardened", False):
        return
    check_monailabel_contract(fastapi_app)
    harden_routes(fastapi_app, lanes=lanes, expose_logs=expose_logs)
    install_guard(fastapi_app, allowed_origins=allowed_origins, max_body_bytes=max_body_bytes)
    fastapi_app.state.samri_hardened = True


__all__ = ["RequestLanes", "harden_server", "serving_fastapi_app"]
