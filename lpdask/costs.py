"""What plans are priced with: each stage's costs per pixel, the machine's measured speeds, the
image and model being planned for, and the fixed costs the measurements found. The planner
(:mod:`lpdask.planner`) profiles and measures; each executor prices its own plans from these."""

from __future__ import annotations

import math
from dataclasses import dataclass

PROCESS_MEMORY = 800 * 2**20
"""What a CPU run holds besides its windows and the model: 0.54 GiB resident once torch, Zarr, Dask
and tifffile are imported, and 0.15-0.23 GiB the allocator keeps between chunks even when trimmed
(measured: 2-block RRDBNet x4 at 768^2 and 1536^2, chunks of 192 and 256, one and two at once)."""
GPU_ALLOWANCE = 300 * 2**20
"""GPU memory beyond the windows and the model. Measured on an H200 (x4plus, 1024^2 and 2048^2):
torch's peak reserved memory was 0.68-0.99x the prediction with expandable segments (which the CLI
asks for) or one chunk at a time, but up to 2.2x with the default allocator and chunks of varying
size; the peak allocated memory was 0.58-0.91x."""
TASK_SECONDS = 0.02
"""Fixed cost of one chunk task (scheduling, opening arrays, torch dispatch), measured roughly on
the smallest chunks."""


@dataclass(frozen=True)
class StageCost:
    """A stage's costs per pixel of its input grid."""

    name: str
    halo: int
    scale: int
    macs: float
    """Multiply-adds per input pixel."""
    memory: float
    """Working bytes per window pixel while it runs (inputs, the largest convolution's input and
    output, its own output)."""
    written: float
    """Bytes it stores per input pixel (float32 activations, float16 in fp16 runs); 0 for the last stage."""
    read: float
    """Bytes it reads per window pixel."""


@dataclass(frozen=True)
class Machine:
    """Measured speeds of the device and the work folder's disk."""

    macs_per_core: float
    cores: int
    parallel_efficiency: float
    """Throughput of all cores on one chunk, over cores x one core's (torch's intra-op scaling)."""
    write_bytes_per_s: float
    read_bytes_per_s: float
    memory_budget: int
    device_type: str = "cpu"

    def compute_seconds(self, macs: float, tasks: int, workers: int) -> float:
        """Seconds to compute ``macs`` multiply-adds in ``tasks`` tasks, ``workers`` at once, the cores
        divided among them (one task on several threads runs at torch's parallel efficiency); on a
        GPU the tasks in flight share it: they overlap I/O, not compute."""
        if self.device_type == "cuda":
            return macs / self.macs_per_core
        threads = max(1, self.cores // workers)
        speed = self.macs_per_core * workers * threads * (self.parallel_efficiency if threads > 1 else 1.0)
        return macs / speed * (math.ceil(tasks / workers) * workers / tasks)

    def process_memory(self) -> int:
        """What a run holds besides its windows and the model."""
        return GPU_ALLOWANCE if self.device_type == "cuda" else PROCESS_MEMORY


@dataclass(frozen=True)
class Pricing:
    """The image and the network every plan of one job is priced for, on ``machine``: the image's
    size, the network's scale and pixel-unshuffle factor, its weights' bytes and type size, and the channels
    it reads; ``inner`` is the work arrays' read granularity (0: whole chunks)."""

    height: int
    width: int
    machine: Machine
    scale: int = 4
    input_factor: int = 1
    model_bytes: int = 0
    image_channels: int = 3
    itemsize: int = 4
    inner: int = 0


@dataclass(frozen=True)
class Space:
    """The plan shapes the planner lets an executor try on one image: chunk sides, tile widths and
    strip heights (input pixels), how many tasks at once, and what the user fixed (``workers`` 0:
    one per core, ``tile_rows`` 0: the image's height)."""

    chunks: tuple[int, ...]
    tiles: tuple[int, ...]
    strips: tuple[int, ...]
    at_once: tuple[int, ...]
    workers: int = 0
    tile_rows: int = 0
