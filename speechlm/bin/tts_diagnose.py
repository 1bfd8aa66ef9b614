"""speechlm tts-diagnose: why is generated speech (un)intelligible? Teacher-forced resynthesis,
decode-path parity, per-field errors of Codec 2 frames and their drift (``speechlm.diagnose``).

    speechlm tts-diagnose --model-dir exp/x/packed --manifest-dir dump/test/tts \\
        --hyp-dir exp/x/decode_test_tts --out-dir exp/x/diagnose_test_tts --limit 40 --score

Writes ``OUT/diagnose.md`` + ``diagnose.json`` (all tables), ``OUT/<set>/wav.scp`` for the audio
sets (``codec``, ``tf_argmax``, ``tf_expected``, ``tf_argmax_predlen``; scorable with ``speechlm
score --decode-dir OUT/<set>``) and ``OUT/spectrograms/*.png``.
"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-dir", required=True, help="a packed model dir, or a training run dir (exp/<tag>)")
    p.add_argument("--checkpoint", default="final", help="of a run dir: final | latest | average | a checkpoint dir")
    p.add_argument("--manifest-dir", required=True, help="tokenized TTS manifest dir (dump/<set>/tts)")
    p.add_argument("--tokenizers", help="tokenizers.yaml that made the tokens (default: the model dir's)")
    p.add_argument("--out-dir", required=True, help="where diagnose.md/json, wav sets and spectrograms go")
    p.add_argument("--hyp-dir", help="decode dir of the same manifest (tokens/<target>.scp): free-running errors")
    p.add_argument("--decode-config", help="decode YAML for length_scale and the speaker-prompt seed "
                                           "(default: the model dir's decode.yaml)")
    p.add_argument("--limit", type=int, default=40, help="first N utterances of the manifest (0: all)")
    p.add_argument("--batch-size", type=int, default=8, help="utterances per forward pass")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16", "auto"),
                   help="precision of both passes (fp32: parity up to float rounding)")
    p.add_argument("--no-kv-cache", action="store_true", help="decode by recomputing every step (no KV cache)")
    p.add_argument("--spectrograms", type=int, default=4, help="spectrogram PNGs of the first N utterances")
    p.add_argument("--score", action="store_true", help="Whisper WER/CER of every audio set (and --hyp-dir's)")
    p.add_argument("--asr-model-dir", help="local Whisper model dir for --score (default: bundled tiny.en)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: every core)")


def main(args: argparse.Namespace) -> int:
    from speechlm.diagnose.tts import DiagnoseOptions, diagnose
    from speechlm.utils.threads import set_threads

    set_threads(args.threads or None)
    r = diagnose(DiagnoseOptions(
        model_dir=args.model_dir, manifest_dir=args.manifest_dir, out_dir=args.out_dir, tokenizers=args.tokenizers,
        hyp_dir=args.hyp_dir, checkpoint=args.checkpoint, decode_config=args.decode_config, limit=args.limit,
        batch_size=args.batch_size, precision=args.precision, kv_cache=not args.no_kv_cache,
        spectrograms=args.spectrograms, score=args.score, asr_model_dir=args.asr_model_dir))
    for variant, p in r["parity"].items():
        print(f"parity ({variant.replace('_', ' ')}): {'holds' if p['holds'] else 'BROKEN'}, max |logit diff| "
              f"{p['max_abs_diff']:.3g}, argmax agreement {p['argmax_agree']:.4f}, {p['n_mismatches']} mismatches")
    for variant, t in r["teacher_forced"].items():
        print(f"teacher-forced accuracy ({variant.replace('_', ' ')}): {t['all']['acc']:.3f}, CE {t['all']['ce']:.3f}")
    for label, v in r.get("intelligibility", {}).items():
        print(f"WER {label}: {v['wer']:.1f}%")
    print(f"report: {args.out_dir}/diagnose.md")
    return 0 if all(p["holds"] for p in r["parity"].values()) else 3
