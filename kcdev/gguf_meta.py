"""Metadata from a GGUF file's header, read without touching its tensors.

A GGUF file starts with its metadata: key/value pairs such as `general.name` or
`tokenizer.chat_template` (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md). Reading one
key means walking the pairs before it. The `gguf` package's `GGUFReader` parses every pair and
every tensor's description into numpy arrays: 17 s for the two small default models on this
project's machines, because each of the vocabulary's 49,152 to 262,144 token strings becomes an
array. `invoke models` and `invoke ps` ask on every run, so this reads the header alone, skipping
values it does not want by their length: milliseconds for the same files.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO

MAGIC = b"GGUF"
# Value types (the spec's gguf_metadata_value_type) and the sizes of the fixed-size ones.
STRING, ARRAY = 8, 9
FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
# Past this many keys or this long a string, the file is not a GGUF file we can trust.
MAX_KEYS = 1 << 16
MAX_STRING = 1 << 26


class GGUFError(ValueError):
    """Not a GGUF file, or its header is cut short or malformed."""


def read_string_value(path: Path, key: str) -> str | None:
    """The string stored under `key` in the file's metadata; None when the key is absent."""
    try:
        with path.open("rb") as f:
            return _find(f, key)
    except struct.error:
        raise GGUFError(f"{path.name}: the GGUF header ends early") from None


def _find(f: BinaryIO, key: str) -> str | None:
    if f.read(4) != MAGIC:
        raise GGUFError(f"{getattr(f, 'name', 'file')}: not a GGUF file")
    (version,) = _unpack(f, "<I")
    if version < 2:
        raise GGUFError(f"GGUF version {version} is too old (32-bit lengths) to be read here")
    _tensors, keys = _unpack(f, "<QQ")
    if keys > MAX_KEYS:
        raise GGUFError(f"the GGUF header claims {keys} metadata keys")
    wanted = key.encode()
    end = os.fstat(f.fileno()).st_size
    for _ in range(keys):
        name = _string(f)
        (kind,) = _unpack(f, "<I")
        if name == wanted:
            return _string(f).decode("utf-8", "replace") if kind == STRING else None
        _skip(f, kind, end)
    return None


def _unpack(f: BinaryIO, fmt: str) -> tuple[int, ...]:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise struct.error("short read")
    return struct.unpack(fmt, data)


def _string(f: BinaryIO) -> bytes:
    (length,) = _unpack(f, "<Q")
    if length > MAX_STRING:
        raise GGUFError(f"a GGUF string claims {length} bytes")
    data = f.read(length)
    if len(data) != length:
        raise struct.error("short read")
    return data


def _skip(f: BinaryIO, kind: int, end: int) -> None:
    if kind in FIXED:
        _forward(f, FIXED[kind], end)
    elif kind == STRING:
        (length,) = _unpack(f, "<Q")
        _forward(f, length, end)
    elif kind == ARRAY:
        item, count = _unpack(f, "<IQ")
        if item in FIXED:
            _forward(f, FIXED[item] * count, end)
        else:
            for _ in range(count):
                _skip(f, item, end)
    else:
        raise GGUFError(f"unknown GGUF value type {kind}")


def _forward(f: BinaryIO, length: int, end: int) -> None:
    """Skip `length` bytes that the file, `end` bytes long, must hold: a damaged length (2**64 - 1
    fits the field) is the header ending early, not an OSError or an overflow from seek()."""
    if f.tell() + length > end:
        raise struct.error("short read")
    f.seek(length, 1)
