"""Inference copies of the UNet with BatchNorm folded into convolutions and pointwise work fused.

``fuse(unet)`` builds, from a UNet in eval mode, a network that computes the same function in
fewer passes over memory (the CPU-speed issue's profile: besides the convolutions, SiLU,
BatchNorm, additions and concatenations were a third of the time):

- in each residual block, the BatchNorm after the first convolution is folded into that
  convolution's weights and bias (eval mode: BatchNorm is a fixed per-channel affine map);
- on CPUs, the SiLU after that convolution and the residual addition after the second run as
  oneDNN post-operations of the convolutions (``torch.ops.mkldnn._convolution_pointwise``), so
  neither writes a tensor of its own; the pre-activation SiLU runs in place;
- attention blocks with BatchNorm get it folded into their 1×1 query/key/value convolution.

The pre-activation BatchNorm of a block cannot be folded: its input also feeds the skip path.
Blocks with GroupNorm (the ``tiny`` test preset) are kept as they are. Outputs agree with the
original network to float rounding (max abs ~1e-6 at normalised intensities; tests check 1e-5).
Where the oneDNN operator is missing (another device, a torch built without it) or gradients
are asked for, the same folded weights run through ordinary ``conv2d`` and ``silu``.

``InferenceNet`` wraps a fused network for one precision (``core.precision``): bf16 casts the
convolution weights to bfloat16 (BatchNorm statistics stay float32) and the input on the way
in, and returns float32. On CUDA, fp32 means float32: cuDNN's TF32 convolutions (a 10-bit
mantissa, which torch allows by default) are switched off while an fp32 net runs, so a GPU
run keeps the card's fp32 calibration (``CUDA_TF32`` lets ``benchmarks/gpu.py`` measure them).
CUDA runs the plain path (folded weights through ``conv2d``, channels-last), the one the tests
check against the original network on the CPU. Training never sees these copies: they are
built from the trained network (which is left unchanged), their folded weights are buffers, and
a bundle rebuilds them when its weights change (``ModelBundle.nets``).
"""

from __future__ import annotations

import contextlib
import copy
import warnings

import torch
from torch import nn
from torch.nn import functional as F

from .unet import AttnBlock, ResBlock, UNet, resample, trunk

__all__ = ["FusedUNet", "InferenceNet", "fuse", "inference_net", "pointwise_available",
           "strict_fp32"]


def pointwise_available() -> bool:
    """Whether this torch has oneDNN's fused convolution operator."""
    mk = getattr(torch.ops, "mkldnn", None)
    try:
        return (mk is not None and hasattr(mk, "_convolution_pointwise")
                and torch.backends.mkldnn.is_available())
    except (AttributeError, RuntimeError):  # pragma: no cover - unusual torch builds
        return False


_POINTWISE = None
CUDA_TF32 = False  # fp32 nets on CUDA with TF32 convolutions (faster, ~1e-3 relative error)


def _use_pointwise(x: torch.Tensor) -> bool:
    global _POINTWISE
    if _POINTWISE is None:
        _POINTWISE = pointwise_available()
    return (_POINTWISE and x.device.type == "cpu" and not torch.is_grad_enabled()
            and x.dtype in (torch.float32, torch.bfloat16))


def _conv(x, w, b, padding: int, silu: bool = False) -> torch.Tensor:
    """``conv2d`` (stride 1), optionally followed by SiLU, fused on CPUs."""
    if _use_pointwise(x):
        return torch.ops.mkldnn._convolution_pointwise(
            x, w, b, [padding, padding], [1, 1], [1, 1], 1, "swish" if silu else "none", [], "")
    y = F.conv2d(x, w, b, padding=padding)
    return F.silu(y, inplace=True) if silu else y


