"""speechlm tokenize: turn the segments of a manifest into kaldiio token archives.

The work is :mod:`speechlm.data.tokenize` (outputs, resumption and skipping are described there).
``--nj N`` runs N shards as local processes and merges them; ``--shard I`` runs only shard I of N
(the ``JOB`` of a recipe's ``run.pl`` or ``slurm.pl``), and a later call without ``--shard``
merges the finished shards::

    utils/run.pl JOB=1:4 log/tokenize.JOB.log speechlm tokenize --manifest-dir D --tokenizers T --nj 4 --shard JOB
    speechlm tokenize --manifest-dir D --tokenizers T --nj 4
"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest-dir", required=True,
                   help="dir with manifest.jsonl + template.yaml (from `speechlm prepare`)")
    p.add_argument("--tokenizers", required=True, help="tokenizers.yaml: instance name -> {type: ..., options}")
    p.add_argument("--nj", type=int, default=1, help="number of shards / parallel processes")
    p.add_argument("--shard", type=int, default=None,
                   help="run only shard I of --nj (1-based, for run.pl/slurm.pl JOB); "
                        "merge with a later call without it")
    p.add_argument("--segments", nargs="+", default=None, help="tokenize only these segments (default: all)")
    p.add_argument("--batch-size", type=int, default=1, help="utterances per encode_batch call (useful on a GPU)")
    p.add_argument("--device", default=None, help="override the device of every audio tokenizer (cpu, cuda, cuda:1)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per process (default 1; parallelize with --nj: with Codec 2, 2 threads "
                        "on a busy 2-core machine cost 5x the CPU time of 1)")


def main(args: argparse.Namespace) -> int:
    from speechlm.data.tokenize import TokenizeJob, tokenize_manifest

    return tokenize_manifest(TokenizeJob(
        manifest_dir=args.manifest_dir, tokenizers=args.tokenizers, nj=args.nj, shard=args.shard,
        segments=args.segments, batch_size=args.batch_size, device=args.device, threads=args.threads))
