"""transformers codecs (EnCodec, DAC, Mimi): tiny random models saved and loaded back from disk."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from speechlm.data.audio import load_audio
from speechlm.tokenizers import build_tokenizer
from tests.conftest import synth


def _tiny(kind: str):
    import transformers as tf

    if kind == "encodec":  # 16 kHz, hop 320 -> 50 Hz; 0.3 kbps per codebook of 64
        return tf.EncodecModel(tf.EncodecConfig(
            sampling_rate=16000, hidden_size=16, num_filters=4, upsampling_ratios=[8, 5, 4, 2], codebook_size=64,
            codebook_dim=16, target_bandwidths=[0.6, 1.2], num_lstm_layers=1)), 50.0, 4
    if kind == "dac":
        return tf.DacModel(tf.DacConfig(
            sampling_rate=16000, encoder_hidden_size=4, downsampling_ratios=[2, 4, 5, 8],
            upsampling_ratios=[8, 5, 4, 2], decoder_hidden_size=16, n_codebooks=4, codebook_size=64, codebook_dim=4,
            hidden_size=32)), 50.0, 4
    return tf.MimiModel(tf.MimiConfig(
        sampling_rate=16000, hidden_size=32, num_filters=4, upsampling_ratios=[8, 5, 4, 2], codebook_size=64,
        codebook_dim=16, num_quantizers=4, vector_quantization_hidden_dimension=16, upsample_groups=32,
        num_hidden_layers=1, intermediate_size=32, num_attention_heads=2, num_key_value_heads=2, head_dim=16,
        frame_rate=12.5, sliding_window=20)), 12.5, 4


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    path = synth(tmp_path_factory.mktemp("wav") / "a.wav", "turn off the radio")
    return load_audio(path, 16000)


@pytest.mark.parametrize("kind", ["encodec", "dac", "mimi"])
def test_hf_codec_from_local_dir_matches_library(tmp_path, speech, kind):
    torch.manual_seed(0)
    ref, rate, max_q = _tiny(kind)
    ref.eval().save_pretrained(tmp_path / kind)

    tok = build_tokenizer({"type": "hf_codec", "model_dir": kind, "n_codebooks": 2}, base_dir=tmp_path)
    assert tok.kind == kind and tok.sample_rate == 16000 and tok.frame_rate == rate
    assert tok.codebook_sizes == [64, 64] and tok.n_streams == 2
    codes = tok.encode(speech, 16000)
    assert codes.dtype == np.int32 and codes.shape == (int(np.ceil(len(speech) / 16000 * rate)), 2)
    x = torch.from_numpy(speech).view(1, 1, -1)
    if kind == "dac":  # DAC's own preprocessing pads to whole frames
        x = torch.nn.functional.pad(x, (0, -len(speech) % 320))
    with torch.inference_mode():  # the library's own call
        if kind == "encodec":
            direct = ref.encode(x, bandwidth=0.6).audio_codes[0, 0]
        elif kind == "dac":
            direct = ref.encode(x, n_quantizers=2).audio_codes[0]
        else:
            direct = ref.encode(x, num_quantizers=2).audio_codes[0]
    np.testing.assert_array_equal(codes, direct.T.numpy())
    wav = tok.decode(codes)
    assert wav.dtype == np.float32 and abs(len(wav) - len(speech)) <= 16000 / rate

    full = build_tokenizer({"type": "hf_codec", "model_dir": str(tmp_path / kind)})
    assert full.n_streams == max_q
    np.testing.assert_array_equal(full.encode(speech, 16000)[:, :2], codes)  # residual: prefix codes agree

    batch = tok.encode_batch([speech, speech[:12000]], 16000)
    assert batch[0].shape == codes.shape and batch[1].shape[0] == int(np.ceil(12000 / 16000 * rate))
    if kind != "dac":  # causal/padding-masked codecs give the same codes in a batch
        np.testing.assert_array_equal(batch[0], codes)


def test_hf_codec_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        build_tokenizer({"type": "hf_codec", "model_dir": str(tmp_path)})
    ref, _, _ = _tiny("dac")
    ref.save_pretrained(tmp_path / "dac")
    with pytest.raises(ValueError, match="n_codebooks=5"):
        build_tokenizer({"type": "hf_codec", "model_dir": str(tmp_path / "dac"), "n_codebooks": 5})
