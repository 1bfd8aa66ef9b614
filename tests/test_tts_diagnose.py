"""`speechlm tts-diagnose`: Codec 2 fields round-trip, per-field errors and alignments, decode-path
parity on a tiny model trained on synthesized speech, and the files the command writes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from speechlm.cli import main as cli
from speechlm.data.batch import collate
from speechlm.data.dataset import DataSpec, TaskData
from speechlm.diagnose.align import FieldErrors, dtw_pairs, field_features, linear_pairs
from speechlm.diagnose.fields import CodecFields
from speechlm.diagnose.parity import ParityStats, decode_forced
from speechlm.diagnose.teacher import frame_logits, target_rows
from speechlm.diagnose.tts import prompt_of
from speechlm.models import SpeechLM
from speechlm.tokenizers import build_tokenizer
from tests.conftest import SENTENCES, synth
from tests.test_model_helpers import packed_model_dir, train


@pytest.fixture(scope="module")
def codec_tokens(tmp_path_factory) -> dict[str, np.ndarray]:
    """Real Codec 2 tokens of one espeak-ng sentence in the grouped and fields layouts."""
    from speechlm.data.audio import load_audio

    wav = synth(tmp_path_factory.mktemp("wav") / "a.wav", SENTENCES[1])
    audio = load_audio(str(wav), 8000)
    return {layout: build_tokenizer({"type": "codec2", "layout": layout}).encode(audio, 8000)
            for layout in ("grouped", "fields")}


def test_fields_round_trip_and_agree_across_layouts(codec_tokens):
    grouped, single = CodecFields.from_layout("grouped"), CodecFields.from_layout("fields")
    g, f = grouped.split(codec_tokens["grouped"]), single.split(codec_tokens["fields"])
    assert grouped.names == single.names and len(grouped.names) == 14
    for name in grouped.names:  # the same frames read through either layout give the same fields
        assert np.array_equal(g[name], f[name]), name
    assert np.array_equal(grouped.join(g), codec_tokens["grouped"])
    assert np.array_equal(single.join(f), codec_tokens["fields"])
    assert g["pitch"].max() > g["pitch"].min() and g["lsp3"].max() <= 31  # varied, and 5-bit LSP indices


def test_expected_value_is_each_fields_marginal_mean():
    fields = CodecFields.from_layout("grouped")
    probs = [np.zeros((1, 1 << sum(b for _, b in s))) for s in fields.streams]
    probs[0][0, [0b11, 0b00]] = [0.7, 0.3]  # voicing pair: P(v1 = 1) = P(v2 = 1) = 0.7
    probs[1][0, [10, 20]] = 0.5  # pitch: mean 15
    probs[2][0, 7] = 1.0
    probs[3][0, [10 * 32 + 3, 12 * 32 + 5]] = 0.5  # lsp1 mean 11, lsp2 mean 4
    for k in range(4, 8):
        probs[k][0, 0] = 1.0
    exp = fields.expected(probs)
    assert exp["voicing1"][0] == pytest.approx(0.7) and exp["pitch"][0] == pytest.approx(15.0)
    assert exp["lsp1"][0] == pytest.approx(11.0) and exp["lsp2"][0] == pytest.approx(4.0)
    tokens = fields.expected_tokens(probs)
    assert tokens[0, :4].tolist() == [0b11, 15, 7, 11 * 32 + 4]


def test_field_errors_of_identical_and_shifted_frames(codec_tokens):
    fields = CodecFields.from_layout("grouped")
    ref = fields.split(codec_tokens["grouped"])
    same = FieldErrors(fields.names)
    same.add(ref, ref)
    assert all(v == {"acc": 1.0, "mae": 0.0} for v in same.summary().values())
    keep = ref["pitch"] <= 124
    ref = {n: v[keep] for n, v in ref.items()}
    shifted = {**ref, "pitch": ref["pitch"] + 3}
    e = FieldErrors(fields.names)
    e.add(ref, fields.split(fields.join(shifted)))  # through tokens: the shift survives the packing
    s = e.summary()
    assert s["pitch"] == {"acc": 0.0, "mae": 3.0} and s["energy"]["mae"] == 0.0
    assert all(v == 3.0 for v in e.drift()["pitch"])  # the same shift in every tenth of the utterance
    early = FieldErrors(fields.names, bins=3, frame_bin=5)
    early.add(ref, shifted)
    assert early.n.tolist() == [5, 5, len(ref["pitch"]) - 10]  # by absolute frame, the rest in the last bin


def test_dtw_absorbs_timing_and_linear_does_not(codec_tokens):
    fields = CodecFields.from_layout("grouped")
    ref = fields.split(codec_tokens["grouped"])
    slow = {n: np.concatenate([np.repeat(v[:20], 2), v[20:]]) for n, v in ref.items()}  # 20 frames twice as slow
    lin, dtw = FieldErrors(fields.names), FieldErrors(fields.names)
    n = len(ref["pitch"])
    lin.add(ref, slow, linear_pairs(n, len(slow["pitch"])))
    pairs = dtw_pairs(field_features(ref, fields.levels), field_features(slow, fields.levels))
    dtw.add(ref, slow, pairs)
    assert pairs[0].tolist() == [0, 0] and pairs[-1].tolist() == [n - 1, len(slow["pitch"]) - 1]
    assert sum(v["mae"] for v in dtw.summary().values()) == 0.0
    assert sum(v["mae"] for v in lin.summary().values()) > 0.0
    assert linear_pairs(4, 4).tolist() == [[0, 0], [1, 1], [2, 2], [3, 3]]


# ---- a tiny real model on synthesized speech --------------------------------------------------------
@pytest.fixture(scope="module")
def tts_setup(tmp_path_factory):
    """A tokenized TTS manifest of 6 espeak-ng utterances (2 speakers) and a packed tiny delay model
    with the mini recipe's features (prefix LM, 2x condition reduction, length head, progress input)
    trained a few steps on it."""
    root = tmp_path_factory.mktemp("diag")
    d = root / "data"
    (d / "wav").mkdir(parents=True)
    lines: dict[str, list[str]] = {"wav.scp": [], "text": [], "utt2spk": []}
    for i, sent in enumerate(SENTENCES):
        spk, utt = f"spk{i % 2}", f"spk{i % 2}-utt{i}"
        wav = synth(d / "wav" / f"{utt}.wav", sent, voice="en-us" if i % 2 else "en+f2", rate=220)
        lines["wav.scp"].append(f"{utt} {wav}")
        lines["text"].append(f"{utt} {sent}")
        lines["utt2spk"].append(f"{utt} {spk}")
    for name, ls in lines.items():
        (d / name).write_text("\n".join(sorted(ls)) + "\n")
    dump = root / "dump" / "tts"
    assert cli(["prepare", "--task", "tts", "--data-dir", str(d), "--out-dir", str(dump)]) == 0
    (root / "tok.yaml").write_text("codec: {type: codec2}\nphone: {type: g2p}\n")
    assert cli(["tokenize", "--manifest-dir", str(dump), "--tokenizers", str(root / "tok.yaml")]) == 0
    packed = packed_model_dir(root / "packed", ["tts"], ["<unk>", " ", *"abcdefghijklmnopqrstuvwxyz"], decode="search: greedy\nmax_len: 200\n",
                              length_weight=1.0, progress=True, cond_reduction=2, prefix_lm=True)
    model = SpeechLM.from_pretrained(packed)
    data = TaskData(DataSpec("tts", "t", str(dump)), model.vocab, model.n_streams)
    batch = collate([data.example(i) for i in range(len(data))])
    train(model, batch, steps=12, lr=3e-3)
    with torch.no_grad():  # the progress input starts at zero; make it matter for the parity check
        model.progress.proj.weight.normal_(0.0, 0.5)
    model.save_pretrained(packed)
    return root, dump, packed, model.eval(), data


def _batches(model, data):
    exs = []
    for i in range(len(data)):
        ex = data.example(i)
        ex.id = data.utt_id(i)
        exs.append(ex)
    return collate(exs), collate([prompt_of(e) for e in exs])


def test_decode_path_parity_holds_for_delay(tts_setup):
    _, _, _, model, data = tts_setup
    full, prompts = _batches(model, data)
    truth = target_rows(model, full)
    predicted: list[int] = []
    assert [t.progress_len for t in truth] == [len(t.frames) for t in truth]
    assert all(len(t.rows) == len(t.frames) + 7 for t in truth)  # delay, 8 streams: 7 tail rows
    for override in (None, [len(t.frames) for t in truth]):
        rec = decode_forced(model, prompts, truth, override)
        used = [r.progress_len for r in rec]
        side = truth if override else target_rows(model, full, used)
        stats = ParityStats(model)
        stats.add(side, rec)
        s = stats.summary()
        assert s["n_mismatches"] == 0, s["mismatches"]
        assert s["max_abs_diff"] < 1e-3 and s["hidden_max_abs_diff"] < 1e-3 and s["argmax_agree"] == 1.0
        assert s["slots"] == sum(len(t.frames) * 8 + 1 for t in truth)  # every frame slot and the end token
    assert predicted != [len(t.frames) for t in truth]  # the length head's prediction is another length
    # a different progress input on one side is seen: the check is not vacuous
    wrong = ParityStats(model)
    wrong.add(truth, decode_forced(model, prompts, truth, [len(t.frames) + 9 for t in truth]))
    assert wrong.summary()["max_abs_diff"] > 1e-2
    acc = np.mean([(np.stack([lg.argmax(-1).numpy() for lg in frame_logits(model, t)], 1) == t.frames).mean()
                   for t in truth])
    assert 0.0 < acc < 1.0


def test_cli_writes_report_audio_and_spectrograms(tts_setup):
    root, dump, packed, _, _ = tts_setup
    hyp = root / "decode"
    assert cli(["decode", "--model-dir", str(packed), "--manifest-dir", str(dump), "--out-dir", str(hyp),
                "--limit", "2"]) == 0
    out = root / "diag_out"
    (root / "sample.yaml").write_text("search: sample\ntemperature: 0.8\ntop_k: 5\n")
    args = ["tts-diagnose", "--model-dir", str(packed), "--manifest-dir", str(dump), "--out-dir", str(out),
            "--limit", "2", "--hyp-dir", str(hyp), "--spectrograms", "1", "--decode-config", str(root / "sample.yaml")]
    assert cli(args) == 0
    r = json.loads((out / "diagnose.json").read_text())
    assert r["utterances"] == 2 and all(p["holds"] for p in r["parity"].values())
    assert set(r["parity"]) == {"true_length", "predicted_length"}
    assert {k for k in r["fields"] if not k.startswith("start_")} == {"tf_argmax", "tf_expected", "tf_sample", "tf_argmax_predlen", "free_running_linear",
                                "free_running_dtw", "other_utterance_linear",
                                                                    "previous_frame"}
    assert len(r["drift"]["free_running_dtw"]["pitch"]) == 10
    assert set(r["drift"]) >= {"start_tf_argmax", "start_free_running_linear"}
    # the first-second bins hold the same frames as the whole-utterance table (utterances of 1-3 s)
    assert r["fields"]["start_tf_argmax"]["pitch"] == pytest.approx(r["fields"]["tf_argmax"]["pitch"])
    for name in ("codec", "tf_argmax", "tf_expected", "tf_sample", "tf_argmax_predlen"):
        scp = (out / name / "wav.scp").read_text().split("\n")
        paths = [line.split()[1] for line in scp if line]
        assert len(paths) == 2 and all(Path(p).is_file() for p in paths), name
    assert len(list((out / "spectrograms").glob("*.png"))) == 1
    md = (out / "diagnose.md").read_text()
    assert "HOLDS" in md and "| pitch |" in md and "free_running_dtw" in md
    # the codec set is the reference tokens: the teacher-forced accuracy table agrees with the fields table
    acc = r["teacher_forced"]["true_length"]["pitch"]["acc"]
    assert acc == pytest.approx(r["fields"]["tf_argmax"]["pitch"]["acc"])
    # the same frames read with the next sentence's text: other conditions, so other predictions
    own, other = r["teacher_forced"]["true_length"]["all"], r["teacher_forced"]["other_text"]["all"]
    assert abs(other["ce"] - own["ce"]) > 1e-6 and "reading the text" in md
    # and with a prompt of the other speaker's voice (the two limited utterances are both spk0's)
    voice = r["teacher_forced"]["other_voice"]["all"]
    assert abs(voice["ce"] - own["ce"]) > 1e-6 and "reading the voice" in md
    mtime = (out / "diagnose.json").stat().st_mtime
    assert cli(args) == 0 and (out / "diagnose.json").stat().st_mtime == mtime  # complete: skipped


def test_example_takes_named_segments_from_another_example(tts_setup):
    _, _, _, model, data = tts_setup
    own, swapped, donor = data.example(0), data.example(0, segments_of={"phones": 1}), data.example(1)

    def segment(ex, kind):
        return ex.tokens[ex.kinds == kind]

    from speechlm.data.sequence import AUDIO_TGT, TEXT_COND

    assert np.array_equal(segment(swapped, TEXT_COND), segment(donor, TEXT_COND))
    assert not np.array_equal(segment(swapped, TEXT_COND), segment(own, TEXT_COND))
    assert np.array_equal(segment(swapped, AUDIO_TGT), segment(own, AUDIO_TGT))  # its own target
    # a speaker prompt taken from another example is that example's prompt (here: the other speaker's)
    from speechlm.diagnose.tts import other_voice
    from speechlm.data.sequence import AUDIO_COND

    j = int(other_voice(data)[0])
    assert data.utt_id(j).split("-")[0] != data.utt_id(0).split("-")[0]
    voiced = data.example(0, segments_of={"prompt": j})
    assert np.array_equal(segment(voiced, AUDIO_COND), segment(data.example(j), AUDIO_COND))
    assert np.array_equal(segment(voiced, TEXT_COND), segment(own, TEXT_COND))


def test_summary_compares_free_running_error_with_another_sentences_frames():
    from speechlm.diagnose.report import degradation, summary_lines

    names = ["pitch", "energy"]
    mae = {"tf_argmax": [1.0, 1.0], "tf_sample": [1.2, 1.2], "free_running_linear": [5.0, 2.0],
           "free_running_dtw": [4.0, 1.5], "other_utterance_linear": [5.0, 4.0]}
    r = {"parity": {}, "teacher_forced": {}, "lengths": {}, "field_names": names,
         "fields": {k: {n: {"mae": v[i], "acc": 0.5} for i, n in enumerate(names)} for k, v in mae.items()},
         "drift": {k: {n: [v[i]] * 10 for i, n in enumerate(names)} for k, v in mae.items()}}
    r["degradation"] = degradation(r)
    line = [s for s in summary_lines(r) if "another sentence" in s]
    assert line == ["free-running field error / another sentence's frames (chance; both aligned by duration): "
                    "0.750x on average; at >= 0.9x: pitch"]


def test_summary_says_a_condition_is_unread_only_when_swapping_it_costs_nothing():
    from speechlm.diagnose.report import READ_GAP, summary_lines

    def lines(gap_text: float, gap_voice: float) -> list[str]:
        own = {"all": {"ce": 3.0, "acc": 0.3}}
        tf = {"true_length": own, "other_text": {"all": {"ce": 3.0 + gap_text, "acc": 0.3}},
              "other_voice": {"all": {"ce": 3.0 + gap_voice, "acc": 0.3}}}
        return summary_lines({"parity": {}, "teacher_forced": tf, "lengths": {}})

    text, voice = lines(READ_GAP / 2, 0.3)
    assert text.startswith("reading the text") and "not the text" in text
    assert voice.startswith("reading the voice") and "does not set" not in voice and "3.300" in voice
    text, voice = lines(0.3, 0.0)
    assert "not the text" not in text and "does not set the voice" in voice
    # a phone-led target (a "phone" stream): its history carries the text, so no verdict on reading it
    own = {"all": {"ce": 3.0, "acc": 0.3}, "phone": {"ce": 0.1, "acc": 0.9}}
    tf = {"true_length": own, "other_text": {"all": {"ce": 3.0, "acc": 0.3}}}
    text, = summary_lines({"parity": {}, "teacher_forced": tf, "lengths": {}})
    assert "phone stream carries the text" in text and "not the text" not in text
