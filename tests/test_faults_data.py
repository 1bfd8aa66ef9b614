"""Issue 14, data side: planted faults in data dirs, tokenize, pack and the command line.

One test per case of the issue (``test_case<N>_...``); each failed before its fix. The data are
real (espeak-ng speech, SentencePiece models trained here, a tiny model trained for two steps).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from speechlm.cli import main as cli
from speechlm.data.kaldi import read_file, validate
from speechlm.tasks.template import BUILTIN_DIR
from tests.conftest import SENTENCES

# Two different texts for two recipes' BPE models: the same vocabulary size, other pieces.
TEXT_A = [s.upper() for s in SENTENCES] + [f"{a.upper()} {b.upper()}" for a, b in zip(SENTENCES, SENTENCES[1:])]
TEXT_B = ["LAZY DOGS SLEEP UNDER WARM BLANKETS", "BRIGHT STARS SHINE OVER QUIET HILLS",
          "MY NEIGHBOUR BAKES BREAD EVERY FRIDAY", "JUMPING ZEBRAS GRAZE NEAR THE RIVER",
          "VIVID PAINTINGS HANG IN THE OLD GALLERY", "WE PACKED SIX BOXES OF JUICY PLUMS"]


def _text_dir(d: Path, lines: list[str]) -> Path:
    """A text-only Kaldi data dir (what textlm and BPE training read)."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "text").write_text("".join(f"utt{i:03d} {t}\n" for i, t in enumerate(lines)))
    (d / "utt2spk").write_text("".join(f"utt{i:03d} utt{i:03d}\n" for i in range(len(lines))))
    return d


def _bpe(recipe: Path, lines: list[str], nbpe: int = 40) -> Path:
    """``recipe/bpe/bpe.model`` trained with `speechlm train-bpe` on ``lines``."""
    data = _text_dir(recipe / "bpe_text", lines)
    assert cli(["train-bpe", "--text", str(data / "text"), "--out-dir", str(recipe / "bpe"), "--nbpe", str(nbpe),
                "--force"]) == 0
    return recipe / "bpe" / "bpe.model"


# ---- case 1: fix-data never empties a data dir silently ---------------------------------------
def test_case1_fix_data_refuses_big_drops_and_backs_up(data_dir, tmp_path, monkeypatch, caplog):
    # relative audio paths, as a recipe writes them, and a run from another directory
    lines = [ln.split(maxsplit=1) for ln in (data_dir / "wav.scp").read_text().splitlines()]
    rel = "".join(f"{u} {os.path.relpath(p, tmp_path)}\n" for u, p in lines)
    (data_dir / "wav.scp").write_text(rel)
    before = {p.name: p.read_bytes() for p in data_dir.iterdir() if p.is_file()}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert cli(["fix-data", str(data_dir)]) == 1
    assert "would drop 6 of 6 utterances" in caplog.text and "relative paths" in caplog.text
    assert "--force" in caplog.text
    assert {p.name: p.read_bytes() for p in data_dir.iterdir() if p.is_file()} == before  # nothing written
    assert not list(data_dir.glob(".backup*"))
    # from the right directory nothing is dropped and nothing changes
    monkeypatch.chdir(tmp_path)
    assert cli(["fix-data", str(data_dir)]) == 0
    assert {p.name: p.read_bytes() for p in data_dir.iterdir() if p.is_file()} == before
    # one unreadable utterance of seven (14%) is over the default 10%; --max-drop 0.2 allows it
    (data_dir / "wav" / "bad.wav").write_bytes(b"RIFF0000WAVEfmt garbage")
    for name, value in (("wav.scp", "data/wav/bad.wav"), ("text", "A BAD ONE"), ("utt2spk", "spk0")):
        (data_dir / name).write_text((data_dir / name).read_text() + f"zz-bad {value}\n")
    planted = {n: (data_dir / n).read_bytes() for n in ("wav.scp", "text", "utt2spk")}
    assert cli(["fix-data", str(data_dir)]) == 1
    assert cli(["fix-data", str(data_dir), "--max-drop", "0.2"]) == 0
    assert "zz-bad" not in read_file(data_dir / "wav.scp") and len(read_file(data_dir / "text")) == 6
    for name, content in planted.items():  # the originals are kept
        assert (data_dir / ".backup" / name).read_bytes() == content
    assert validate(data_dir) == []


