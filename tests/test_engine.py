"""The shrink loop with fake networks whose errors are known exactly."""

import threading

import numpy as np
import pytest
import torch

from napari_itermask.core.engine import (
    CAPPED,
    CONVERGED,
    SKIPPED,
    EngineConfig,
    History,
    reconstruct_at,
    run,
    run_to_end,
)
from conftest import perturbed_bundle

G = 32


def square_brain(n=1, side=20):
    b = np.zeros((n, G, G), bool)
    o = (G - side) // 2
    b[:, o : o + side, o : o + side] = True
    return b


class RampFirst(torch.nn.Module):
    """f1 whose error is a known ramp: pixel k (raster order) in the brain has error ~ k."""

    def __init__(self, x, brain):
        super().__init__()
        self.x = torch.from_numpy(x)
        ramp = np.zeros_like(x)
        for i in range(len(x)):
            ramp[i][brain[i]] = np.sqrt(np.arange(1, brain[i].sum() + 1, dtype=np.float32))
        self.out = torch.from_numpy(x - ramp)

    def forward(self, xf):
        assert xf.shape[1] == 1
        # identify slices by their x_f (tests use distinct slices)
        idx = [int(torch.argmin(((self._xf - v) ** 2).sum((1, 2)))) for v in xf[:, 0]]
        return self.out[idx][:, None]

    def bind(self, radius=15.0):
        from napari_itermask.core.frequency import high_pass

        self._xf = high_pass(self.x, radius)
        return self


class ScheduledMasked(torch.nn.Module):
    """f that declares exactly ``schedule[t]`` masked pixels normal at its t-th call (1 slice)."""

    def __init__(self, x, schedule):
        super().__init__()
        self.x = torch.from_numpy(x[0])
        self.schedule = list(schedule)
        self.calls = 0

    def forward(self, inp):
        x_hat = inp[0, 0]
        masked = (x_hat != self.x).flatten()
        n_ok = self.schedule[min(self.calls, len(self.schedule) - 1)]
        self.calls += 1
        err = torch.full_like(self.x.flatten(), 10.0) * masked
        order = torch.nonzero(masked)[:, 0]
        err[order[:n_ok]] = 0.0
        return (self.x.flatten() + err).reshape(1, 1, G, G)


def make_slices(n=1, seed=0):
    rng = np.random.default_rng(seed)
    brain = square_brain(n)
    x = np.where(brain, 1.0 + 0.1 * rng.standard_normal((n, G, G)), -3.0).astype(np.float32)
    return x, brain


def constant_net(value: float):
    """A stand-in for f1 or f: reconstructs every pixel as ``value`` (one output channel)."""

    def net(inp):
        return torch.full_like(inp[:, :1], value)

    return net


def test_first_step_unmasks_the_lowest_error_share():
    x, brain = make_slices()
    f1 = RampFirst(x, brain).bind()
    f = ScheduledMasked(x, [0])
    st = next(run(x, brain, f1, f, EngineConfig(tau=1.0, first_unmask=0.4)))
    n = brain.sum()
    assert st.iteration == 1 and st.forward_passes == 1
    assert st.masks.sum() == n - int(round(0.4 * n))  # top 60 % of errors stay masked
    assert not (st.masks & ~brain).any()


def test_one_percent_stop_rule():
    x, brain = make_slices()
    f1 = RampFirst(x, brain).bind()
    # after step 1: 240 masked pixels; shrink 24 (10 %), 12 (~5.6 %), 4 (~2 %), 1 (~0.5 %)
    f = ScheduledMasked(x, [24, 12, 4, 1])
    states = list(run(x, brain, f1, f, EngineConfig(tau=1.0, max_iter=50)))
    sizes = [int(s.masks.sum()) for s in states]
    assert sizes == [240, 216, 204, 200, 199]
    last = states[-1]
    assert last.status[0] == CONVERGED and last.iterations[0] == 5
    assert all(b <= a for a, b in zip(sizes, sizes[1:]))


def test_iteration_cap_is_reported():
    x, brain = make_slices()
    f1 = RampFirst(x, brain).bind()
    f = ScheduledMasked(x, [20])
    last, _ = run_to_end(x, brain, f1, f, EngineConfig(tau=1.0, max_iter=3))
    assert last.status[0] == CAPPED and last.iterations[0] == 3


