"""Fine-tune a Whisper model (CTranslate2 format) on the speech of a Kaldi data dir.

Whisper hears synthetic and accented voices poorly out of the box; a few minutes of training on
the domain's speech fix much of it. This trains the text decoder (and with ``encoder_layers`` the
encoder's top layers) in torch (:mod:`speechlm.models.whisper`), over the encoder's output (or
the input of its top layers) computed once per clip, and writes a CTranslate2 model dir again, so
every user of the ``whisper`` recognizer (scoring, the agent's cascade) runs it at the runtime's speed.

Each clip is encoded as itself plus ``pad_seconds`` of silence instead of Whisper's 30 s
window: ~10x less encoder work in training and in use. Stock Whisper's decoder does not read such
short windows (it repeats itself), the fine-tuned one is trained on them; the written dir's
``speechlm_whisper.json`` tells the recognizer to hear so. The token embedding (tied to the
output layer: 20M of tiny's 29M decoder weights) stays as it is. Training the encoder's top layer
too (``encoder_layers: 1``) heard the voice-agent recipe's held-out voices better at 200 steps, at
2.4x the time a step (its README, "Whisper fine-tuned on the training speech"). Targets are the data dir's
``text`` as written (the recipes' lower-case, spoken-form words), so the model writes that form.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from speechlm.data.audio import load_audio
from speechlm.data.kaldi import DataDir
from speechlm.utils.threads import available_cores, set_threads

log = logging.getLogger(__name__)

COPIED = ("config.json", "tokenizer.json", "vocabulary.txt", "vocabulary.json", "preprocessor_config.json")


@dataclass
class FinetuneConfig:
    """Options of :func:`finetune_whisper` (the ``speechlm finetune-whisper`` flags)."""

    # the voice-agent recipe's choice: 100 steps heard held-out voices better than 50, 150 or 200
    steps: int = 100
    lr: float = 3e-4
    batch_size: int = 16
    warmup: int = 10
    pad_seconds: float = 1.0
    encoder_layers: int = 0  # the encoder's top layers trained too (0: the decoder only)
    encoder_lr: float = 1e-4  # their peak learning rate
    seed: int = 0
    threads: int = 0  # 0: every core this process may use

    def __post_init__(self) -> None:
        if (self.steps < 1 or self.batch_size < 1 or self.lr <= 0 or self.encoder_lr <= 0 or self.warmup < 0
                or self.pad_seconds < 0 or self.encoder_layers < 0):
            raise ValueError(f"finetune-whisper: steps, batch_size, lr and encoder_lr must be > 0, warmup, pad_seconds "
                             f"and encoder_layers >= 0; got {asdict(self)}")


def read_clips(data_dir: str | os.PathLike) -> list[tuple[str, object, str]]:
    """(utt, audio value, transcript) of every distinct audio of ``data_dir`` (several utterances
    may share one recording, as the agent's dialogue steps do; they must share its text)."""
    d = DataDir.load(data_dir)
    for name in ("wav.scp", "text"):
        if name not in d.files:
            raise FileNotFoundError(f"{Path(data_dir) / name} not found: fine-tuning needs speech and its text")
    clips: dict[str, tuple[str, object, str]] = {}
    for utt in d.utt_ids:
        if utt not in d.files["text"]:
            raise ValueError(f"{Path(data_dir) / 'text'}: no transcript of utterance {utt}")
        audio, text = d.audio_value(utt), " ".join(d.files["text"][utt].split())
        key = json.dumps(audio, sort_keys=True)
        if key in clips and clips[key][2] != text:
            raise ValueError(f"{Path(data_dir)}: utterances {clips[key][0]} and {utt} share audio {audio} "
                             f"but not their text ({clips[key][2]!r} vs {text!r})")
        clips.setdefault(key, (utt, audio, text))
    if not clips:
        raise ValueError(f"{data_dir}: no utterances")
    return list(clips.values())


def _encode(model, extractor, clips, pad_seconds: float, torch_encoder=None, last: int = 0) -> list[np.ndarray]:
    """The encoder output [frames, dim] (float16) of each clip, by CTranslate2; with
    ``torch_encoder``, the input of its layer ``last`` instead (the layers above it train)."""
    import ctranslate2
    import torch
    from tqdm import tqdm

    from speechlm.eval.recognizers import SAMPLE_RATE, clip_mel

    out = []
    for utt, audio, _ in tqdm(clips, desc="whisper encoder", unit="clip", mininterval=10):
        wav = load_audio(audio, SAMPLE_RATE, utt_id=utt)
        mel = clip_mel(extractor, wav, pad_seconds)
        if torch_encoder is not None:
            with torch.no_grad():
                out.append(torch_encoder(torch.from_numpy(mel)[None], last=last)[0].numpy().astype(np.float16))
            continue
        enc = model.encode(ctranslate2.StorageView.from_array(mel[None]), to_cpu=True)
        out.append(np.array(enc)[0].astype(np.float16))
    return out


def _prefix(tokenizer, multilingual: bool) -> list[int]:
    """The tokens before the text: Whisper's start sequence without timestamps, no prompt."""
    from faster_whisper.tokenizer import Tokenizer

    tok = Tokenizer(tokenizer, multilingual, task="transcribe", language="en" if multilingual else None)
    return list(tok.sot_sequence) + [tok.no_timestamps]


def finetune_whisper(data_dir: str | os.PathLike, out_dir: str | os.PathLike, base_dir: str | os.PathLike | None = None,
                     config: FinetuneConfig | None = None, valid_dir: str | os.PathLike | None = None) -> dict:
    """Fine-tune ``base_dir``'s decoder (and ``config.encoder_layers`` of its encoder; default: the
    bundled tiny.en) on ``data_dir`` and write a CTranslate2 Whisper dir to ``out_dir`` (atomically). Returns the summary it also writes to
    ``out_dir/speechlm_whisper.json``; with ``valid_dir``, that includes the WER there."""
    import ctranslate2
    import tokenizers
    import torch
    import torch.nn.functional as F
    from faster_whisper.feature_extractor import FeatureExtractor

    from speechlm.eval.recognizers import FINETUNED, bundled_whisper_dir
    from speechlm.models.whisper import WhisperDecoder, WhisperEncoder
    from speechlm.utils.ct2 import read_ct2, write_ct2

    cfg = config or FinetuneConfig()
    base = Path(base_dir) if base_dir else bundled_whisper_dir()
    out = Path(out_dir)
    threads = set_threads(cfg.threads)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    t0 = time.time()

    clips = read_clips(data_dir)
    ct2 = read_ct2(base / "model.bin")
    if ct2.spec != "WhisperSpec":
        raise ValueError(f"{base}/model.bin holds a {ct2.spec}, not a Whisper model")
    encoder = ctranslate2.models.Whisper(str(base), device="cpu", compute_type="float32", intra_threads=threads)
    extractor = FeatureExtractor(feature_size=encoder.n_mels)
    tokenizer = tokenizers.Tokenizer.from_file(str(base / "tokenizer.json"))
    prefix = _prefix(tokenizer, encoder.is_multilingual)
    eot = tokenizer.token_to_id("<|endoftext|>")
    log.info("finetune-whisper: %d clips of %s, base %s, %d thread(s)", len(clips), data_dir, base, threads)
    top = None
    if cfg.encoder_layers:
        top = WhisperEncoder(ct2.variables)
        if cfg.encoder_layers > top.n_layers:
            raise ValueError(f"finetune-whisper: encoder_layers {cfg.encoder_layers}, but {base} has {top.n_layers}")
    first = top.n_layers - cfg.encoder_layers if top is not None else 0
    memory = _encode(encoder, extractor, clips, cfg.pad_seconds, top, first)
    del encoder
    t_enc = time.time() - t0
    targets = [prefix + tokenizer.encode(" " + text, add_special_tokens=False).ids + [eot] for _, _, text in clips]
    limit = int(ct2.variables["decoder/position_encodings/encodings"].shape[0])
    for (utt, _, _), t in zip(clips, targets):
        if len(t) > limit:
            raise ValueError(f"{data_dir}: the text of {utt} is {len(t)} tokens, more than Whisper's {limit}")

    decoder = WhisperDecoder(ct2.variables)
    decoder.embedding().requires_grad_(False)
    params = [p for p in decoder.parameters() if p.requires_grad]
    groups = [{"params": params, "lr": cfg.lr}]
    if top is not None:
        top.requires_grad_(False)
        trained = top.layer_parameters(first)
        for p in trained:
            p.requires_grad_(True)
        groups.append({"params": trained, "lr": cfg.encoder_lr})
        params = params + trained
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup))
                                              * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    dim = memory[0].shape[1]
    losses = []
    for step in range(cfg.steps):
        if cfg.threads <= 0 and step % 10 == 0 and available_cores() != torch.get_num_threads():
            # automatic threads follow the cores this process may use (a recipe hands over a core)
            log.info("finetune-whisper: step %d: %d -> %d threads", step, torch.get_num_threads(), available_cores())
            set_threads(0)
        batch = random.sample(range(len(clips)), min(cfg.batch_size, len(clips)))
        frames = max(len(memory[i]) for i in batch)
        mem = torch.zeros(len(batch), frames, dim)
        mask = torch.zeros(len(batch), frames, dtype=torch.bool)
        length = max(len(targets[i]) for i in batch)
        x = torch.full((len(batch), length), eot)
        y = torch.full((len(batch), length), -100)
        for row, i in enumerate(batch):
            mem[row, : len(memory[i])] = torch.from_numpy(memory[i].astype(np.float32))
            mask[row, : len(memory[i])] = True
            t = torch.tensor(targets[i])
            x[row, : len(t)] = t
            y[row, len(prefix) - 1 : len(t) - 1] = t[len(prefix):]  # the text and the end token
        if top is not None:
            mem = top(None, first, mask=mask, hidden=mem)
        hidden = decoder(x, mem, mask, hidden=True)
        keep = y >= 0  # logits only where there is a target: the output layer is most of the work
        loss = F.cross_entropy(decoder.logits(hidden[keep]), y[keep])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 25 == 0 or step == cfg.steps - 1:
            log.info("finetune-whisper: step %d/%d, loss %.3f (%.0f s)", step + 1, cfg.steps,
                     np.mean(losses[-25:]), time.time() - t0)
    t_train = time.time() - t0 - t_enc

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in COPIED:
        if (base / name).is_file():
            shutil.copy2(base / name, tmp / name)
    ct2.variables.update(decoder.variables())
    if top is not None:
        ct2.variables.update(top.variables())
    write_ct2(ct2, tmp / "model.bin")
    k = max(1, min(25, len(losses) // 4))  # the mean loss of the first and the last quarter (at most 25 steps)
    summary = {"base": str(base.resolve()), "data_dir": str(Path(data_dir).resolve()), "clips": len(clips),
               "config": asdict(cfg), "pad_seconds": cfg.pad_seconds, "window": "clip",
               "loss_first": float(np.mean(losses[:k])), "loss_last": float(np.mean(losses[-k:])),
               "encode_seconds": round(t_enc, 1), "train_seconds": round(t_train, 1)}
    if valid_dir:
        wer = _valid_wer(tmp, summary, valid_dir, torch.get_num_threads())
        summary["valid"] = {"data_dir": str(Path(valid_dir).resolve()), **wer}
        log.info("finetune-whisper: %s WER %.1f%% (%d clips)", valid_dir, wer["wer"], wer["clips"])
    (tmp / FINETUNED).write_text(json.dumps(summary, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    log.info("finetune-whisper: wrote %s (encoding %.0f s, training %.0f s, loss %.3f -> %.3f)", out, t_enc,
             t_train, summary["loss_first"], summary["loss_last"])
    return summary


def _valid_wer(model_dir: Path, summary: dict, valid_dir, threads: int) -> dict:
    """WER % of the fine-tuned model (written to ``model_dir``) on ``valid_dir``'s clips."""
    from speechlm.eval.asr import error_rates
    from speechlm.eval.recognizers import FINETUNED, SAMPLE_RATE, FasterWhisper

    (model_dir / FINETUNED).write_text(json.dumps(summary))  # the recognizer reads how to hear
    rec = FasterWhisper(model_dir, threads=threads)
    clips = read_clips(valid_dir)
    hyp = {utt: rec.transcribe(load_audio(audio, SAMPLE_RATE, utt_id=utt)) for utt, audio, _ in clips}
    wer, _ = error_rates(hyp, {utt: text for utt, _, text in clips}, [c[0] for c in clips], "word")
    return {"wer": round(wer["wer"], 2), "clips": len(clips)}
