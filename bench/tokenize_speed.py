"""Benchmark the built-in audio tokenizers: speed and resynthesis quality on espeak-ng speech.

    python bench/tokenize_speed.py [--n-utts 120] [--work /tmp/bench_tokenize] [--asr whisper|none]
                             [--hf-codec DIR ...] [--espnet-codec CONFIG,CHECKPOINT ...]

Prints three tables:

1. encode loop: audio seconds per CPU second of ``read_audio`` + ``encode`` in one process with
   one thread (what "x real time per core, including file reading" means);
2. the ``speechlm tokenize`` stage with ``--nj 1`` and ``--nj 2`` run as a command (process
   start-up, archive writing and merging included): audio s per CPU s and per wall-clock s;
3. resynthesis quality of the decodable tokenizers on the first ``--n-quality`` utterances:
   STOI, PESQ (narrow band at 8 kHz, wide band at 16 kHz and above) and, when a recognizer is
   installed, the word error rate of Whisper on the resynthesized speech (and on the original).
"""
from __future__ import annotations

import sys
from pathlib import Path

import argparse
import os
import resource
import shutil
import subprocess
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import yaml

# Templated everyday sentences: natural enough for an ASR's language model, varied enough to test.
TEMPLATES = ["please {verb} the {thing} in the {room}", "can you {verb} the {thing} before {time}",
             "i would like to {verb} the {thing} at {time}", "remind me to {verb} the {thing} {time}"]
SLOTS = {"verb": ["open", "close", "clean", "check", "move", "paint", "fix", "find"],
         "thing": ["window", "door", "lamp", "oven", "table", "garden gate", "blue box", "radio"],
         "room": ["kitchen", "living room", "bedroom", "garage", "office", "hallway"],
         "time": ["seven", "noon", "tonight", "tomorrow morning", "the weekend", "dinner"]}
VOICES = ["en-us", "en+f2", "en+m3", "en-gb", "en+f4"]


def synth_corpus(root: Path, n: int, seed: int = 0) -> Path:
    """A Kaldi data dir of ``n`` espeak-ng utterances (22.05 kHz), five voices as speakers."""
    data = root / "data"
    if (data / "wav.scp").is_file() and len((data / "wav.scp").read_text().splitlines()) == n \
            and "please" in (data / "text").read_text():
        return data
    shutil.rmtree(data, ignore_errors=True)
    (data / "wav").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    wav, text, utt2spk = [], [], []
    for i in range(n):
        spk = i % len(VOICES)
        words = str(rng.choice(TEMPLATES)).format(**{k: str(rng.choice(v)) for k, v in SLOTS.items()})
        utt = f"spk{spk}-{i:04d}"
        path = data / "wav" / f"{utt}.wav"
        subprocess.run(["espeak-ng", "-v", VOICES[spk], "-s", str(int(rng.integers(140, 200))),
                        "-p", str(int(rng.integers(30, 70))), "-w", str(path), words], check=True)
        wav.append(f"{utt} {path}")
        text.append(f"{utt} {words}")
        utt2spk.append(f"{utt} spk{spk}")
    for name, lines in (("wav.scp", wav), ("text", text), ("utt2spk", utt2spk)):
        (data / name).write_text("\n".join(sorted(lines)) + "\n")
    return data


def read_table(path: Path) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in path.read_text().splitlines())


def encode_loop(spec: dict, wavs: dict[str, str], repeats: int = 3) -> tuple[float, float]:
    """(audio seconds, CPU seconds) of reading and encoding every file in this process.

    The best of ``repeats`` passes: CPU time still grows when other processes share the cores.
    """
    import soundfile as sf

    from speechlm.data.audio import read_audio, to_mono
    from speechlm.tokenizers import build_tokenizer

    import torch

    torch.set_num_threads(1)  # the CLI stages called before may have raised it
    tok = build_tokenizer(spec)
    first = next(iter(wavs.values()))
    tok.encode(*read_audio(first))  # warm-up (lazy imports, resampler kernels)
    audio = sum(sf.info(p).duration for p in wavs.values())
    best = float("inf")
    for _ in range(repeats):
        t = time.process_time()
        for p in wavs.values():
            wav, sr = read_audio(p)
            tok.encode(to_mono(wav), sr)
        best = min(best, time.process_time() - t)
    return audio, best


