"""The per-process serving runtime shared by the app's tasks (was ``infers/``).

`core.SamriRuntime` (model, caches, client state, precompute worker), `models` (`ModelHolder`,
`DecoderSelector`: which decoder is served), `volumes`, `client_state`, `precompute`.
"""

from .core import SamriRuntime
from .models import ModelUnavailable

__all__ = ["SamriRuntime", "ModelUnavailable"]