# ---- case 2 and 10: pack resolves and checks the run's tokenizer files; loading confines them --
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Recipe A: a BPE model at the relative path bpe/bpe.model, textlm data, a 2-step run
    started from recipe A's directory. Recipe B: another BPE model of the same size at the
    same relative path."""
    root = tmp_path_factory.mktemp("pack")
    a, b = root / "recipe_a", root / "recipe_b"
    cwd = os.getcwd()
    try:
        for recipe, text in ((a, TEXT_A), (b, TEXT_B)):
            recipe.mkdir()
            os.chdir(recipe)
            _bpe(recipe, text)
            (recipe / "tokenizers.yaml").write_text("text_bpe: {type: sentencepiece, model: bpe/bpe.model}\n")
        os.chdir(a)
        _text_dir(a / "data", TEXT_A * 4)
        assert cli(["prepare", "--task", "textlm", "--data-dir", "data", "--out-dir", "dump/textlm"]) == 0
        assert cli(["tokenize", "--manifest-dir", "dump/textlm", "--tokenizers", "tokenizers.yaml"]) == 0
        assert cli(["vocab", "--tokenizers", "tokenizers.yaml", "--tasks", "textlm", "--out", "token_list.json"]) == 0
        assert cli(["train", "--data", "textlm:a:dump/textlm:1", "--vocab", "token_list.json", "--tokenizers",
                    "tokenizers.yaml", "--model-config", "tiny", "--train-config",
                    "tiny", "--max-steps", "2", "--save-every", "2",
                    "--valid-every", "100", "--out-dir", "exp/run"]) == 0
    finally:
        os.chdir(cwd)
    return a, b


def _pack(exp: Path, out: Path, *extra: str) -> int:
    return cli(["pack", "--exp-dir", str(exp), "--out-dir", str(out), "--length-refit-steps", "0", *extra])


def test_case2_pack_uses_the_run_start_dir_and_checks_fingerprints(run, tmp_path, monkeypatch, caplog):
    a, b = run
    exp = a / "exp" / "run"
    monkeypatch.chdir(b)  # recipe B has its own bpe/bpe.model: same name, same size, other pieces
    assert (b / "bpe" / "bpe.model").read_bytes() != (a / "bpe" / "bpe.model").read_bytes()
    assert _pack(exp, tmp_path / "packed") == 0
    assert (tmp_path / "packed" / "tokenizers" / "text_bpe" / "bpe.model").read_bytes() == \
        (a / "bpe" / "bpe.model").read_bytes()
    # --base-dir pointing at recipe B: its file is not the one the run was trained with
    assert _pack(exp, tmp_path / "p2", "--base-dir", str(b)) == 1
    assert "tokenizer 'text_bpe' option model" in caplog.text and str(b / "bpe" / "bpe.model") in caplog.text
    assert not (tmp_path / "p2").exists()
    # a run dir from before fingerprints: packed with a warning, not refused
    old = tmp_path / "old_run"
    shutil.copytree(exp, old)
    (old / "tokenizer_files.json").unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert _pack(old, tmp_path / "p3") == 0
    assert "no tokenizer fingerprints" in caplog.text


def test_case2_pack_refuses_a_retrained_tokenizer(run, tmp_path, monkeypatch, caplog):
    a, _ = run
    exp = tmp_path / "run_copy"
    shutil.copytree(a / "exp" / "run", exp)
    model = a / "bpe" / "bpe.model"
    saved = model.read_bytes()
    try:
        monkeypatch.chdir(a)
        _bpe(a, TEXT_B)  # retrained at the same path
        monkeypatch.chdir(tmp_path)
        assert model.read_bytes() != saved
        assert _pack(exp, tmp_path / "packed") == 1
        assert "not the ones the run was trained with" in caplog.text and str(model) in caplog.text
        assert not (tmp_path / "packed").exists()
    finally:
        model.write_bytes(saved)


def test_case10_packed_tokenizer_paths_stay_inside_the_model_dir(run, tmp_path):
    import speechlm
    from speechlm.config import ConfigError

    a, _ = run
    packed = tmp_path / "packed"
    assert _pack(a / "exp" / "run", packed) == 0
    lm = speechlm.load(packed)  # the packed model loads
    assert "text_bpe" in lm.tokenizers
    outside = tmp_path / "outside.model"
    outside.write_bytes((a / "bpe" / "bpe.model").read_bytes())  # a readable file outside the dir
    for value in ("../outside.model", str(outside)):
        (packed / "tokenizers.yaml").write_text(f"text_bpe: {{type: sentencepiece, model: {value}}}\n")
        with pytest.raises(ConfigError) as e:
            speechlm.load(packed)
        assert "text_bpe.model" in str(e.value) and value in str(e.value) and "outside the model dir" in str(e.value)


# ---- case 3: tokenize notices a retrained tokenizer file -----------------------------------------
def test_case3_retrained_bpe_retokenizes(tmp_path, monkeypatch, caplog):
    from speechlm.data.token_archive import TokenReader
    from speechlm.tokenizers import build_tokenizer

    monkeypatch.chdir(tmp_path)
    _bpe(tmp_path, TEXT_A)
    (tmp_path / "tok.yaml").write_text("text_bpe: {type: sentencepiece, model: bpe/bpe.model}\n")
    _text_dir(tmp_path / "data", TEXT_A)
    assert cli(["prepare", "--task", "textlm", "--data-dir", "data", "--out-dir", "dump"]) == 0
    args = ["tokenize", "--manifest-dir", "dump", "--tokenizers", "tok.yaml"]
    assert cli(args) == 0
    first = dict(TokenReader(tmp_path / "dump" / "tokens" / "text.scp").items())
    _bpe(tmp_path, TEXT_B)  # the same path, the same size, other pieces
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert cli(args) == 0
    assert "tokenizer files" in caplog.text and "redoing" in caplog.text
    now = dict(TokenReader(tmp_path / "dump" / "tokens" / "text.scp").items())
    tok = build_tokenizer({"type": "sentencepiece", "model": "bpe/bpe.model"})
    for i, line in enumerate(TEXT_A):
        np.testing.assert_array_equal(now[f"utt{i:03d}"], tok.encode(line))
    assert any(not np.array_equal(first[u], now[u]) for u in now)


# ---- case 5: one tokenize per dir; killing the parent stops its jobs ---------------------------
def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _children(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(p.name))
    return out


def test_case5_second_run_refused_and_jobs_die_with_their_parent(tmp_path, caplog):
    from tests.test_tokenize_stage import _make_corpus, _prepare

    if not any(Path(p, "sox").exists() for p in os.environ["PATH"].split(os.pathsep)):
        pytest.skip("sox is not installed")
    data = _make_corpus(tmp_path, 120)
    (tmp_path / "tok.yaml").write_text("codec: {type: codec2}\nphone: {type: g2p}\n")
    dump = _prepare(tmp_path, data, "dump")
    args = ["tokenize", "--manifest-dir", str(dump), "--tokenizers", str(tmp_path / "tok.yaml"),
            "--segments", "speech", "--nj", "2"]
    parent = subprocess.Popen([sys.executable, "-m", "speechlm", *args], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    journals = [dump / "tokens" / "shards" / f"speech.{i}-of-2.journal" for i in (1, 2)]
    jobs: list[int] = []
    try:
        deadline = time.time() + 120
        while time.time() < deadline and sum(j.read_text().count("\n") for j in journals if j.exists()) < 4:
            assert parent.poll() is None, "the run ended before the test could interfere"
            time.sleep(0.05)
        jobs = _children(parent.pid)
        assert len(jobs) == 2
        # a second run on the same dir while the first works: a clear refusal naming the owner
        assert cli(args) == 1
        assert parent.poll() is None, "the first run ended: the refusal above proves nothing"
        assert f"another `speechlm tokenize` is running here (pid {parent.pid}" in caplog.text
        # kill only the parent: its shard jobs must stop too, before finishing their shards
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 60
        while time.time() < deadline and any(pid_alive(p) for p in jobs):
            time.sleep(0.1)
        assert not any(pid_alive(p) for p in jobs), "shard jobs outlived their parent"
        assert not all(j.with_name(j.name + ".done").exists() for j in journals)
    finally:
        for p in [parent.pid, *jobs]:
            if pid_alive(p):
                os.kill(p, signal.SIGKILL)
    # the dead parent's lock is taken over by the next run, which finishes the job
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert cli(args) == 0
    assert f"taking over the stale lock of pid {parent.pid}" in caplog.text
    assert len((dump / "tokens" / "speech.lengths").read_text().splitlines()) == 120


def test_case5_stale_lock_is_taken_over_and_a_held_lock_refuses(tmp_path, monkeypatch, caplog):
    import platform

    monkeypatch.chdir(tmp_path)
    _text_dir(tmp_path / "data", TEXT_A)
    (tmp_path / "tok.yaml").write_text("text_bpe: {type: g2p}\n")
    assert cli(["prepare", "--task", "textlm", "--data-dir", "data", "--out-dir", "dump"]) == 0
    lock = tmp_path / "dump" / "tokens" / "tokenize.lock"
    lock.parent.mkdir(parents=True)
    # a lock held by a live process: the lock file names it, and it holds a flock on the file
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, json, os, platform, sys, time\n"
         "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\nfcntl.flock(fd, fcntl.LOCK_EX)\n"
         "os.write(fd, json.dumps({'pid': os.getpid(), 'host': platform.node(), 'started': time.time(), "
         "'cmd': 'speechlm tokenize'}).encode())\nprint('held', flush=True)\ntime.sleep(120)", str(lock)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        args = ["tokenize", "--manifest-dir", "dump", "--tokenizers", "tok.yaml"]
        assert cli(args) == 1
        assert f"pid {holder.pid}" in caplog.text and str(lock) in caplog.text
        assert not (tmp_path / "dump" / "tokens" / "text.scp").exists()
    finally:
        holder.kill()
        holder.wait()
    # a lock file left by a dead run (its pid no longer exists) is taken over
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(json.dumps({"pid": dead.pid, "host": platform.node(), "started": 0, "cmd": "speechlm tokenize"}))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert cli(args) == 0
    assert f"taking over the stale lock of pid {dead.pid}" in caplog.text
    assert (tmp_path / "dump" / "tokens" / "text.scp").is_file()


# ---- case 15: validate-data names what is wrong ------------------------------------------------
def test_case15_missing_utt2spk_and_bad_spk2utt_are_named(data_dir, caplog):
    (data_dir / "spk2utt").write_text("spk0 spk0-utt0 spk0-utt2 spk1-utt1\nspk1 spk1-utt3 spk1-utt5\n")
    problems = validate(data_dir, check_audio=False)
    bad = [p for p in problems if p.file.endswith("spk2utt")]
    assert bad and {p.id for p in bad} == {"spk0", "spk1"}
    spk0 = next(p for p in bad if p.id == "spk0")
    assert "spk1-utt1" in spk0.message and "spk0-utt4" in spk0.message and spk0.line == 1
    (data_dir / "utt2spk").unlink()
    (data_dir / "spk2utt").unlink()
    problems = validate(data_dir, check_audio=False)
    assert any(p.file.endswith("utt2spk") and "missing" in p.message for p in problems)
    assert cli(["validate-data", str(data_dir), "--no-check-audio"]) == 1
    assert "utt2spk" in caplog.text


# ---- case 18: --config satisfies required options ----------------------------------------------
def test_case18_config_file_gives_required_options(data_dir, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"task: asr\ndata_dir: {data_dir}\nout_dir: {tmp_path / 'dump'}\n")
    assert cli(["prepare", "--config", str(cfg)]) == 0
    assert len((tmp_path / "dump" / "manifest.jsonl").read_text().splitlines()) == 6
    # a positional argument too
    (tmp_path / "v.yaml").write_text(f"data_dir: {data_dir}\ncheck_audio: false\n")
    assert cli(["validate-data", "--config", str(tmp_path / "v.yaml")]) == 0
    # still required when neither the file nor the command line gives it
    cfg.write_text("task: asr\n")
    with pytest.raises(SystemExit):
        cli(["prepare", "--config", str(cfg)])


# ---- case 19: vocab --tasks checks the names ------------------------------------------------
def test_case19_vocab_tasks_are_checked_and_task_dir_works(tmp_path, caplog):
    (tmp_path / "chars.txt").write_text("<unk>\n<space>\na\nb\n")
    toks = tmp_path / "tokenizers.yaml"
    toks.write_text(f"text_bpe: {{type: char, vocab: {tmp_path / 'chars.txt'}}}\n")
    out = tmp_path / "v.json"
    assert cli(["vocab", "--tokenizers", str(toks), "--tasks", "txtlm", "--out", str(out)]) == 1
    assert "unknown task 'txtlm'" in caplog.text and "did you mean 'textlm'" in caplog.text
    assert cli(["vocab", "--tokenizers", str(toks), "--tasks", str(BUILTIN_DIR / "asr.yaml"), "--out", str(out)]) == 1
    assert not out.exists()
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "spelling.yaml").write_text(
        "name: spelling\ntargets:\n  - {name: text, modality: text, tokenizer: text_bpe, source: text}\n")
    assert cli(["vocab", "--tokenizers", str(toks), "--tasks", "textlm", "spelling", "--task-dir", str(tasks),
                "--out", str(out)]) == 0
    assert "<task:spelling>" in json.loads(out.read_text())["tokens"]


# ---- case 23: file modes and abbreviated options --------------------------------------------
def test_case23_outputs_keep_the_umask_mode(data_dir, tmp_path):
    from speechlm.utils.fileio import write_text

    old = os.umask(0o022)
    try:
        for p in data_dir.iterdir():
            if p.is_file():
                p.chmod(0o644)
        text = data_dir / "text"
        text.write_text("".join(reversed(text.read_text().splitlines(keepends=True))))  # unsorted: fix rewrites
        assert cli(["fix-data", str(data_dir)]) == 0
        assert list(read_file(text)) == sorted(read_file(text))
        assert stat.S_IMODE(text.stat().st_mode) == 0o644
        write_text(tmp_path / "new.txt", "x")
        assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o644
        os.umask(0o027)
        write_text(tmp_path / "new2.txt", "x")
        assert stat.S_IMODE((tmp_path / "new2.txt").stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_case23_abbreviated_options_are_refused(data_dir, tmp_path, capsys):
    for argv in (["fix-data", str(data_dir), "--out-dir", str(tmp_path / "f"), "--min-dur", "0.5"],
                 ["fix-data", str(data_dir), "--forc"]):
        with pytest.raises(SystemExit) as e:
            cli(argv)
        assert e.value.code == 2
        assert "unrecognized arguments" in capsys.readouterr().err
    assert not (tmp_path / "f").exists()


# ---- case 25: train-bpe with a size the text cannot reach --------------------------------------
def test_case25_unreachable_bpe_size_is_one_clear_line(tmp_path, caplog):
    data = _text_dir(tmp_path / "data", TEXT_A)
    args = ["train-bpe", "--text", str(data / "text"), "--out-dir", str(tmp_path / "bpe")]
    with caplog.at_level(logging.ERROR):
        assert cli(args + ["--nbpe", "5000"]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0]
    assert "--nbpe 5000" in errors[0] and "trainer_interface" not in errors[0]
    reach = int(errors[0].split("the most it can reach is ")[1].split(":")[0])
    assert not (tmp_path / "bpe" / "bpe.model").exists()
    assert cli(args + ["--nbpe", str(reach)]) == 0  # the size it names works
    from speechlm.tokenizers import build_tokenizer

    assert build_tokenizer({"type": "sentencepiece", "model": str(tmp_path / "bpe" / "bpe.model")}).codebook_sizes == [reach]


def test_pack_ships_the_voices_dir(run, tmp_path, monkeypatch, caplog):
    """--voices-dir: its <name>.wav files and their .phn alignments go to voices/; a dir without
    wav files is refused before the model dir is written."""
    a, _ = run
    monkeypatch.chdir(a)
    voices = tmp_path / "voices"
    voices.mkdir()
    (voices / "en-us.wav").write_bytes(b"RIFF")
    (voices / "en-us.phn").write_text("0.0 0.1 h\n")
    (voices / "notes.txt").write_text("not a voice\n")
    assert _pack(a / "exp" / "run", tmp_path / "packed", "--voices-dir", str(voices)) == 0
    assert sorted(p.name for p in (tmp_path / "packed" / "voices").iterdir()) == ["en-us.phn", "en-us.wav"]
    (tmp_path / "empty").mkdir()
    assert _pack(a / "exp" / "run", tmp_path / "p2", "--voices-dir", str(tmp_path / "empty")) == 1
    assert "no <name>.wav speaker prompts" in caplog.text and not (tmp_path / "p2").exists()
