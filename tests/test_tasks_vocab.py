"""Task templates as data, manifests, and the append-only vocabulary."""
from __future__ import annotations

import json

import numpy as np
import pytest

from speechlm.cli import main as cli
from speechlm.config import ConfigError
from speechlm.data.manifest import read_manifest
from speechlm.data.sequence import AUDIO_COND, SPECIAL, TEXT_TGT, build_example
from speechlm.tasks import find_templates, load_template
from speechlm.vocab import Vocabulary, VocabularyError

BUILTIN = ["asr", "tts", "plain_tts", "textlm", "audiolm", "mt", "st", "speech_enhancement", "spoken_command"]


@pytest.mark.parametrize("name", BUILTIN)
def test_every_builtin_template_loads(name):
    t = load_template(name)
    assert t.name == name and t.targets
    assert all(s.loss for s in t.targets) and not any(s.loss for s in t.conditions)


def test_template_errors_name_the_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: bad\ntargets: [{name: t, modality: txt, tokenizer: x, source: text}]\n")
    with pytest.raises(ConfigError, match=r"targets\[0\]\.modality.*'txt'.*text, audio"):
        load_template(str(p))
    p.write_text("name: bad\ntarget: []\n")
    with pytest.raises(ConfigError, match=r"unknown key 'target'.*did you mean 'targets'"):
        load_template(str(p))
    with pytest.raises(ConfigError, match=r"unknown task 'ars'.*did you mean 'asr'"):
        load_template("ars")


def test_user_task_dir_is_picked_up_by_prepare(tmp_path, data_dir):
    tasks = tmp_path / "my_tasks"
    tasks.mkdir()
    (tasks / "speaker_id.yaml").write_text(
        "name: speaker_id\nconditions: [{name: speech, modality: audio, tokenizer: codec, source: wav.scp}]\n"
        "targets: [{name: spk, modality: text, tokenizer: char, source: utt2spk}]\n"
    )
    assert "speaker_id" in find_templates([tasks])
    out = tmp_path / "dump"
    assert cli(["prepare", "--task", "speaker_id", "--task-dir", str(tasks), "--data-dir", str(data_dir), "--out-dir", str(out)]) == 0
    template, examples = read_manifest(out)
    rows = list(examples)
    assert template.name == "speaker_id" and len(rows) == 6
    assert rows[0]["segments"]["spk"] == rows[0]["spk"]
    # re-running a finished stage skips it (the manifest is not rewritten)
    mtime = (out / "manifest.jsonl").stat().st_mtime_ns
    assert cli(["prepare", "--task", "speaker_id", "--task-dir", str(tasks), "--data-dir", str(data_dir), "--out-dir", str(out)]) == 0
    assert (out / "manifest.jsonl").stat().st_mtime_ns == mtime


def test_prepare_reports_dropped(tmp_path, data_dir):
    lines = (data_dir / "text").read_text().splitlines()
    (data_dir / "text").write_text("\n".join(lines[1:]) + "\n")
    from speechlm.data.manifest import prepare_manifest

    summary = prepare_manifest(load_template("asr"), data_dir, tmp_path / "m")
    assert summary["kept"] == 5
    assert summary["dropped"] == {"no text entry for segment 'text'": 1}
    with pytest.raises(FileNotFoundError, match="text.2"):
        prepare_manifest(load_template("mt"), data_dir, tmp_path / "m2")


def test_vocabulary_extension_keeps_every_old_id(tmp_path):
    v = Vocabulary()
    v.add_tokenizer("codec", [16, 16, 16])
    v.add_tokenizer("text_bpe", [50])
    v.add_task("asr")
    v.add_task("tts")
    v.save(tmp_path / "old.json")
    old = Vocabulary.load(tmp_path / "old.json")
    before = list(old.tokens)
    ids = (old.task_id("asr"), old.marker_id("codec"), old.offset("codec", 2), old.offset("text_bpe"))
    old.add_task("spoken_command")
    old.add_tokenizer("phone", [70])
    old.add_tokenizer("codec", [16, 16, 16])  # same shape: no-op
    old.save(tmp_path / "new.json")
    new = Vocabulary.load(tmp_path / "new.json")
    assert new.tokens[: len(before)] == before
    assert (new.task_id("asr"), new.marker_id("codec"), new.offset("codec", 2), new.offset("text_bpe")) == ids
    assert new.stream_range("phone") == (len(before) + 2, len(before) + 72)  # after <task:spoken_command>, <seg:phone>
    with pytest.raises(VocabularyError, match="cannot change"):
        new.add_tokenizer("codec", [32, 32, 32])
    with pytest.raises(VocabularyError, match="task 'st' is not in the vocabulary"):
        new.task_id("st")


