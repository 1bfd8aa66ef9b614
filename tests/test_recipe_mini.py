"""The mini_espeak corpus (egs/mini_espeak/speechlm1/local/data.sh) on ~40 utterances."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
MINI = ROOT / "egs" / "mini_espeak" / "speechlm1"

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("sox") is None,
                                reason="needs espeak-ng and sox")


def recipe_copy(dst: Path) -> Path:
    """The mini recipe in a temporary dir: its files linked, its outputs (data/) local."""
    dst.mkdir(parents=True)
    for name in ("speechlm.sh", "path.sh", "cmd.sh", "utils", "local", "conf", "run.sh"):
        (dst / name).symlink_to(MINI / name)
    return dst


def data_sh(recipe: Path, *args: str) -> subprocess.CompletedProcess:
    res = subprocess.run(["local/data.sh", *args], cwd=recipe, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return res


def read_map(path: Path) -> list[tuple[str, str]]:
    return [tuple(line.split(" ", 1)) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    recipe = recipe_copy(tmp_path_factory.mktemp("mini") / "speechlm1")
    data_sh(recipe, "--num_utts", "40", "--num_test", "6", "--utts_per_spk", "8", "--seed", "3")
    return recipe


def test_kaldi_dirs_are_valid(corpus):
    import soundfile as sf

    total = 0
    for split in ("train", "dev", "test"):
        d = corpus / "data" / split
        files = {n: read_map(d / n) for n in ("wav.scp", "text", "utt2spk", "utt2num_samples")}
        ids = [k for k, _ in files["wav.scp"]]
        assert ids == sorted(ids, key=str.encode) and len(set(ids)) == len(ids), f"{split}: unsorted or duplicate ids"
        for name, entries in files.items():
            assert [k for k, _ in entries] == ids, f"{split}/{name} ids differ from wav.scp"
        utt2spk = dict(files["utt2spk"])
        spk2utt = {s: u.split() for s, u in read_map(d / "spk2utt")}
        assert sorted(u for us in spk2utt.values() for u in us) == ids
        assert all(utt2spk[u] == s for s, us in spk2utt.items() for u in us)
        assert all(u.startswith(utt2spk[u] + "-") for u in ids), "utterance ids start with the speaker id"
        for utt, text in files["text"]:
            assert 3 <= len(text.split()) <= 12 and text == text.lower()
        for (utt, wav), (_, n) in zip(files["wav.scp"], files["utt2num_samples"]):
            audio, sr = sf.read(wav, dtype="int16")
            assert sr == 16000 and audio.ndim == 1 and len(audio) == int(n) > 8000
            assert sf.info(wav).subtype == "PCM_16"
            assert abs(audio).max() > 1000, f"{utt}: silent audio"
        total += len(ids)
    assert total == 40
    assert len(read_map(corpus / "data" / "test" / "text")) == 6


def test_test_set_has_new_sentences_and_new_voices(corpus):
    def split(name):
        d = corpus / "data" / name
        return {t for _, t in read_map(d / "text")}, {s for _, s in read_map(d / "utt2spk")}

    train_text, train_spk = split("train")
    dev_text, dev_spk = split("dev")
    test_text, test_spk = split("test")
    assert not (test_text & train_text) and not (dev_text & train_text) and not (dev_text & test_text)
    assert not (test_spk & train_spk)
    assert dev_spk <= train_spk  # dev: new sentences, known voices
    variant = lambda spk: spk.split("_")[1]  # accent_variant_pPP_sRRR
    assert not ({variant(s) for s in test_spk} & {variant(s) for s in train_spk | dev_spk})
    assert len(train_spk) >= 3, "several training voices"


def test_same_seed_same_corpus_and_rerun_resumes(corpus, tmp_path):
    plan = corpus / "data" / "local" / "mini_espeak" / "plan.tsv"
    before = plan.read_text()
    wavs = sorted((corpus / "data" / "local" / "mini_espeak" / "wav").rglob("*.wav"))
    mtimes = {w: w.stat().st_mtime_ns for w in wavs}
    victim = wavs[0]
    original = victim.read_bytes()
    victim.unlink()  # as if the run had been killed before this file
    data_sh(corpus, "--num_utts", "40", "--num_test", "6", "--utts_per_spk", "8", "--seed", "3")
    assert plan.read_text() == before
    assert victim.exists(), "the missing wav was synthesized again"
    assert victim.read_bytes() == original, "the same plan gives the same audio (no random dither)"
    assert all(w.stat().st_mtime_ns == m for w, m in mtimes.items() if w != victim), "existing wavs were kept"
    logs = (corpus / "data" / "local" / "mini_espeak" / "log").glob("synth.*.log")
    assert "synthesized 1," in "".join(p.read_text() for p in logs)
    # another seed gives another corpus
    other = recipe_copy(tmp_path / "other")
    data_sh(other, "--num_utts", "40", "--seed", "4")
    assert (other / "data" / "train" / "text").read_text() != (corpus / "data" / "train" / "text").read_text()


def test_tts_voice_speaks_every_sentence_again_in_one_voice(tmp_path):
    """--tts_voice en-us: data/<split>_tts holds the split's sentences in that one voice, each wav
    with its phone alignment (the TTS data of the recipe); the main corpus is as without it."""
    recipe = recipe_copy(tmp_path / "r")
    data_sh(recipe, "--num_utts", "20", "--num_test", "4", "--utts_per_spk", "8", "--seed", "3", "--tts_voice", "en-us")
    for split in ("train", "dev", "test"):
        main, tts = recipe / "data" / split, recipe / "data" / f"{split}_tts"
        assert sorted(t for _, t in read_map(tts / "text")) == sorted(t for _, t in read_map(main / "text"))
        assert {s for _, s in read_map(tts / "utt2spk")} == {"en-us_default_p50_s160"}
        assert not {u for u, _ in read_map(tts / "text")} & {u for u, _ in read_map(main / "text")}
        assert all(Path(w).with_suffix(".phn").is_file() for _, w in read_map(tts / "wav.scp"))
        assert not any(Path(w).with_suffix(".phn").exists() for _, w in read_map(main / "wav.scp"))
    assert len({s for _, s in read_map(recipe / "data" / "train" / "utt2spk")}) >= 2
    res = subprocess.run(["local/data.sh", "--num_utts", "20", "--tts_voice", "en-us,en-gb"], cwd=recipe,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "--tts_voice is one voice" in res.stderr


def test_too_few_utterances_is_a_clear_error(tmp_path):
    recipe = recipe_copy(tmp_path / "r")
    res = subprocess.run(["local/data.sh", "--num_utts", "5", "--num_dev", "2", "--num_test", "2"],
                         cwd=recipe, capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "--num_utts 5 leaves 1 training utterances" in res.stderr


def test_speechlm_validate_data_accepts_the_dirs(corpus):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for split in ("train", "dev", "test"):
        res = subprocess.run([sys.executable, "-m", "speechlm", "validate-data", str(corpus / "data" / split)],
                             capture_output=True, text=True, env=env, timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr


def plan(tmp_path: Path, *args: str) -> list[list[str]]:
    """Rows of ``local/mini_corpus.py plan`` (fast: no synthesis)."""
    out = tmp_path / "plan.tsv"
    res = subprocess.run([sys.executable, str(MINI / "local" / "mini_corpus.py"), "plan", *args, "--out", str(out)],
                         capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert res.returncode == 0, res.stderr
    return [line.split("\t") for line in out.read_text(encoding="utf-8").splitlines()]


# sha1 of the default plan (--num-utts 300 --seed 1) as it was before --voices existed: the option
# must leave the default corpus byte-identical (runs and caches of the 138-voice recipe stay valid)
DEFAULT_PLAN_SHA1 = "c9f1687283eaf814cc3bb6ddac07db6473a701ff"


def test_default_plan_is_unchanged(tmp_path):
    import hashlib

    rows = plan(tmp_path, "--num-utts", "300", "--seed", "1")
    text = "".join("\t".join(r) + "\n" for r in rows)
    assert hashlib.sha1(text.encode()).hexdigest() == DEFAULT_PLAN_SHA1
    assert len({r[2] for r in rows}) > 10, "many voice settings"


def test_voices_option_uses_only_that_voice(tmp_path):
    rows = plan(tmp_path, "--num-utts", "300", "--seed", "1", "--voices", "en-us")
    assert {(r[2], r[3], r[4], r[5]) for r in rows} == {("en-us_default_p50_s160", "en-us", "160", "50")}
    assert {r[0] for r in rows} == {"train", "dev", "test"}
    default = plan(tmp_path / "d", "--num-utts", "300", "--seed", "1")
    # the same sentences in each split as the default corpus of the seed (voices are drawn after them)
    assert [(r[0], r[9]) for r in rows] == [(r[0], r[9]) for r in default]
    two = plan(tmp_path, "--num-utts", "300", "--voices", "en-us:170,en-gb+f3:150:60")
    assert {(r[3], r[4], r[5]) for r in two} == {("en-us", "170", "50"), ("en-gb+f3", "150", "60")}
    for split in ("train", "dev", "test"):
        assert len({r[2] for r in two if r[0] == split}) == 2, f"{split}: both voices"
    bad = subprocess.run([sys.executable, str(MINI / "local" / "mini_corpus.py"), "plan", "--voices", "en-us:fast",
                          "--out", str(tmp_path / "x.tsv")], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert bad.returncode != 0 and "rate and pitch of 'en-us:fast' must be integers" in bad.stderr


def test_one_voice_corpus(tmp_path):
    recipe = recipe_copy(tmp_path / "one")
    data_sh(recipe, "--num_utts", "12", "--num_test", "2", "--seed", "3", "--voices", "en-us")
    spk = {s for split in ("train", "dev", "test") for _, s in read_map(recipe / "data" / split / "utt2spk")}
    assert spk == {"en-us_default_p50_s160"}
    assert len(read_map(recipe / "data" / "test" / "wav.scp")) == 2


def test_aligned_corpus(tmp_path):
    """--align true writes each wav's phones beside it, for plain voices and +variants alike, and
    each utterance's phones in order to data/<set>/phones (what its voice speaks: accents differ)."""
    from speechlm.data.espeak_align import read_phn

    recipe = recipe_copy(tmp_path / "one")
    data_sh(recipe, "--num_utts", "12", "--num_test", "2", "--seed", "3", "--voices", "en-us,en-gb+f3:190:35",
            "--align", "true")
    for split in ("train", "test"):
        spoken = dict(read_map(recipe / "data" / split / "phones"))
        for utt, wav in read_map(recipe / "data" / split / "wav.scp"):
            phones = read_phn(Path(wav).with_suffix(".phn"))
            assert phones and phones[-1][1] <= sf.info(wav).duration, utt
            assert spoken[utt].split() == [p for _, _, p in phones], utt
    from speechlm.tokenizers import build_tokenizer

    us = build_tokenizer({"type": "espeak_phones"})  # the en-us spelling of the text
    texts = dict(read_map(recipe / "data" / "train" / "text"))
    differs = {utt.startswith("en-gb") for utt, line in read_map(recipe / "data" / "train" / "phones")
               if line.split() != us.phonemes(texts[utt])}
    assert differs == {True}  # the en-gb voice speaks other phones than en-us (and en-us its own)


