"""Deterministic seeds that do not depend on the process, the rank or the order of calls.

Random feedback must be identical on every DDP rank, so it is never drawn from torch's global
stream (each rank may have seeded it differently). Each layer instead derives its own seed from
the run's seed and the layer's qualified name, and each per-step draw from that seed and a step
counter.
"""

from __future__ import annotations

import hashlib

import torch

_MASK64 = (1 << 64) - 1


def mix(*parts: int | str) -> int:
    """A 63-bit seed from ints and strings (blake2b: stable across processes, unlike hash())."""
    data = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1


def splitmix64(x: int) -> int:
    """One step of splitmix64: a cheap, well-mixed 64-bit hash of an integer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch.Generator on `device`, seeded with `seed`."""
    g = torch.Generator(device=device)
    g.manual_seed(seed & ((1 << 63) - 1))
    return g
