"""The server-hardening ``--conf`` keys (``cors_origins``, ``max_body_mb``, ``expose_logs``), parsed once.

They are listed with the app's other keys in ``lib/configs/settings.py``; the defaults are the safe
ones (no other origin, 1 GiB bodies, no request log without auth).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping
from urllib.parse import urlsplit

from samri.errors import SamriInputError

SERVER_CONF_KEYS = ("cors_origins", "max_body_mb", "expose_logs")
DEFAULT_MAX_BODY_MB = 1024


@dataclass(frozen=True)
class ServerSettings:
    """Validated hardening options.

    Attributes:
        cors_origins: origins (``scheme://host[:port]``) allowed to call from a browser page.
        max_body_bytes: largest request body (413 beyond).
        expose_logs: serve ``GET /logs/`` without auth.
    """

    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = DEFAULT_MAX_BODY_MB << 20
    expose_logs: bool = False

    @classmethod
    def from_conf(cls, conf: Mapping[str, str] | None, *, env_origins: tuple[str, ...] = ()) -> "ServerSettings":
        """Parse ``conf``; ``env_origins`` are MONAI Label's ``MONAI_LABEL_CORS_ORIGINS`` (also allowed)."""
        from ..configs.settings import parse_bool

        conf = dict(conf or {})
        origins = []
        for raw in str(conf.get("cors_origins") or "").split(","):
            origin = raw.strip().rstrip("/")
            if not origin:
                continue
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
                raise SamriInputError("cors_origins", raw, "each origin must be scheme://host[:port] "
                                      "(e.g. https://viewer.example)")
            origins.append(origin)
        raw_mb = conf.get("max_body_mb", DEFAULT_MAX_BODY_MB)
        try:
            body = int(float(raw_mb) * (1 << 20))
        except (TypeError, ValueError):
            raise SamriInputError("max_body_mb", raw_mb, "must be a number of MiB") from None
        if body <= 0:
            raise SamriInputError("max_body_mb", raw_mb, "must be positive")
        env = tuple(str(o).rstrip("/") for o in env_origins)
        return cls(cors_origins=tuple(dict.fromkeys(origins + list(env))), max_body_bytes=body,
                   expose_logs=parse_bool(conf.get("expose_logs", "false"), "expose_logs"))
