"""Key conversions from the ESRGAN family's checkpoint layouts to basicsr's RRDBNet names.

Three layouts of the same network are in use (spandrel detects the same three):

- basicsr / Real-ESRGAN: ``conv_first``, ``body.N.rdbK.convJ``, ``conv_body``, ``conv_up1``,
  ``conv_up2``, ``conv_hr``, ``conv_last``; lpdask's own names.
- BSRGAN / RealSR (ESRGAN's 2019 "new arch"): ``conv_first``, ``RRDB_trunk.N.RDBK.convJ``,
  ``trunk_conv``, ``upconv1``, ``upconv2``, ``HRconv``, ``conv_last``.
- ESRGAN 2018 ("old arch"), one ``nn.Sequential``: ``model.0`` (conv_first),
  ``model.1.sub.N.RDBK.convJ.0`` (the RRDBs), ``model.1.sub.<num_block>`` (conv_body),
  ``model.3`` and ``model.6`` (the upsampling convs), ``model.8`` (HR conv), ``model.10`` (last).

Each ``from_*`` function returns basicsr-named weights, or None when the keys are not in its layout.
Keys they do not know are passed through unchanged, so strict loading names them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping

from torch import Tensor

from ..errors import LpdaskError

State = Mapping[str, Tensor]

_BSRGAN_NAMES = {
    "conv_first": "conv_first",
    "trunk_conv": "conv_body",
    "upconv1": "conv_up1",
    "upconv2": "conv_up2",
    "HRconv": "conv_hr",
    "conv_last": "conv_last",
}
_BSRGAN_RRDB = re.compile(r"RRDB_trunk\.(\d+)\.RDB([123])\.conv([1-5])\.(weight|bias)")
_OLD_RRDB = re.compile(r"model\.1\.sub\.(\d+)\.RDB([123])\.conv([1-5])\.0\.(weight|bias)")
_OLD_LAYER = re.compile(r"model\.(\d+)\.(weight|bias)")
_OLD_TRUNK_END = re.compile(r"model\.1\.sub\.(\d+)\.(weight|bias)")
_OLD_X4_TAIL = {3: "conv_up1", 6: "conv_up2", 8: "conv_hr", 10: "conv_last"}
_UPSAMPLE_CONV = re.compile(r"conv_up(\d+)\.")


def to_basicsr_rrdbnet(state: State) -> dict[str, Tensor] | None:
    """basicsr-named RRDBNet weights from any known layout, or None if ``state`` is not RRDBNet.

    Raises LpdaskError (without the file name) for RRDBNet variants lpdask cannot run.
    """
    layouts: tuple[tuple[str, Callable[[State], dict[str, Tensor] | None]], ...] = (
        ("basicsr", from_basicsr),
        ("BSRGAN", from_bsrgan),
        ("old ESRGAN", from_old_esrgan),
    )
    for name, convert in layouts:
        converted = convert(state)
        if converted is not None:
            _require_x4_upsampler(converted, name)
            return converted
    return None


def from_basicsr(state: State) -> dict[str, Tensor] | None:
    """The weights unchanged if they use basicsr's names (Real-ESRGAN, lpdask), else None."""
    if not _has_all(state, "conv_first.weight", "conv_body.weight", "conv_last.weight"):
        return None
    return dict(state)


def from_bsrgan(state: State) -> dict[str, Tensor] | None:
    """Rename BSRGAN / RealSR weights (``RRDB_trunk``, ``trunk_conv``, ``HRconv``...), else None."""
    if not _has_all(state, "conv_first.weight", "trunk_conv.weight", "conv_last.weight"):
        return None
    converted: dict[str, Tensor] = {}
    for key, value in state.items():
        block = _BSRGAN_RRDB.fullmatch(key)
        layer, _, kind = key.partition(".")
        if block:
            n, k, j, kind = block.groups()
            key = f"body.{n}.rdb{k}.conv{j}.{kind}"
        elif layer in _BSRGAN_NAMES and kind in ("weight", "bias"):
            key = f"{_BSRGAN_NAMES[layer]}.{kind}"
        converted[key] = value
    return converted


def from_old_esrgan(state: State) -> dict[str, Tensor] | None:
    """Rename ESRGAN 2018 ``model.N`` weights, else None; refuses ESRGAN+ and non-x4 upsamplers."""
    if "model.0.weight" not in state or not any(k.startswith("model.1.sub.0.RDB1.") for k in state):
        return None
    if any(".conv1x1." in key for key in state):
        raise LpdaskError("ESRGAN+ checkpoint (RDBs with conv1x1): lpdask runs only plain RRDBNet")
    num_block = len({int(m.group(1)) for m in map(_OLD_RRDB.fullmatch, state) if m})
    tail = sorted({int(m.group(1)) for m in map(_OLD_LAYER.fullmatch, state) if m} - {0})
    if tail != sorted(_OLD_X4_TAIL):
        scale = 2 ** max(0, (max(tail, default=4) - 4) // 3)
        found = ", ".join(f"model.{i}" for i in tail) or "none"
        raise LpdaskError(
            f"old ESRGAN checkpoint with tail convs {found} (x{scale}?): lpdask runs only the x4"
            " RRDBNet tail (model.3, model.6, model.8, model.10)"
        )
    converted: dict[str, Tensor] = {}
    for key, value in state.items():
        block, layer, trunk_end = (p.fullmatch(key) for p in (_OLD_RRDB, _OLD_LAYER, _OLD_TRUNK_END))
        if block:
            n, k, j, kind = block.groups()
            key = f"body.{n}.rdb{k}.conv{j}.{kind}"
        elif layer:
            index, kind = int(layer.group(1)), layer.group(2)
            key = f"{'conv_first' if index == 0 else _OLD_X4_TAIL[index]}.{kind}"
        elif trunk_end and int(trunk_end.group(1)) == num_block:
            key = f"conv_body.{trunk_end.group(2)}"
        converted[key] = value
    return converted


def looks_like(state: State) -> str | None:
    """A guess at the architecture of weights that are not RRDBNet, for error messages."""
    keys = set(state)
    if "body.0.weight" in keys and all(re.fullmatch(r"body\.\d+\.(weight|bias)", k) for k in keys):
        return "SRVGGNetCompact"
    if any(".residual_group." in k for k in keys):
        return "SwinIR or a relative"
    if "head.0.weight" in keys and any(k.startswith("tail.") for k in keys):
        return "EDSR or RCAN"
    return None


def describe_keys(keys: Iterable[str], shown: int = 3) -> str:
    """``found N tensors: a, b, c, ...`` on one line, whatever characters the keys hold."""
    keys = [str(k) for k in keys]
    names = [k[:60] if k.isprintable() else ascii(k)[:60] for k in keys[:shown]]
    more = ", ..." if len(keys) > shown else ""
    return f"found {len(keys)} keys: {', '.join(names)}{more}" if keys else "found no keys"


def _has_all(state: State, *keys: str) -> bool:
    return all(key in state for key in keys)


def _require_x4_upsampler(state: State, layout: str) -> None:
    """Refuse x2/x8 upsampling tails: RRDBNet's x2/x1 models pixel-unshuffle, then run x4."""
    ups = sorted({int(m.group(1)) for m in map(_UPSAMPLE_CONV.match, state) if m})
    if ups and ups != [1, 2]:
        found = ", ".join(f"conv_up{i}" for i in ups)
        raise LpdaskError(
            f"{layout} RRDBNet with upsampling convs {found} (x{2 ** len(ups)}): lpdask runs only"
            " the x4 tail conv_up1, conv_up2 (x2/x1 models pixel-unshuffle their input instead)"
        )
