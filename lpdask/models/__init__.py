"""Networks lpdask can stage, and the ways their weights are read."""

from .checkpoint import load_model
from .families import REGISTRY
from .names import MODELS
from .network import DEFAULT_GROUPINGS, Network
from .registry import Architecture, Lookalike, Registry
from .rrdbnet import RRDBConfig, RRDBNet
from .srvgg import SRVGGConfig, SRVGGNetCompact

__all__ = ["DEFAULT_GROUPINGS", "MODELS", "REGISTRY", "Architecture", "Lookalike", "Network", "RRDBConfig", "RRDBNet",
           "Registry", "SRVGGConfig", "SRVGGNetCompact", "load_model"]