def test_vocab_cli_builds_and_extends(tmp_path):
    (tmp_path / "chars.txt").write_text("<unk>\n<space>\na\nb\n")
    toks = tmp_path / "tokenizers.yaml"
    toks.write_text(f"char: {{type: char, vocab: {tmp_path / 'chars.txt'}}}\nphone: {{type: g2p}}\n")
    assert cli(["vocab", "--tokenizers", str(toks), "--tasks", "textlm", "--out", str(tmp_path / "v1.json")]) == 0
    v1 = json.loads((tmp_path / "v1.json").read_text())
    assert cli(["vocab", "--tokenizers", str(toks), "--tasks", "textlm", "mt", "--out", str(tmp_path / "v2.json"),
                "--extend", str(tmp_path / "v1.json")]) == 0
    v2 = json.loads((tmp_path / "v2.json").read_text())
    assert v2["tokens"][: len(v1["tokens"])] == v1["tokens"] and "<task:mt>" in v2["tokens"]


def test_sequence_layout_and_loss_mask():
    v = Vocabulary()
    v.add_tokenizer("codec", [8, 8])
    v.add_tokenizer("text_bpe", [20])
    v.add_task("asr")
    speech = np.array([[1, 2], [3, 4], [5, 6]])
    text = np.array([[7], [8]])
    e = build_example("u", load_template("asr"), {"speech": speech, "text": text}, v, n_streams=2)
    assert e.tokens[0, 0] == v.task_id("asr") and e.tokens[1, 0] == v.marker_id("codec")
    assert list(e.tokens[2:5, 1]) == list(speech[:, 1] + v.offset("codec", 1))
    assert e.tokens[5, 0] == v.marker_id("text_bpe") and e.tokens[-1, 0] == v.eos_id
    assert (e.tokens[5:, 1] == v.pad_id).all()
    # loss on the target marker, text and <eos> only, stream 0 only
    assert e.loss_weight[:, 0].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert e.loss_weight[:, 1].sum() == 0
    assert e.kinds.tolist() == [SPECIAL, SPECIAL, AUDIO_COND, AUDIO_COND, AUDIO_COND, SPECIAL, TEXT_TGT, TEXT_TGT, SPECIAL]
    assert e.prefix_len == 5  # prefix LM: task token + condition
    prompt = build_example("u", load_template("asr"), {"speech": speech}, v, n_streams=2, with_targets=False)
    assert len(prompt) == 6 and prompt.tokens[-1, 0] == v.marker_id("text_bpe")
    with pytest.raises(ValueError, match="out of range"):
        build_example("u", load_template("asr"), {"speech": speech + 8, "text": text}, v, n_streams=2)


def test_prepare_reads_extra_source_files(tmp_path, data_dir):
    from speechlm.data.kaldi import read_file
    from speechlm.data.manifest import prepare_manifest

    text = read_file(data_dir / "text")
    (data_dir / "text.2").write_text("".join(f"{u} {{\"intent\": \"{v.split()[0].lower()}\"}}\n" for u, v in sorted(text.items())))
    summary = prepare_manifest(load_template("spoken_command"), data_dir, tmp_path / "sc")
    assert summary["kept"] == 6
    _, rows = read_manifest(tmp_path / "sc")
    assert json.loads(next(rows)["segments"]["command"])["intent"]


def test_manifest_keeps_the_words_for_scoring_when_no_segment_reads_them(tmp_path, data_dir):
    """A TTS template whose text condition is the spoken phones (source ``phones``): the manifest
    rows keep the data dir's words, and the scorer's references are those words, not the phones."""
    from speechlm.data.kaldi import read_file
    from speechlm.data.manifest import prepare_manifest
    from speechlm.eval.sources import read_references
    from speechlm.tasks.template import load_template_file

    text = read_file(data_dir / "text")
    (data_dir / "phones").write_text("".join(f"{u} m aɪ {i}\n" for i, u in enumerate(sorted(text))))
    tpl = tmp_path / "tts_sp.yaml"
    tpl.write_text("name: tts_sp\nconditions:\n  - {name: phones, modality: text, tokenizer: p, source: phones}\n"
                   "targets:\n  - {name: speech, modality: audio, tokenizer: codec, source: wav.scp}\n")
    prepare_manifest(load_template_file(tpl), data_dir, tmp_path / "sp")
    refs = read_references(tmp_path / "sp")
    assert refs.text == text and "the words" in refs.text_source
    prepare_manifest(load_template("tts"), data_dir, tmp_path / "tts")  # its phones are read from text
    rows = list(read_manifest(tmp_path / "tts")[1])
    assert all("text" not in r for r in rows) and read_references(tmp_path / "tts").text == text
