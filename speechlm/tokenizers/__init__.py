"""Tokenizers behind one interface, built by name from ``tokenizers.yaml``.

``tokenizers.yaml`` maps instance names (what task templates refer to) to a registered type and
its options, e.g.::

    codec: {type: codec2}
    phone: {type: g2p}
    text_bpe: {type: sentencepiece, model: dump/bpe/bpe.model}
    codec_ph: {type: codec2_phones, rows_of: codec}   # its Codec 2 streams use codec's rows
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from speechlm.config import ConfigError, load_yaml
from speechlm.registry import suggest
from speechlm.tokenizers.base import TOKENIZERS, AudioTokenizer, TextTokenizer, Tokenizer

# Modules that register tokenizers; imported on first use so light commands stay fast.
# Adding a tokenizer: one file in speechlm/tokenizers/ plus its module name here.
_MODULES = ["text", "g2p", "hf_text", "codec2", "codec2_phones", "espeak_phones", "phone_list", "hf_codec", "espnet_codec", "ssl", "codec_ssl"]


def _load_plugins() -> None:
    for m in _MODULES:
        name = f"speechlm.tokenizers.{m}"
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)


def tokenizer_class(kind: str) -> type[Tokenizer]:
    """The registered tokenizer class of type ``kind`` (built-ins loaded first; KeyError if unknown)."""
    _load_plugins()
    return TOKENIZERS.get(kind)


def build_tokenizer(spec: dict[str, Any], base_dir: str | os.PathLike | None = None, where: str = "tokenizer",
                    confine: bool = False) -> Tokenizer:
    """Build one tokenizer from ``{type: NAME, **options}``; relative paths resolve against ``base_dir``.

    ``confine``: every file option must stay inside ``base_dir`` (a packed model dir, which may
    come from anyone: ``../../etc/passwd`` or an absolute path is refused, naming the key)."""
    _load_plugins()
    if not isinstance(spec, dict) or "type" not in spec:
        raise ConfigError(f"{where}: expected a mapping with a 'type' key, got {spec!r}")
    opts = dict(spec)
    kind = opts.pop("type")
    rows_of = opts.pop("rows_of", None)  # any type: read by the vocabulary, not the tokenizer
    if rows_of is not None and not isinstance(rows_of, str):
        raise ConfigError(f"{where}.rows_of: expected the name of another tokenizer, got {rows_of!r}")
    try:
        cls = TOKENIZERS.get(kind)
    except KeyError as e:
        raise ConfigError(f"{where}.type: {e.args[0]}") from None
    if confine:
        for key, v in _outside_paths(spec):
            raise ConfigError(
                f"{where}.{key}: {v!r} points outside the model dir {base_dir}; a packed model's tokenizer files "
                "must be inside it (paths relative to the dir, no '..'): re-pack the model with `speechlm pack`"
            )
    if base_dir is not None:
        for k, v in opts.items():
            if isinstance(v, str) and k in getattr(cls, "path_options", ()) and not os.path.isabs(v):
                opts[k] = str(Path(base_dir) / v)
    try:
        tok = cls(**opts)
    except TypeError as e:
        import inspect

        params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        bad = [k for k in opts if k not in params]
        if bad:
            raise ConfigError(
                f"{where}: unknown option {bad[0]!r}{suggest(bad[0], params)} for tokenizer type "
                f"{kind!r}; valid options: {', '.join(params)}"
            ) from None
        raise ConfigError(f"{where}: {e}") from None
    tok.options = dict(spec)
    tok.rows_of = rows_of
    return tok


def _inside(value: str) -> bool:
    """Whether a relative path stays below its base dir (by its words, so a hub cache's symlinked
    files still load)."""
    norm = os.path.normpath(value)
    return not os.path.isabs(value) and norm != ".." and not norm.startswith(".." + os.sep)


def _outside_paths(spec: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """(key, value) of every file option of ``spec`` that leaves its base dir, nested specs
    (e.g. the parts of ``codec_ssl``) included."""
    try:
        cls = TOKENIZERS.get(spec.get("type"))
    except KeyError:
        return []  # reported by the build
    out = []
    for k, v in spec.items():
        if k in getattr(cls, "path_options", ()) and isinstance(v, str) and not _inside(v):
            out.append((prefix + k, v))
        elif isinstance(v, dict) and "type" in v:
            out += _outside_paths(v, f"{prefix}{k}.")
    return out


def path_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, or of a dir's files (relative names and contents, in name order)."""
    import hashlib

    path = Path(path)
    if path.is_file():
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path).as_posix()}\0{path_sha256(f)}\n".encode())
    return h.hexdigest()


def file_digests(spec: dict[str, Any], base_dir: str | os.PathLike | None = None,
                 prefix: str = "") -> dict[str, str]:
    """``{option key: sha256}`` of the files a tokenizer spec names (nested specs included, keys
    like ``ssl.kmeans``): what its tokens depend on besides its options. Options that name no
    existing path (e.g. a hub model id) are left out; relative paths resolve against ``base_dir``
    (default: the current directory), as when the tokenizer is built."""
    try:
        cls = tokenizer_class(spec.get("type"))
    except KeyError:
        return {}
    out: dict[str, str] = {}
    for k, v in spec.items():
        if k in getattr(cls, "path_options", ()) and isinstance(v, str) and v:
            path = Path(v) if base_dir is None or os.path.isabs(v) else Path(base_dir) / v
            if path.exists():
                out[prefix + k] = path_sha256(path)
        elif isinstance(v, dict) and "type" in v:
            out.update(file_digests(v, base_dir, f"{prefix}{k}."))
    return out


def load_tokenizer_specs(path: str | os.PathLike) -> dict[str, dict]:
    data = load_yaml(path)
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{path}: expected a mapping of tokenizer names to {{type: ..., ...}}")
    return data


def load_tokenizers(path: str | os.PathLike, names: list[str] | None = None,
                    base_dir: str | os.PathLike | None = None, confine: bool | None = None) -> dict[str, Tokenizer]:
    """Build the tokenizers named in ``path`` (all, or only ``names``).

    Relative file options resolve against ``base_dir`` (default: the current directory, as in
    recipes; packed model dirs pass their own directory). ``confine`` (default: whether
    ``base_dir`` is given) refuses file options that point outside ``base_dir``."""
    confine = base_dir is not None if confine is None else confine
    specs = load_tokenizer_specs(path)
    if names is not None:
        missing = [n for n in names if n not in specs]
        if missing:
            raise ConfigError(
                f"{path}: no tokenizer named {missing[0]!r}{suggest(missing[0], specs)}; "
                f"it defines: {', '.join(specs)}"
            )
    return {
        n: build_tokenizer(s, base_dir=base_dir, where=f"{path}:{n}", confine=confine)
        for n, s in specs.items() if names is None or n in names
    }


__all__ = [
    "TOKENIZERS", "Tokenizer", "TextTokenizer", "AudioTokenizer",
    "build_tokenizer", "tokenizer_class", "load_tokenizers", "load_tokenizer_specs", "file_digests", "path_sha256",
]
