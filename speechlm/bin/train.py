"""speechlm train: train a SpeechLM on one or more task datasets (torchrun aware).

One process:      speechlm train --data asr:mini:dump/train/asr:1 --vocab token_list.json \\
                      --model-config tiny --train-config tiny --out-dir exp/tiny
Several (CPU or GPU):  torchrun --nproc_per_node 4 -m speechlm train ...   (or add --nproc 4)

Re-running the same command resumes from the newest intact checkpoint in OUT_DIR/checkpoints
(a damaged one is named and set aside as step_N.corrupt). Resuming keeps the run's original
config.yaml: changed options are logged, and anything but the budget (--max-steps,
--max-train-tokens) or logging/speed options needs --allow-config-change.

OUT_DIR/config.yaml holds this command's options as resolved (the train and model configs inline),
so ``speechlm train --config exp/tiny/config.yaml --out-dir exp/tiny2`` trains the same run again.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

log = logging.getLogger("speechlm.train")

# train-config keys that have a command-line flag (flag value wins over the YAML)
OVERRIDES = {
    "max_steps": int, "max_train_tokens": int, "batch_tokens": int, "grad_accum": int, "lr": float,
    "seed": int, "device": str, "precision": str, "distributed": str, "threads": int, "num_workers": int,
    "valid_every": int, "save_every": int, "warmup_steps": int, "deepspeed_config": str,
}


def upgrade_config(data: dict) -> dict:
    """A ``--config`` file that is the ``config.yaml`` of a run started by an older version."""
    from speechlm.train.config import upgrade_run_config

    return upgrade_run_config(data)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", action="append", required=True, metavar="TASK:NAME:DUMPDIR[:WEIGHT]",
                   help="a training entry (repeat for multi-task mixing; weight = share of examples)")
    p.add_argument("--valid-data", action="append", default=[], metavar="TASK:NAME:DUMPDIR",
                   help="a validation entry (repeat; loss/accuracy are reported per task)")
    p.add_argument("--vocab", required=True, help="token_list.json")
    p.add_argument("--tokenizers", help="tokenizers.yaml (copied into the run dir)")
    p.add_argument("--model-config", help="model YAML, or a built-in preset's name (tiny, 30m, 360m, 1.7b); "
                   "default: the config of --init-from when it is a speechlm model dir (in a --config file: "
                   "also the options themselves, as a mapping)")
    p.add_argument("--train-config", help="train YAML, or a built-in preset's name (tiny, cpu_demo); "
                   "default: TrainConfig defaults (in a --config file: also a mapping)")
    p.add_argument("--out-dir", required=True, help="run dir (exp/<tag>); holds config, logs, checkpoints")
    p.add_argument("--init-from", help="initialize weights from a packed/checkpoint model dir, a run dir (its final model) "
                   "or an HF causal LM dir")
    p.add_argument("--nproc", type=int, default=1,
                   help="launch this many local processes through torchrun (ignored under torchrun)")
    p.add_argument("--allow-config-change", action="store_true",
                   help="resume a run with options other than the ones it was started with (the differences are "
                        "logged and appended to OUT_DIR/config_changes.jsonl; config.yaml keeps the original)")
    p.add_argument("--stop-after-steps", type=int, help=argparse.SUPPRESS)  # tests: leave as if killed
    for key, tp in OVERRIDES.items():
        p.add_argument("--" + key.replace("_", "-"), type=tp, default=None, help=f"override train config {key}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any train config key (YAML value), e.g. --set keep_best=5")


def _relaunch(args: argparse.Namespace) -> int:
    """Re-run this command under torchrun with ``--nproc`` local processes."""
    import subprocess

    if "train" not in sys.argv[1:]:
        raise ValueError("--nproc re-runs the `speechlm train ...` command line; from Python, start "
                         "torchrun yourself (torchrun --nproc_per_node N -m speechlm train ...)")
    argv = sys.argv[sys.argv.index("train", 1):]
    clean, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        clean.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
           "-m", "speechlm", *clean]
    log.info("launching %s", " ".join(cmd))
    return subprocess.call(cmd)


def main(args: argparse.Namespace) -> int:
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _relaunch(args)
    from speechlm.conf import resolve_config
    from speechlm.config import from_dict, load_config, to_dict, yaml_loads
    from speechlm.data.dataset import DataSpec
    from speechlm.models import ModelConfig
    from speechlm.models.model_dir import is_model_dir, read_config
    from speechlm.train.build import apply_init_source
    from speechlm.train.config import load_train_config
    from speechlm.train.trainer import Trainer
    from speechlm.vocab import Vocabulary

    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. keep_best=5")
        overrides[key.replace("-", "_")] = yaml_loads(value)  # lr=1e-3 is a float
    overrides.update({k: getattr(args, k) for k in OVERRIDES if getattr(args, k) is not None})
    train_cfg = args.train_config  # a path or preset name; a mapping when a --config file gives it
    cfg = load_train_config(train_cfg if isinstance(train_cfg, dict) or train_cfg is None
                            else resolve_config("train", train_cfg), overrides)
    run_dir = args.init_from and not is_model_dir(args.init_from)
    if run_dir and os.path.isdir(os.path.join(args.init_from, "checkpoints")):
        from speechlm.train.checkpoint import select_checkpoint  # a run dir: its final model

        args.init_from = str(select_checkpoint(args.init_from))
        log.info("--init-from: the final model of that run, %s", args.init_from)
    if isinstance(args.model_config, dict):  # a run's config.yaml fed back with --config
        model_cfg = from_dict(ModelConfig, args.model_config, f"{args.config}: model_config")
    elif args.model_config is None:
        if not (args.init_from and is_model_dir(args.init_from)):
            raise ValueError("give --model-config (or --init-from a speechlm model dir to reuse its config)")
        model_cfg = read_config(args.init_from)
    else:
        model_cfg = load_config(ModelConfig, resolve_config("model", args.model_config))
    model_cfg = apply_init_source(model_cfg, args.init_from)
    vocab = Vocabulary.load(args.vocab)
    train = [DataSpec.parse(d) for d in args.data]
    valid = [DataSpec.parse(d) for d in args.valid_data]
    dump = {  # the options of this command, as resolved: `speechlm train --config` reads it back
        "train_config": to_dict(cfg), "model_config": to_dict(model_cfg),
        "data": [f"{s.task}:{s.name}:{s.path}:{s.weight}" for s in train],
        "valid_data": [f"{s.task}:{s.name}:{s.path}" for s in valid],
        "vocab": args.vocab, "tokenizers": args.tokenizers, "init_from": args.init_from,
    }
    trainer = Trainer(cfg, model_cfg, vocab, train, args.out_dir, valid, args.init_from,
                      run_files={"token_list.json": args.vocab, "tokenizers.yaml": args.tokenizers},
                      config_dump=dump, stop_after_steps=args.stop_after_steps,
                      allow_config_change=args.allow_config_change)
    from speechlm.train.checkpoint import CheckpointSaveError

    try:
        trainer.setup()
        trainer.train()
    except CheckpointSaveError:  # already logged with the path and the space it needed
        return 1
    finally:
        from speechlm.train.distributed import cleanup

        cleanup()
    return 0
