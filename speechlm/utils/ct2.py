"""Read and write CTranslate2 model files (``model.bin``), so weights trained here in torch go
back into the fast CTranslate2 runtime (``speechlm finetune-whisper``).

The file (binary version 6, little endian): ``u32 version``, the spec name (``u16`` length +
NUL-terminated bytes), ``u32 revision``, ``u32 n``, then ``n`` variables (name, ``u8`` rank,
``u32`` dims, ``u8`` dtype, ``u32`` byte count, raw data), then ``u32`` aliases (name, target).
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# CTranslate2's DataType ids (include/ctranslate2/types.h); bfloat16 is kept as raw uint16
DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: np.uint16}
VERSIONS = (6,)  # the layout this reader was checked on (the bundled tiny.en round-trips byte for byte)


@dataclass
class CT2Model:
    """The variables of a ``model.bin``, in file order."""

    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    dtypes: dict[str, int]
    aliases: list[tuple[str, str]] = field(default_factory=list)
    version: int = 6


def _read_str(f) -> str:
    (n,) = struct.unpack("<H", f.read(2))
    return f.read(n)[:-1].decode("utf-8")


def _write_str(f, s: str) -> None:
    b = s.encode("utf-8") + b"\0"
    f.write(struct.pack("<H", len(b)) + b)


def read_ct2(path: str | os.PathLike) -> CT2Model:
    """Parse ``path`` (a ``model.bin``)."""
    path = Path(path)
    with open(path, "rb") as f:
        (version,) = struct.unpack("<I", f.read(4))
        if version not in VERSIONS:
            raise ValueError(f"{path}: CTranslate2 model version {version}; this reader knows {VERSIONS}")
        spec = _read_str(f)
        (revision,) = struct.unpack("<I", f.read(4))
        (n,) = struct.unpack("<I", f.read(4))
        variables, dtypes = {}, {}
        for _ in range(n):
            name = _read_str(f)
            (rank,) = struct.unpack("<B", f.read(1))
            dims = struct.unpack(f"<{rank}I", f.read(4 * rank))
            (dt,) = struct.unpack("<B", f.read(1))
            (nbytes,) = struct.unpack("<I", f.read(4))
            if dt not in DTYPES:
                raise ValueError(f"{path}: variable {name} has an unknown dtype id {dt}")
            variables[name] = np.frombuffer(f.read(nbytes), dtype=DTYPES[dt]).reshape(dims)
            dtypes[name] = dt
        (n_alias,) = struct.unpack("<I", f.read(4))
        aliases = [(_read_str(f), _read_str(f)) for _ in range(n_alias)]
        if f.read(1):
            raise ValueError(f"{path}: bytes left after the aliases; not a model this reader knows")
    return CT2Model(spec, revision, variables, dtypes, aliases, version)


def write_ct2(model: CT2Model, path: str | os.PathLike) -> None:
    """Write ``model`` to ``path`` atomically; each variable keeps the dtype it was read with."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<I", model.version))
        _write_str(f, model.spec)
        f.write(struct.pack("<II", model.revision, len(model.variables)))
        for name, value in model.variables.items():
            a = np.asarray(value, dtype=DTYPES[model.dtypes[name]])  # ascontiguousarray would make a 0-d array 1-d
            _write_str(f, name)
            f.write(struct.pack("<B", a.ndim) + struct.pack(f"<{a.ndim}I", *a.shape))
            f.write(struct.pack("<BI", model.dtypes[name], a.nbytes))
            f.write(a.tobytes())
        f.write(struct.pack("<I", len(model.aliases)))
        for name, target in model.aliases:
            _write_str(f, name)
            _write_str(f, target)
    os.replace(tmp, path)
