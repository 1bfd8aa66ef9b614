"""`speechlm score` end to end: RESULTS.md tables with the right numbers, per-utterance JSONL,
histogram PNGs, updates in place, manifest references, and errors that name the culprit."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from speechlm.cli import main as cli
from speechlm.data.manifest import prepare_manifest
from speechlm.eval.sources import Hypotheses, default_metrics, read_references
from speechlm.tasks import load_template
from tests.conftest import synth

REF = {"u1": "THE CAT SAT ON THE MAT", "u2": "hello world", "u3": "turn on the kitchen lights"}
HYP = {"u1": "the cat sat on a mat", "u2": "Hello, world!", "u3": "turn the kitchen light"}
# u1: 1 sub / 6; u2: 0 / 2; u3: 1 del + 1 sub / 5  -> 3 / 13 words


def write_map(path: Path, mapping: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{k} {v}\n" for k, v in sorted(mapping.items())))
    return path


@pytest.fixture
def asr_dirs(tmp_path: Path) -> tuple[Path, Path]:
    ref = tmp_path / "data" / "test"
    dec = tmp_path / "exp" / "tiny" / "decode_test_asr"
    write_map(ref / "text", REF)
    write_map(dec / "text", HYP)
    return dec, ref


def table_rows(md: str, header_start: str) -> list[dict[str, str]]:
    """Rows of the first markdown table after the line starting with ``header_start``."""
    lines = md.splitlines()
    i = next(n for n, ln in enumerate(lines) if ln.startswith(header_start))
    while not lines[i].startswith("| "):
        i += 1
    cols = [c.strip() for c in lines[i].strip("|").split("|")]
    rows = []
    for ln in lines[i + 2:]:
        if not ln.startswith("|"):
            break
        rows.append(dict(zip(cols, (c.strip() for c in ln.strip("|").split("|")))))
    return rows


def test_score_writes_results_with_the_right_numbers(asr_dirs, tmp_path):
    dec, ref = asr_dirs
    results = tmp_path / "RESULTS.md"
    assert cli(["score", "--decode-dir", str(dec), "--ref-dir", str(ref), "--results", str(results)]) == 0
    md = results.read_text()
    rows = table_rows(md, "## test / asr")
    assert len(rows) == 1
    assert rows[0]["model"] == "tiny"
    assert rows[0]["utts"] == "3"
    assert rows[0]["WER %"] == f"{100 * 3 / 13:.2f}"
    assert "speechlm score --decode-dir" in md and str(ref) in md
    assert "`u3` 40.00" in md  # the worst utterance, listed first
    entry = json.loads((tmp_path / "RESULTS.json").read_text())["entries"][0]
    assert entry["metrics"]["wer"]["wer"] == pytest.approx(100 * 3 / 13)
    assert entry["metrics"]["wer"]["del"] == pytest.approx(100 / 13)
    # per-utterance JSONL and a histogram beside the results
    per_utt = [json.loads(ln) for ln in (tmp_path / entry["per_utt"]).read_text().splitlines()]
    assert [r["id"] for r in per_utt] == ["u1", "u2", "u3"]
    assert per_utt[1]["wer"]["wer"] == 0.0 and per_utt[0]["wer"]["sub"] == 1
    png = tmp_path / entry["plots"][0]
    assert png.name == "wer_hist.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_results_are_updated_in_place(asr_dirs, tmp_path):
    dec, ref = asr_dirs
    results = tmp_path / "RESULTS.md"
    args = ["score", "--decode-dir", str(dec), "--ref-dir", str(ref), "--results", str(results), "--metrics", "wer"]
    assert cli(args) == 0
    results.write_text("# My results\n\nNotes written by hand.\n\n" + results.read_text().split("\n", 2)[2])
    assert cli(args) == 0  # same model and config: the row is replaced
    write_map(dec / "text", REF)
    assert cli(args + ["--model", "perfect", "--decode-config", "beam=4"]) == 0
    md = results.read_text()
    assert md.startswith("# My results\n\nNotes written by hand.")
    rows = table_rows(md, "## test / asr")
    assert [(r["model"], r["WER %"], r["decode config"]) for r in rows] == [
        ("tiny", f"{100 * 3 / 13:.2f}", "-"), ("perfect", "0.00", "beam=4")]
    assert md.count("<!-- BEGIN speechlm score") == 1


def test_decode_config_and_rtf_from_the_decode_dir(asr_dirs, tmp_path):
    dec, ref = asr_dirs
    (dec / "decode.yaml").write_text("sampling:\n  top_k: 5\nmax_len: 3.0\n")
    (dec / "timing.json").write_text(json.dumps({"rtf": 0.125}))
    results = tmp_path / "RESULTS.md"
    assert cli(["score", "--decode-dir", str(dec), "--ref-dir", str(ref), "--results", str(results),
                "--metrics", "wer", "cer", "bleu"]) == 0
    row = table_rows(results.read_text(), "## test / asr")[0]
    assert row["decode config"] == "sampling.top_k=5, max_len=3.0"
    assert row["RTF"] == "0.125"
    assert float(row["CER %"]) > 0 and 0 < float(row["BLEU"]) < 100


def test_hypothesis_missing_from_reference_is_an_error_naming_file_and_utt(asr_dirs, tmp_path, caplog):
    dec, ref = asr_dirs
    write_map(dec / "text", {**HYP, "u7": "extra"})
    with caplog.at_level(logging.ERROR):
        rc = cli(["score", "--decode-dir", str(dec), "--ref-dir", str(ref), "--results", str(tmp_path / "R.md")])
    assert rc == 1
    assert f"{dec / 'text'}: utterance 'u7' not found in {ref / 'text'}" in caplog.text
    assert not (tmp_path / "R.md").exists()


def test_metric_that_needs_audio_names_the_missing_file(asr_dirs, caplog):
    dec, ref = asr_dirs
    with caplog.at_level(logging.ERROR):
        assert cli(["score", "--decode-dir", str(dec), "--ref-dir", str(ref), "--metrics", "stoi"]) == 1
    assert f"{dec / 'wav.scp'} not found" in caplog.text


def test_default_metrics_follow_the_task(tmp_path):
    cases = {"asr": ["wer", "cer"], "mt": ["wer", "cer", "bleu", "chrf"], "st": ["wer", "cer", "bleu", "chrf"],
             "plain_tts": ["intelligibility", "duration", "spk_sim", "dnsmos"],
             "speech_enhancement": ["duration", "spk_sim", "stoi", "pesq", "mcd", "si_snr", "dnsmos"]}
    values = {"text": "hello", "text.2": "hallo", "wav.scp": "a.wav", "wav.2.scp": "b.wav", "utt2spk": "s1"}
    for task, expected in cases.items():
        # A manifest dir as `speechlm prepare` writes it (docs/interfaces.md).
        template, out = load_template(task), tmp_path / "dump" / "test" / task
        out.mkdir(parents=True)
        template.save(out / "template.yaml")
        segs = {s.name: values[s.source] for s in template.segments}
        (out / "manifest.jsonl").write_text(json.dumps({"id": "u1", "spk": "s1", "segments": segs}) + "\n")
        refs = read_references(out)
        assert (refs.test_set, refs.task) == ("test", task)
        hyp = Hypotheses(tmp_path, text={"u1": "x"} if "wer" in expected else None,
                         wav={"u1": "x.wav"} if "wer" not in expected else None)
        assert default_metrics(hyp, refs) == expected, task


def test_tts_scoring_with_manifest_reference_and_floor(tmp_path):
    """A TTS decode dir (relative wav paths) against a manifest: intelligibility with the
    recognizer's floor on ground truth and on a second reference set, and speaker similarity."""
    import subprocess

    texts = {"u1": "turn on the kitchen lights", "u2": "what is the weather like today"}
    data, dec, resyn = tmp_path / "data" / "test", tmp_path / "exp" / "tts1" / "decode_test_tts", tmp_path / "resyn"
    for d in (data / "wav", dec / "wav", resyn):
        d.mkdir(parents=True)
    for utt, text in texts.items():
        synth(data / "wav" / f"{utt}.wav", text)
        synth(dec / "wav" / f"{utt}.wav", text, rate=150)  # "generated": same voice, slower
        subprocess.run(["sox", "-R", str(data / "wav" / f"{utt}.wav"), "-r", "8000", str(resyn / f"{utt}.wav")], check=True)
    write_map(data / "text", texts)
    write_map(data / "wav.scp", {u: str(data / "wav" / f"{u}.wav") for u in texts})
    write_map(dec / "wav.scp", {u: f"wav/{u}.wav" for u in texts})
    write_map(resyn / "wav.scp", {u: str(resyn / f"{u}.wav") for u in texts})
    dump = tmp_path / "dump" / "test" / "plain_tts"
    prepare_manifest(load_template("plain_tts"), data, dump)
    results = tmp_path / "RESULTS.md"
    assert cli(["score", "--decode-dir", str(dec), "--ref-dir", str(dump), "--results", str(results),
                "--metrics", "intelligibility", "spk_sim", "--floor-wav-scp", f"8k={resyn / 'wav.scp'}"]) == 0
    md = results.read_text()
    row = table_rows(md, "## test / plain_tts")[0]
    entry = json.loads((tmp_path / "RESULTS.json").read_text())["entries"][0]
    assert row["model"] == "tts1"
    assert row["ASR-WER %"] == f"{entry['metrics']['intelligibility']['wer']:.2f}"
    assert float(row["ASR-WER %"]) < 50.0
    assert row["ASR-WER % (ground truth)"] == f"{entry['floor']['ground truth']['wer']:.2f}"
    assert "ASR-WER % (8k)" in row
    assert float(row["SPK-SIM"]) > 0.7
    assert "whisper tiny.en" in md
    per_utt = [json.loads(ln) for ln in (tmp_path / entry["per_utt"]).read_text().splitlines()]
    assert "kitchen" in per_utt[0]["intelligibility"]["transcript"].lower()
    assert "intelligibility@ground truth" in per_utt[0] and "intelligibility@8k" in per_utt[0]


def test_decode_config_description_names_only_changed_options(tmp_path):
    """The table's decode config column lists what differs from DecodeConfig's defaults (list
    options such as ordinal_streams included: an empty list is the default, not a change)."""
    import dataclasses

    import yaml

    from speechlm.bin.score import describe_decode_config
    from speechlm.infer.config import DecodeConfig

    cfg = dataclasses.asdict(DecodeConfig(search="sample", top_k=20))
    (tmp_path / "decode.yaml").write_text(yaml.safe_dump({"model_dir": "m", "decode": cfg}, sort_keys=False))
    assert describe_decode_config(None, tmp_path) == "search=sample, top_k=20"
    cfg.update(ordinal="median", ordinal_streams=[1, 2])
    (tmp_path / "decode.yaml").write_text(yaml.safe_dump({"model_dir": "m", "decode": cfg}, sort_keys=False))
    assert describe_decode_config(None, tmp_path) == "search=sample, top_k=20, ordinal=median, ordinal_streams=[1, 2]"
