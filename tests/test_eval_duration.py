"""The duration metric: generated/reference length ratios and the stop rate from a decode dir."""
import numpy as np
import pytest
import soundfile as sf

from speechlm.eval import build_metric


def _wav(path, seconds, sr=8000):
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, 0.3 * np.sin(2 * np.pi * 220 * t), sr)
    return str(path)


def test_ratios_range_and_stops(tmp_path):
    ref = {u: _wav(tmp_path / f"r{u}.wav", 2.0) for u in "abc"}
    hyp = {"a": _wav(tmp_path / "ha.wav", 2.2), "b": _wav(tmp_path / "hb.wav", 4.0), "c": _wav(tmp_path / "hc.wav", 1.0)}
    (tmp_path / "stopped").write_text("a 1\nb 0\nc 1\n")
    res = build_metric("duration", decode_dir=str(tmp_path))(hyp, ref)
    assert res.per_utt["a"]["ratio"] == pytest.approx(1.1) and res.per_utt["a"]["in_range"]
    assert not res.per_utt["b"]["in_range"] and not res.per_utt["c"]["in_range"]
    assert res.summary["in_range_pct"] == pytest.approx(100 / 3)
    assert res.summary["stopped_pct"] == pytest.approx(200 / 3)
    assert res.summary["ratio_median"] == pytest.approx(1.1)
    assert [u for u, _ in res.worst(2)] == ["b", "c"]  # 2x and 0.5x are equally far from 1: ties by id


def test_without_a_stopped_file_the_stop_rate_is_not_claimed(tmp_path):
    ref = {"a": _wav(tmp_path / "r.wav", 1.0)}
    hyp = {"a": _wav(tmp_path / "h.wav", 1.0)}
    res = build_metric("duration")(hyp, ref)
    assert "stopped_pct" not in res.summary and res.summary["in_range_pct"] == 100.0


def test_speech_span_catches_silence_padding(tmp_path):
    """Right length, half of it silence: the whole-file ratio passes, the speech-span ratio does not."""
    sr = 8000
    ref = {"a": _wav(tmp_path / "r.wav", 2.0)}
    t = np.arange(sr) / sr
    padded = np.concatenate([0.3 * np.sin(2 * np.pi * 220 * t), 1e-4 * np.random.default_rng(0).standard_normal(sr)])
    sf.write(tmp_path / "h.wav", padded, sr)
    res = build_metric("duration")({"a": str(tmp_path / "h.wav")}, ref)
    row = res.per_utt["a"]
    assert row["in_range"] and row["ratio"] == pytest.approx(1.0)
    assert not row["speech_in_range"] and row["speech_ratio"] == pytest.approx(0.5, abs=0.02)
    assert res.summary["speech_in_range_pct"] == 0.0
