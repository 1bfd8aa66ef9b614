"""Neural codecs through ``transformers``: EnCodec, DAC and Mimi loaded from a local directory.

The directory is what ``save_pretrained`` writes (``config.json`` + ``model.safetensors``), e.g.
a download of ``facebook/encodec_24khz``, ``descript/dac_16khz`` or ``kyutai/mimi``. Nothing is
fetched from the network (``local_files_only``). The model type is read from ``config.json``.

Residual quantizers make the first ``n`` codebooks the same whatever the number in use, so
``n_codebooks`` keeps the first ``n`` streams (coarse to fine)::

    codec: {type: hf_codec, model_dir: /models/encodec_24khz, n_codebooks: 8, device: cuda}

=========  ===========================  ===================================================
type       frame rate                   codebooks
=========  ===========================  ===================================================
encodec    sampling_rate / hop (75 Hz)  set by bandwidth: 2 per 1.5 kbps at 24 kHz (max 32)
dac        sampling_rate / hop_length   ``n_codebooks`` of the config (9 or 12)
mimi       12.5 Hz                      up to ``num_quantizers`` (32; Moshi uses 8)
=========  ===========================  ===================================================
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from speechlm.tokenizers.base import TOKENIZERS, AudioTokenizer

log = logging.getLogger(__name__)

SUPPORTED = ("encodec", "dac", "mimi")


def load_hf_codec(model_dir: str | Path, device: str = "cpu"):
    """(model_type, model in eval mode on ``device``) from a local ``save_pretrained`` dir."""
    import transformers

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"hf_codec: no config.json in {model_dir} (expected a local transformers model dir)")
    config = transformers.AutoConfig.from_pretrained(model_dir, local_files_only=True)
    kind = config.model_type
    if kind not in SUPPORTED:
        raise ValueError(f"hf_codec: {model_dir} holds a {kind!r} model; supported model types: {', '.join(SUPPORTED)}")
    cls = {"encodec": transformers.EncodecModel, "dac": transformers.DacModel, "mimi": transformers.MimiModel}[kind]
    model = cls.from_pretrained(model_dir, local_files_only=True).to(device).eval()
    return kind, model


@TOKENIZERS.register("hf_codec")
class HFCodecTokenizer(AudioTokenizer):
    """EnCodec / DAC / Mimi codes as ``[frames, n_codebooks]``.

    Args:
        model_dir: local transformers model dir.
        n_codebooks: codebooks in use (default: all the model has; EnCodec: at its top bandwidth).
        device: ``cpu``, ``cuda`` or ``cuda:N``.
    """

    path_options = ("model_dir",)

    def __init__(self, model_dir: str, n_codebooks: int | None = None, device: str = "cpu") -> None:
        self.model_dir, self.device = str(model_dir), device
        self.kind, self.model = load_hf_codec(model_dir, device)
        cfg = self.model.config
        self.sample_rate = int(cfg.sampling_rate)
        if self.kind == "encodec":
            if getattr(cfg, "chunk_length_s", None) or getattr(cfg, "normalize", False):
                raise ValueError(f"hf_codec: {model_dir} is a chunked/normalized EnCodec (48 kHz); only the "
                                 f"single-chunk models (e.g. encodec_24khz) give one code sequence per utterance")
            self.hop = math.prod(cfg.upsampling_ratios)
            q = self.model.quantizer
            self._bandwidths = {bw: q.get_num_quantizers_for_bandwidth(bw) for bw in cfg.target_bandwidths}
            max_q = max(self._bandwidths.values())
        elif self.kind == "dac":
            self.hop = int(cfg.hop_length)
            max_q = int(cfg.n_codebooks)
        else:
            self.hop = None
            max_q = int(cfg.num_quantizers)
        n = max_q if n_codebooks is None else int(n_codebooks)
        if not 1 <= n <= max_q:
            raise ValueError(f"hf_codec: n_codebooks={n_codebooks} but {model_dir} ({self.kind}) has 1..{max_q}")
        self.n_codebooks = n
        self._codebook_size = int(cfg.codebook_size)
        if self.kind == "encodec":  # the smallest bandwidth that gives at least n codebooks
            self.bandwidth = min(bw for bw, k in self._bandwidths.items() if k >= n)

    @property
    def codebook_sizes(self) -> list[int]:
        return [self._codebook_size] * self.n_codebooks

    @property
    def frame_rate(self) -> float:
        if self.kind == "mimi":
            return float(self.model.config.frame_rate)
        return self.sample_rate / self.hop

    # -- encoding ---------------------------------------------------------------------------
    def _encode_tensor(self, x, padding_mask=None):
        """``x``: float ``[B, 1, T]`` at :attr:`sample_rate` -> long codes ``[B, n, frames]``."""
        import torch

        with torch.inference_mode():
            if self.kind == "encodec":
                out = self.model.encode(x, padding_mask=padding_mask, bandwidth=self.bandwidth)
                codes = out.audio_codes[0]  # [chunks=1, B, n_q, T] -> [B, n_q, T]
            elif self.kind == "dac":
                codes = self.model.encode(x, n_quantizers=self.n_codebooks).audio_codes
            else:
                codes = self.model.encode(x, padding_mask=padding_mask, num_quantizers=self.n_codebooks).audio_codes
        return codes[:, : self.n_codebooks]

    def encode(self, wav: np.ndarray, sample_rate: int | None = None) -> np.ndarray:
        import torch

        x = self.prepare(wav, sample_rate)
        if self.kind == "dac":  # as Descript's DAC does: zero-pad to whole frames
            x = np.pad(x, (0, -len(x) % self.hop))
        x = torch.from_numpy(x).to(self.device).view(1, 1, -1)
        return self._encode_tensor(x)[0].T.cpu().numpy().astype(np.int32)

    def encode_batch(self, wavs: Sequence[np.ndarray], sample_rate: int | None = None) -> list[np.ndarray]:
        """Zero-pad to the longest item, encode once, cut each item to its own frame count.

        Non-causal codecs see the padding in their last few frames, so codes there may differ
        from :meth:`encode`; use batch size 1 where exact per-utterance codes matter.
        """
        import torch

        xs = [self.prepare(w, sample_rate) for w in wavs]
        if len(xs) == 1:
            return [self.encode(xs[0], self.sample_rate)]
        longest = max(len(x) for x in xs)
        if self.kind == "dac":
            longest += -longest % self.hop
        batch = torch.zeros(len(xs), 1, longest)
        mask = torch.zeros(len(xs), longest, dtype=torch.long)
        for i, x in enumerate(xs):
            batch[i, 0, : len(x)] = torch.from_numpy(x)
            mask[i, : len(x)] = 1
        codes = self._encode_tensor(batch.to(self.device), mask.to(self.device)).cpu()
        per_sample = codes.shape[-1] / longest
        return [codes[i, :, : max(1, math.ceil(len(x) * per_sample - 1e-6))].T.numpy().astype(np.int32)
                for i, x in enumerate(xs)]

    # -- decoding ---------------------------------------------------------------------------
    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """``[frames, n_codebooks]`` -> float32 waveform at :attr:`sample_rate`."""
        import torch

        tokens = np.asarray(tokens)
        if tokens.ndim != 2 or tokens.shape[1] != self.n_codebooks:
            raise ValueError(f"hf_codec ({self.kind}): expected tokens [frames, {self.n_codebooks}], "
                             f"got {tokens.shape}")
        codes = torch.from_numpy(tokens.astype(np.int64).T.copy()).unsqueeze(0).to(self.device)  # [1, n, T]
        with torch.inference_mode():
            if self.kind == "encodec":
                wav = self.model.decode(codes.unsqueeze(0), [None]).audio_values
            elif self.kind == "dac":
                wav = self.model.decode(audio_codes=codes).audio_values
            else:
                wav = self.model.decode(codes).audio_values
        return wav.reshape(-1).float().cpu().numpy()

    def files(self) -> list[Path]:
        return sorted(p for p in Path(self.model_dir).iterdir() if p.is_file())
