"""Networks lpdask can stage, and the ways their weights are read."""

from .checkpoint import load_model
from .names import MODELS
from .rrdbnet import RRDBConfig, RRDBNet
from .srvgg import SRVGGConfig, SRVGGNetCompact

__all__ = ["MODELS", "RRDBConfig", "RRDBNet", "SRVGGConfig", "SRVGGNetCompact", "load_model"]