def test_phone_experiment_configs_fit_together():
    """The recipe's phone-led files (run.sh; README: "Reading the text") load and name each other."""
    from speechlm.config import load_config, load_yaml
    from speechlm.infer.config import check_decode_options, decode_config_for
    from speechlm.models.config import ModelConfig
    from speechlm.tasks.template import load_template_file
    from speechlm.tokenizers import tokenizer_class

    conf = ROOT / "egs" / "mini_espeak" / "speechlm1" / "conf"
    model = load_config(ModelConfig, conf / "model_phones.yaml")
    assert model.history_noise > 0 and 0 not in model.history_noise_streams  # the phone stream stays clean
    toks = load_yaml(conf / "tokenizers_phones.yaml")
    for spec in toks.values():
        tokenizer_class(spec["type"])  # registered
    decode = load_yaml(conf / "decode_phones.yaml")
    check_decode_options(decode, "decode_phones.yaml", {"asr", "tts_phones", "plain_tts_phones", "tts_spoken_phones"})
    for task, kind in (("tts_phones", "espeak_phones"), ("plain_tts_phones", "espeak_phones"),
                       ("tts_spoken_phones", "phone_list")):
        tpl = load_template_file(conf / "tasks" / f"{task}.yaml")
        assert {s.tokenizer for s in tpl.conditions + tpl.targets} <= set(toks)
        follow = decode_config_for(decode, task, "decode_phones.yaml").follow_phones
        phones = next(s for s in tpl.conditions if s.tokenizer == follow)
        assert toks[follow]["type"] == kind and phones.modality == "text"
        assert toks[tpl.targets[0].tokenizer]["type"] == "codec2_phones"
        assert model.next_phone == tpl.targets[0].tokenizer  # the target that reads the text's next phone
    assert toks["codec_ph"]["rows_of"] == "codec"  # the TTS target trains the Codec 2 rows ASR reads
