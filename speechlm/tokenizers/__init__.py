"""Tokenizers behind one interface, built by name from ``tokenizers.yaml``.

``tokenizers.yaml`` maps instance names (what task templates refer to) to a registered type and
its options, e.g.::

    codec: {type: codec2}
    phone: {type: g2p}
    text_bpe: {type: sentencepiece, model: dump/bpe/bpe.model}
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
_MODULES = ["text", "g2p", "hf_text", "codec2", "hf_codec", "espnet_codec", "ssl", "codec_ssl"]


def _load_plugins() -> None:
    for m in _MODULES:
        name = f"speechlm.tokenizers.{m}"
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)


def build_tokenizer(spec: dict[str, Any], base_dir: str | os.PathLike | None = None, where: str = "tokenizer") -> Tokenizer:
    """Build one tokenizer from ``{type: NAME, **options}``; relative paths resolve against ``base_dir``."""
    _load_plugins()
    if not isinstance(spec, dict) or "type" not in spec:
        raise ConfigError(f"{where}: expected a mapping with a 'type' key, got {spec!r}")
    opts = dict(spec)
    kind = opts.pop("type")
    try:
        cls = TOKENIZERS.get(kind)
    except KeyError as e:
        raise ConfigError(f"{where}.type: {e.args[0]}") from None
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
    return tok


def load_tokenizer_specs(path: str | os.PathLike) -> dict[str, dict]:
    data = load_yaml(path)
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{path}: expected a mapping of tokenizer names to {{type: ..., ...}}")
    return data


def load_tokenizers(path: str | os.PathLike, names: list[str] | None = None,
                    base_dir: str | os.PathLike | None = None) -> dict[str, Tokenizer]:
    """Build the tokenizers named in ``path`` (all, or only ``names``).

    Relative file options resolve against ``base_dir`` (default: the current directory, as in
    recipes; packed model dirs pass their own directory)."""
    specs = load_tokenizer_specs(path)
    if names is not None:
        missing = [n for n in names if n not in specs]
        if missing:
            raise ConfigError(
                f"{path}: no tokenizer named {missing[0]!r}{suggest(missing[0], specs)}; "
                f"it defines: {', '.join(specs)}"
            )
    return {
        n: build_tokenizer(s, base_dir=base_dir, where=f"{path}:{n}")
        for n, s in specs.items() if names is None or n in names
    }


__all__ = [
    "TOKENIZERS", "Tokenizer", "TextTokenizer", "AudioTokenizer",
    "build_tokenizer", "load_tokenizers", "load_tokenizer_specs",
]
