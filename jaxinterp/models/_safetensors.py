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
      TypeError: ``path`` is not a path, or ``names`` is a single string.
      ValueError: the file is truncated or its header is malformed (the message gives the
        sizes found and needed), or a dtype is unknown.
      KeyError: a requested name is not in the file (the message lists what is).

    >>> import tempfile, json, struct
    >>> head = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = Path(d) / "t.safetensors"
    ...     _ = p.write_bytes(struct.pack("<Q", len(head)) + head + np.ones(2, "<f4").tobytes())
    ...     read_safetensors(p)["w"].tolist()
    [1.0, 1.0]
    """
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path: expected a str or Path, got {type(path).__name__}")
    if isinstance(names, str):
        raise TypeError(f"names: expected a list of tensor names, got the single string {names!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: expected a .safetensors file, {path} does not exist")
    empty = path.stat().st_size == 0  # np.memmap refuses an empty file
    raw = np.zeros(0, np.uint8) if empty else np.memmap(path, dtype=np.uint8, mode="r")
    if raw.size < 8:
        raise ValueError(f"path: {path} is too short ({raw.size} bytes) to be a safetensors file")
    (n,) = struct.unpack("<Q", raw[:8].tobytes())
    if 8 + n > raw.size:
        raise ValueError(
            f"path: {path} is truncated or not a safetensors file: its header declares {n} "
            f"bytes of JSON but only {raw.size - 8} bytes follow the 8-byte length"
        )
    try:
        header = json.loads(raw[8 : 8 + n].tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"path: {path} has a malformed safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"path: {path} has a malformed safetensors header (not a JSON object)")
    header.pop("__metadata__", None)
    wanted = list(header) if names is None else list(names)
    missing = [k for k in wanted if k not in header]
    if missing:
        raise KeyError(f"names: {missing} not in {path.name}; available: {sorted(header)}")
    out: dict[str, np.ndarray] = {}
    base = 8 + n
    data_size = raw.size - base
    for name in wanted:
        info = header[name]
        dtype = _dtype(info["dtype"], name)
        begin, end = (int(v) for v in info["data_offsets"])
        shape = tuple(int(d) for d in info["shape"])
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if not 0 <= begin <= end or end - begin != expected:
            raise ValueError(
                f"path: {path} is malformed: tensor {name!r} of shape {shape} {info['dtype']} "
                f"needs {expected} bytes, but its header offsets [{begin}, {end}) span "
                f"{end - begin}"
            )
        if end > data_size:
            raise ValueError(
                f"path: {path} is truncated: tensor {name!r} ({shape} {info['dtype']}) needs "
                f"data bytes [{begin}, {end}), but the file holds only {data_size} data bytes "
                f"({raw.size} bytes in all, {base + end} expected at least)"
            )
        buf = raw[base + begin : base + end]
        out[name] = np.frombuffer(buf.tobytes(), dtype=dtype).reshape(shape)
    return out
