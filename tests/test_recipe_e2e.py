"""The mini recipe end to end on a small corpus: every stage, a killed run resumed, the packed
model in a fresh process, and fine-tuning the packed model on a new task template."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from torch import equal as torch_equal

from speechlm.conf import resolve_config
from test_recipe_mini import MINI
from test_recipe_mini import pytestmark as _needs_espeak

pytestmark = _needs_espeak

# the tiny model preset (speechlm/conf/model/tiny.yaml) plus the mini model's heads and inputs (its
# decode config uses the CTC and length heads; TTS decoding feeds the progress input and the text's
# next phone)
TINY_MODEL = resolve_config("model", "tiny").read_text() + (
    "cond_reduction: 2\nctc_weight: 0.3\nctc_tokenizer: text_bpe\nlength_weight: 1.0\nprogress: true\n"
    "next_phone: codec_ph\n")
TINY = [
    "--local_data_opts", "--num_utts 90 --num_dev 6 --num_test 6 --utts_per_spk 10 --nj 2 --seed 4 --tts_voice en-us",
    "--nbpe", "48", "--nj", "2", "--inference_nj", "2", "--model_config", "tiny_model.yaml",
]
TRAIN = ["--train_args", "--max-steps 40 --save-every 10 --valid-every 20 --batch-tokens 1500 --threads 1"]
DECODE = ["--decode_args", "--limit 3"]
TAG = "exp/train_mini_espeak"


def recipe_copy(dst: Path) -> Path:
    dst.mkdir(parents=True)
    for name in ("speechlm.sh", "path.sh", "cmd.sh", "utils", "local", "conf", "run.sh"):
        (dst / name).symlink_to(MINI / name)
    return dst


def env() -> dict:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}


def run_sh(recipe: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    res = subprocess.run(["./run.sh", *TINY, *args], cwd=recipe, capture_output=True, text=True, env=env(),
                         timeout=timeout)
    assert res.returncode == 0, res.stderr[-4000:]
    return res


def kill_when(recipe: Path, args: list[str], ready, timeout: float = 300) -> bool:
    """Start ./run.sh, SIGKILL its whole process group once ``ready()``; True if killed before it ended."""
    proc = subprocess.Popen(["./run.sh", *TINY, *args], cwd=recipe, env=env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while proc.poll() is None and time.time() - t0 < timeout:
        if ready():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.02)
    proc.wait()
    return False


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    """Stages 1-12 on 90 utterances; training is killed after its first checkpoint and re-run."""
    r = recipe_copy(tmp_path_factory.mktemp("e2e") / "mini_espeak" / "speechlm1")
    (r / "tiny_model.yaml").write_text(TINY_MODEL)
    ckpts = r / TAG / "checkpoints"

    def first_checkpoint() -> bool:
        return any((p / "model.safetensors").is_file() for p in ckpts.glob("step*")) if ckpts.is_dir() else False

    killed = kill_when(r, ["--stop_stage", "8", *TRAIN], first_checkpoint)
    return SimpleNamespace(path=r, killed=killed, rerun=run_sh(r, *TRAIN, *DECODE))


def test_every_stage_ran_and_results_were_written(recipe):
    results = (recipe.path / TAG / "RESULTS.md").read_text()
    assert "## test / asr" in results and "## test_tts / tts_phones" in results  # TTS reads its one-voice sets
    assert "cer" in results.lower() and "wer" in results.lower()
    for ddir, tokens in (("decode_test_asr", "text"), ("decode_test_tts_tts_phones", "speech")):
        timing = json.loads((recipe.path / TAG / ddir / "timing.json").read_text())
        assert timing["utterances"] == 3
        assert (recipe.path / TAG / ddir / "decode.yaml").is_file()
        assert (recipe.path / TAG / ddir / "tokens" / f"{tokens}.scp").is_file()
    assert len((recipe.path / TAG / "decode_test_asr" / "text").read_text().splitlines()) == 3
    tts = recipe.path / TAG / "decode_test_tts_tts_phones"
    assert len((tts / "wav.scp").read_text().splitlines()) == 3
    assert len((tts / "stopped").read_text().splitlines()) == 3
    # TTS is scored against the recognizer's floor on ground truth and on Codec 2 resynthesis
    assert "ASR-WER % (codec)" in results and "dur 0.7-1.4x %" in results and "stopped %" in results
    assert len((recipe.path / TAG / "resynth_test_tts_tts_phones" / "wav.scp").read_text().splitlines()) == 6
    packed = recipe.path / TAG / "packed"
    for f in ("config.json", "model.safetensors", "token_list.json", "llama_config.json", "tokenizers.yaml", "README.md",
              "tasks/asr.yaml", "tasks/tts_phones.yaml"):
        assert (packed / f).exists(), f
    card = (packed / "README.md").read_text()
    assert "Tasks: asr, tts_phones" in card and "speechlm.load" in card
    assert 'lm.tts("hello world")  # in the voice of voices/en-us.wav' in card  # its packed voice
    # packing refits the length head on the frozen training features: its error falls
    before, after = map(float, re.search(r"log length ratio ([0-9.]+) -> ([0-9]+\.[0-9]+)", card).groups())
    assert after < before
    from safetensors.torch import load_file

    trained = load_file(sorted((recipe.path / TAG / "checkpoints").glob("step_*/model.safetensors"))[-1])
    refit = load_file(packed / "model.safetensors")
    assert not torch_equal(trained["length_head.2.weight"], refit["length_head.2.weight"])
    assert all(torch_equal(v, refit[k]) for k, v in trained.items() if not k.startswith("length_head"))
    upload = (recipe.path / TAG / "upload" / "README.md").read_text()
    front = upload.split("---")[1]
    assert upload.startswith("---\n") and "library_name: speechlm" in front and "- asr" in front
    assert "pipeline_tag: automatic-speech-recognition" in front
    assert "Results" in upload and "cer" in upload.lower()
    # the export is the model that was decoded and scored (copied, not packed and refit again)
    assert (recipe.path / TAG / "upload" / "model.safetensors").read_bytes() == (packed / "model.safetensors").read_bytes()
    assert "Length head refit" in upload


def test_killed_training_resumes(recipe):
    assert recipe.killed, "the run ended before its first checkpoint could be seen"
    log = (recipe.path / TAG / "logs" / "train.log").read_text()
    assert "resumed from" in log, log[-2000:]
    state = json.loads(max((recipe.path / TAG / "checkpoints").glob("step*/trainer_state.json")).read_text())
    assert state["step"] == 40


def test_rerun_skips_finished_stages(recipe):
    res = run_sh(recipe.path, *TRAIN, *DECODE)
    for stage in ("Stage 1: skipped", "Stage 9: ", "Stage 10: "):
        assert stage in res.stderr
    assert "is newer than every checkpoint, skipped" in res.stderr
    assert "is complete, skipped" in res.stderr


def test_packed_model_transcribes_in_a_fresh_process(recipe, tmp_path):
    """speechlm.load in a new interpreter and `speechlm decode --input` (no manifest, no decode
    config: both use the packed model's decode.yaml) give the same transcript of a test wav."""
    packed = recipe.path / TAG / "packed"
    # the recipe's decode file, less the entries of the tasks this model lacks
    packed_decode = yaml.safe_load((packed / "decode.yaml").read_text())
    recipe_decode = yaml.safe_load((recipe.path / "conf" / "decode_phones.yaml").read_text())
    assert set(packed_decode["tasks"]) == {"asr", "tts_phones"}
    assert packed_decode["tasks"]["tts_phones"] == recipe_decode["tasks"]["tts_phones"]
    utt, wav = (recipe.path / "data" / "test" / "wav.scp").read_text().splitlines()[1].split(" ", 1)
    code = ("import json, sys, speechlm\nlm = speechlm.load(sys.argv[1])\n"
            "print(lm.decode_config('asr').search)\nprint(json.dumps(lm.asr(sys.argv[2])))\n")
    out = subprocess.run([sys.executable, "-c", code, str(packed), wav], capture_output=True, text=True,
                         env=env(), timeout=300, cwd="/")
    assert out.returncode == 0, out.stderr[-3000:]
    search, text = out.stdout.strip().splitlines()[-2:]
    assert search == "beam"
    (tmp_path / "wav.scp").write_text(f"{utt} {wav}\n")
    cmd = [sys.executable, "-m", "speechlm", "decode", "--model-dir", str(packed), "--task", "asr",
           "--input", str(tmp_path / "wav.scp"), "--out-dir", str(tmp_path / "out")]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "out" / "text").read_text() == f"{utt} {json.loads(text)}\n"
    assert "search: beam" in (tmp_path / "out" / "decode.yaml").read_text()
    bad = subprocess.run(cmd[:6] + ["--task", "tts_phones"] + cmd[8:], capture_output=True, text=True, env=env(), timeout=300)
    assert bad.returncode != 0 and "has 2 conditions" in bad.stderr


