"""The SpeechLM model: stream strategies (patterns), backbones, heads, losses, save/load.

Registries: ``PATTERNS`` (stream strategies: flat, parallel, delay, multiscale, ar_nar) and
``BACKBONES`` (builtin, hf). Adding either is one file plus one registration line: a strategy is a
:class:`Pattern` subclass (layout, rows per segment, decoding slots, loss, extra modules and config
keys, an optional pass after decoding; ``tests/test_strategy_plugin.py`` registers one).
"""
from speechlm.models.builtin import BACKBONES, BuiltinDecoder, KVCache, load_llama_weights
from speechlm.models.config import ModelConfig
from speechlm.models import hf as _hf  # noqa: F401  (registers the hf backbone)
from speechlm.models.patterns import DEFAULT_STRATEGY, PATTERNS, Layout, Pattern, Slot
from speechlm.models.speechlm import ModelOutput, Prepared, SpeechLM

__all__ = [
    "SpeechLM", "ModelConfig", "ModelOutput", "Prepared", "PATTERNS", "DEFAULT_STRATEGY", "Pattern", "Layout", "Slot",
    "BACKBONES", "BuiltinDecoder", "KVCache", "load_llama_weights",
]
