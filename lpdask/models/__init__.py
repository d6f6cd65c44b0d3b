"""Networks lpdask can stage, and the ways their weights are read."""

# Architectures register as their modules load, and are tried (and named in errors) in that order.
from .rrdbnet import RRDBConfig, RRDBNet  # isort: skip
from .srvgg import SRVGGConfig, SRVGGNetCompact  # isort: skip
from .checkpoint import load_model
from .names import MODELS
from .registry import Architecture, architectures, register, unregister

__all__ = ["MODELS", "Architecture", "RRDBConfig", "RRDBNet", "SRVGGConfig", "SRVGGNetCompact", "architectures",
           "load_model", "register", "unregister"]
