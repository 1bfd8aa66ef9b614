"""ESPnet GAN codecs: a tiny random codec saved as config.yaml + .pth, loaded back like real weights."""
from __future__ import annotations

import importlib
import inspect

import numpy as np
import pytest
import torch
import yaml

from speechlm.data.audio import load_audio
from speechlm.tokenizers import build_tokenizer
from speechlm.tokenizers.espnet_codec import CODECS
from tests.conftest import synth

# Small generator + discriminator overrides per codec (the rest are the classes' defaults).
TINY_GEN = {"hidden_dim": 8, "encdec_n_filters": 2, "encdec_ratios": [8, 5, 4, 2], "encdec_lstm": 1,
            "quantizer_n_q": 4, "quantizer_bins": 32, "quantizer_kmeans_init": False,
            "quantizer_target_bandwidth": [0.5, 1.0]}
TINY_DISC = {
    "soundstream": lambda d: {**d, "scales": 1,
                              "scale_discriminator_params": {**d["scale_discriminator_params"], "channels": 16,
                                                             "max_downsample_channels": 16, "max_groups": 4},
                              "complexstft_discriminator_params": {**d["complexstft_discriminator_params"], "channels": 2}},
    # Encodec's default discriminator_params do not match EncodecDiscriminator; real configs nest them
    "encodec": lambda d: {"msstft_discriminator_params": {**d, "filters": 2, "n_ffts": [128], "hop_lengths": [32],
                                                          "win_lengths": [128]}},
}


def _tiny_config(name: str) -> dict:
    module, cls = CODECS[name]
    params = inspect.signature(getattr(importlib.import_module(module), cls)).parameters
    gen = {**params["generator_params"].default, **TINY_GEN}
    if name == "dac":
        gen.pop("encdec_lstm", None)
    conf = {"sampling_rate": 16000, "generator_params": gen}
    if name in TINY_DISC:
        conf["discriminator_params"] = TINY_DISC[name](params["discriminator_params"].default)
    return {"codec": name, "codec_conf": conf}


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    path = synth(tmp_path_factory.mktemp("wav") / "a.wav", "open the window please")
    return load_audio(path, 16000)


@pytest.mark.parametrize("name", ["soundstream", "encodec", "dac"])
def test_espnet_codec_loads_and_matches_library(tmp_path, speech, name):
    from espnet2.gan_codec.espnet_model import ESPnetGANCodecModel

    torch.manual_seed(0)
    conf = _tiny_config(name)
    module, cls = CODECS[name]
    ref = ESPnetGANCodecModel(getattr(importlib.import_module(module), cls)(**conf["codec_conf"])).eval()
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(conf))
    torch.save(ref.state_dict(), tmp_path / "model.pth")

    tok = build_tokenizer({"type": "espnet_codec", "config": "config.yaml", "checkpoint": "model.pth",
                           "n_codebooks": 3}, base_dir=tmp_path)
    assert tok.sample_rate == 16000 and tok.frame_rate == 50.0
    assert tok.codebook_sizes == [32, 32, 32]
    codes = tok.encode(speech, 16000)
    assert codes.dtype == np.int32 and codes.shape[1] == 3
    assert abs(codes.shape[0] - len(speech) / 320) <= 1
    assert codes.min() >= 0 and codes.max() < 32
    with torch.inference_mode():  # the library's own codes for the same input
        direct = ref.encode(torch.from_numpy(speech).view(1, 1, -1))
    np.testing.assert_array_equal(codes, direct[:3, 0].T.numpy())
    wav = tok.decode(codes)
    assert wav.dtype == np.float32 and abs(len(wav) - codes.shape[0] * 320) <= 320
    # 22.05 kHz input is resampled inside
    assert abs(tok.encode(load_audio_22k(speech), 22050).shape[0] - codes.shape[0]) <= 1


def load_audio_22k(wav16k: np.ndarray) -> np.ndarray:
    from speechlm.data.audio import resample

    return resample(wav16k, 16000, 22050)


def test_espnet_codec_errors_name_the_problem(tmp_path):
    conf = _tiny_config("soundstream")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(conf))
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        build_tokenizer({"type": "espnet_codec", "config": str(tmp_path / "config.yaml"),
                         "checkpoint": str(tmp_path / "missing.pth")})
    with pytest.raises(ValueError, match="n_codebooks=9"):
        build_tokenizer({"type": "espnet_codec", "config": str(tmp_path / "config.yaml"), "n_codebooks": 9})
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"codec": "nope"}))
    with pytest.raises(ValueError, match="'codec: nope'"):
        build_tokenizer({"type": "espnet_codec", "config": str(tmp_path / "bad.yaml")})
