"""The UNet's architecture settings and presets, without torch (model cards read them).

Presets and what they are for: ``core.unet``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["PRESETS", "UNetConfig"]


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 1
    widths: tuple[int, ...] = (16, 32, 64, 128)
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = ()  # level indices (0 = full resolution) with attention
    middle_attention: bool = False
    norm: str = "group"  # "batch" or "group"
    dropout: float = 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        d["attention_levels"] = list(self.attention_levels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown UNet settings: {sorted(unknown)}")
        d = dict(d)
        d["widths"] = tuple(d.get("widths", cls.widths))
        d["attention_levels"] = tuple(d.get("attention_levels", ()))
        return cls(**d)


PRESETS: dict[str, UNetConfig] = {
    "paper": UNetConfig(
        widths=(32, 32, 64, 96, 128),
        num_res_blocks=2,
        attention_levels=(2, 3, 4),
        middle_attention=True,
        norm="batch",
        dropout=0.1,
    ),
    "small": UNetConfig(widths=(16, 32, 48, 64), num_res_blocks=1, norm="batch"),
    "tiny": UNetConfig(widths=(8, 16), num_res_blocks=1, norm="group"),
}
