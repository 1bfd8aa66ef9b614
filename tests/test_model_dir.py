"""The model directory (speechlm/models/model_dir.py): its files, the conversion of old
(config.yaml) dirs, the LlamaConfig description of the built-in backbone, the model card."""
from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import pytest
import torch

from test_model_helpers import tiny_config, toy_examples, toy_vocab

from speechlm.data.batch import collate
from speechlm.models import SpeechLM
from speechlm.models import model_dir as md

DATA = Path(__file__).parent / "data"
LEGACY = DATA / "legacy_model_dir"
sys.path.insert(0, str(DATA))
import make_legacy_model_dir as legacy  # noqa: E402


def _check_expected(path: Path) -> None:
    """The outputs the legacy fixture's model gave when it was written (before this format)."""
    want = json.loads((LEGACY / "expected.json").read_text())
    got = legacy.expected_outputs(path)
    assert got["asr_tokens"] == want["asr_tokens"]
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-6, abs=1e-7)


def test_legacy_config_yaml_dir_loads_with_identical_outputs():
    assert (LEGACY / "config.yaml").is_file() and not (LEGACY / "config.json").exists()
    assert md.is_model_dir(LEGACY) and not md.is_hf_dir(LEGACY)
    _check_expected(LEGACY)


def test_legacy_dir_is_converted_once_by_copy_model(tmp_path):
    out = md.copy_model(LEGACY, tmp_path / "m")
    for f in ("tokenizers.yaml", "tokenizers", "tasks", "decode.yaml"):  # what pack adds around it
        (shutil.copytree if (LEGACY / f).is_dir() else shutil.copy2)(LEGACY / f, out / f)
    assert not (out / "config.yaml").exists()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "speechlm" and cfg["format_version"] == md.FORMAT_VERSION
    assert md.read_config(out) == md.read_config(LEGACY)
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.metadata()["model_type"] == "speechlm"
        old, new = md.read_safetensors(LEGACY / "model.safetensors"), {k: f.get_tensor(k) for k in f.keys()}
    assert old.keys() == new.keys() and all(torch.equal(old[k], new[k]) for k in old)
    _check_expected(out)
    # and copying a current dir copies it as it is
    again = md.copy_model(out, tmp_path / "again")
    assert (again / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()


def test_conversion_keeps_the_options_of_retired_keys(tmp_path):
    """An old model's ``autocast`` (no longer a model key) still sets how it decodes after packing."""
    import yaml

    old = tmp_path / "old"
    shutil.copytree(LEGACY, old)
    cfg = yaml.safe_load((old / "config.yaml").read_text())
    (old / "config.yaml").write_text(yaml.safe_dump({**cfg, "autocast": "bf16"}))
    new = md.copy_model(old, tmp_path / "new")
    assert md.read_config_dict(new)["autocast"] == "bf16"
    assert md.read_config(new) == md.read_config(old)


def test_legacy_checkpoint_is_chosen_and_packed(tmp_path):
    """A run trained by an older version: its config.yaml checkpoints are found and converted."""
    from speechlm.train.checkpoint import select_checkpoint

    exp = tmp_path / "exp"
    for step in (1, 2):
        ck = exp / "checkpoints" / f"step_{step:08d}"
        ck.mkdir(parents=True)
        for f in ("config.yaml", "model.safetensors", "token_list.json"):
            shutil.copy2(LEGACY / f, ck / f)
        (ck / "trainer_state.json").write_text(json.dumps({"step": step, "valid": {"loss": 3.0 - step}}))
        (ck / "COMPLETE").write_text("{}")
    assert select_checkpoint(exp, "latest").name == "step_00000002"
    assert select_checkpoint(exp).name == "step_00000002"  # best by validation loss
    avg = select_checkpoint(exp, "average", 2, tmp_path / "avg")
    assert md.read_config(avg) == md.read_config(LEGACY)
    packed = md.copy_model(avg, tmp_path / "packed")
    model = SpeechLM.from_pretrained(packed)
    ref = SpeechLM.from_pretrained(LEGACY)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))


def test_init_from_a_legacy_dir_copies_its_weights():
    ref = SpeechLM.from_pretrained(LEGACY)
    fresh = SpeechLM(md.read_config(LEGACY), ref.vocab)
    assert not torch.equal(fresh.embed.weight, ref.embed.weight)
    md.init_weights(fresh, LEGACY)
    for (k, a), b in zip(fresh.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), k


