"""Networks lpdask can stage, and the ways their weights are read."""

from .checkpoint import load_model
from .rrdbnet import RRDBConfig, RRDBNet

__all__ = ["RRDBConfig", "RRDBNet", "load_model"]
