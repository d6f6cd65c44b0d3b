"""lpdask: exact, seamless, out-of-core super-resolution with Dask."""

from .api import Summary, upscale, upscale_array
from .errors import LpdaskError
from .models import RRDBConfig, RRDBNet, load_model

__version__ = "0.1.0"
__all__ = ["LpdaskError", "RRDBConfig", "RRDBNet", "Summary", "load_model", "upscale", "upscale_array"]
