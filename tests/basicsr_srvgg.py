"""basicsr's SRVGGNetCompact (imported despite current torchvision, see basicsr_import.py)."""

from __future__ import annotations

import math
import sys

import torch


def basicsr_srvgg(state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """basicsr's network for PReLU SRVGGNetCompact weights, shape read here, loaded strictly."""
    import torchvision.transforms.functional as functional

    # basicsr 1.4.2 imports a module torchvision removed (Real-ESRGAN issue 768).
    sys.modules.setdefault("torchvision.transforms.functional_tensor", functional)
    from basicsr.archs.srvgg_arch import SRVGGNetCompact

    in_ch, num_feat = state["body.0.weight"].shape[1], state["body.0.weight"].shape[0]
    last = max(int(key.split(".")[1]) for key in state)
    upscale = math.isqrt(state[f"body.{last}.weight"].shape[0] // in_ch)
    net = SRVGGNetCompact(in_ch, in_ch, num_feat=num_feat, num_conv=(last - 2) // 2, upscale=upscale, act_type="prelu")
    net.scale = upscale  # what tests/reference.py's whole_image reads
    net.load_state_dict(state, strict=True)
    return net.eval()