def stage_run(work: Path, manifest: Path, spec: dict, nj: int) -> tuple[float, float]:
    """(CPU seconds of all processes, wall seconds) of one ``speechlm tokenize`` run from scratch."""
    dump = work / f"stage_nj{nj}"
    shutil.rmtree(dump, ignore_errors=True)
    dump.mkdir(parents=True)
    for f in ("manifest.jsonl", "template.yaml"):
        shutil.copy(manifest / f, dump / f)
    (dump / "tokenizers.yaml").write_text(yaml.safe_dump({"codec": spec}))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.time()
    subprocess.run([sys.executable, "-m", "speechlm", "tokenize", "--manifest-dir", str(dump), "--tokenizers",
                    str(dump / "tokenizers.yaml"), "--nj", str(nj), "--threads", "1"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.time() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall


def quality(spec: dict, wavs: dict[str, str], texts: dict[str, str], recognizer) -> dict[str, float]:
    from pesq import pesq
    from pystoi import stoi

    from speechlm.data.audio import load_audio, resample
    from speechlm.tokenizers import build_tokenizer

    tok = build_tokenizer(spec)
    sr = tok.sample_rate
    s, p, hyps, refs = [], [], [], []
    for utt, path in wavs.items():
        ref = load_audio(path, sr)
        try:
            out = tok.decode(tok.encode(ref, sr))
        except NotImplementedError:
            return {}
        n = min(len(ref), len(out))
        s.append(stoi(ref[:n], out[:n], sr))
        psr = 8000 if sr < 16000 else 16000
        p.append(pesq(psr, resample(ref[:n], sr, psr), resample(out[:n], sr, psr), "nb" if psr == 8000 else "wb"))
        if recognizer is not None:
            hyps.append(recognizer.transcribe(resample(out, sr, 16000)))
            refs.append(texts[utt])
    res = {"sr": sr, "stoi": float(np.mean(s)), "pesq": float(np.mean(p)), "pesq_kind": "nb" if sr < 16000 else "wb"}
    if recognizer is not None:
        res["wer"] = wer(refs, hyps)
    return res


def wer(refs: list[str], hyps: list[str]) -> float:
    import jiwer

    from speechlm.eval.asr import normalize_text

    return 100 * jiwer.wer([normalize_text(r) for r in refs], [normalize_text(h) or "-" for h in hyps])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-utts", type=int, default=120)
    p.add_argument("--n-quality", type=int, default=30)
    p.add_argument("--work", default="/tmp/bench_tokenize")
    p.add_argument("--asr", default="whisper", help="recognizer for intelligibility, or 'none'")
    p.add_argument("--hf-codec", nargs="*", default=[], help="local transformers codec dirs to add")
    p.add_argument("--espnet-codec", nargs="*", default=[], help="CONFIG,CHECKPOINT pairs to add")
    p.add_argument("--no-stage", action="store_true", help="skip the `speechlm tokenize` runs")
    p.add_argument("--stage-repeat", type=int, default=5,
                   help="list every file this many times (new ids) for the stage runs, so start-up is amortized")
    args = p.parse_args()

    import torch

    torch.set_num_threads(1)
    from speechlm.cli import main as cli

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = synth_corpus(work, args.n_utts)
    wavs, texts = read_table(data / "wav.scp"), read_table(data / "text")
    km = work / "km_mfcc256"
    cli(["train-kmeans", "--data-dir", str(data), "--out-dir", str(km), "--n-clusters", "256", "--feature", "mfcc",
         "--max-frames", "30000"])
    specs = {
        "codec2 (3200 bit/s, 8 streams)": {"type": "codec2"},
        "codec2 fields (14 streams)": {"type": "codec2", "layout": "fields"},
        "ssl: MFCC k-means 256": {"type": "ssl", "kmeans": str(km)},
        "codec_ssl: MFCC units + codec2": {"type": "codec_ssl", "ssl": {"type": "ssl", "kmeans": str(km)},
                                           "codec": {"type": "codec2"}},
    }
    for d in args.hf_codec:
        specs[f"hf_codec {Path(d).name}"] = {"type": "hf_codec", "model_dir": d}
    for pair in args.espnet_codec:
        cfg, ckpt = pair.split(",")
        specs[f"espnet_codec {Path(ckpt).name}"] = {"type": "espnet_codec", "config": cfg, "checkpoint": ckpt}

    print(f"\ncorpus: {len(wavs)} espeak-ng utterances (22.05 kHz wav), {os.cpu_count()} CPU(s) on this machine\n")
    print("## Encode loop (read_audio + encode, 1 process, 1 thread, best of 3 passes)\n")
    print("| tokenizer | audio s | CPU s | audio s per CPU s |\n|---|---:|---:|---:|")
    for name, spec in specs.items():
        audio, cpu = encode_loop(spec, wavs)
        print(f"| {name} | {audio:.1f} | {cpu:.2f} | {audio / cpu:.0f}x |", flush=True)

    if not args.no_stage:
        import soundfile as sf

        stage_data = work / "data_stage"
        stage_data.mkdir(exist_ok=True)
        rep = {f"{u}-r{r}": p for r in range(args.stage_repeat) for u, p in wavs.items()}
        (stage_data / "wav.scp").write_text("".join(f"{u} {p}\n" for u, p in sorted(rep.items())))
        (stage_data / "utt2spk").write_text("".join(f"{u} {u.split('-')[0]}\n" for u in sorted(rep)))
        manifest = work / "manifest"
        cli(["prepare", "--task", "audiolm", "--data-dir", str(stage_data), "--out-dir", str(manifest), "--force"])
        audio = sum(sf.info(p).duration for p in rep.values())
        print(f"\n{len(rep)} utterances, {audio / 60:.1f} min of audio")
        print("\n## `speechlm tokenize` stage (process start-up, archives and merge included)\n")
        print("| tokenizer | nj | CPU s | wall s | audio s per CPU s | audio s per wall s |\n|---|---:|---:|---:|---:|---:|")
        for name, spec in specs.items():
            for nj in (1, 2):
                cpu, wall = stage_run(work, manifest, spec, nj)
                print(f"| {name} | {nj} | {cpu:.1f} | {wall:.1f} | {audio / cpu:.0f}x | {audio / wall:.0f}x |", flush=True)

    recognizer = None
    if args.asr != "none":
        try:
            from speechlm.eval.intelligibility import get_recognizer

            recognizer = get_recognizer(args.asr)
        except Exception as e:  # no recognizer installed: the table goes without WER
            print(f"\n(no ASR: {e})")
    some = dict(list(wavs.items())[: args.n_quality])
    print(f"\n## Resynthesis quality ({len(some)} utterances)\n")
    print("| tokenizer | rate | STOI | PESQ | WER % (Whisper) |\n|---|---:|---:|---:|---:|")
    if recognizer is not None:
        from speechlm.data.audio import load_audio

        from speechlm.data.audio import resample

        refs = [texts[u] for u in some]
        orig = wer(refs, [recognizer.transcribe(load_audio(p, 16000)) for p in some.values()])
        band = wer(refs, [recognizer.transcribe(resample(load_audio(p, 8000), 8000, 16000)) for p in some.values()])
        print(f"| original audio | 16 kHz | 1.000 | - | {orig:.1f} |")
        print(f"| original audio, band-limited to 8 kHz | 8 kHz | 1.000 | - | {band:.1f} |")
    for name, spec in specs.items():
        q = quality(spec, some, texts, recognizer)
        if not q:
            print(f"| {name} | - | not decodable | - | - |")
            continue
        w = f"{q['wer']:.1f}" if "wer" in q else "n/a"
        print(f"| {name} | {q['sr'] // 1000} kHz | {q['stoi']:.3f} | {q['pesq']:.2f} ({q['pesq_kind']}) | {w} |", flush=True)


if __name__ == "__main__":
    main()
