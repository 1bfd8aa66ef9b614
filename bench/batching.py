"""How much of each batch is real tokens: length-bucketed batches vs. random batches.

    python bench/batching.py                               # synthetic corpus (mini-corpus lengths)
    python bench/batching.py --data asr:mini:dump/train/asr --data tts:mini:dump/train/tts \\
        --vocab dump/token_list.json

Prints, for several token budgets, the share of non-padding slots (target >= 90% bucketed) over
the first batches of the training stream.
"""
from __future__ import annotations



import argparse
import json
import tempfile
from pathlib import Path

import numpy as np


from speechlm.data.dataset import DataSpec, MultiTaskData  # noqa: E402
from speechlm.data.sampler import BucketSampler  # noqa: E402
from speechlm.data.synthetic import make_dump, synthetic_vocab  # noqa: E402
from speechlm.vocab import Vocabulary  # noqa: E402


def ratio(batches: list[list[int]]) -> float:
    real = sum(sum(b) for b in batches)
    slots = sum(max(b) * len(b) for b in batches)
    return real / slots


def random_batches(lengths: np.ndarray, max_tokens: int, n: int, seed: int = 0) -> list[list[int]]:
    """Unsorted baseline: shuffled order, cut by the same longest x count budget."""
    order = np.random.default_rng(seed).permutation(len(lengths))
    lens = lengths[order]
    cuts = []
    start, longest = 0, 0
    for j, x in enumerate(lens.tolist()):
        longest2 = max(longest, x)
        if j > start and longest2 * (j - start + 1) > max_tokens:
            cuts.append(lens[start:j].tolist())
            start, longest2 = j, x
        longest = longest2
        if len(cuts) >= n:
            break
    return cuts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", action="append", default=[], help="task:name:dumpdir[:weight] (default: synthetic)")
    p.add_argument("--vocab", help="token_list.json of --data")
    p.add_argument("--n-streams", type=int, default=4)
    p.add_argument("--batches", type=int, default=300, help="batches of the stream to measure")
    p.add_argument("--pool-size", type=int, default=2000)
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args()
    tmp = None
    if not args.data:
        tmp = tempfile.TemporaryDirectory()
        root = Path(tmp.name)
        # mini-corpus-like lengths: 1-6 s of 50 Hz codec frames, 5-60 text tokens
        make_dump(root / "asr", "asr", 3000, seed=0, frames=(50, 300), text_len=(5, 60))
        make_dump(root / "tts", "tts", 3000, seed=1, frames=(50, 300), text_len=(5, 60), prefix="t")
        args.data = [f"asr:synthetic:{root / 'asr'}:1", f"tts:synthetic:{root / 'tts'}:1"]
        vocab = synthetic_vocab(["asr", "tts"])
        source = "synthetic corpus, 2 tasks x 3000 utterances (1-6 s audio at 50 frames/s)"
    else:
        vocab = Vocabulary.load(args.vocab)
        source = ", ".join(args.data)
    specs = [DataSpec.parse(d) for d in args.data]
    data = MultiTaskData(specs, vocab, args.n_streams)
    lengths = data.lengths()
    all_lens = np.concatenate(lengths)
    print(f"data: {source}")
    print(f"examples: {len(all_lens)}, sequence length min/median/max: "
          f"{all_lens.min()}/{int(np.median(all_lens))}/{all_lens.max()}\n")
    print(f"{'batch_tokens':>12} {'batches':>8} {'ex/batch':>8} {'bucketed':>9} {'random':>7}")
    rows = []
    for budget in (2000, 4000, 8000, 16000):
        budget = max(budget, int(all_lens.max()))
        s = BucketSampler(lengths, [sp.weight for sp in specs], budget, pool_size=args.pool_size, seed=0)
        batches = [[int(lengths[d][i % len(lengths[d])]) for d, i in s.batch(g)] for g in range(args.batches)]
        rnd = random_batches(all_lens, budget, args.batches)
        print(f"{budget:>12} {len(batches):>8} {np.mean([len(b) for b in batches]):>8.1f} "
              f"{ratio(batches):>9.1%} {ratio(rnd):>7.1%}")
        rows.append({"batch_tokens": budget, "batches": len(batches),
                     "examples_per_batch": float(np.mean([len(b) for b in batches])),
                     "real_share_bucketed": ratio(batches), "real_share_random": ratio(rnd)})
    if args.json:
        Path(args.json).write_text(json.dumps({"data": source, "rows": rows}, indent=1))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
