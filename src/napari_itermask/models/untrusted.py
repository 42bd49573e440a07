"""Recognising model files that are never loaded: pickles and torch archives, by name or content.

A pickle runs code when it is read, so a model file from a user's path is only ever parsed as
JSON (the card) or safetensors (the weights), both plain data. This module tells, without
unpickling anything, whether a file is such a pickle, so the refusal can say what it is.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

__all__ = ["PICKLE_SUFFIXES", "pickle_kind", "read_head", "safetensors_header"]

PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".tar", ".joblib"}
_HEAD = 64
_GLOBAL_OPCODE = re.compile(rb"^c[A-Za-z_][\w.]*\n[A-Za-z_][\w.]*\n")


def read_head(path: Path, n: int = _HEAD) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except OSError:
        return b""


def pickle_kind(head: bytes) -> str | None:
    """What executable serialisation ``head`` (a file's first bytes) starts, or None.

    Recognised: pickle protocols 2–5 (``torch.save`` before 1.6, ``pickle.dump``), the zip
    archive that ``torch.save`` writes since 1.6 (a pickle inside), and protocol-0/1 pickles that
    begin by importing a callable (``c module\\nname\\n``), the usual start of a malicious one.
    """
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "a pickle"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (torch.save writes a pickle inside one)"
    if _GLOBAL_OPCODE.match(head):
        return "a pickle"
    return None


def safetensors_header(data: bytes) -> dict | None:
    """The JSON header of a safetensors file held in ``data``, or None when it is not one.

    Layout: an 8-byte little-endian header length n, n bytes of JSON (an object), then the raw
    tensor bytes. Only the structure is checked here; safetensors itself checks the tensors.
    """
    if len(data) < 10:
        return None
    (n,) = struct.unpack("<Q", data[:8])
    if n < 2 or 8 + n > len(data) or data[8:9] != b"{":
        return None
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    return header if isinstance(header, dict) else None