def test_empty_mask_counts_as_converged_and_recon_is_kept():
    x, brain = make_slices()
    f1 = RampFirst(x, brain).bind()
    f = ScheduledMasked(x, [10_000])  # everything declared normal at once
    states = list(run(x, brain, f1, f, EngineConfig(tau=1.0)))
    assert len(states) == 2 and states[-1].status[0] == CONVERGED
    assert states[-1].masks.sum() == 0
    assert np.allclose(states[-1].recon[0], x[0])  # last reconstruction is the perfect one
    assert states[-1].error.max() == 0


def test_small_brains_are_skipped():
    x, brain = make_slices(2)
    brain[1] = False
    brain[1, 10:13, 10:13] = True
    bundle = perturbed_bundle()
    last, _ = run_to_end(x, brain, bundle.first, bundle.masked,
                         EngineConfig(tau=0.5, min_brain_pixels=20))
    assert last.status[1] == SKIPPED and last.iterations[1] == 0
    assert last.error[1].max() == 0 and not last.masks[1].any()
    assert last.iterations[0] >= 1


def _random_volume(n=5, seed=3):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:G, :G]
    brain = np.stack([((yy - 16) / (9 + i)) ** 2 + ((xx - 16) / (12 - i)) ** 2 < 1
                      for i in range(n)])
    x = np.where(brain, rng.normal(1, 0.8, (n, G, G)), -3).astype(np.float32)
    return x, brain


def test_mask_never_grows_and_history_is_compact():
    x, brain = _random_volume()
    b = perturbed_bundle()
    hist = History.start(brain, 0.3)
    for st in run(x, brain, b.first, b.masked, EngineConfig(tau=0.3, max_iter=8)):
        hist.record(st)
    assert len(hist) >= 3
    for k in range(1, len(hist)):
        assert not (hist.masks(k) & ~hist.masks(k - 1)).any()
    assert np.array_equal(hist.masks(0), brain)
    assert hist.nbytes() <= len(hist) * brain.size / 8 + 64 * len(hist)


def test_batched_equals_slice_by_slice_and_seed_determinism():
    x, brain = _random_volume()
    b = perturbed_bundle()

    def masks_of(bs, seed):
        cfg = EngineConfig(tau=0.3, max_iter=6, batch_size=bs, seed=seed)
        return [(s.masks.copy(), s.error.copy()) for s in run(x, brain, b.first, b.masked, cfg)]

    a, c = masks_of(5, 0), masks_of(1, 0)
    assert len(a) == len(c)
    for (ma, ea), (mc, ec) in zip(a, c):
        assert np.array_equal(ma, mc)
        assert np.allclose(ea, ec, atol=1e-5)
    again = masks_of(2, 0)
    assert all(np.array_equal(p[0], q[0]) for p, q in zip(a, again))
    other = masks_of(5, 1)
    assert any(not np.array_equal(p[0], q[0]) for p, q in zip(a[1:], other[1:]))


def test_converged_slices_leave_the_batch():
    x, brain = make_slices()
    f1 = RampFirst(x, brain).bind()
    f = ScheduledMasked(x, [24, 12, 4, 1])
    passes = [s.forward_passes for s in run(x, brain, f1, f, EngineConfig(tau=1.0))]
    assert passes == [1, 2, 3, 4, 5]
    x2, brain2 = _random_volume()
    b = perturbed_bundle()
    states = list(run(x2, brain2, b.first, b.masked, EngineConfig(tau=0.3, max_iter=10)))
    for prev, cur in zip(states, states[1:]):
        assert cur.forward_passes - prev.forward_passes == int(prev.active.sum())


def test_cancel_stops_between_iterations():
    x, brain = _random_volume()
    b = perturbed_bundle()
    ev = threading.Event()
    seen = []
    for st in run(x, brain, b.first, b.masked, EngineConfig(tau=0.0, max_iter=10), cancel=ev):
        seen.append(st.iteration)
        if st.iteration == 2:
            ev.set()
    assert seen == [1, 2]


def test_resume_with_higher_tau_extends_and_shrinks():
    x, brain = make_slices()
    f1 = RampFirst(x, brain).bind()
    f = ScheduledMasked(x, [24, 12, 4, 1, 30])
    last, _ = run_to_end(x, brain, f1, f, EngineConfig(tau=1.0))
    assert last.status[0] == CONVERGED
    more = list(run(x, brain, f1, f, EngineConfig(tau=5.0), resume=last))
    assert more[0].iteration == last.iteration + 1 and more[0].tau[0] == 5.0
    assert more[0].masks.sum() == last.masks.sum() - 30


