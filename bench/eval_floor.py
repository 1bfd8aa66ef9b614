"""Recognizer floors for TTS intelligibility: WER/CER of each offline recognizer on espeak-ng
speech at 22.05 kHz, the same audio at 8 kHz, and after Codec 2 (3200 bit/s) resynthesis.

These are the numbers a TTS model's intelligibility figure should be read against: a model that
generates 8 kHz Codec 2 tokens cannot score better than the "codec2" row.

Usage: python bench/eval_floor.py [--recognizers whisper pocketsphinx] [--n 12] [--beam-size N] [--out DIR]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path


SENTENCES = [
    "the quick brown fox jumps over the lazy dog near the river bank",
    "turn on the kitchen lights",
    "what is the weather like today",
    "play some music in the living room",
    "set a timer for ten minutes",
    "call my sister tomorrow morning",
    "please call stella and ask her to bring these things with her from the store",
    "six spoons of fresh snow peas and a snack for her brother bob",
    "we also need a small plastic snake and a big toy frog for the kids",
    "she can scoop these things into three red bags",
    "the meeting was moved to thursday afternoon",
    "open the garage door and switch off the heating",
]


def make_sets(out: Path, n: int) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """Synthesize the sentences and derive the 8 kHz and Codec 2 sets; returns (text, sets)."""
    import soundfile as sf

    from speechlm.tokenizers import build_tokenizer

    codec = build_tokenizer({"type": "codec2"})
    text, sets = {}, {"22k": {}, "8k": {}, "codec2": {}}
    for i, sent in enumerate(SENTENCES[:n]):
        utt = f"utt{i:02d}"
        text[utt] = sent
        full, narrow, resyn = out / f"{utt}.wav", out / f"{utt}_8k.wav", out / f"{utt}_c2.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(full), sent], check=True)
        subprocess.run(["sox", "-R", str(full), "-r", "8000", str(narrow)], check=True)  # -R: no random dither
        wav, sr = sf.read(full, dtype="float32")
        sf.write(resyn, codec.decode(codec.encode(wav, sr)), codec.sample_rate)
        sets["22k"][utt], sets["8k"][utt], sets["codec2"][utt] = str(full), str(narrow), str(resyn)
    return text, sets


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recognizers", nargs="+", default=["whisper", "pocketsphinx"])
    p.add_argument("--n", type=int, default=len(SENTENCES), help="number of sentences")
    p.add_argument("--beam-size", type=int, default=None, help="recognizer beam (Whisper; default 1)")
    p.add_argument("--out", default=None, help="keep the audio here (default: a temp dir)")
    args = p.parse_args(argv)

    from speechlm.eval import build_metric
    from speechlm.utils.threads import set_threads

    set_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        out.mkdir(parents=True, exist_ok=True)
        text, sets = make_sets(out, args.n)
        print(f"{len(text)} espeak-ng sentences (en-us), {sum(len(t.split()) for t in text.values())} words\n")
        print("| recognizer | audio | WER % | CER % | s / utt |")
        print("|---|---|---:|---:|---:|")
        for name in args.recognizers:
            metric = build_metric("intelligibility", recognizer=name, asr_beam_size=args.beam_size)
            metric.recognizer  # load the model outside the timing
            for label, wavs in sets.items():
                t0 = time.perf_counter()
                res = metric(wavs, text)
                dt = (time.perf_counter() - t0) / len(wavs)
                print(f"| {res.info['recognizer']} | {label} | {res.summary['wer']:.1f} | "
                      f"{res.summary['cer']:.1f} | {dt:.2f} |")
            first = sorted(text)[0]
            one = {k: metric({first: v[first]}, {first: text[first]}).summary["wer"] for k, v in sets.items()}
            print(f"| {name}, one sentence ({first}) | 22k / 8k / codec2 | "
                  + " / ".join(f"{v:.1f}" for v in one.values()) + " | | |")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
