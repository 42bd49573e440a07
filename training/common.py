"""Shared helpers of the training scripts: slice datasets on the model grid, seeds and splits."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_itermask.core.context_slices import check_context_slices

# Seed ranges of the synthetic splits. Test seeds are never used for training or calibration.
SPLIT_SEEDS = {"train": 100_000, "val": 200_000, "test": 900_000}

# Test seeds per lesion stratum (``synth.make_case(stratum=...)``): each stratum's test cases
# come from their own range, used by nothing else; "subtle" (today's generator) keeps the
# historical 900000 range. Train and validation seeds are shared by all strata.
TEST_STRATUM_SEEDS = {"subtle": 900_000, "glioma": 910_000, "stroke": 920_000}
STRATUM_SEED_SPAN = 10_000  # seeds per stratum range (ranges never overlap)


def split_seeds(split: str, n: int, stratum: str = "subtle") -> list[int]:
    """The first ``n`` seeds of a split; the test split's range depends on the lesion stratum."""
    if split != "test":
        return [SPLIT_SEEDS[split] + i for i in range(n)]
    if stratum not in TEST_STRATUM_SEEDS:
        raise ValueError(f"unknown stratum {stratum!r} ({', '.join(TEST_STRATUM_SEEDS)})")
    if n > STRATUM_SEED_SPAN:
        raise ValueError(f"at most {STRATUM_SEED_SPAN} test seeds per stratum, asked for {n}")
    return [TEST_STRATUM_SEEDS[stratum] + i for i in range(n)]


def context_slices_arg(text: str) -> int:
    """The argparse type of ``--context-slices`` (prepare, train): a whole number in the card's
    range, else argparse's one-line usage error."""
    try:
        k = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"context_slices must be a whole number (got {text!r})") from None
    try:
        return check_context_slices(k)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@dataclass
class SliceSet:
    """Healthy (or labelled) 2-D slices on the model grid."""

    x: np.ndarray  # (M, G, G) float32, normalised
    brain: np.ndarray  # (M, G, G) bool
    meta: dict
    label: np.ndarray | None = None  # (M, G, G) bool, for lesion sets
    volume_id: np.ndarray | None = None  # (M,) int: which volume each slice came from
    # 2.5-D: (M, 2K, G, G) the K axial neighbours per side of each slice in
    # ``core.context_slices.context_offsets`` order, and their brains; zeros / False beyond the
    # volume (``prepare --context-slices K``)
    context: np.ndarray | None = None
    context_brain: np.ndarray | None = None

    @property
    def context_slices(self) -> int:
        return 0 if self.context is None else self.context.shape[1] // 2

    def take(self, idx) -> "SliceSet":
        """The slices ``idx`` (an index array), with their labels, volumes and context."""
        def pick(a):
            return None if a is None else a[idx]
        return SliceSet(self.x[idx], self.brain[idx], self.meta, pick(self.label),
                        pick(self.volume_id), pick(self.context), pick(self.context_brain))

    def __len__(self) -> int:
        return len(self.x)

    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {
            "x": self.x.astype(np.float16),
            "brain": np.packbits(self.brain, axis=-1),
        }
        if self.label is not None:
            arrays["label"] = np.packbits(self.label, axis=-1)
        if self.volume_id is not None:
            arrays["volume_id"] = self.volume_id.astype(np.int32)
        if self.context is not None:
            arrays["context"] = self.context.astype(np.float16)
            arrays["context_brain"] = np.packbits(self.context_brain, axis=-1)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)
        path.with_suffix(".json").write_text(json.dumps(self.meta, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path) -> "SliceSet":
        path = Path(path)
        with np.load(path, allow_pickle=False) as z:
            x = z["x"].astype(np.float32)
            g = x.shape[-1]
            brain = np.unpackbits(z["brain"], axis=-1, count=g).astype(bool)
            label = (np.unpackbits(z["label"], axis=-1, count=g).astype(bool)
                     if "label" in z else None)
            vid = z["volume_id"] if "volume_id" in z else None
            ctx = z["context"].astype(np.float32) if "context" in z else None
            ctx_brain = (np.unpackbits(z["context_brain"], axis=-1, count=g).astype(bool)
                         if "context" in z else None)
        meta_path = path.with_suffix(".json")
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        return cls(x, brain, meta, label, vid, ctx, ctx_brain)


def log(msg: str) -> None:
    import sys
    import time

    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
