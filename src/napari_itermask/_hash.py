"""sha256 of a file, read in chunks (inputs and model weights are recorded by their hash)."""

import hashlib


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