def test_saved_dir_has_the_hf_layout_and_round_trips(tmp_path):
    vocab = toy_vocab(2)
    torch.manual_seed(0)
    model = SpeechLM(tiny_config("delay"), vocab).eval()
    model.save_pretrained(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} == {"config.json", "model.safetensors", "token_list.json",
                                                            "llama_config.json"}
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["model_type"] == "speechlm" and cfg["strategy"] == "delay" and cfg["dim"] == 64
    assert "head.weight" not in md.read_safetensors(tmp_path / "m" / "model.safetensors")  # tied to the embedding
    loaded = SpeechLM.from_pretrained(tmp_path / "m").eval()
    batch = collate(toy_examples(vocab, 2))
    with torch.no_grad():
        assert torch.equal(model(batch).loss, loaded(batch).loss)
    cfg["dimm"] = 3
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    from speechlm.config import ConfigError

    with pytest.raises(ConfigError, match=r"config\.json.*unknown key 'dimm'"):
        SpeechLM.from_pretrained(tmp_path / "m")
    cfg.pop("dimm")
    cfg["format_version"] = md.FORMAT_VERSION + 1
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="newer than this speechlm reads"):
        SpeechLM.from_pretrained(tmp_path / "m")


def test_speechlm_hf_and_incomplete_dirs_are_told_apart(tmp_path):
    SpeechLM(tiny_config("delay"), toy_vocab(2)).save_pretrained(tmp_path / "m")
    assert md.is_model_dir(tmp_path / "m") and not md.is_hf_dir(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()  # a speechlm dir without weights is not an HF dir
    assert not md.is_model_dir(tmp_path / "m") and not md.is_hf_dir(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        md.check_model_dir(tmp_path / "m")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text('{"model_type": "llama"}')
    assert md.is_hf_dir(tmp_path / "hf") and not md.is_model_dir(tmp_path / "hf")


def test_llama_config_describes_the_builtin_backbone_for_transformers(tmp_path):
    """transformers reads llama_config.json, and LlamaModel with our body weights (names without
    the ``backbone.`` prefix, one-to-one) gives our backbone's hidden states."""
    transformers = pytest.importorskip("transformers")
    vocab = toy_vocab(2)
    torch.manual_seed(0)
    model = SpeechLM(tiny_config("delay", rope_theta=500.0), vocab).eval()
    model.save_pretrained(tmp_path)
    cfg = transformers.LlamaConfig.from_json_file(str(tmp_path / "llama_config.json"))
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (64, 2, 4, 2)
    assert cfg.rope_parameters["rope_theta"] == 500.0 and cfg.vocab_size == len(vocab)
    cfg._attn_implementation = "sdpa"
    llama = transformers.LlamaModel(cfg).eval()
    weights = md.read_safetensors(tmp_path / "model.safetensors")
    body = {k[len("backbone."):]: v for k, v in weights.items() if k.startswith("backbone.")}
    missing, unexpected = llama.load_state_dict(body, strict=False)
    assert missing == ["embed_tokens.weight"] and unexpected == []  # ours sums one embedding per stream
    x = torch.randn(2, 7, 64)
    with torch.no_grad():
        ref = llama(inputs_embeds=x).last_hidden_state
        got = model.backbone(x)
    assert torch.allclose(got, ref, atol=1e-5), f"max diff {(got - ref).abs().max():.2e}"


def test_model_card_has_hub_metadata_and_a_usage_example_per_task():
    from huggingface_hub import ModelCard

    from speechlm.models.model_card import CardInfo, build_card
    from speechlm.tasks.template import load_template_file, template_from_dict

    templates = {p.stem: load_template_file(p) for p in (LEGACY / "tasks").glob("*.yaml")}
    templates["tts"] = template_from_dict({"name": "tts", "conditions": [
        {"name": "text", "modality": "text", "tokenizer": "text_bpe", "source": "text"},
        {"name": "prompt", "modality": "spk_prompt", "tokenizer": "codec", "source": "utt2spk"}],
        "targets": [{"name": "speech", "modality": "audio", "tokenizer": "codec", "source": "wav.scp"}]})
    info = CardInfo(name="m", license="cc-by-4.0", language=["en"], base_model="org/base", datasets=["org/data"],
                    repo_id="me/m", results="| set | cer |\n|---|---|\n| test | 12.0 |", notes=["Length head refit x"])
    card = ModelCard(str(build_card(info, templates, "tiny")))
    d = card.data
    assert (d.license, d.language, d.library_name, d.base_model, d.datasets) == \
        ("cc-by-4.0", ["en"], "speechlm", "org/base", ["org/data"])
    assert d.pipeline_tag == "automatic-speech-recognition" and "asr" in d.tags
    code = card.text.split("```python\n")[1].split("```")[0]
    compile(code, "usage", "exec")  # the example is valid Python
    assert 'snapshot_download("me/m")' in code and 'text = lm.asr("speech.wav")' in code
    assert 'wav, sample_rate = lm.tts("hello world", speaker_prompt="prompt.wav")' in code
    assert "| test | 12.0 |" in card.text and card.text.rstrip().endswith("Length head refit x")


def test_stage_12_prints_the_upload_command_huggingface_hub_installs():
    from importlib.metadata import entry_points

    script = (Path(__file__).parents[1] / "egs" / "TEMPLATE" / "speechlm1" / "speechlm.sh").read_text()
    assert "huggingface-cli" not in script and "hf upload" in script
    assert entry_points(group="console_scripts", name="hf"), "huggingface_hub installs no `hf` command"


def test_export_of_a_legacy_packed_dir_is_upload_ready(tmp_path):
    """``speechlm pack --packed-dir OLD --export`` (stage 12) on a dir packed by an older version."""
    from huggingface_hub import ModelCard

    from speechlm.cli import main

    exp = tmp_path / "exp"
    exp.mkdir()
    for f in ("tokenizers.yaml", "tasks"):
        (shutil.copytree if (LEGACY / f).is_dir() else shutil.copy2)(LEGACY / f, exp / f)
    (exp / "RESULTS.md").write_text("| set | cer |\n|---|---|\n| test | 9.5 |\n")
    out = tmp_path / "upload"
    assert main(["pack", "--exp-dir", str(exp), "--packed-dir", str(LEGACY), "--out-dir", str(out), "--export",
                 "--license", "cc-by-4.0", "--language", "en", "--repo-id", "me/tiny"]) == 0
    assert not (out / "config.yaml").exists() and md.read_config_dict(out)["format_version"] == md.FORMAT_VERSION
    assert (out / "llama_config.json").is_file() and (out / ".gitattributes").is_file()
    card = ModelCard.load(out / "README.md")
    assert (card.data.license, card.data.language, card.data.pipeline_tag) == \
        ("cc-by-4.0", ["en"], "automatic-speech-recognition")
    assert "| test | 9.5 |" in card.text and 'snapshot_download("me/tiny")' in card.text
    _check_expected(out)


def test_card_language_defaults_to_the_phonemizers_languages(tmp_path):
    from speechlm.bin.pack import phonemizer_languages

    (tmp_path / "tokenizers.yaml").write_text("phone: {type: g2p}\nphone_de: {type: g2p, language: de}\n"
                                              "text_bpe: {type: char, vocab: chars.txt}\n")
    assert phonemizer_languages(tmp_path) == ["de", "en"]
    # in a fresh process too, where nothing has imported the built-in tokenizers yet (stage 12 broke so)
    import subprocess
    import sys

    code = f"from speechlm.bin.pack import phonemizer_languages; print(phonemizer_languages(__import__('pathlib').Path({str(tmp_path)!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['de', 'en']"


def test_pack_leaves_out_decode_options_of_tasks_the_model_lacks(tmp_path, caplog):
    """One recipe decode YAML for several runs (the mini recipe's conf/decode_phones.yaml names
    tts_phones and tts_spoken_phones, of its own task dir): the packed dir keeps the options of its
    own tasks and loads; the other task's options would make it fail to load."""
    import yaml

    from speechlm.cli import main
    from speechlm.config import ConfigError
    from speechlm.infer.pipeline import Pipeline

    exp = tmp_path / "exp"
    exp.mkdir()
    for f in ("tokenizers.yaml", "tasks"):
        (shutil.copytree if (LEGACY / f).is_dir() else shutil.copy2)(LEGACY / f, exp / f)
    conf = tmp_path / "decode.yaml"
    conf.write_text("search: greedy\nmax_len: 8\ntasks:\n  asr: {max_len: 6}\n"
                    "  tts_spoken_phones: {search: sample, top_k: 5}\n")
    out = tmp_path / "packed"
    with caplog.at_level(logging.WARNING):
        assert main(["pack", "--exp-dir", str(exp), "--packed-dir", str(LEGACY), "--out-dir", str(out),
                     "--decode-config", str(conf)]) == 0
    kept = yaml.safe_load((out / "decode.yaml").read_text())
    assert kept == {"search": "greedy", "max_len": 8, "tasks": {"asr": {"max_len": 6}}}
    pipe = Pipeline.load(out)
    assert pipe.decode_config("asr").max_len == 6
    assert "tts_spoken_phones" in caplog.text  # the warning names what was left out
    (out / "decode.yaml").write_text(conf.read_text())  # as packed before: the model's load refuses it
    with pytest.raises(ConfigError, match="unknown task 'tts_spoken_phones'"):
        Pipeline.load(out)
