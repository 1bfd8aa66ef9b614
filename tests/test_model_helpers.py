"""Shared builders for the model and generation tests (tiny vocabularies, toy tasks, training)."""
from __future__ import annotations

import functools
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from speechlm.data.batch import collate
from speechlm.data.sequence import build_example
from speechlm.models import ModelConfig, SpeechLM
from speechlm.tasks import load_template
from speechlm.vocab import Vocabulary

N_CODES, N_TEXT, N_PHONE = 8, 12, 6


def toy_vocab(n_streams: int = 2) -> Vocabulary:
    v = Vocabulary()
    v.add_tokenizer("codec", [N_CODES] * n_streams)
    v.add_tokenizer("text_bpe", [N_TEXT])
    v.add_tokenizer("phone", [N_PHONE])
    for t in ("asr", "plain_tts", "audiolm", "textlm"):
        v.add_task(t)
    return v


def phone_tts(tmp: Path, n_phones: int = 12):
    """A vocabulary with a phone tokenizer and a phone-led codec (``codec_ph``: phones + two
    8-entry streams), and the template ``tts_ph`` (phones -> codec_ph) read from the file it writes."""
    from speechlm.tasks.template import load_template_file

    vocab = Vocabulary()
    vocab.add_tokenizer("phones", [n_phones])
    vocab.add_tokenizer("codec_ph", [n_phones, 8, 8])
    vocab.add_task("tts_ph")
    path = tmp / "tts_ph.yaml"
    path.write_text("name: tts_ph\nconditions:\n  - {name: phones, modality: text, tokenizer: phones, source: text}\n"
                    "targets:\n  - {name: speech, modality: audio, tokenizer: codec_ph, source: wav.scp}\n")
    return vocab, load_template_file(path)


def toy_segments(i: int, n_streams: int = 2) -> dict[str, dict[str, np.ndarray]]:
    """Deterministic toy data for utterance ``i``: TTS (phones -> codec frames, one frame per
    phone, stream k = (phone * (k + 2) + k) mod 8) and ASR (codec -> text = stream 0 codes + 1)."""
    rng = np.random.default_rng(1000 + i)
    L = 3 + i % 4
    phones = rng.integers(0, N_PHONE, (L, 1))
    frames = np.concatenate([(phones * (k + 2) + k) % N_CODES for k in range(n_streams)], 1)
    speech = rng.integers(0, N_CODES, (2 + i % 3, n_streams))
    text = speech[:, :1] + 1
    return {"plain_tts": {"phones": phones, "speech": frames}, "asr": {"speech": speech, "text": text}}


def toy_examples(vocab: Vocabulary, n: int, n_streams: int = 2, with_targets: bool = True, tasks=("plain_tts", "asr")):
    out = []
    for i in range(n):
        segs = toy_segments(i, n_streams)
        for t in tasks:
            out.append(build_example(f"{t}{i}", load_template(t), segs[t], vocab, n_streams, with_targets))
    return out


def tiny_config(strategy: str, **kw) -> ModelConfig:
    base = dict(strategy=strategy, dim=64, n_layers=2, n_heads=4, n_kv_heads=2)
    if strategy == "multiscale":  # keys only the multiscale strategy reads (others refuse them)
        base.update(local_dim=32, local_layers=1, local_heads=2)
    base.update(kw)
    return ModelConfig(**base)


def packed_model_dir(root: Path, tasks: Sequence[str], chars: Sequence[str], *, decode: str | dict = "search: greedy\nmax_len: 40\n",
                     phone: bool = True, model: SpeechLM | None = None, seed: int = 0, strategy: str = "delay",
                     **config) -> Path:
    """A model dir as `speechlm pack` writes it: Codec 2, a char text tokenizer over ``chars``
    (``tokenizers/text_bpe/chars.txt``), g2p phones (``phone``), the built-in ``tasks``, decode options and
    ``model`` (default: an untrained tiny ``strategy`` model, ``config`` to :func:`tiny_config`)."""
    import yaml

    from speechlm.tasks.template import BUILTIN_DIR
    from speechlm.tokenizers import load_tokenizers

    (root / "tokenizers" / "text_bpe").mkdir(parents=True, exist_ok=True)
    (root / "tokenizers" / "text_bpe" / "chars.txt").write_text("\n".join(chars) + "\n")
    spec = {"codec": {"type": "codec2"}, "text_bpe": {"type": "char", "vocab": "tokenizers/text_bpe/chars.txt"}}
    if phone:
        spec["phone"] = {"type": "g2p"}
    (root / "tokenizers.yaml").write_text(yaml.safe_dump(spec))
    (root / "tasks").mkdir(exist_ok=True)
    for t in tasks:
        shutil.copy(BUILTIN_DIR / f"{t}.yaml", root / "tasks" / f"{t}.yaml")
    (root / "decode.yaml").write_text(decode if isinstance(decode, str) else yaml.safe_dump(decode))
    if model is None:
        toks = load_tokenizers(root / "tokenizers.yaml", base_dir=root)
        vocab = Vocabulary()
        for name in spec:
            vocab.add_tokenizer(name, toks[name].codebook_sizes)
        for t in tasks:
            vocab.add_task(t)
        torch.manual_seed(seed)
        model = SpeechLM(tiny_config(strategy, **config), vocab)
    model.save_pretrained(root)
    return root


def train(model: SpeechLM, batch, steps: int, lr: float = 3e-3, seed: int = 0) -> list[float]:
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    model.train()
    for _ in range(steps):
        out = model(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    model.eval()
    return losses


def trained_model(strategy: str, n_streams: int = 2, steps: int = 200, n_utts: int = 4, **kw):
    """A tiny model that has memorized the toy task (and its vocabulary and training examples)."""
    torch.manual_seed(0)
    vocab = toy_vocab(n_streams)
    model = SpeechLM(tiny_config(strategy, **kw), vocab)
    batch = collate(toy_examples(vocab, n_utts, n_streams))
    losses = train(model, batch, steps)
    return model, vocab, losses


@functools.lru_cache(maxsize=None)
def cached_trained_model(strategy: str, n_streams: int = 2, steps: int = 150):
    """:func:`trained_model`, trained once per test session (callers must not modify it)."""
    return trained_model(strategy, n_streams=n_streams, steps=steps)