def test_resume_after_the_cap_gets_a_fresh_cap():
    x, brain = make_slices()
    f1 = RampFirst(x, brain).bind()
    f = ScheduledMasked(x, [10])
    last, _ = run_to_end(x, brain, f1, f, EngineConfig(tau=1.0, max_iter=3))
    assert last.status[0] == CAPPED and last.iterations[0] == 3
    more = list(run(x, brain, f1, f, EngineConfig(tau=2.0, max_iter=3), resume=last))
    assert len(more) == 3 and more[-1].status[0] == CAPPED and more[-1].iterations[0] == 6


def test_human_ai_rising_tau_keeps_going_when_stalled():
    x, brain = make_slices()
    f1 = RampFirst(x, brain).bind()
    f = ScheduledMasked(x, [24, 0, 0])
    states = list(run(x, brain, f1, f, EngineConfig(tau=1.0, tau_step=0.5, max_iter=5)))
    assert [round(float(s.tau[0]), 2) for s in states] == [1.0, 1.0, 1.5, 2.0, 2.5]
    assert states[-1].status[0] == CAPPED


def test_config_validation():
    with pytest.raises(ValueError):
        EngineConfig(tau=float("nan"))
    with pytest.raises(ValueError):
        EngineConfig(tau=1.0, first_unmask=1.0)
    with pytest.raises(ValueError):
        EngineConfig(tau=1.0, max_iter=0)


def test_without_masked_guidance_f_sees_no_high_frequencies():
    x, brain = make_slices()
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, inp):
            seen.append(float(inp[:, 1].abs().max()))
            return inp[:, :1] * 0 + 1.0

    f1 = RampFirst(x, brain).bind()
    list(run(x, brain, f1, Spy(), EngineConfig(tau=1.0, max_iter=3, masked_guidance=False)))
    assert seen and max(seen) == 0.0
    seen.clear()
    list(run(x, brain, f1, Spy(), EngineConfig(tau=1.0, max_iter=3)))
    assert min(seen) > 0.0


def test_smooth_within_averages_noise_keeps_blocks_and_never_leaks():
    from napari_itermask.core.segmentation import smooth_within

    region = np.zeros((1, G, G), bool)
    region[0, 4:28, 4:28] = True
    const = np.where(region, 2.0, 50.0).astype(np.float32)  # huge values outside the region
    out = smooth_within(const, region, 1.5)
    assert np.allclose(out[region], 2.0, atol=1e-5)  # nothing leaks in from outside
    assert (out[~region] == 0).all()
    spike = np.zeros((1, G, G), np.float32)
    spike[0, 15, 15] = 10.0  # one noisy pixel
    spike[0, 6:14, 18:26] = 4.0  # an 8 × 8 lesion-sized excess
    s = smooth_within(spike, region, 1.0)
    assert s[0, 15, 15] < 2.0  # the lone pixel is averaged away ...
    assert s[0, 9:11, 21:23].min() > 3.5  # ... the block's centre keeps its level
    assert np.array_equal(smooth_within(spike, region, 0.0), np.where(region, spike, 0))


def test_engine_smoothing_feeds_every_decision():
    from napari_itermask.core.segmentation import smooth_within

    x, brain = make_slices()
    zeros = constant_net(0.0)
    st = next(run(x, brain, zeros, zeros, EngineConfig(tau=1.0, smoothing=1.5)))
    raw = (x ** 2) * brain
    want = smooth_within(raw, brain, 1.5)
    assert np.allclose(st.error, want, atol=1e-5)
    cut = np.quantile(want[brain], 0.4)
    assert np.array_equal(st.masks, brain & (want > cut))
    with pytest.raises(ValueError, match="smoothing"):
        EngineConfig(tau=1.0, smoothing=-1.0)


def test_inner_region_drops_the_outer_pixels():
    from napari_itermask.core.segmentation import inner_region

    brain = square_brain(2, side=10)
    brain[1] = False  # an empty slice stays empty
    assert np.array_equal(inner_region(brain, 0), brain)
    one = inner_region(brain, 1)
    o = (G - 10) // 2
    want = np.zeros_like(brain)
    want[0, o + 1 : o + 9, o + 1 : o + 9] = True
    assert np.array_equal(one, want)
    assert inner_region(brain, 2)[0].sum() == 6 * 6 and not inner_region(brain, 5).any()
    with pytest.raises(ValueError, match="rim"):
        inner_region(brain, -1)