def test_packed_model_speaks_any_text_in_its_voice(recipe):
    """The packed model ships a prompt of its TTS voice (local/data.sh's data/voices, stage 9's
    --pack_voices): lm.tts(text) in a new interpreter needs no prompt of the user's (a tts_phones
    prompt must have its phone alignment beside it)."""
    packed = recipe.path / TAG / "packed"
    assert (packed / "voices" / "en-us.wav").is_file() and (packed / "voices" / "en-us.phn").is_file()
    assert (recipe.path / TAG / "upload" / "voices" / "en-us.wav").is_file()  # the export carries it
    code = ("import sys, speechlm\nlm = speechlm.load(sys.argv[1])\nprint(lm.speech_task(), *lm.voices)\n"
            "wav, sr = lm.tts('what time is it')\nprint(sr, len(wav))\n")
    out = subprocess.run([sys.executable, "-c", code, str(packed)], capture_output=True, text=True, env=env(),
                         timeout=300, cwd="/")
    assert out.returncode == 0, out.stderr[-3000:]
    voice, (sr, n) = out.stdout.strip().splitlines()[-2], map(int, out.stdout.strip().splitlines()[-1].split())
    assert voice == "tts_phones en-us" and n > 0.3 * sr


NEW_TASK = """name: phone_asr
description: phone recognition, speech in -> espeak-ng phones out
prefix_lm: true
conditions:
  - {name: speech, modality: audio, tokenizer: codec, source: wav.scp}
targets:
  - {name: phones, modality: text, tokenizer: phones, source: text}
"""


