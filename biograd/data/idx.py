"""A reader for IDX files, the format of MNIST and Fashion-MNIST, gzipped or not.

An IDX file is a 4-byte magic number (0, 0, a type code, the number of dimensions), one
big-endian uint32 per dimension, then the values, big-endian, in C order. The reader checks
the magic number and that the file holds exactly the values its header promises, so a
truncated download fails here, naming the file, instead of training on garbage.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from biograd.data.base import DataError

_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"
_HINT = "delete it and download it again"


def read_idx(path: str | Path, ndim: int | None = None) -> np.ndarray:
    """The array an IDX file holds, in native byte order; `ndim`, if given, must match.

    Gzipped files are recognised by their content, whatever their name. Raises DataError,
    naming the file, when it cannot be read, is not IDX, or is truncated or too long.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _TYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()}): {_HINT}")
    dims_n = raw[3]
    if ndim is not None and dims_n != ndim:
        raise DataError(f"{path} holds a {dims_n}-d array where a {ndim}-d one was expected: "
                        "check that the file is the one its name says")
    header = 4 + 4 * dims_n
    if len(raw) < header:
        raise DataError(f"{path} is truncated inside its header: {_HINT}")
    shape = struct.unpack(f">{dims_n}I", raw[4:header])
    dtype = np.dtype(_TYPES[raw[2]])
    expected = header + math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        state = "truncated" if len(raw) < expected else "longer than its header says"
        raise DataError(f"{path} is {state} ({len(raw)} bytes where its header says "
                        f"{expected}): {_HINT}")
    values = np.frombuffer(raw, dtype=dtype, offset=header)
    return values.astype(dtype.newbyteorder("="), copy=True).reshape(shape)


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if raw[:2] == _GZIP_MAGIC else raw
    except (OSError, EOFError, zlib.error) as err:
        detail = " ".join(str(err).split()) or type(err).__name__
        raise DataError(f"cannot read {path} ({detail}): {_HINT}") from err