def test_engine_rim_hides_the_edge_from_the_map_not_from_the_loop():
    from napari_itermask.core.segmentation import inner_region

    x, brain = make_slices()
    ones, zeros = constant_net(1.0), constant_net(0.0)
    plain = list(run(x, brain, ones, zeros, EngineConfig(tau=0.5)))
    rimmed = list(run(x, brain, ones, zeros, EngineConfig(tau=0.5, rim=2)))
    assert len(plain) == len(rimmed) > 1
    core = inner_region(brain, 2)
    for a, b in zip(plain, rimmed):
        assert np.array_equal(a.masks, b.masks)  # every decision reads the whole brain
        assert np.array_equal(b.error, np.where(core, a.error, 0))
        assert (a.error[brain & ~core] > 0).any()  # ... so the rim had error to hide
    with pytest.raises(ValueError, match="rim"):
        EngineConfig(tau=1.0, rim=-1)


def test_squared_error_polarity_numpy_and_torch_agree():
    from napari_itermask.core.segmentation import error_map, squared_error

    x = np.array([[0.0, 1.0, -2.0, 3.0]], np.float32)
    r = np.array([[0.0, 3.0, -3.0, 1.0]], np.float32)  # x − r = 0, −2, +1, +2
    want = {"both": [0, 4, 1, 4], "bright": [0, 0, 1, 4], "dark": [0, 4, 0, 0]}
    for pol, w in want.items():
        assert squared_error(x, r, pol).tolist() == [w]
        assert squared_error(torch.from_numpy(x), torch.from_numpy(r), pol).tolist() == [w]
    brain = np.array([[True, True, True, False]])
    assert error_map(x, r, brain, "bright").tolist() == [[0, 0, 1, 0]]
    with pytest.raises(ValueError, match="polarity"):
        squared_error(x, r, "up")


def test_engine_polarity_counts_one_sign_in_decisions_and_map():
    x, brain = make_slices()
    zeros = constant_net(0.0)
    x = np.where(brain, x - 1.0, x)  # half of the brain darker than the all-zero recon
    assert (x[brain] < -0.07).mean() > 0.2 and (x[brain] > 0.07).mean() > 0.2
    both = list(run(x, brain, zeros, zeros, EngineConfig(tau=0.005)))
    bright = list(run(x, brain, zeros, zeros, EngineConfig(tau=0.005, polarity="bright")))
    dark = list(run(x, brain, zeros, zeros, EngineConfig(tau=0.005, polarity="dark")))
    for states, keep in ((bright, x > 0), (dark, x < 0)):
        last = states[-1]
        assert np.allclose(last.error, np.where(brain & keep, x * x, 0))
        assert not (last.masks & ~keep).any()  # the other sign is declared normal ...
        assert (last.masks & keep).any()  # ... while this sign keeps its masked pixels
    assert (both[-1].masks & (x < 0)).any()  # in the paper's mode both signs stay masked
    with pytest.raises(ValueError, match="polarity"):
        EngineConfig(tau=1.0, polarity="hyper")


@pytest.mark.parametrize("tau, extra", [
    (0.3, {}), (4.0, {"smoothing": 1.5, "rim": 2, "polarity": "bright"}),
    (0.3, {"masked_guidance": False})])
def test_reconstruct_at_gives_every_iterations_own_maps_again(tau, extra):
    """Iteration k's error map and reconstruction, recomputed from the history alone, are the
    loop's (to float rounding), also across a resume with a higher τ; nothing of later
    iterations leaks in."""
    x, brain = _random_volume(n=6)
    brain[5] = False  # a skipped slice: error 0, the scan itself
    b = perturbed_bundle()
    cfg = EngineConfig(tau=tau, max_iter=4, batch_size=4, seed=2, min_brain_pixels=5, **extra)
    hist = History.start(brain, cfg.tau)
    states = []
    for st in run(x, brain, b.first, b.masked, cfg):
        hist.record(st)
        states.append(st)
    first = len(states)
    cfg2 = EngineConfig(**{**cfg.__dict__, "tau": 2 * tau})
    for st in run(x, brain, b.first, b.masked, cfg2, resume=states[-1]):
        hist.record(st)
        states.append(st)
    assert first >= 3 and len(states) > first  # the resume ran
    assert any(not s.updated[:5].all() for s in states)  # some slices stopped early
    for st in states:
        err, rec = reconstruct_at(x, brain, b.first, b.masked, cfg, hist, st.iteration)
        np.testing.assert_allclose(err, st.error, atol=1e-5)
        np.testing.assert_allclose(rec, st.recon, atol=1e-5)
    err0, rec0 = reconstruct_at(x, brain, b.first, b.masked, cfg, hist, 0)
    assert not err0.any() and np.array_equal(rec0, x)
    assert not np.allclose(states[0].error, states[-1].error)  # iterations do differ
    with pytest.raises(ValueError, match="not in the history"):
        reconstruct_at(x, brain, b.first, b.masked, cfg, hist, len(hist))


