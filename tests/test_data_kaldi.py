"""Kaldi data dirs: validate-data finds each planted fault, fix-data drops and reports them."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from speechlm.cli import main as cli
from speechlm.data.audio import load_audio, read_audio
from speechlm.data.kaldi import DataDir, read_file, validate
from speechlm.data.validate import fix_dir


def test_valid_dir_has_no_problems(data_dir):
    assert validate(data_dir) == []
    assert cli(["validate-data", str(data_dir)]) == 0


def _corrupt(d):
    """Plant one of each fault; return the (file, id, message part) that must be reported."""
    wav = (d / "wav.scp").read_text().splitlines()
    text = (d / "text").read_text().splitlines()
    bad = d / "wav" / "broken.wav"
    bad.write_bytes(b"RIFF0000WAVEfmt garbage")
    wav += ["zz-broken " + str(bad), "zz-missing /nonexistent/x.wav"]
    text += ["zz-broken SOME WORDS", "zz-missing MORE WORDS", "zz-dup FIRST"]
    text.insert(0, text[3])  # duplicate id + unsorted
    text[2] = text[2].split()[0]  # empty transcript
    (d / "wav.scp").write_text("\n".join(wav) + "\n")
    (d / "text").write_bytes(("\n".join(text) + "\n").encode() + b"zz-latin \xe9t\xe9\n")
    (d / "utt2spk").write_text((d / "utt2spk").read_text() + "zz-broken spk0\nzz-missing spk0\n")
    return [
        ("wav.scp", "zz-broken", "unreadable audio"),
        ("wav.scp", "zz-missing", "not found"),
        ("text", None, "not valid UTF-8"),
        ("text", None, "duplicate id"),
        ("text", None, "not sorted"),
        ("text", None, "empty transcript"),
        ("text", "zz-dup", "is not in wav.scp"),
        ("spk2utt", None, "does not match utt2spk"),
    ]


def test_validate_finds_every_planted_fault(data_dir, caplog):
    expected = _corrupt(data_dir)
    problems = validate(data_dir)
    for file, uid, msg in expected:
        hits = [p for p in problems if p.file.endswith(file) and msg in p.message and (uid is None or p.id == uid)]
        assert hits, f"no problem reported for {file} {uid} {msg}; got {[str(p) for p in problems]}"
    text_problems = [p for p in problems if p.file.endswith("text") and p.line]
    assert all(p.line > 0 for p in text_problems)  # file and line are named
    assert cli(["validate-data", str(data_dir)]) == 1


def test_fix_data_drops_and_reports(data_dir, tmp_path):
    _corrupt(data_dir)
    out = tmp_path / "fixed"
    dropped = fix_dir(data_dir, out)
    joined = "\n".join(dropped)
    for uid in ("zz-broken", "zz-missing", "zz-dup"):
        assert uid in joined
    assert validate(out) == []
    fixed = DataDir.load(out)
    assert "zz-broken" not in fixed.files["wav.scp"]
    assert len(fixed.utt_ids) == 5  # six minus the one whose transcript was emptied
    assert list(fixed.files["text"]) == sorted(fixed.files["text"])


def test_pipes_segments_and_resampling(data_dir, tmp_path):
    utt, path = read_file(data_dir / "wav.scp").popitem()
    wav, sr = read_audio(path)
    piped, sr2 = read_audio(f"sox {path} -t wav - |")
    assert sr == sr2 and np.allclose(wav, piped, atol=1e-4)
    seg, _ = read_audio({"path": path, "start": 0.1, "end": 0.3})
    assert len(seg) == int(round(0.3 * sr)) - int(round(0.1 * sr))
    y = load_audio(path, 8000)
    assert abs(len(y) - len(wav) * 8000 / sr) <= 2
    # a failing pipe names the utterance
    try:
        read_audio("false |", "uttX")
    except IOError as e:
        assert "uttX" in str(e)
    else:
        raise AssertionError("a failing pipe must raise")


def test_segments_file_is_validated(tmp_path):
    d = tmp_path / "seg"
    d.mkdir()
    sf.write(d / "rec.wav", np.zeros(16000, dtype=np.float32) + 0.1, 16000)
    (d / "wav.scp").write_text(f"rec1 {d / 'rec.wav'}\n")
    (d / "segments").write_text("a rec1 0.0 0.5\nb rec1 0.5 0.2\nc recX 0 1\n")
    (d / "text").write_text("a HI\nb THERE\nc YOU\n")
    problems = validate(d)
    assert any(p.id == "b" and "bad times" in p.message for p in problems)
    assert any(p.id == "c" and "recX" in p.message for p in problems)
    assert DataDir.load(d).audio_value("a") == {"path": str(d / "rec.wav"), "start": 0.0, "end": 0.5}


def test_fix_data_length_filter(data_dir, tmp_path):
    import soundfile as sf

    durs = {u: sf.info(p).duration for u, p in read_file(data_dir / "wav.scp").items()}
    cut = sorted(durs.values())[2]
    assert cli(["fix-data", str(data_dir), "--out-dir", str(tmp_path / "f"), "--min-duration", str(cut)]) == 0
    kept = set(read_file(tmp_path / "f" / "wav.scp"))
    assert kept == {u for u, d in durs.items() if d >= cut} and len(kept) == 4


def test_fix_data_carries_extra_utterance_files(data_dir, tmp_path):
    """Per-utterance files a task template reads (text.2, history, ...) survive fix-data, filtered
    to the kept utterances; a file not keyed by utterances is not carried."""
    utts = list(read_file(data_dir / "text"))
    (data_dir / "history").write_text("".join(f"{u} call lights action=on\n" for u in reversed(utts)))
    _corrupt(data_dir)
    (data_dir / "notes").write_text("not-an-utt something\n")
    out = tmp_path / "fixed"
    fix_dir(data_dir, out)
    kept = DataDir.load(out).utt_ids
    history = read_file(out / "history")
    assert list(history) == kept and set(history.values()) == {"call lights action=on"}
    assert not (out / "notes").exists()


def test_write_data_dir_for_recipes(tmp_path, data_dir):
    """A local/ script's data dir (speechlm.data.kaldi.write_data_dir): sorted, consistent, valid."""
    from speechlm.data.kaldi import Utt, write_data_dir

    src = DataDir.load(data_dir)
    utts = [Utt(u, src.files["wav.scp"][u], f"  {src.files['text'][u]} ", src.files["utt2spk"][u], num_samples=7)
            for u in reversed(src.utt_ids)]
    out = write_data_dir(tmp_path / "d", utts)
    assert validate(out) == []
    got = DataDir.load(out)
    for name in ("wav.scp", "text", "utt2spk", "spk2utt"):
        assert got.files[name] == src.files[name], name
    assert (out / "wav.scp").read_text() == (data_dir / "wav.scp").read_text()  # byte-order sorted
    assert set(got.files["utt2num_samples"].values()) == {"7"}
    utts[0].num_samples = None  # not every utterance has it: a stale file goes
    write_data_dir(out, utts)
    assert not (out / "utt2num_samples").exists()
    with pytest.raises(ValueError, match="appears twice"):
        write_data_dir(tmp_path / "e", utts + utts[:1])
    with pytest.raises(ValueError, match="contains whitespace"):
        write_data_dir(tmp_path / "e", [Utt("a b", "x.wav", "hi", "s")])
