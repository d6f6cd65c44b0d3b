"""Import basicsr's RRDBNet, the independent reference for RRDBNet, despite current torchvision
(which removed a module basicsr 1.4.2 still imports)."""

from __future__ import annotations

import sys

import torch


def basicsr_rrdbnet(state: dict[str, torch.Tensor]) -> torch.nn.Module:
    import torchvision.transforms.functional as functional

    # basicsr 1.4.2 imports a module torchvision removed (Real-ESRGAN issue 768).
    sys.modules.setdefault("torchvision.transforms.functional_tensor", functional)
    from basicsr.archs.rrdbnet_arch import RRDBNet

    num_feat = state["conv_first.weight"].shape[0]
    num_block = len({k.split(".")[1] for k in state if k.startswith("body.")})
    num_grow_ch = state["body.0.rdb1.conv1.weight"].shape[0]
    scale = {12: 2, 48: 1}.get(state["conv_first.weight"].shape[1], 4)
    net = RRDBNet(3, 3, scale=scale, num_feat=num_feat, num_block=num_block, num_grow_ch=num_grow_ch)
    net.scale = scale
    net.load_state_dict(state, strict=True)
    return net.eval()