def test_history_refuses_a_gap_and_records_computed_slices():
    x, brain = _random_volume(n=3)
    b = perturbed_bundle()
    states = list(run(x, brain, b.first, b.masked, EngineConfig(tau=0.3, max_iter=3)))
    hist = History.start(brain, 0.3)
    with pytest.raises(ValueError, match="cannot record iteration 2"):
        hist.record(states[1])
    for st in states:
        hist.record(st)
    assert not hist.computed(0).any()
    for st in states:
        assert np.array_equal(hist.computed(st.iteration), st.updated)


def test_a_suspended_run_leaves_the_callers_grad_mode_alone():
    """The widget's Step keeps the loop suspended between iterations; two such runs closed in
    any order must not leave the calling thread in inference mode (training then fails)."""
    x, brain = _random_volume(n=2)
    b = perturbed_bundle()
    gens = [run(x, brain, b.first, b.masked, EngineConfig(tau=0.3, max_iter=5)) for _ in "ab"]
    for g in gens:
        next(g)
        assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    gens[0].close()
    gens[1].close()
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


class RecordingNet(torch.nn.Module):
    """Wraps a net and records, per call, each slice's masked-input channel (x̂)."""

    def __init__(self, net):
        super().__init__()
        self.net, self.inputs = net, []

    def forward(self, x):
        self.inputs.append(x[:, 0].clone())
        return self.net(x)


class LesionBlind(torch.nn.Module):
    """Reconstructs every pixel exactly except those of ``lesion``, 10 too dark there."""

    def __init__(self, x, lesion):
        super().__init__()
        self.x, self.lesion = torch.from_numpy(x), torch.from_numpy(lesion)

    def forward(self, inp):
        return (self.x - 10.0 * self.lesion)[:, None][: len(inp)]


def _same_mask_reruns(hist) -> int:
    """Forwards of a slice on exactly the mask of its previous forward."""
    count = 0
    for k in range(3, len(hist)):  # iteration k ran on the masks after k − 1
        before, now = hist.masks(k - 2), hist.masks(k - 1)
        for i in np.nonzero(hist.computed(k) & hist.computed(k - 1))[0]:
            count += bool(np.array_equal(before[i], now[i]))
    return count


def test_no_forward_of_the_loop_could_be_skipped_at_equal_results():
    """Issue 18 item 3 ("fewer forwards at equal results"): skipping a slice whose mask did not
    change since its last forward saves nothing in the paper's loop and would change results in
    the rising-τ mode. (1) Without a τ step a slice runs again only when its mask shrank by at
    least ``stop_shrink``, so every masked forward sees a new mask. (2) With a τ step a stalled
    slice runs again on the same mask, but with the next iteration's noise: its reconstruction
    differs, so reusing the last one would change the method."""
    from napari_itermask.core.engine import masked_net_input, slice_noise

    b = perturbed_bundle(seed=3)
    rng = np.random.default_rng(0)
    brain = square_brain(3, side=24)
    x = np.where(brain, rng.normal(0, 1, brain.shape), 0).astype(np.float32)
    cfg = EngineConfig(tau=0.4, max_iter=8, batch_size=1, seed=0, min_brain_pixels=10)
    _, hist = run_to_end(x, brain, b.first, b.masked, cfg, keep_history=True)
    assert len(hist) > 4 and _same_mask_reruns(hist) == 0
    # rising τ: a lesion the nets never reconstruct keeps the mask as it is while τ rises
    one = x[:1]
    lesion = np.zeros_like(brain[:1])
    lesion[0, 12:18, 12:18] = True
    net = LesionBlind(one, lesion)
    cfg = EngineConfig(tau=0.4, max_iter=5, batch_size=1, min_brain_pixels=10, tau_step=1.0)
    _, hist = run_to_end(one, brain[:1], net, net, cfg, keep_history=True)
    assert np.array_equal(hist.masks(len(hist) - 1), lesion) and _same_mask_reruns(hist) >= 2
    # ... and the same mask at the next iteration is another input: another reconstruction
    xt, m = torch.from_numpy(one)[:, None], torch.from_numpy(lesion)[:, None]
    br = torch.from_numpy(brain[:1])[:, None]
    with torch.inference_mode():
        outs = [b.masked(masked_net_input(xt, m, slice_noise(0, 0, t, (G, G))[None, None], br,
                                          cfg)) for t in (3, 4)]
    assert not torch.equal(*outs)
