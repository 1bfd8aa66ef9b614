"""``diagnose.md``: the tables of a TTS diagnosis (:mod:`speechlm.diagnose.tts`) for a person.

The same numbers are in ``diagnose.json``; :func:`degradation` adds the comparison of free-running
with teacher-forced field errors (which fields break first, and where in the utterance).
"""
from __future__ import annotations

import os
from pathlib import Path

#: a condition whose swap costs the teacher-forced CE less than this (nats per slot) is not read
READ_GAP = 0.01


def _f(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e-2 and v != 0 else f"{v:.{digits}f}"
    return str(v)


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    out += ["| " + " | ".join(_f(c) for c in r) + " |" for r in rows]
    return out + [""]


def degradation(result: dict, factor: float = 2.0) -> dict:
    """Per field: free-running MAE (DTW and linear) over teacher-forced argmax MAE, and the first
    position bin where the linear-aligned free-running error exceeds ``factor`` x the teacher-forced
    one of that bin (None: never)."""
    fields, drift = result.get("fields", {}), result.get("drift", {})
    if "free_running_dtw" not in fields:
        return {}
    out = {}
    for name in result["field_names"]:
        tf = fields["tf_argmax"][name]["mae"]
        row = {"dtw_over_tf": fields["free_running_dtw"][name]["mae"] / max(tf, 1e-9),
               "linear_over_tf": fields["free_running_linear"][name]["mae"] / max(tf, 1e-9), "first_bin": None}
        if "tf_sample" in fields:  # free-running against teacher-forced draws: exposure bias without sampling noise
            row["dtw_over_tf_sample"] = fields["free_running_dtw"][name]["mae"] / max(fields["tf_sample"][name]["mae"], 1e-9)
        for i, (a, b) in enumerate(zip(drift["tf_argmax"][name], drift["free_running_linear"][name])):
            if a is not None and b is not None and b > factor * max(a, 1e-9):
                row["first_bin"] = i
                break
        out[name] = row
    return out


def summary_lines(r: dict) -> list[str]:
    """A few sentences read off the tables: parity, the cost of the predicted length, which fields
    free-running breaks most and from where, intelligibility against the codec floor."""
    out = []
    for variant, p in r["parity"].items():
        out.append(f"decode-path parity ({variant.replace('_', ' ')}): "
                   + ("holds" if p["holds"] else "BROKEN") + f" (max |logit diff| {_f(p['max_abs_diff'])}, "
                   f"{p['n_mismatches']} mismatches)")
    tf = r["teacher_forced"]
    if "predicted_length" in tf:
        a, b = tf["true_length"]["all"], tf["predicted_length"]["all"]
        out.append(f"teacher-forced accuracy {_f(a['acc'])} with the true length, {_f(b['acc'])} with the "
                   f"predicted one (CE {_f(a['ce'])} -> {_f(b['ce'])}; predicted/true length "
                   f"{_f(r['lengths'].get('predicted_over_true_mean'))})")
    # a phone-led target's history holds the text's phones, so teacher forcing cannot show it unread
    text_unread = ("the target's phone stream carries the text in the history: compare free-running output "
                   "instead" if "phone" in tf.get("true_length", {}) else "the model predicts from the audio history, "
                   "not the text")
    for key, what, own, other, unread in (
            ("other_text", "the text", "its own text", "the next sentence's", text_unread),
            ("other_voice", "the voice", "a prompt of its own voice", "another voice's", "the prompt does not set "
             "the voice")):
        if key in tf:
            a, b = tf["true_length"]["all"], tf[key]["all"]
            gap = b["ce"] - a["ce"]
            out.append(f"reading {what}: teacher-forced CE {_f(a['ce'])} nats with {own}, {_f(b['ce'])} with {other} "
                       f"(accuracy {_f(a['acc'])} -> {_f(b['acc'])})" + (f"; a gap under {READ_GAP} nats: {unread}"
                                                                        if gap < READ_GAP else ""))
    deg = r.get("degradation") or {}
    if deg:
        worst = sorted(deg, key=lambda n: -deg[n]["dtw_over_tf"])[:4]
        out.append("free-running / teacher-forced field error (DTW), worst first: "
                   + ", ".join(f"{n} {_f(deg[n]['dtw_over_tf'])}x" for n in worst))
        if "dtw_over_tf_sample" in deg[worst[0]]:
            out.append("free-running / teacher-forced draws (same sampling, true history): "
                       + ", ".join(f"{n} {_f(deg[n]['dtw_over_tf_sample'])}x" for n in worst))
        early = sorted((v["first_bin"], n) for n, v in deg.items() if v["first_bin"] is not None)
        if early:
            out.append("first to exceed 2x the teacher-forced error (linear alignment): "
                       + ", ".join(f"{n} at {b / 10:.1f}" for b, n in early[:4]) + " of the utterance")
        fr, base = r["fields"]["free_running_linear"], r["fields"].get("other_utterance_linear")
        if base:  # both aligned by duration: does the output hold more of this sentence than another's frames?
            ratio = {n: fr[n]["mae"] / max(base[n]["mae"], 1e-9) for n in r["field_names"]}
            mean = sum(ratio.values()) / len(ratio)
            near = [n for n in r["field_names"] if ratio[n] >= 0.9]
            out.append(f"free-running field error / another sentence's frames (chance; both aligned by duration): "
                       f"{_f(mean)}x on average" + (f"; at >= 0.9x: {', '.join(near)}" if near else ""))
    res = r.get("intelligibility", {})
    floor = res.get("codec", {}).get("wer")
    if floor:
        out.append("Whisper WER / codec floor: " + ", ".join(f"{k} {_f(v['wer'] / floor)}x" for k, v in res.items()
                                                          if k != "codec"))
    return out


def write_report(path: str | Path, r: dict) -> Path:
    """Write the markdown report of result ``r`` (as ``diagnose.json`` holds it)."""
    from speechlm.utils.fileio import atomic_open

    path = Path(path)
    base = path.parent
    lines = ["# TTS diagnosis", "",
             f"- model: `{r['model']}`", f"- manifest: `{r['manifest_dir']}` ({r['utterances']} utterances)",
             f"- free-running outputs: `{r['hyp_dir']}`" if r.get("hyp_dir") else "- free-running outputs: none given (--hyp-dir)",
             f"- precision {r['precision']}, KV cache {r['kv_cache']}, length_scale {r['length_scale']}", ""]
    lines += ["## Summary", ""] + [f"- {s}" for s in summary_lines(r)] + [""]
    if "intelligibility" in r:
        res = r["intelligibility"]
        floor = res.get("codec", {}).get("wer")
        lines += ["## Intelligibility (Whisper, same utterances)", ""]
        lines += _table(["audio", "WER %", "CER %", "WER / codec floor"],
                        [[k, v["wer"], v["cer"], v["wer"] / floor if floor else None] for k, v in res.items()])
    lines += ["## Teacher-forced accuracy per stream (argmax over the stream's codebook)", ""]
    tf = r["teacher_forced"]
    pl, ot, ov = tf.get("predicted_length"), tf.get("other_text"), tf.get("other_voice")
    header = (["stream", "acc (true length)", "CE nats (true length)"]
              + (["acc (predicted length)", "CE (predicted length)"] if pl else [])
              + (["acc (next sentence's text)", "CE (next sentence's text)"] if ot else [])
              + (["acc (another voice's prompt)", "CE (another voice's prompt)"] if ov else []))
    lines += _table(header, [[s, v["acc"], v["ce"]] + ([pl[s]["acc"], pl[s]["ce"]] if pl else [])
                             + ([ot[s]["acc"], ot[s]["ce"]] if ot else []) + ([ov[s]["acc"], ov[s]["ce"]] if ov else [])
                             for s, v in tf["true_length"].items()])
    ln = r["lengths"]
    lines += ["Lengths: " + ", ".join(f"{k} {_f(v)}" for k, v in ln.items()), ""]
    lines += ["## Decode-path parity (true tokens forced through the decoding loop)", "",
              "Logits of every sampled slot against the teacher-forced logits of the same slot, over the "
              "columns decoding allows; argmax agreement within them.", ""]
    for variant, p in r["parity"].items():
        verdict = "HOLDS" if p["holds"] else "BROKEN: decoding does not compute what training computes"
        lines += [f"### progress input from the {variant.replace('_', ' ')}: {verdict}", "",
                  f"max |logit diff| {_f(p['max_abs_diff'])} (tolerance {p['tolerance']}), max |hidden diff| "
                  f"{_f(p['hidden_max_abs_diff'])}, argmax agreement {_f(p['argmax_agree'], 4)}, "
                  f"{p['slots']} slots, {p['n_mismatches']} plan/layout mismatches", ""]
        lines += _table(["model stream", "slots", "max abs diff", "mean abs diff", "argmax agree"],
                        [[k, s["slots"], s["max_abs_diff"], s["mean_abs_diff"], s["argmax_agree"]]
                         for k, s in p["streams"].items()])
        lines += [f"- {m}" for m in p["mismatches"]] + ([""] if p["mismatches"] else [])
    if "fields" in r:
        kinds = list(r["fields"])
        main = [k for k in kinds if not k.startswith("start_")]
        lines += ["## Per-field errors (natural quantizer index)", "",
                  "acc: share of frames with the exact index; MAE: mean absolute index error. Free-running "
                  "outputs are aligned to the reference linearly by duration (`linear`: timing errors count) "
                  "and by DTW over the fields scaled to [0, 1] (`dtw`: timing absorbed). `other_utterance_linear`: the "
                  "reference frames of another sentence (the one before) aligned by duration, a chance level; "
                  "`previous_frame`: each reference frame predicted by the one before it (what copying the "
                  "true history gives).", ""]
        header = ["field"] + [f"{k} {m}" for k in main for m in ("acc", "MAE")]
        lines += _table(header, [[n] + [r["fields"][k][n][m] for k in main for m in ("acc", "mae")]
                                 for n in r["field_names"]])
        deg = r.get("degradation") or {}
        if deg:
            lines += ["### Free-running vs teacher-forced", "",
                      "MAE ratio free-running / teacher-forced argmax; the first tenth of the utterance where the "
                      "linear-aligned free-running error exceeds 2x the teacher-forced error there; free-running / "
                      "teacher-forced draws (the decode options' sampling from the true history).", ""]
            order = sorted(deg, key=lambda n: -deg[n]["dtw_over_tf"])
            samp = "dtw_over_tf_sample" in deg[order[0]]
            lines += _table(["field", "DTW / TF", "linear / TF", "first bin > 2x TF"] + (["DTW / TF draw"] if samp else []),
                            [[n, deg[n]["dtw_over_tf"], deg[n]["linear_over_tf"], deg[n]["first_bin"]]
                             + ([deg[n]["dtw_over_tf_sample"]] if samp else []) for n in order])
        lines += ["## Drift: MAE by relative position in the utterance (10 bins of the reference)", ""]
        for k in kinds:
            if k.startswith("start_"):
                continue
            lines += [f"### {k}", ""]
            lines += _table(["field"] + [f"{i / 10:.1f}" for i in range(10)],
                            [[n] + r["drift"][k][n] for n in r["field_names"]])
        start = [k for k in kinds if k.startswith("start_")]
        if start:
            lines += ["## The first second: MAE by reference frame (5-frame bins, 20 ms frames; the last bin: "
                      "every later frame)", ""]
            for k in start:
                lines += [f"### {k[len('start_'):]}", ""]
                lines += _table(["field"] + [f"{5 * i}-{5 * i + 4}" for i in range(10)] + ["50-"],
                                [[n] + r["drift"][k][n] for n in r["field_names"]])
    lines += ["## Audio", "", "Each set is scorable like a decode dir:", ""]
    for name, scp in r["audio"].items():
        d = Path(scp).parent
        lines.append(f"- `{name}`: `speechlm score --decode-dir {d} --ref-dir {r['manifest_dir']} "
                     f"--metrics intelligibility --floor-wav-scp codec={r['audio'].get('codec')}`")
    lines.append("")
    if r.get("spectrograms"):
        lines += ["## Spectrograms", ""] + [f"![{Path(p).stem}]({os.path.relpath(p, base)})" for p in r["spectrograms"]]
    with atomic_open(path) as f:
        f.write("\n".join(lines) + "\n")
    return path


__all__ = ["write_report", "degradation"]