def _conv_add(x, other, w, b, padding: int) -> torch.Tensor:
    """``other + conv2d(x)`` (stride 1), fused on CPUs; ``other`` is left unchanged."""
    if _use_pointwise(x) and other.dtype == x.dtype:
        other = other.contiguous(memory_format=torch.channels_last)
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x.contiguous(memory_format=torch.channels_last), other, w, b,
            [padding, padding], [1, 1], [1, 1], 1, "add", 1.0, None, [], None)
    return other + F.conv2d(x, w, b, padding=padding)


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) per channel of an eval-mode BatchNorm: ``bn(x) = x·scale + shift``."""
    var = bn.running_var.double()
    scale = bn.weight.double() / torch.sqrt(var + bn.eps)
    shift = bn.bias.double() - bn.running_mean.double() * scale
    return scale, shift


def _folded_after(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``bn(conv(x))`` as one convolution (computed in float64)."""
    scale, shift = _bn_affine(bn)
    w = conv.weight.double() * scale[:, None, None, None]
    b = conv.bias.double() * scale + shift if conv.bias is not None else shift
    return w, b


def _folded_before(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``conv(bn(x))`` for a 1×1 convolution without padding."""
    scale, shift = _bn_affine(bn)
    w = conv.weight.double()
    b = w.sum((2, 3)) @ shift + (conv.bias.double() if conv.bias is not None else 0.0)
    return w * scale[None, :, None, None], b


class _Buffers(nn.Module):
    """A module whose tensors are buffers (no parameters: nothing here is trained)."""

    def _put(self, name: str, t: torch.Tensor | None, like: torch.Tensor) -> None:
        if t is None:
            self.register_buffer(name, None)
            return
        t = t.to(dtype=like.dtype, device=like.device)
        if t.ndim == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        self.register_buffer(name, t.contiguous() if t.ndim != 4 else t)


class FusedResBlock(_Buffers):
    """A ``ResBlock`` with BatchNorm (eval) folded: ``silu(bn1(x))`` → conv1 (bn2 folded, SiLU
    fused) → conv2 with the skip added as a post-operation."""

    def __init__(self, block: ResBlock):
        super().__init__()
        self.resample = block.resample
        self.norm1 = copy.deepcopy(block.norm1).eval()
        w1, b1 = _folded_after(block.conv1, block.norm2)
        like = block.conv1.weight
        self._put("w1", w1, like)
        self._put("b1", b1, like)
        self._put("w2", block.conv2.weight.detach(), like)
        self._put("b2", block.conv2.bias.detach(), like)
        skip = block.skip
        self.has_skip = isinstance(skip, nn.Conv2d)
        self._put("ws", skip.weight.detach() if self.has_skip else None, like)
        self._put("bs", skip.bias.detach() if self.has_skip else None, like)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm1(x), inplace=True)
        h = resample(h, self.resample)
        x = resample(x, self.resample)
        h = _conv(h, self.w1, self.b1, 1, silu=True)
        s = _conv(x, self.ws, self.bs, 0) if self.has_skip else x
        return _conv_add(h, s, self.w2, self.b2, 1)


class FusedAttnBlock(_Buffers):
    """An ``AttnBlock`` whose BatchNorm is folded into the query/key/value convolution."""

    def __init__(self, block: AttnBlock):
        super().__init__()
        wq, bq = _folded_before(block.qkv, block.norm)
        like = block.qkv.weight
        self._put("wq", wq, like)
        self._put("bq", bq, like)
        self._put("wp", block.proj.weight.detach(), like)
        self._put("bp", block.proj.bias.detach(), like)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = _conv(x, self.wq, self.bq, 0).reshape(b, 3, c, h * w).unbind(1)
        a = F.scaled_dot_product_attention(
            q.transpose(1, 2)[:, None], k.transpose(1, 2)[:, None], v.transpose(1, 2)[:, None]
        )[:, 0]
        a = a.transpose(1, 2).reshape(b, c, h, w).to(x.dtype)
        return _conv_add(a.contiguous(memory_format=torch.channels_last), x, self.wp, self.bp, 0)


def _fuse_block(block: nn.Module) -> nn.Module:
    if isinstance(block, ResBlock) and isinstance(block.norm1, nn.BatchNorm2d) \
            and isinstance(block.norm2, nn.BatchNorm2d):
        return FusedResBlock(block)
    if isinstance(block, AttnBlock) and isinstance(block.norm, nn.BatchNorm2d):
        return FusedAttnBlock(block)
    return copy.deepcopy(block).eval()  # GroupNorm: kept as it is


class FusedUNet(_Buffers):
    """The function of a ``UNet`` in eval mode, for inference only (``fuse``)."""

    def __init__(self, net: UNet):
        super().__init__()
        self.cfg = net.cfg
        self.levels = net.levels
        like = net.inp.weight
        self._put("w_in", net.inp.weight.detach(), like)
        self._put("b_in", net.inp.bias.detach(), like)
        self.down = nn.ModuleList(nn.Sequential(*map(_fuse_block, s)) for s in net.down)
        self.mid = nn.Sequential(*map(_fuse_block, net.mid))
        self.up = nn.ModuleList(nn.Sequential(*map(_fuse_block, s)) for s in net.up)
        self.out_norm = copy.deepcopy(net.out_norm).eval()
        self._put("w_out", net.out.weight.detach(), like)
        self._put("b_out", net.out.bias.detach(), like)
        self.eval()

    @property
    def multiple(self) -> int:
        return 2 ** (self.levels - 1)

    def convert(self, dtype: torch.dtype) -> FusedUNet:
        """Convolution weights and biases (and kept blocks) in ``dtype``; BatchNorm statistics
        stay float32 (oneDNN normalises bf16 activations with float32 statistics)."""
        for mod in self.modules():
            if isinstance(mod, (nn.BatchNorm2d, nn.GroupNorm)):
                continue
            for name, buf in list(mod._buffers.items()):
                if buf is not None and buf.is_floating_point():
                    mod._buffers[name] = buf.to(dtype)
            for p in mod._parameters.values():
                if p is not None:
                    p.data = p.data.to(dtype)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % self.multiple or x.shape[-2] % self.multiple:
            raise ValueError(f"input size {tuple(x.shape[-2:])} is not a multiple of "
                             f"{self.multiple}")
        x = x.to(self.w_in.dtype).contiguous(memory_format=torch.channels_last)
        h = trunk(_conv(x, self.w_in, self.b_in, 1), self.down, self.mid, self.up)
        h = F.silu(self.out_norm(h), inplace=True)
        return _conv(h, self.w_out, self.b_out, 1).contiguous()


def fuse(net: UNet) -> FusedUNet:
    """A fused inference copy of ``net`` (``net`` itself is not changed)."""
    with torch.no_grad():
        return FusedUNet(net.eval())


class InferenceNet(nn.Module):
    """A network run for inference in one ``precision`` ("fp32" or "bf16"), float32 out.

    ``net`` is the trained ``UNet``; it is fused (``fuse``) unless ``fused`` is False, and for
    bf16 its fused copy's weights are cast to bfloat16."""

    def __init__(self, net: UNet, precision: str = "fp32", *, fused: bool = True):
        super().__init__()
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"unknown precision {precision!r}")
        self.precision = precision
        self.fused = bool(fused or precision == "bf16")
        inner = fuse(net) if self.fused else net
        if precision == "bf16":
            inner = inner.convert(torch.bfloat16)
        self.net = inner
        self._probe = nn.Parameter(torch.zeros((), device=_device(net)), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with strict_fp32(x.device, self.precision == "fp32" and not CUDA_TF32):
            return self.net(x).float()


@contextlib.contextmanager
def strict_fp32(device, strict: bool = True):
    """While inside, cuDNN convolutions on a CUDA ``device`` run in full float32 (no TF32);
    the previous setting comes back on leaving. Elsewhere (or ``strict`` False) nothing
    changes."""
    if not strict or getattr(device, "type", str(device)).split(":")[0] != "cuda":
        yield
        return
    cudnn = torch.backends.cudnn
    with warnings.catch_warnings():  # newer torch prefers its fp32_precision names
        warnings.simplefilter("ignore")
        old = cudnn.allow_tf32
        cudnn.allow_tf32 = False
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cudnn.allow_tf32 = old


def _device(net: nn.Module) -> torch.device:
    for p in net.parameters():
        return p.device
    return torch.device("cpu")


def inference_net(net: UNet, precision: str = "fp32", *, fused: bool = True) -> InferenceNet:
    return InferenceNet(net, precision, fused=fused)
