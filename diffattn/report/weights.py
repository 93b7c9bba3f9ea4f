"""Weight files a user hands to the metrics (``--inception``, ``--lpips``) are untrusted input: they are read as
tensors only, never as code. Accepted: a safetensors file, or a ``torch.save`` checkpoint (zip format) holding a
flat state dict, read with ``torch.load(weights_only=True)``. Refused before anything is unpickled: TorchScript
archives (their ``__setstate__`` and methods run code), plain pickles and anything else."""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import torch
from torch import Tensor

ACCEPTED = "a .safetensors file, or a torch.save state dict (loaded with torch.load(weights_only=True))"


class UnsafeWeightsError(ValueError):
    """A weights file that could run code when loaded, or that is not a flat tensor state dict."""


def existing_file(path: str | Path, what: str, flag: str, expect: str) -> Path:
    """``path`` as a Path if it is a file; a FileNotFoundError saying what to pass otherwise."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(
            f"{what} weights not found at {str(p)!r}: pass {flag} PATH to {expect} (nothing is downloaded), "
            f"or leave {flag} out to skip {what}"
        )
    if not p.is_file():
        raise UnsafeWeightsError(f"{what} weights {str(p)!r} is a folder, not a file: pass {flag} PATH to {expect}")
    return p


def _is_safetensors(path: Path) -> bool:
    """A safetensors file starts with the u64 little-endian length of a JSON header, then ``{``."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 0 < n <= size - 8 and head[8:9] == b"{"


def load_state_dict(path: Path, what: str) -> dict[str, Tensor]:
    """The tensors of a weights file, by the rules of this module; an `UnsafeWeightsError` naming the file and
    what is accepted otherwise. Nothing in the file is executed."""
    if _is_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, json.JSONDecodeError, ValueError, OSError) as e:
            raise UnsafeWeightsError(f"{what} weights {str(path)!r} are not a valid safetensors file ({e})") from None
    if not zipfile.is_zipfile(path):
        raise UnsafeWeightsError(
            f"{what} weights {str(path)!r} are neither safetensors nor a torch.save checkpoint (a plain pickle, "
            f"which could run code, or an unknown format); give {ACCEPTED}"
        )
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    # torch.jit.save archives hold constants.pkl and code/: loading one runs its TorchScript (and __setstate__)
    if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
        raise UnsafeWeightsError(
            f"{what} weights {str(path)!r} are a TorchScript archive, which runs code when loaded and called: "
            f"refused; give {ACCEPTED}"
        )
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - the weights-only unpickler names what it refused
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsafeWeightsError(
            f"{what} weights {str(path)!r} are not a plain tensor state dict (torch.load(weights_only=True) refused "
            f"it: {reason}); give {ACCEPTED}"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise UnsafeWeightsError(
            f"{what} weights {str(path)!r} hold a {type(state).__name__}, not a flat dict of name -> tensor; "
            f"give {ACCEPTED}"
        )
    return state
