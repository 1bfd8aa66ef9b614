"""Text tokenizers: SentencePiece training + round trip, characters, espeak-ng G2P, HF from a local dir."""
from __future__ import annotations

import pytest

from speechlm.cli import main as cli
from speechlm.config import ConfigError
from speechlm.tokenizers import build_tokenizer, load_tokenizers
from tests.conftest import SENTENCES


@pytest.fixture
def text_file(tmp_path):
    p = tmp_path / "text"
    lines = [f"u{i:03d} {s.upper()}" for i, s in enumerate(SENTENCES * 20)]
    p.write_text("\n".join(lines) + "\n")
    return p


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_sentencepiece_train_and_round_trip(tmp_path, text_file, model_type):
    out = tmp_path / "bpe"
    assert cli(["train-bpe", "--text", str(text_file), "--out-dir", str(out), "--nbpe", "60",
                "--model-type", model_type, "--user-symbols", "<laugh>"]) == 0
    tok = build_tokenizer({"type": "sentencepiece", "model": str(out / "bpe.model")})
    size = tok.sp.get_piece_size()
    assert tok.codebook_sizes == [size] and (size == 60 if model_type == "bpe" else size <= 60)
    assert tok.n_streams == 1 and tok.frame_rate is None
    ids = tok.encode("TURN ON THE LIGHTS <laugh>")
    assert ids.shape[1] == 1 and ids.dtype.name == "int32"
    assert tok.decode(ids) == "TURN ON THE LIGHTS <laugh>"
    assert tok.sp.id_to_piece(int(ids[-1, 0])) == "<laugh>"


def test_char_tokenizer(tmp_path, text_file):
    assert cli(["train-bpe", "--text", str(text_file), "--out-dir", str(tmp_path), "--model-type", "char"]) == 0
    tok = build_tokenizer({"type": "char", "vocab": str(tmp_path / "chars.txt")})
    assert tok.decode(tok.encode("SET A TIMER")) == "SET A TIMER"
    assert tok.encode("é")[0, 0] == 0  # unknown -> <unk>


def test_g2p_phones():
    tok = build_tokenizer({"type": "g2p"})
    ids = tok.encode("hello world")
    assert ids.shape[1] == 1 and (ids > 0).all()  # every symbol is in the inventory
    assert tok.decode(ids).replace("ˈ", "").replace("ˌ", "").startswith("həl")
    assert tok.index["▁"] in ids[:, 0]  # word boundary


def test_hf_tokenizer_from_local_dir(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(["turn", "on", "the", "lights"])}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]").save_pretrained(tmp_path / "hf")
    tok = build_tokenizer({"type": "hf", "path": str(tmp_path / "hf")})
    assert tok.encode("turn on the lights")[:, 0].tolist() == [1, 2, 3, 4]
    assert tok.decode(tok.encode("turn on")) == "turn on"
    assert tok.files()


def test_tokenizer_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown tokenizer 'g2pp'.*did you mean 'g2p'"):
        build_tokenizer({"type": "g2pp"})
    with pytest.raises(ConfigError, match=r"unknown option 'lang'.*did you mean 'language'"):
        build_tokenizer({"type": "g2p", "lang": "en"})
    p = tmp_path / "t.yaml"
    p.write_text("phone: {type: g2p}\n")
    with pytest.raises(ConfigError, match="no tokenizer named 'phones'"):
        load_tokenizers(p, ["phones"])
    with pytest.raises(FileNotFoundError, match="train-bpe"):
        build_tokenizer({"type": "sentencepiece", "model": str(tmp_path / "none.model")})
