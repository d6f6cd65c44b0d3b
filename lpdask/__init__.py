"""lpdask: exact, seamless, out-of-core super-resolution with Dask.

The heavy parts (torch, dask) load on first use, so the command line answers bad input at once.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .errors import LpdaskError

__version__ = "0.1.0"

_LAZY = {
    "Summary": "lpdask.api",
    "Reports": "lpdask.options",
    "UpscaleOptions": "lpdask.options",
    "run_upscale": "lpdask.api",
    "upscale": "lpdask.api",
    "upscale_array": "lpdask.api",
    "RRDBConfig": "lpdask.models",
    "RRDBNet": "lpdask.models",
    "SRVGGConfig": "lpdask.models",
    "SRVGGNetCompact": "lpdask.models",
    "load_model": "lpdask.models",
}

if TYPE_CHECKING:
    from .api import Summary, run_upscale, upscale, upscale_array
    from .options import Reports, UpscaleOptions
    from .models import RRDBConfig, RRDBNet, SRVGGConfig, SRVGGNetCompact, load_model


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lpdask' has no attribute {name!r}")


__all__ = ["LpdaskError", "RRDBConfig", "RRDBNet", "Reports", "SRVGGConfig", "SRVGGNetCompact", "Summary",
           "UpscaleOptions", "load_model", "run_upscale", "upscale", "upscale_array"]
