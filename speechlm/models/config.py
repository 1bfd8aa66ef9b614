"""``ModelConfig``: every option of :class:`speechlm.models.SpeechLM`, loaded from YAML.

Size presets ship in the package (``speechlm/conf/model/{tiny,30m,360m,1.7b}.yaml``); load one with
``load_config(ModelConfig, resolve_config("model", "tiny"))`` (:mod:`speechlm.conf`). Unknown keys
are errors naming the key.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass, field

from speechlm.config import ConfigError

AUTOCAST_CHOICES = ("none", "bf16", "auto")


@dataclass
class ModelConfig:
    """Architecture and training options of the SpeechLM.

    strategy: stream strategy (``flat | parallel | delay | multiscale | ar_nar``).
    backbone: ``builtin`` (Llama-style decoder below) or ``hf`` (a causal LM from ``hf_path``).
    n_streams: streams per row; None = the most streams of any tokenizer in the vocabulary.
    """

    strategy: str = "delay"
    backbone: str = "builtin"
    n_streams: int | None = None
    # builtin backbone
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None
    ffn_dim: int | None = None
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    dropout: float = 0.0
    max_len: int = 8192
    init_std: float = 0.02
    # hf backbone
    hf_path: str | None = None  # local directory of a transformers causal LM
    hf_text_tokenizer: str | None = None  # vocabulary tokenizer that IS the LLM's tokenizer: copy its rows
    freeze_text_rows: bool = False  # keep the copied text rows fixed (gradients zeroed)
    # embeddings and heads
    tie_embeddings: bool = True
    stream_weights: list[float] = field(default_factory=list)  # loss weight per stream; [] = all 1
    # stream-0 softmax over the whole vocabulary (True) or over the target segment's own range plus
    # the special tokens (False: what decoding masks allow anyway, and far cheaper with big LLM vocabularies)
    stream0_full_vocab: bool = False
    # multiscale local (depth) transformer
    local_dim: int = 128
    local_layers: int = 2
    local_heads: int = 4
    # ar_nar: weight of the non-autoregressive loss
    nar_weight: float = 1.0
    # options that make small models learn from audio
    cond_reduction: int = 1  # stack this many rows of audio conditions into one (1 = off)
    prefix_lm: bool = True  # honour Batch.prefix_lens (bidirectional attention over conditions)
    ctc_weight: float = 0.0  # auxiliary CTC over audio-conditioned text targets (0 = no CTC head)
    ctc_tokenizer: str | None = None  # text tokenizer the CTC head predicts (required if ctc_weight > 0)
    # TTS alignment: guided-attention loss on head 0 of one layer (audio targets -> text conditions)
    guided_attn_weight: float = 0.0  # per generated frame, against ~30 for the frame's cross-entropy
    guided_attn_layer: int = -1  # -1: the middle layer (builtin backbone only)
    guided_attn_sigma: float = 0.2  # width of the diagonal band, as a share of the text/audio length
    # length head: predicts each example's target rows per text-condition row (per condition row
    # when it has no text conditions) from the prompt's hidden states (detached: the backbone does
    # not learn for it); decoding can bound lengths by it
    length_weight: float = 0.0  # weight of its L1 loss on the log ratio, per example (0 = no head)
    # target progress input (speechlm/models/progress.py): rows of an audio target that is the whole
    # target (TTS speech) are told the share done and the frames left; decoding takes the length
    # from the length head (needs length_weight > 0)
    progress: bool = False
    # numerics and memory
    autocast: str = "none"  # none | bf16 | auto (bf16 where the CPU supports it, or on CUDA)
    grad_checkpointing: bool = False  # recompute each backbone layer in the backward pass

    def validate(self) -> "ModelConfig":
        from speechlm.models.builtin import BACKBONES
        from speechlm.models.patterns import PATTERNS

        import speechlm.models.hf  # noqa: F401  (registers the hf backbone)

        for key, reg in (("strategy", PATTERNS), ("backbone", BACKBONES)):
            try:
                reg.get(getattr(self, key))
            except KeyError as e:
                raise ConfigError(f"model.{key}: {e.args[0]}") from None
        if self.autocast not in AUTOCAST_CHOICES:
            raise ConfigError(f"model.autocast: {self.autocast!r} is not one of {', '.join(AUTOCAST_CHOICES)}")
        if self.backbone == "hf" and not self.hf_path:
            raise ConfigError("model.hf_path: the hf backbone needs the local directory of a causal LM")
        if self.ctc_weight > 0 and not self.ctc_tokenizer:
            raise ConfigError("model.ctc_tokenizer: ctc_weight > 0 needs the name of the text tokenizer to predict")
        if self.guided_attn_weight > 0:
            if self.backbone != "builtin":
                raise ConfigError("model.guided_attn_weight: the guided-attention loss needs the builtin backbone")
            if not -1 <= self.guided_attn_layer < self.n_layers:
                raise ConfigError(f"model.guided_attn_layer {self.guided_attn_layer} is not a layer of "
                                  f"{self.n_layers} (-1: the middle one)")
            if self.grad_checkpointing:
                raise ConfigError("model.guided_attn_weight does not work with grad_checkpointing (the "
                                  "recomputed layer would not record its attention)")
            if self.guided_attn_sigma <= 0:
                raise ConfigError(f"model.guided_attn_sigma must be > 0, got {self.guided_attn_sigma}")
        if self.length_weight < 0:
            raise ConfigError(f"model.length_weight must be >= 0, got {self.length_weight}")
        if self.progress and self.length_weight <= 0:
            raise ConfigError("model.progress needs a length head to decode with (model.length_weight > 0)")
        if self.progress and self.strategy == "flat":
            raise ConfigError("model.progress needs one row per frame; the flat strategy has one per token")
        if self.cond_reduction < 1:
            raise ConfigError(f"model.cond_reduction must be >= 1, got {self.cond_reduction}")
        if self.backbone == "builtin" and self.dim % self.n_heads:
            raise ConfigError(f"model.dim {self.dim} must be divisible by model.n_heads {self.n_heads}")
        return self


def cpu_has_bf16() -> bool:
    """True where the CPU has native bf16 matmul (avx512_bf16 or AMX)."""
    if platform.system() != "Linux":
        return False
    try:
        flags = open("/proc/cpuinfo", encoding="utf-8").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_enabled(mode: str, device_type: str) -> bool:
    if mode == "bf16":
        return True
    if mode == "auto":
        return device_type == "cuda" or (device_type == "cpu" and cpu_has_bf16())
    return False


__all__ = ["ModelConfig", "autocast_enabled", "cpu_has_bf16"]
