"""Memory of indexing a large manifest: 1,000,000 examples, target < 1 GB peak RSS.

    python bench/train_index_memory.py [--n 1000000] [--task asr]

Writes a synthetic manifest + token indexes (scp, lengths; the arks are never read) to a temp
dir, then indexes it in a fresh process (the training dataset, as ``speechlm train`` builds it)
and prints that process's RSS before and after, and the peak.
"""
from __future__ import annotations

import sys


import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path


CHILD = r"""
import json, resource, sys, time
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024
from speechlm.data.dataset import DataSpec, MultiTaskData
from speechlm.data.synthetic import synthetic_vocab
from speechlm.data.sampler import BucketSampler
before = rss()
t = time.time()
data = MultiTaskData([DataSpec.parse(sys.argv[1])], synthetic_vocab([sys.argv[2]]), 4)
index_s = time.time() - t
after = rss()
s = BucketSampler(data.lengths(), [1.0], 8000, pool_size=2000)
s.batch(0)
print(json.dumps({"examples": len(data), "before_mb": before, "after_mb": after, "index_s": index_s,
                  "sampler_mb": rss(), "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--task", default="asr")
    p.add_argument("--json", help="also write the row here")
    args = p.parse_args()
    from speechlm.data.synthetic import make_lengths_only

    with tempfile.TemporaryDirectory() as tmp:
        t = time.time()
        make_lengths_only(Path(tmp) / args.task, args.task, args.n)
        write_s = time.time() - t
        out = subprocess.run([sys.executable, "-c", CHILD, f"{args.task}:big:{Path(tmp) / args.task}", args.task],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"synthetic manifest: {args.n:,} examples of task {args.task} (written in {write_s:.0f} s)")
    print(f"{'RSS after imports':<28} {r['before_mb']:>8.0f} MB")
    print(f"{'RSS after indexing':<28} {r['after_mb']:>8.0f} MB   ({r['index_s']:.1f} s)")
    print(f"{'RSS with the sampler':<28} {r['sampler_mb']:>8.0f} MB")
    print(f"{'peak RSS':<28} {r['peak_mb']:>8.0f} MB   (target < 1024 MB: {'ok' if r['peak_mb'] < 1024 else 'OVER'})")
    print(f"{'index bytes per example':<28} {(r['after_mb'] - r['before_mb']) * 2**20 / r['examples']:>8.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": [{**r, "task": args.task, "write_s": write_s}]}, indent=1))


if __name__ == "__main__":
    main()
