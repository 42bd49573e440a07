import numpy as np
import pytest
import torch

from napari_itermask.core.frequency import high_pass, low_band
from napari_itermask.core.masks import MaskSampler, brain_mask, masked_share
from napari_itermask.core.unet import PRESETS, build_unet, count_parameters


def _spectrum(x):
    return torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1))


def test_high_pass_removes_low_band_and_keeps_the_rest():
    torch.manual_seed(0)
    x = torch.randn(3, 64, 64) + torch.linspace(0, 5, 64)[None, :, None]
    xf = high_pass(x, radius=10)
    assert xf.shape == x.shape and xf.dtype == x.dtype
    f_in, f_out = _spectrum(x.double()), _spectrum(xf.double())
    band = low_band(64, 64, 10)
    scale = f_in.abs().max()
    assert f_out[..., band].abs().max() < 1e-4 * scale  # low band gone, DC included
    keep = ~band
    # outside the band amplitude and phase are both the input's
    assert torch.allclose(f_out[..., keep].abs(), f_in[..., keep].abs(), rtol=1e-4, atol=1e-3)
    strong = keep & (f_in.abs() > 1e-2 * scale).all(0)
    dphase = torch.angle(f_out[..., strong] / f_in[..., strong])
    assert dphase.abs().max() < 1e-3
    assert abs(float(xf.mean())) < 1e-4  # no DC left


def test_high_pass_band_is_centred_with_given_radius():
    band = low_band(128, 128, 15)
    assert band[64, 64] and band[64, 64 + 14] and not band[64, 64 + 15]
    assert int(band.sum()) == int(sum(1 for i in range(128) for j in range(128)
                                      if (i - 64) ** 2 + (j - 64) ** 2 < 225))


def test_brain_mask_ignores_nan_and_non_positive():
    img = np.array([[0.0, 1.0], [np.nan, -2.0]])
    assert brain_mask(img).tolist() == [[False, True], [False, False]]


def _ellipse(size=128):
    yy, xx = np.mgrid[:size, :size]
    return ((yy - 64) / 50.0) ** 2 + ((xx - 64) / 42.0) ** 2 < 1


def test_sampler_statistics_match_the_paper():
    brain = _ellipse()
    rng = np.random.default_rng(1)
    s = MaskSampler()
    masks = [s.sample(brain, rng) for _ in range(200)]
    shares = np.array([masked_share(m, brain) for m in masks])
    assert all(not (m & ~brain).any() for m in masks)  # inside the brain only
    assert 0.05 <= shares.mean() <= 0.25  # docs/method.md §4: roughly 5–25 % on average
    assert (shares > 0).all()
    assert shares.std() > 0.03  # shapes and sizes vary


def test_sampler_is_deterministic_and_wide_masks_are_larger():
    brain = _ellipse()
    a = MaskSampler().sample(brain, np.random.default_rng(5))
    b = MaskSampler().sample(brain, np.random.default_rng(5))
    assert np.array_equal(a, b)
    rng = np.random.default_rng(2)
    wide = MaskSampler(wide_prob=1.0)
    shares = [masked_share(wide.sample(brain, rng), brain) for _ in range(60)]
    assert np.mean(shares) > 0.35 and max(shares) > 0.6


def test_sampler_empty_brain_and_bad_shape():
    s = MaskSampler()
    assert not s.sample(np.zeros((128, 128), bool), np.random.default_rng(0)).any()
    with pytest.raises(ValueError):
        s.sample(np.ones((64, 64), bool), np.random.default_rng(0))


def test_paper_preset_has_reference_size():
    for c in (1, 2):
        n = count_parameters(build_unet("paper", c))
        assert 5.8e6 <= n <= 6.0e6, n  # docs/method.md §3: about 5.9 M
    cfg = PRESETS["paper"]
    assert cfg.widths == (32, 32, 64, 96, 128) and cfg.norm == "batch" and cfg.dropout == 0.1
    assert count_parameters(build_unet("small", 2)) < 1.5e6


def test_unet_starts_at_zero_and_eval_output_is_batch_independent():
    net = build_unet("paper", 2)
    x = torch.randn(3, 2, 128, 128)
    assert torch.count_nonzero(net.eval()(x)) == 0  # zero-initialised output layer
    torch.nn.init.normal_(net.out.weight, std=0.1)
    for m in net.modules():  # give BatchNorm non-trivial statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
    net.eval()
    with torch.no_grad():
        full = net(x)
        single = torch.cat([net(x[i : i + 1]) for i in range(3)])
    assert torch.allclose(full, single, atol=1e-5)


def test_unet_rejects_bad_sizes():
    with pytest.raises(ValueError):
        build_unet("small", 1)(torch.zeros(1, 1, 100, 100))
    with pytest.raises(ValueError):
        build_unet("nope", 1)
