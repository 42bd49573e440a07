"""The fused inference networks (core.fuse): the same function as the trained UNet, faster."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import needs_bf16_kernels
import torch

from napari_itermask.core import fuse as fuse_mod
from napari_itermask.core.engine import EngineConfig, run_to_end
from napari_itermask.core.fuse import FusedResBlock, InferenceNet, fuse
from napari_itermask.core.unet import UNet, UNetConfig


def random_unet(cfg: UNetConfig, seed: int = 0) -> UNet:
    """A UNet whose every weight and BatchNorm statistic is random (a fresh one has identity
    BatchNorms and zero residual branches, on which folding could not be wrong)."""
    g = torch.Generator().manual_seed(seed)
    net = UNet(cfg)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5, generator=g)
                m.running_var.uniform_(0.3, 2.0, generator=g)
                m.weight.normal_(1, 0.3, generator=g)
                m.bias.normal_(0, 0.3, generator=g)
            elif isinstance(m, torch.nn.GroupNorm):
                m.weight.normal_(1, 0.3, generator=g)
                m.bias.normal_(0, 0.3, generator=g)
            if isinstance(m, torch.nn.Conv2d):
                m.weight.normal_(0, 0.7 / m.weight[0].numel() ** 0.5, generator=g)
                m.bias.normal_(0, 0.1, generator=g)
    return net.to(memory_format=torch.channels_last).eval()


CONFIGS = {
    "small-like": UNetConfig(in_channels=2, widths=(8, 16, 24), norm="batch"),
    "paper-like": UNetConfig(in_channels=2, widths=(8, 16, 16), num_res_blocks=2,
                             attention_levels=(1, 2), middle_attention=True, norm="batch"),
    "group norm": UNetConfig(in_channels=1, widths=(8, 16), norm="group"),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fused_net_computes_the_same_function(name):
    cfg = CONFIGS[name]
    net = random_unet(cfg)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(3, cfg.in_channels, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = net(x)
        got = fuse(net)(x)
    assert ref.abs().max() > 0.1  # a network that computes something
    assert float((got - ref).abs().max()) <= 1e-5
    # the trained network is left as it was (training never sees the fused copy)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    if cfg.norm == "batch":
        assert any(isinstance(m, FusedResBlock) for m in fuse(net).modules())


def test_without_the_onednn_operator_the_same_folded_weights_run_plain(monkeypatch):
    net = random_unet(CONFIGS["paper-like"], seed=3)
    x = torch.randn(2, 2, 32, 32)
    with torch.inference_mode():
        ref = net(x)
        fused = fuse(net)
        monkeypatch.setattr(fuse_mod, "_POINTWISE", False)
        plain = fused(x)
    assert float((plain - ref).abs().max()) <= 1e-5
    with torch.no_grad():  # gradients asked for: the plain path, never the oneDNN operator
        monkeypatch.setattr(fuse_mod, "_POINTWISE", None)
        assert float((fused(x) - ref).abs().max()) <= 1e-5


@needs_bf16_kernels
def test_bf16_net_is_close_and_returns_float32():
    net = random_unet(CONFIGS["small-like"], seed=2)
    x = torch.randn(2, 2, 32, 32)
    with torch.inference_mode():
        ref = net(x)
        got = InferenceNet(net, "bf16")(x)
    assert got.dtype == torch.float32
    err = float((got - ref).abs().max())
    assert 0 < err < 0.05 * float(ref.abs().max())  # bf16 rounding: close, not equal
    with pytest.raises(ValueError, match="precision"):
        InferenceNet(net, "fp16")


def test_engine_gives_the_same_masks_with_fused_nets():
    """The whole loop with the fused nets: same masks and iterations, error maps to 1e-5."""
    torch.manual_seed(0)
    f1 = random_unet(UNetConfig(in_channels=1, widths=(8, 16), norm="batch"), seed=4)
    f = random_unet(UNetConfig(in_channels=2, widths=(8, 16), norm="batch"), seed=5)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    brain = np.broadcast_to(((yy - 15.5) ** 2 + (xx - 15.5) ** 2) < 14 ** 2, (4, 32, 32)).copy()
    x = np.where(brain, rng.normal(0, 1, brain.shape), 0).astype(np.float32)
    cfg = EngineConfig(tau=0.3, max_iter=6, batch_size=3, seed=1, min_brain_pixels=10)
    ref, _ = run_to_end(x, brain, f1, f, cfg)
    got, _ = run_to_end(x, brain, InferenceNet(f1), InferenceNet(f), cfg)
    assert ref.iteration > 2
    assert np.array_equal(ref.masks, got.masks)
    assert np.array_equal(ref.iterations, got.iterations)
    assert np.abs(ref.error - got.error).max() <= 1e-5


def test_bundle_keeps_its_inference_nets_until_the_weights_change(tiny_bundle):
    f1, f = tiny_bundle.nets("fp32")
    assert tiny_bundle.nets("fp32")[1] is f
    assert tiny_bundle.nets("bf16")[1] is not f
    x = torch.randn(1, 2, 32, 32)
    with torch.inference_mode():
        before = f(x)
    with torch.no_grad():
        tiny_bundle.masked.out.bias.add_(1.0)  # in place: the stale copy must go
    f_new = tiny_bundle.nets("fp32")[1]
    assert f_new is not f
    with torch.inference_mode():
        assert torch.allclose(f_new(x), before + 1.0, atol=1e-5)


def test_fp32_on_cuda_runs_without_tf32_and_restores_the_setting():
    """CUDA's fp32 is float32 (the card's fp32 calibration): TF32 off inside, restored after;
    on the CPU nothing is touched."""
    import warnings

    from napari_itermask.core.fuse import strict_fp32

    cudnn = torch.backends.cudnn
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before = cudnn.allow_tf32
        try:
            cudnn.allow_tf32 = True
            with strict_fp32(torch.device("cpu")):
                assert cudnn.allow_tf32 is True
            with strict_fp32(torch.device("cuda", 0)):
                assert cudnn.allow_tf32 is False
            assert cudnn.allow_tf32 is True
            with strict_fp32("cuda", strict=False):
                assert cudnn.allow_tf32 is True
        finally:
            cudnn.allow_tf32 = before
