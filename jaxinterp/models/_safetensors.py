"""A numpy-only reader for the safetensors format.

A ``.safetensors`` file is an 8-byte little-endian unsigned header length ``n``, then ``n``
bytes of JSON mapping each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}``
(offsets relative to the end of the header; an optional ``"__metadata__"`` entry holds string
metadata), then the raw little-endian tensor bytes. Reading it needs nothing but ``json`` and
``numpy``; the file is memory-mapped, so only the tensors asked for are read.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np

_DTYPES: dict[str, str] = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
    "U16": "<u2",
    "U32": "<u4",
    "U64": "<u8",
    "BOOL": "?",
}


def _dtype(name: str, tensor: str) -> np.dtype:
    if name == "BF16":
        import ml_dtypes  # shipped with jax

        return np.dtype(ml_dtypes.bfloat16)
    if name not in _DTYPES:
        raise ValueError(
            f"safetensors: tensor {tensor!r} has dtype {name!r}; supported: "
            f"{sorted(_DTYPES) + ['BF16']}"
        )
    return np.dtype(_DTYPES[name])


def read_safetensors(path: str | Path, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Reads tensors from a ``.safetensors`` file with numpy only.

    Args:
      path: the file.
      names: tensor names to read; ``None`` reads all.

    Returns:
      ``{name: array}`` with the dtype and shape stored in the file (copies, not views of the
      memory map).

    Raises:
      FileNotFoundError: ``path`` is not a file.
      ValueError: the file is truncated or its header is malformed, or a dtype is unknown.
      KeyError: a requested name is not in the file (the message lists what is).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: expected a .safetensors file, {path} does not exist")
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    if raw.size < 8:
        raise ValueError(f"path: {path} is too short ({raw.size} bytes) to be a safetensors file")
    (n,) = struct.unpack("<Q", raw[:8].tobytes())
    if 8 + n > raw.size:
        raise ValueError(f"path: {path} header length {n} exceeds the file size {raw.size}")
    header = json.loads(raw[8 : 8 + n].tobytes().decode("utf-8"))
    header.pop("__metadata__", None)
    wanted = list(header) if names is None else list(names)
    missing = [k for k in wanted if k not in header]
    if missing:
        raise KeyError(f"names: {missing} not in {path.name}; available: {sorted(header)}")
    out: dict[str, np.ndarray] = {}
    base = 8 + n
    for name in wanted:
        info = header[name]
        dtype = _dtype(info["dtype"], name)
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if end - begin != expected or base + end > raw.size:
            raise ValueError(
                f"safetensors: tensor {name!r} spans {end - begin} bytes, expected {expected} "
                f"for shape {shape} {info['dtype']}"
            )
        buf = raw[base + begin : base + end]
        out[name] = np.frombuffer(buf.tobytes(), dtype=dtype).reshape(shape)
    return out
