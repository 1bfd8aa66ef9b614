"""The SpeechLM: stream embeddings -> backbone -> stream-strategy head, with its loss.

Example:
    >>> model = SpeechLM(ModelConfig(strategy="delay", dim=64, n_layers=2), vocab)
    >>> out = model(batch)               # ModelOutput(loss, loss_sum, weight_sum, stats)
    >>> out.loss.backward()
    >>> model.save_pretrained("exp/tag/checkpoints/step_100")
    >>> model = SpeechLM.from_pretrained("exp/tag/checkpoints/step_100")
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from speechlm.config import ConfigError
from speechlm.data.batch import Batch
from speechlm.data.sequence import AUDIO_TGT
from speechlm.models.builtin import BACKBONES, BuiltinDecoder
from speechlm.models.config import ModelConfig
from speechlm.models.features import length_units
from speechlm.models.heads import OutputHead, StreamEmbedding, stream_ids_from_vocab
from speechlm.models.losses import ctc_loss, guided_attention_loss, length_loss
from speechlm.models.next_phone import NextPhoneEmbedding, layout_next_phones
from speechlm.models.patterns import PATTERNS, Layout
from speechlm.models.progress import ProgressEmbedding, layout_progress
from speechlm.models.reduction import CondStacker, Reduction, reduction_map
from speechlm.vocab import Vocabulary

log = logging.getLogger(__name__)


@dataclass
class ModelOutput:
    """``loss = loss_sum / weight_sum``; ``stats`` maps a name to ``(sum, count)`` (summable).

    ``loss_sum`` and ``weight_sum`` are detached (for logging and all-reduce); for exact
    normalisation over accumulation steps and ranks backpropagate
    ``loss * weight_sum / total_weight``, where ``total_weight`` sums ``weight_sum``."""

    loss: torch.Tensor
    loss_sum: torch.Tensor
    weight_sum: torch.Tensor
    stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


@dataclass
class Prepared:
    """A batch laid out by the pattern and reduced: what the backbone sees.

    x ``[B, T'', D]`` (None until embedded), lengths/prefix ``[B]``, kinds ``[B, T'']``,
    last ``[B, T'']``: the layout row each position stands for (-1 past the end).
    """

    layout: Layout
    red: Reduction | None
    lengths: torch.Tensor
    prefix: torch.Tensor
    kinds: torch.Tensor
    last: torch.Tensor
    x: torch.Tensor | None = None
    progress: tuple[torch.Tensor, torch.Tensor] | None = None  # (j, L) per layout row (models with it)
    next_phone: torch.Tensor | None = None  # the text's next phone per layout row (models with it)


class SpeechLM(nn.Module):
    """Decoder-only LM over the joint vocabulary (see ``docs/interfaces.md``, "Model")."""

    def __init__(self, config: ModelConfig, vocab: Vocabulary, _backbone_dir: str | None = None) -> None:
        super().__init__()
        config.validate()
        self.config, self.vocab = config, vocab
        S = config.n_streams or max([vocab.n_streams(t) for t in vocab.ranges] or [1])
        config.n_streams = S
        self.n_streams = S
        self.pattern = PATTERNS.get(config.strategy)(S, vocab.pad_id)
        S2 = self.pattern.model_streams
        if config.stream_weights and len(config.stream_weights) != S2:
            raise ValueError(f"model.stream_weights has {len(config.stream_weights)} values, the model {S2} streams")
        V = len(vocab)
        if config.backbone == "builtin":
            self.backbone = BuiltinDecoder(
                config.dim, config.n_layers, config.n_heads, config.n_kv_heads, config.ffn_dim,
                config.rope_theta, config.norm_eps, config.dropout, config.max_len,
            )
        else:
            path = _backbone_dir or config.hf_path
            self.backbone = BACKBONES.get(config.backbone)(path, pretrained=_backbone_dir is None,
                                                           layers=config.hf_layers)
        D = self.backbone.dim
        self.embed = StreamEmbedding(V, D, vocab.pad_id)
        self.head = OutputHead(D, V, stream_ids_from_vocab(vocab, S2), self.embed.weight if config.tie_embeddings else None)
        if not config.stream0_full_vocab:
            ranges = [(a, b) for _, _, a, b in vocab.unique_ranges()]  # shared rows are one group
            first = [ranges.index(vocab.stream_range(t, 0)) for t, _, _, _ in vocab.unique_ranges()]
            inside = torch.zeros(V, dtype=torch.bool)
            for a, b in ranges:
                inside[a:b] = True
            self.head.set_stream0_groups(ranges, first, (~inside).nonzero()[:, 0])
        self.stacker = CondStacker(D, config.cond_reduction) if config.cond_reduction > 1 else None
        self.depth: nn.Module | None = None  # a depth head (multiscale), read by :meth:`depth_step`
        for name, module in self.pattern.modules(config, D).items():  # the strategy's own parts
            setattr(self, name, module)
        self.ctc_range = None
        if config.ctc_weight > 0:
            self.ctc_range = vocab.stream_range(config.ctc_tokenizer, 0)
            self.ctc_head = nn.Linear(D, self.ctc_range[1] - self.ctc_range[0] + 1)  # column 0 = blank
        self._guided_layer = None  # the layer whose attention head 0 the guided-attention loss shapes
        if config.guided_attn_weight > 0:
            self._guided_layer = config.guided_attn_layer if config.guided_attn_layer >= 0 else config.n_layers // 2
        self._warned_reduction = False
        self._init_weights()
        if config.backbone == "builtin" and _backbone_dir is None:
            self.backbone.init_weights(config.init_std)
        if hasattr(self.backbone, "pretrained_rows") and _backbone_dir is None:
            self._copy_pretrained_rows()
        if config.freeze_layers:
            if config.freeze_layers > self.backbone.n_layers:
                raise ConfigError(f"model.freeze_layers {config.freeze_layers} is more than the backbone's "
                                  f"{self.backbone.n_layers} layers")
            self.backbone.freeze(config.freeze_layers)
        # made last, so that a model with the head starts from the same weights as one without
        self.length_head = (
            nn.Sequential(nn.Linear(3 * D, D), nn.GELU(), nn.Linear(D, 1)) if config.length_weight > 0 else None
        )
        self.progress = ProgressEmbedding(D) if config.progress else None  # zero at the start
        self.next_phone = None  # zero at the start
        if config.next_phone:
            if config.next_phone not in vocab.ranges or vocab.n_streams(config.next_phone) < 2:
                raise ConfigError(f"model.next_phone: {config.next_phone!r} must be a phone-led audio tokenizer of "
                                  f"the vocabulary (codec2_phones); it has: {', '.join(vocab.ranges)}")
            a, b = vocab.stream_range(config.next_phone, 0)
            self.next_phone = NextPhoneEmbedding(b - a, D)
        if config.history_noise > 0 and config.history_noise_source == "model" and self.depth is not None:
            raise ConfigError(f"model.history_noise_source: model draws every stream from one hidden state; the "
                              f"{config.strategy} strategy predicts streams with a depth head (use random)")
        if config.history_noise > 0:  # start and size of each token's stream range (0: none or clean)
            lo, size = torch.zeros(V, dtype=torch.int64), torch.zeros(V, dtype=torch.int64)
            for t in vocab.ranges:
                for k in range(vocab.n_streams(t)):
                    if config.history_noise_streams and k not in config.history_noise_streams:
                        continue  # left clean
                    a, b = vocab.stream_range(t, k)
                    lo[a:b], size[a:b] = a, b - a
            self.register_buffer("_stream_lo", lo, persistent=False)
            self.register_buffer("_stream_size", size, persistent=False)

    # ---- initialisation -----------------------------------------------------------------
    def _init_weights(self) -> None:
        nn.init.normal_(self.embed.weight, 0.0, self.config.init_std)
        if not self.config.tie_embeddings:
            nn.init.normal_(self.head.weight, 0.0, self.config.init_std)

    def _copy_pretrained_rows(self) -> None:
        inp, out = self.backbone.pretrained_rows()
        if inp is None:
            return
        with torch.no_grad():
            mean, std = inp.mean().item(), inp.std().item()
            self.embed.weight.normal_(mean, std)
            if not self.config.tie_embeddings:
                src = out if out is not None else inp
                self.head.weight.normal_(src.mean().item(), src.std().item())
            name = self.config.hf_text_tokenizer
            if not name:
                return
            a, b = self.vocab.stream_range(name, 0)
            if b - a > inp.shape[0]:
                raise ValueError(
                    f"tokenizer {name!r} has {b - a} ids but the LLM's embedding only {inp.shape[0]} rows: "
                    f"hf_text_tokenizer must be the LLM's own tokenizer"
                )
            self.embed.weight[a:b] = inp[: b - a]
            if not self.config.tie_embeddings:
                self.head.weight[a:b] = (out if out is not None else inp)[: b - a]
        log.info("copied %d pretrained text rows of the LLM to ids [%d, %d)", b - a, a, b)
        if self.config.freeze_text_rows:
            for p in {id(self.embed.weight): self.embed.weight, id(self.head.weight): self.head.weight}.values():
                p.register_hook(lambda g, a=a, b=b: torch.cat([g[:a], torch.zeros_like(g[a:b]), g[b:]]))

    # ---- layout and embedding -----------------------------------------------------------
    def autocast(self, device: torch.device, precision: str = "fp32"):
        """Context for inference in ``precision`` (the decode config's; training autocasts in the
        trainer, by the train config's ``precision``)."""
        from speechlm.utils.precision import autocast

        return autocast(precision, device)

    def prepare(self, tokens, weight, kinds, lengths, prefix_lens) -> Prepared:
        """Lay out with the pattern, then map positions through the condition reduction."""
        layout = self.pattern.build(tokens, weight, kinds, lengths)
        B, T2 = layout.kinds.shape
        progress = None
        if self.progress is not None:
            progress = layout_progress(self.pattern, tokens, kinds, lengths, layout.pos, T2, self.vocab)
        nxt = None
        if self.next_phone is not None:
            nxt = layout_next_phones(tokens, kinds, lengths, layout.pos, T2, self.vocab,
                                     self.config.next_phone)
        pre = torch.zeros(B, dtype=torch.int64, device=tokens.device)
        if self.config.prefix_lm and bool((prefix_lens > 0).any()):
            p = layout.pos.gather(1, prefix_lens.clamp(max=tokens.shape[1] - 1)[:, None])[:, 0]
            pre = torch.where(prefix_lens > 0, p, pre)
        if self.stacker is None:
            last = torch.arange(T2, device=tokens.device).expand(B, -1)
            last = torch.where(last < layout.lengths[:, None], last, torch.full_like(last, -1))
            return Prepared(layout, None, layout.lengths, pre, layout.kinds, last, progress=progress, next_phone=nxt)
        red = reduction_map(layout.kinds, layout.lengths, self.config.cond_reduction)
        pre = torch.where(pre > 0, red.pos.gather(1, pre[:, None])[:, 0], pre)
        return Prepared(layout, red, red.lengths, pre, red.kinds, red.last, progress=progress, next_phone=nxt)

    def embed_prepared(self, prep: Prepared, tokens: torch.Tensor | None = None,
                       extra: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings ``[B, T'', D]`` of the layout tokens (or ``tokens``), plus ``extra`` and the
        progress input per row."""
        tok = self.pattern.ar_tokens(prep.layout.tokens, prep.layout.kinds) if tokens is None else tokens
        x = self.embed(tok)
        if extra is not None:
            x = x + extra
        if prep.progress is not None:
            x = x + self.progress(*prep.progress).to(x.dtype)
        if prep.next_phone is not None:
            x = x + self.next_phone(prep.next_phone).to(x.dtype)
        x = self.stacker(x, prep.red) if self.stacker is not None else x
        return x.detach() if self.config.freeze_layers else x  # the frozen layers below need no gradient

    @staticmethod
    def attention_mask(prep: Prepared, bidirectional: bool = False) -> torch.Tensor | None:
        """Bool ``[B, 1, T, T]``: causal, plus full attention inside each row's prefix (None if plain causal)."""
        T = prep.kinds.shape[1]
        if not bidirectional and not bool((prep.prefix > 0).any()):
            return None
        i = torch.arange(T, device=prep.kinds.device)
        if bidirectional:
            m = i[None, None, :] < prep.lengths[:, None, None]
            m = m.expand(-1, T, -1) | torch.eye(T, dtype=torch.bool, device=m.device)[None]
        else:
            m = (i[None, :, None] >= i[None, None, :]) | (i[None, None, :] < prep.prefix[:, None, None])
        return m[:, None]

    def targets(self, prep: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
        """Next-row targets and weights ``[B, T'', S']`` for each backbone position."""
        lay = prep.layout
        nxt = prep.last + 1
        valid = (prep.last >= 0) & (nxt < lay.lengths[:, None])
        idx = nxt.clamp(max=lay.tokens.shape[1] - 1)[..., None].expand(-1, -1, lay.tokens.shape[2])
        y, w = lay.tokens.gather(1, idx), lay.weight.gather(1, idx) * valid[..., None]
        if prep.red is not None and not self._warned_reduction:
            if float(w.sum()) < float(lay.weight[:, 1:].sum()) - 1e-6:
                log.warning("cond_reduction=%d drops the loss on audio-condition rows inside stacked groups "
                            "(a template asks for loss on an audio condition); use cond_reduction: 1 to keep it",
                            self.config.cond_reduction)
                self._warned_reduction = True
        return y, w

    @property
    def guided_attn(self):
        """The attention module of the guided-attention loss (None without it); a property, so its
        weights are not saved twice."""
        return None if self._guided_layer is None else self.backbone.layers[self._guided_layer].self_attn

    # ---- training forward -----------------------------------------------------------------
    def noisy_history(self, prep: Prepared) -> torch.Tensor:
        """The layout's input tokens with a share ``history_noise`` of the generated audio slots
        replaced by a random token of the same stream, or by one drawn from the model's own
        prediction for it (see ``ModelConfig.history_noise``)."""
        lay = prep.layout
        tok = self.pattern.ar_tokens(lay.tokens, lay.kinds)
        size = self._stream_size[tok]
        hit = ((lay.kinds == AUDIO_TGT)[..., None] & (lay.weight > 0) & (size > 0)
               & (torch.rand(tok.shape, device=tok.device) < self.config.history_noise))
        if self.config.history_noise_source == "model":
            return self._model_drawn(prep, tok, hit)
        rand = self._stream_lo[tok] + (torch.rand(tok.shape, device=tok.device) * size).long().clamp(max=size - 1)
        return torch.where(hit, rand, tok)

    @torch.no_grad()
    def _model_drawn(self, prep: Prepared, tok: torch.Tensor, hit: torch.Tensor) -> torch.Tensor:
        """``tok`` with each ``hit`` slot drawn from the model's prediction for it given the true
        history (one pass over the clean inputs), within the true token's stream range."""
        h = self.backbone(self.embed_prepared(prep), None, self.attention_mask(prep))
        B, T = tok.shape[:2]
        src = torch.full((B, T + 1), -1, dtype=torch.int64, device=tok.device)  # backbone position predicting row t
        p = torch.arange(prep.last.shape[1], device=tok.device).expand(B, -1)
        src.scatter_(1, torch.where(prep.last >= 0, prep.last + 1, T), torch.where(prep.last >= 0, p, -1))
        src = src[:, :T]
        out = tok.clone()
        for k in range(tok.shape[-1]):
            b, t = (hit[..., k] & (src >= 0)).nonzero(as_tuple=True)
            if len(b) == 0:
                continue
            true = tok[b, t, k]
            lo, size = self._stream_lo[true], self._stream_size[true]
            for start in lo.unique().tolist():  # one stream range at a time (one per tokenizer stream)
                sel = lo == start
                ids = torch.arange(start, start + int(size[sel][0]), device=tok.device)
                logits = self.head.logits(h[b[sel], src[b[sel], t[sel]]], k, ids=ids)
                out[b[sel], t[sel], k] = ids[torch.multinomial(logits.float().softmax(-1), 1)[:, 0]]
        return out

    def hidden_states(self, batch: Batch) -> tuple[torch.Tensor, Prepared]:
        """Backbone output ``[B, T'', D]`` of a whole batch (teacher forcing) and its layout."""
        prep = self.prepare(batch.tokens, batch.loss_weight, batch.kinds, batch.lengths, batch.prefix_lens)
        tokens = self.noisy_history(prep) if self.training and self.config.history_noise > 0 else None
        return self.backbone(self.embed_prepared(prep, tokens), None, self.attention_mask(prep)), prep

    def forward(self, batch: Batch) -> ModelOutput:
        """Loss over the loss-weighted (position, stream) slots of ``batch``."""
        guided = self.guided_attn is not None and self.training
        if guided:
            self.guided_attn.record = True
        # no autocast of its own: the caller's precision (the trainer's, by the train config)
        try:
            h, prep = self.hidden_states(batch)
        finally:
            if guided:
                self.guided_attn.record = False
        y, w = self.targets(prep)
        lay = prep.layout
        rows_in = lay.tokens.gather(1, prep.last.clamp(min=0)[..., None].expand(-1, -1, lay.tokens.shape[2]))
        sw = list(self.config.stream_weights) or [1.0] * y.shape[-1]
        if sw[0] != 1.0:  # stream 0 holds text targets too: its weight is for audio targets' slots only
            audio = lay.kinds.gather(1, (prep.last + 1).clamp(0, lay.kinds.shape[1] - 1)) == AUDIO_TGT
            w = torch.cat([torch.where(audio, w[..., 0] * sw[0], w[..., 0])[..., None], w[..., 1:]], -1)
            sw[0] = 1.0
        stats: dict = {}
        with self.head.shared_rows():
            loss_sum, weight_sum = self.pattern.loss(self, prep, h, y, w, sw, stats, rows_in)
        if self.ctc_range is not None:
            rows = None
            if self.config.ctc_tasks:
                rows = torch.tensor([t in self.config.ctc_tasks for t in batch.tasks], device=h.device)
            loss_sum = loss_sum + self.config.ctc_weight * ctc_loss(self.ctc_head, self.ctc_range, prep, h, stats, rows)
        if guided:
            probs, self.guided_attn.probs = self.guided_attn.probs, None
            loss_sum = loss_sum + self.config.guided_attn_weight * guided_attention_loss(
                prep.kinds, probs, self.config.guided_attn_sigma, stats)
        if self.length_head is not None:
            loss_sum = loss_sum + self.config.length_weight * length_loss(self.length_head, prep, h, batch.kinds, stats)
        loss = loss_sum / weight_sum.clamp(min=1e-8)
        return ModelOutput(loss=loss, loss_sum=loss_sum.detach(), weight_sum=weight_sum.detach(), stats=stats)

    def predict_length(self, feats: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
        """Predicted target rows ``[B]`` (float) from the prompt's :func:`length_features` and its
        ``kinds [B, T]`` (models with ``length_weight > 0``; decoding gets the features from
        :meth:`DecodeContext.prefill`)."""
        if self.length_head is None:
            raise ValueError("this model has no length head (train it with model.length_weight > 0)")
        return self.length_head(feats).float()[:, 0].exp() * length_units(kinds).float()

    def new_cache(self, batch_size: int = 1):
        return self.backbone.new_cache(batch_size)

    # ---- the small API decoding uses ---------------------------------------------------------
    def encode(self, prep: Prepared, tokens: torch.Tensor | None = None, extra: torch.Tensor | None = None,
               bidirectional: bool = False) -> torch.Tensor:
        """Backbone output ``[B, T'', D]`` of a prepared batch (or of its layout ``tokens``, plus
        ``extra`` embeddings; ``bidirectional``: full attention, as a non-autoregressive pass)."""
        return self.backbone(self.embed_prepared(prep, tokens, extra), None, self.attention_mask(prep, bidirectional))

    def step_input(self, rows: torch.Tensor, progress: torch.Tensor | None = None,
                   next_phone: torch.Tensor | None = None) -> torch.Tensor:
        """Input ``[B, 1, D]`` of one decoding step: the embedding of the fed rows ``[B, S']``, plus
        the progress input for models with it (``progress [B, 2]``: ``(j, L)`` per row) and the
        next-phone input (``next_phone [B]``: local phone ids, -1 none)."""
        x = self.embed(rows[:, None])
        if self.progress is not None and progress is not None:
            j, L = progress.T
            x = x + self.progress(j, L)[:, None].to(x.dtype)
        if self.next_phone is not None and next_phone is not None:
            x = x + self.next_phone(next_phone)[:, None].to(x.dtype)
        return x

    def logits(self, h: torch.Tensor, k: int, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of model stream ``k`` at hidden states ``h [N, D]`` over its columns (or against
        ``weight``: head rows gathered for a subset of them, see ``Masker.allowed``)."""
        return self.head.logits(h, k, weight=weight)

    def new_depth_cache(self):
        """The local cache of one row's :meth:`depth_step` calls (None without a depth head)."""
        return self.depth.new_cache() if self.depth is not None else None

    def depth_step(self, h: torch.Tensor, k: int, prev: torch.Tensor | None = None, cache=None) -> torch.Tensor:
        """Hidden state ``[N, D]`` that predicts model stream ``k`` of the next row: ``h`` itself
        without a depth head; with one, its local step ``k`` (``prev [N]``: the tokens chosen for
        stream ``k - 1``; ``cache`` from :meth:`new_depth_cache`)."""
        if cache is None:
            return h
        return self.depth.step(h if k == 0 else self.embed.emb(prev), k, cache)

    def stream0_hidden(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states ``[N, D]`` that predict stream 0 at backbone outputs ``h [N, D]`` (through the
        depth head's first step when there is one)."""
        if self.depth is None:
            return h
        return self.depth(h, h.new_zeros(h.shape[0], 0, h.shape[-1]))[:, 0]

    # ---- save / load ----------------------------------------------------------------------
    def save_pretrained(self, out_dir) -> None:
        """Write the model part of a model dir (``config.json``, ``model.safetensors``,
        ``token_list.json``; :mod:`speechlm.models.model_dir`), as ``PyTorchModelHubMixin`` names it."""
        from speechlm.models.model_dir import write_model

        write_model(self, out_dir)

    @classmethod
    def from_pretrained(cls, path, map_location: str | torch.device = "cpu",
                        vocab: Vocabulary | None = None) -> "SpeechLM":
        """Load a saved model (strict). ``vocab``: an extended vocabulary to fine-tune with (old ids
        keep their rows, new ids get fresh ones)."""
        from speechlm.models.model_dir import load_model

        return load_model(cls, path, map_location, vocab)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


__all__ = ["SpeechLM", "ModelOutput", "Prepared"]
