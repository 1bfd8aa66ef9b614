"""ESPnet GAN codecs (``espnet2.gan_codec``: SoundStream, EnCodec, DAC, FunCodec) from local files.

Give the ``config.yaml`` that ESPnet's codec recipe (``egs2/*/codec1``) wrote next to the model
and the checkpoint (``*.pth``: the state dict of ``ESPnetGANCodecModel``, or a training
checkpoint holding it under ``model``)::

    codec: {type: espnet_codec, config: exp/codec/config.yaml,
            checkpoint: exp/codec/valid.mel_loss.best.pth, n_codebooks: 8}

The codec class is imported from ``espnet2.gan_codec`` directly (``espnet2.tasks.gan_codec``
pulls in text frontends that try to download nltk data). Residual quantizers make the first
``n`` codebooks independent of the number in use, so ``n_codebooks`` keeps the first ``n``.
"""
from __future__ import annotations

import importlib
import logging
from pathlib import Path

import numpy as np

from speechlm.tokenizers.base import TOKENIZERS, AudioTokenizer

log = logging.getLogger(__name__)

#: ``codec:`` value of an ESPnet config -> (module, class) in ``espnet2.gan_codec``.
CODECS = {
    "soundstream": ("espnet2.gan_codec.soundstream.soundstream", "SoundStream"),
    "encodec": ("espnet2.gan_codec.encodec.encodec", "Encodec"),
    "dac": ("espnet2.gan_codec.dac.dac", "DAC"),
    "funcodec": ("espnet2.gan_codec.funcodec.funcodec", "FunCodec"),
}


def build_espnet_codec(config: str | Path, checkpoint: str | Path | None, device: str = "cpu"):
    """The ``ESPnetGANCodecModel`` described by an ESPnet codec ``config.yaml``, weights loaded strictly."""
    import torch
    import yaml

    from espnet2.gan_codec.espnet_model import ESPnetGANCodecModel

    config = Path(config)
    if not config.is_file():
        raise FileNotFoundError(f"espnet_codec: config not found: {config}")
    with open(config, encoding="utf-8") as f:
        conf = yaml.safe_load(f) or {}
    name = conf.get("codec")
    if name not in CODECS:
        raise ValueError(f"espnet_codec: {config}: 'codec: {name}' is not one of {', '.join(CODECS)}")
    module, cls_name = CODECS[name]
    codec = getattr(importlib.import_module(module), cls_name)(**(conf.get("codec_conf") or {}))
    model = ESPnetGANCodecModel(codec=codec, **(conf.get("model_conf") or {}))
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise FileNotFoundError(f"espnet_codec: checkpoint not found: {checkpoint}")
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        result = model.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if ".generator." in f".{k}"]
        if missing or result.unexpected_keys:
            raise ValueError(f"espnet_codec: {checkpoint} does not match {config}: "
                             f"missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}")
    else:
        log.warning("espnet_codec: no checkpoint given; using randomly initialized weights of %s", config)
    return model.to(device).eval()


@TOKENIZERS.register("espnet_codec")
class ESPnetCodecTokenizer(AudioTokenizer):
    """ESPnet GAN codec codes as ``[frames, n_codebooks]``.

    Args:
        config: the codec's ESPnet ``config.yaml``.
        checkpoint: its ``*.pth`` weights.
        n_codebooks: codebooks in use (default: all the codec emits at its top bandwidth).
        device: ``cpu``, ``cuda`` or ``cuda:N``.
    """

    path_options = ("config", "checkpoint")

    def __init__(self, config: str, checkpoint: str | None = None, n_codebooks: int | None = None,
                 device: str = "cpu") -> None:
        import torch

        self.config, self.checkpoint, self.device = str(config), checkpoint and str(checkpoint), device
        self.model = build_espnet_codec(config, checkpoint, device)
        meta = self.model.meta_info()
        self.sample_rate = int(meta["fs"])
        self.hop = int(meta["frame_shift"])
        with torch.inference_mode():  # what the codec emits at its top bandwidth
            probe = self.model.encode(torch.zeros(1, 1, self.hop * 4, device=device))
        max_q = int(probe.shape[0])
        n = max_q if n_codebooks is None else int(n_codebooks)
        if not 1 <= n <= max_q:
            raise ValueError(f"espnet_codec: n_codebooks={n_codebooks} but {config} emits 1..{max_q} codebooks")
        self.n_codebooks = n
        self._sizes = [int(s) for s in meta["code_size_per_stream"]][:n]

    @property
    def codebook_sizes(self) -> list[int]:
        return list(self._sizes)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop

    def encode(self, wav: np.ndarray, sample_rate: int | None = None) -> np.ndarray:
        import torch

        x = torch.from_numpy(self.prepare(wav, sample_rate)).to(self.device).view(1, 1, -1)
        with torch.inference_mode():
            codes = self.model.encode(x)  # [n_q, B, T]
        return codes[: self.n_codebooks, 0].T.cpu().numpy().astype(np.int32)

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        import torch

        tokens = np.asarray(tokens)
        if tokens.ndim != 2 or tokens.shape[1] != self.n_codebooks:
            raise ValueError(f"espnet_codec: expected tokens [frames, {self.n_codebooks}], got {tokens.shape}")
        codes = torch.from_numpy(tokens.astype(np.int64).T.copy()).unsqueeze(1).to(self.device)  # [n, 1, T]
        with torch.inference_mode():
            wav = self.model.decode(codes)
        return wav.reshape(-1).float().cpu().numpy()

    def files(self) -> list[Path]:
        return [Path(p) for p in (self.config, self.checkpoint) if p]
