"""Device settings lpdask changes while it runs, and puts back. These only set torch's flags, so
they run without a GPU."""

from __future__ import annotations

import threading

import torch

from lpdask.device import _conv_fp32, ieee_fp32, network_on


def test_ieee_fp32_on_cuda_is_set_while_in_use_and_put_back():
    owner, name, ieee = _conv_fp32()
    before = getattr(owner, name)
    assert before != ieee  # torch's default lets cuDNN use TF32
    inside = []
    entered, release = threading.Barrier(3), threading.Event()

    def chunk() -> None:
        with ieee_fp32(torch.device("cuda")):
            entered.wait()
            release.wait()
            inside.append(getattr(owner, name))

    threads = [threading.Thread(target=chunk) for _ in range(2)]
    for t in threads:
        t.start()
    entered.wait()
    assert getattr(owner, name) == ieee
    release.set()
    for t in threads:
        t.join()
    assert inside == [ieee, ieee] and getattr(owner, name) == before
    with ieee_fp32(torch.device("cpu")):
        assert getattr(owner, name) == before


def test_a_callers_network_is_copied_before_it_would_change():
    net = torch.nn.Conv2d(3, 3, 3)
    assert network_on(net, torch.device("cpu"), torch.float32) is net
    half = network_on(net, torch.device("cpu"), torch.float16)
    assert half is not net and half.weight.dtype == torch.float16 and net.weight.dtype == torch.float32
    assert network_on(net, torch.device("cpu"), torch.float16, owned=True) is net
    assert net.weight.dtype == torch.float16


def test_a_callers_network_is_copied_before_it_is_re_laid():
    """On CUDA the network runs channels-last; the layout change is a change like any other."""
    if not torch.cuda.is_available():
        net = torch.nn.Conv2d(3, 3, 3)
        relaid = network_on(net, torch.device("cpu"), torch.float32)
        assert relaid is net and net.weight.is_contiguous()  # the CPU keeps the default layout
        return
    net = torch.nn.Conv2d(3, 3, 3).cuda()
    relaid = network_on(net, torch.device("cuda"), torch.float32)
    assert relaid is not net and net.weight.is_contiguous()
    assert relaid.weight.is_contiguous(memory_format=torch.channels_last)