def test_finetune_packed_model_on_a_new_task_template(recipe):
    task_dir = recipe.path / "my_tasks"
    task_dir.mkdir()
    (task_dir / "phone_asr.yaml").write_text(NEW_TASK)
    packed = recipe.path / TAG / "packed"
    res = run_sh(recipe.path, "--stage", "2", "--stop_stage", "10", "--nbpe", "0", "--tasks", "phone_asr", "--task_dir", str(task_dir),
                 "--init_from", str(packed), "--tag", "ft_phone_asr", "--dumpdir", "dump_ft",
                 "--train_args", "--max-steps 6 --save-every 6 --valid-every 6 --batch-tokens 1500 --threads 1",
                 "--decode_args", "--limit 2")
    old = json.loads((packed / "token_list.json").read_text())
    new = json.loads((recipe.path / "dump_ft" / "token_list.json").read_text())
    old_tokens, new_tokens = old["tokens"], new["tokens"]
    assert new_tokens[: len(old_tokens)] == old_tokens, "extending the vocabulary moved old ids"
    assert "<task:phone_asr>" in new_tokens[len(old_tokens):]
    log = (recipe.path / "exp" / "ft_phone_asr" / "logs" / "train.log").read_text()
    assert "init" in log.lower() and str(packed) in log, log[-2000:]
    hyps = (recipe.path / "exp" / "ft_phone_asr" / "decode_test_phone_asr" / "text").read_text().splitlines()
    assert len(hyps) == 2, res.stderr[-2000:]
