"""IDX files (MNIST, Fashion-MNIST), gzipped or not.

Format: magic (2 zero bytes, dtype code, number of dims), then one big-endian uint32 per dim,
then the data.  Images: uint8 (n, 28, 28); labels: uint8 (n,).
"""
from __future__ import annotations

import gzip
import os
import zlib
from typing import Any

import numpy as np

_DTYPES: dict[int, Any] = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


MAX_IDX_BYTES = 1 << 30          # 1 GiB of data: MNIST's largest file holds 47 MB


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file; raises ValueError naming the file and what is wrong.

    The header is read first and the declared size checked against MAX_IDX_BYTES before the body
    is inflated, and exactly that many bytes are read: a small gzip file that claims (or expands
    to) gigabytes is refused without allocating them."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such IDX file")
    try:
        with open(path, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
        with (gzip.open if gz else open)(path, "rb") as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _DTYPES:
                raise ValueError(f"{path}: not an IDX file (bad magic number {magic.hex() or 'empty'})")
            ndim = magic[3]
            dims = f.read(4 * ndim)
            if ndim == 0 or len(dims) < 4 * ndim:
                raise ValueError(f"{path}: IDX header truncated or with {ndim} dimensions")
            shape = tuple(int.from_bytes(dims[4 * i: 4 * i + 4], "big") for i in range(ndim))
            dtype = np.dtype(_DTYPES[magic[2]])
            expected = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if expected > MAX_IDX_BYTES:
                raise ValueError(f"{path}: IDX header declares {shape} = {expected:,} bytes, more than the "
                                 f"{MAX_IDX_BYTES:,}-byte limit")
            if not gz and expected != os.path.getsize(path) - 4 - 4 * ndim:
                raise ValueError(f"{path}: IDX data has {os.path.getsize(path) - 4 - 4 * ndim} bytes, header "
                                 f"{shape} needs {expected} (file truncated or corrupt)")
            body = f.read(expected)
            extra = len(f.read(1))
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise ValueError(f"{path}: cannot read IDX file ({e})") from None
    if len(body) != expected or extra:
        raise ValueError(f"{path}: IDX data has {len(body) + extra}{'+' if extra else ''} bytes, header {shape} "
                         f"needs {expected} (file truncated or corrupt)")
    return np.frombuffer(body, dtype=dtype).reshape(shape)
