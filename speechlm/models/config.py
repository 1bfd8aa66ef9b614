"""``ModelConfig``: every option of :class:`speechlm.models.SpeechLM`, loaded from YAML.

Size presets ship in the package (``speechlm/conf/model/{tiny,30m,360m,1.7b}.yaml``); load one with
``load_config(ModelConfig, resolve_config("model", "tiny"))`` (:mod:`speechlm.conf`). Unknown keys
are errors naming the key.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from speechlm.config import ConfigError
from speechlm.models.patterns import DEFAULT_STRATEGY, PATTERNS

log = logging.getLogger(__name__)

#: keys of older versions, read (with a warning) and dropped: precision and activation checkpointing
#: are set once, in the train config (``precision``, ``activation_checkpointing``) and, for decoding,
#: in the decode config (``precision``)
DROPPED_KEYS = {
    "autocast": "the precision is the train config's `precision` when training and the decode config's "
                "`precision` when decoding (autocast none = precision fp32)",
    "grad_checkpointing": "activation checkpointing is the train config's `activation_checkpointing`",
}


@dataclass
class ModelConfig:
    """Architecture and training options of the SpeechLM.

    strategy: stream strategy (a name in ``speechlm.models.PATTERNS``: the built-in ``flat``,
    ``parallel``, ``delay``, ``multiscale``, ``ar_nar``).
    backbone: ``builtin`` (Llama-style decoder below) or ``hf`` (a causal LM from ``hf_path``).
    n_streams: streams per row; None = the most streams of any tokenizer in the vocabulary.
    """

    strategy: str = DEFAULT_STRATEGY
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
    dropout: float = 0.0  # builtin: attention weights and each sublayer output, while training only
    max_len: int = 8192
    init_std: float = 0.02
    # hf backbone
    hf_path: str | None = None  # local directory of a transformers causal LM
    hf_text_tokenizer: str | None = None  # vocabulary tokenizer that IS the LLM's tokenizer: copy its rows
    freeze_text_rows: bool = False  # keep the copied text rows fixed (gradients zeroed)
    # keep only the first N layers of the hf model (None: all): a shallower, faster backbone
    # from a pretrained one, whose top layers are the most specific to its own pretraining task
    hf_layers: int | None = None
    # keep the backbone's first N layers (and an hf encoder's own embedding layer) as loaded: no
    # gradient reaches them or the input embeddings, so the backward pass stops above layer N and a
    # step costs ~N/n_layers of the backbone's backward less; the joint token rows then learn through
    # the tied output head only (0 = train every layer). For fine-tuning a pretrained backbone.
    freeze_layers: int = 0
    # embeddings and heads
    tie_embeddings: bool = True
    # loss weight per stream of audio targets ([] = all 1); text targets (stream 0) keep weight 1
    stream_weights: list[float] = field(default_factory=list)
    # stream-0 softmax over the whole vocabulary (True) or over the target segment's own range plus
    # the special tokens (False: what decoding masks allow anyway, and far cheaper with big LLM vocabularies)
    stream0_full_vocab: bool = False
    # keys one strategy reads (its Pattern.config_keys; None = its default there, unset elsewhere:
    # another strategy refuses them)
    local_dim: int | None = None  # multiscale: local (depth) transformer width (default 128)
    local_layers: int | None = None  # multiscale: its layers (default 2)
    local_heads: int | None = None  # multiscale: its heads (default 4)
    nar_weight: float | None = None  # ar_nar: weight of the non-autoregressive loss (default 1.0)
    # options that make small models learn from audio
    cond_reduction: int = 1  # stack this many rows of audio conditions into one (1 = off)
    prefix_lm: bool = True  # honour Batch.prefix_lens (bidirectional attention over conditions)
    ctc_weight: float = 0.0  # auxiliary CTC over audio-conditioned text targets (0 = no CTC head)
    ctc_tokenizer: str | None = None  # text tokenizer the CTC head predicts (required if ctc_weight > 0)
    # the tasks whose examples train the CTC head (empty: every task with audio conditions and text
    # targets); name the transcribing ones where another task's target is not what was said (an
    # agent's call after its monologue)
    ctc_tasks: list[str] = field(default_factory=list)
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
    # exposure bias: while training, this share of the generated audio slots (audio-target rows
    # that carry loss) reads a random token of its stream as input instead of the true one, so the
    # model learns to continue from a history with errors, as it must when it reads its own output
    # (the targets stay true; 0 = off; decoding never changes). history_noise_source: where the
    # replacement comes from: ``random`` (uniform over the stream) or ``model`` (drawn from the
    # model's own prediction for the slot in a first pass without gradients: parallel scheduled
    # sampling, Duckworth et al. 2019; strategies without a depth head)
    history_noise: float = 0.0
    history_noise_source: str = "random"
    # the tokenizer streams (indices) history_noise corrupts; [] = all. A target led by a phone
    # stream (codec2_phones) keeps its phones clean with [1, 2, ...]: the fields must then take
    # their content from the phones, not from a history that may be wrong
    history_noise_streams: list[int] = field(default_factory=list)
    # next-phone input (speechlm/models/next_phone.py): the name of a phone-led audio tokenizer
    # (codec2_phones); each frame of its targets is told the text's next phone. Decoding needs
    # DecodeConfig.follow_phones, which knows it ("" = off)
    next_phone: str = ""

    @classmethod
    def upgrade_keys(cls, data: dict, where: str) -> dict:
        """Drop the keys of :data:`DROPPED_KEYS` (configs of models saved by older versions), with a
        warning when the value asked for something (``autocast`` other than none, checkpointing on)."""
        for key, instead in DROPPED_KEYS.items():
            if key in data:
                value = data.pop(key)
                if value not in (None, False, "none"):
                    log.warning("%s: model config key %s: %r is no longer read: %s", where, key, value, instead)
        return data

    def validate(self) -> "ModelConfig":
        from speechlm.models.builtin import BACKBONES

        import speechlm.models.hf  # noqa: F401  (registers the hf backbone)

        for key, reg in (("strategy", PATTERNS), ("backbone", BACKBONES)):
            try:
                reg.get(getattr(self, key))
            except KeyError as e:
                raise ConfigError(f"model.{key}: {e.args[0]}") from None
        pattern = PATTERNS.get(self.strategy)
        for key, owners in strategy_keys().items():
            if key in pattern.config_keys:
                if getattr(self, key) is None:
                    setattr(self, key, pattern.config_keys[key])
            elif getattr(self, key) is not None:
                raise ConfigError(f"model.{key}: only the {' / '.join(owners)} strategy reads it, and the strategy "
                                  f"is {self.strategy!r}: remove the key (or set model.strategy: {owners[0]})")
        if self.freeze_layers < 0:
            raise ConfigError(f"model.freeze_layers must be >= 0, got {self.freeze_layers}")
        if self.freeze_layers > 0:
            below = [k for k, on in (("cond_reduction", self.cond_reduction > 1), ("progress", self.progress),
                                     ("next_phone", bool(self.next_phone)),
                                     ("tie_embeddings: false", not self.tie_embeddings)) if on]
            if below:
                raise ConfigError(f"model.freeze_layers: no gradient reaches below the first trained layer, so "
                                  f"{', '.join(below)} would never learn; turn it off or set freeze_layers: 0")
        if self.hf_layers is not None and (self.backbone != "hf" or self.hf_layers < 1):
            raise ConfigError(f"model.hf_layers: the number of the hf backbone's layers to keep (>= 1), got "
                              f"{self.hf_layers} with backbone {self.backbone!r} (the builtin one has n_layers)")
        if self.backbone == "hf" and not self.hf_path:
            raise ConfigError("model.hf_path: the hf backbone needs the local directory of a causal LM")
        if self.ctc_weight > 0 and not self.ctc_tokenizer:
            raise ConfigError("model.ctc_tokenizer: ctc_weight > 0 needs the name of the text tokenizer to predict")
        if self.ctc_tasks and self.ctc_weight <= 0:
            raise ConfigError("model.ctc_tasks: names the tasks that train the CTC head, and there is none "
                              "(ctc_weight is 0)")
        if self.guided_attn_weight > 0:
            if self.backbone != "builtin":
                raise ConfigError("model.guided_attn_weight: the guided-attention loss needs the builtin backbone")
            if not -1 <= self.guided_attn_layer < self.n_layers:
                raise ConfigError(f"model.guided_attn_layer {self.guided_attn_layer} is not a layer of "
                                  f"{self.n_layers} (-1: the middle one)")
            if self.guided_attn_sigma <= 0:
                raise ConfigError(f"model.guided_attn_sigma must be > 0, got {self.guided_attn_sigma}")
        if self.length_weight < 0:
            raise ConfigError(f"model.length_weight must be >= 0, got {self.length_weight}")
        if self.progress and self.length_weight <= 0:
            raise ConfigError("model.progress needs a length head to decode with (model.length_weight > 0)")
        if self.progress and not pattern.one_row_per_frame:
            raise ConfigError(f"model.progress needs one row per frame; the {self.strategy} strategy has one per token")
        if self.next_phone and not pattern.one_row_per_frame:
            raise ConfigError(f"model.next_phone needs one row per frame; the {self.strategy} strategy has one per token")
        if not 0 <= self.history_noise < 1:
            raise ConfigError(f"model.history_noise must be in [0, 1), got {self.history_noise}")
        if any(k < 0 for k in self.history_noise_streams):
            raise ConfigError(f"model.history_noise_streams must be stream indices >= 0, got {self.history_noise_streams}")
        if self.history_noise_source not in ("random", "model"):
            raise ConfigError(f"model.history_noise_source must be random or model, got {self.history_noise_source!r}")
        if self.cond_reduction < 1:
            raise ConfigError(f"model.cond_reduction must be >= 1, got {self.cond_reduction}")
        if self.backbone == "builtin" and self.dim % self.n_heads:
            raise ConfigError(f"model.dim {self.dim} must be divisible by model.n_heads {self.n_heads}")
        return self


def strategy_keys() -> dict[str, list[str]]:
    """ModelConfig keys that some stream strategy reads (``Pattern.config_keys``) -> those strategies."""
    out: dict[str, list[str]] = {}
    for name in PATTERNS.names():
        for key in PATTERNS.get(name).config_keys:
            out.setdefault(key, []).append(name)
    return out


def drop_inapplicable(data: dict, where: str) -> dict:
    """A saved model config (``data``, a dict) without the strategy keys its strategy does not read:
    older versions wrote every key (``local_dim`` of a delay model), which validation now refuses."""
    name = data.get("strategy", DEFAULT_STRATEGY)
    if name not in PATTERNS:  # validation names the unknown strategy
        return data
    pattern = PATTERNS.get(name)
    for key in strategy_keys():
        if key in data and key not in pattern.config_keys:
            value = data.pop(key)
            log.debug("%s: dropping %s=%r (the %s strategy does not read it)", where, key, value, pattern.name)
    return data


def legacy_decode_precision(model_dir) -> str | None:
    """The decode precision that the dropped ``autocast`` key of an old model dir's config asked for
    (``none`` -> fp32, ``bf16``, ``auto``), so that the model decodes as it did; None when the config
    has no such key (a decode config's ``precision`` always wins over it)."""
    from speechlm.models.model_dir import read_config_dict  # config.json, or an old dir's config.yaml

    try:
        value = read_config_dict(model_dir).get("autocast")
    except FileNotFoundError:
        return None
    return {"none": "fp32", "bf16": "bf16", "auto": "auto"}.get(value) if value is not None else None


__all__ = ["ModelConfig", "DROPPED_KEYS", "drop_inapplicable", "legacy_decode_precision", "strategy_keys"]
