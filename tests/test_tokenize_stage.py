"""`speechlm tokenize`: archives, nj=1 == nj=2, resume after a kill, bad audio reported by id, skip when done."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import kaldiio
import numpy as np
import pytest

from speechlm.cli import main as cli
from speechlm.data.token_archive import TokenReader, read_lengths
from speechlm.tokenizers import build_tokenizer
from tests.conftest import SENTENCES, synth

N_UTTS = 240


def _make_corpus(root: Path, n_utts: int, n_sources: int = 12) -> Path:
    """A data dir of ``n_utts`` utterances of 2 speakers over a few espeak-ng files (paths and sox pipes)."""
    d = root / "data"
    (d / "wav").mkdir(parents=True)
    words = " ".join(SENTENCES).split()
    sources = []
    for i in range(n_sources):
        text = " ".join(words[(i * 3 + k) % len(words)] for k in range(4 + i % 3))
        sources.append(synth(d / "wav" / f"src{i}.wav", text, voice="en+f2" if i % 2 else "en-us", rate=220))
    wav, text, utt2spk = [], [], []
    for j in range(n_utts):
        utt, src = f"spk{j % 2}-u{j:04d}", sources[j % n_sources]
        value = f"sox -R {src} -t wav - speed 1.{j % 5} |"  # -R: repeatable dither if j % 4 == 3 else str(src)
        wav.append(f"{utt} {value}")
        text.append(f"{utt} {SENTENCES[j % len(SENTENCES)].upper()}")
        utt2spk.append(f"{utt} spk{j % 2}")
    for name, lines in (("wav.scp", wav), ("text", text), ("utt2spk", utt2spk)):
        (d / name).write_text("\n".join(sorted(lines)) + "\n")
    return d


def _prepare(root: Path, data: Path, name: str, task: str = "tts") -> Path:
    out = root / name / task  # like dump/<set>/<task>: archives are shared only within one <set>
    assert cli(["prepare", "--task", task, "--data-dir", str(data), "--out-dir", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    if not any(Path(p, "sox").exists() for p in os.environ["PATH"].split(os.pathsep)):
        pytest.skip("sox is not installed")
    root = tmp_path_factory.mktemp("corpus")
    data = _make_corpus(root, N_UTTS)
    (root / "tokenizers.yaml").write_text("codec: {type: codec2}\nphone: {type: g2p}\n")
    ref = _prepare(root, data, "ref")
    assert cli(["tokenize", "--manifest-dir", str(ref), "--tokenizers", str(root / "tokenizers.yaml"),
                "--segments", "speech"]) == 0
    return root, data, ref


def _arrays(dump: Path, seg: str) -> dict[str, np.ndarray]:
    return dict(TokenReader(dump / "tokens" / f"{seg}.scp").items())


def test_archives_hold_int32_frames_by_streams(corpus):
    root, data, ref = corpus
    tok = build_tokenizer({"type": "codec2"})
    arrays = _arrays(ref, "speech")
    ids = [json.loads(line)["id"] for line in (ref / "manifest.jsonl").read_text().splitlines()]
    assert list(arrays) == ids and len(arrays) == N_UTTS  # every utterance, in manifest (id) order
    lengths = read_lengths(ref / "tokens" / "speech.lengths")
    for utt, arr in list(arrays.items())[:8]:
        assert arr.dtype == np.int32 and arr.shape == (lengths[utt], 8)
    first = next(iter(arrays))
    from speechlm.data.audio import load_audio

    np.testing.assert_array_equal(arrays[first], tok.encode(load_audio(data / "wav" / "src0.wav"), 22050))
    plain = kaldiio.load_scp(str(ref / "tokens" / "speech.scp"))  # plain kaldiio reads them too
    np.testing.assert_array_equal(plain[first], arrays[first])
    assert not (ref / "tokens" / "prompt.scp").exists()  # spk_prompt segments reuse the speech archive
    assert (ref / "tokens" / "speech.failed").read_text() == ""


def test_nj2_gives_the_same_archives_and_rerun_does_nothing(corpus, caplog):
    root, data, ref = corpus
    dump = _prepare(root, data, "nj2")
    args = ["tokenize", "--manifest-dir", str(dump), "--tokenizers", str(root / "tokenizers.yaml"),
            "--segments", "speech", "--nj", "2"]
    assert cli(args) == 0
    for suffix in (".ark", ".lengths"):
        assert (dump / "tokens" / f"speech{suffix}").read_bytes() == (ref / "tokens" / f"speech{suffix}").read_bytes()
    scp = (dump / "tokens" / "speech.scp").read_text().replace(str(dump), "DUMP")
    assert scp == (ref / "tokens" / "speech.scp").read_text().replace(str(ref), "DUMP")
    assert not (dump / "tokens" / "shards").exists()
    mtime = (dump / "tokens" / "speech.ark").stat().st_mtime_ns
    with caplog.at_level(logging.INFO):
        assert cli(args) == 0
    assert "nothing to do" in caplog.text and (dump / "tokens" / "speech.ark").stat().st_mtime_ns == mtime


def test_shards_run_separately_then_merge(corpus):
    """The run.pl / slurm.pl path: each JOB runs `--shard JOB`, a last call merges."""
    root, data, ref = corpus
    dump = _prepare(root, data, "jobs")
    args = ["tokenize", "--manifest-dir", str(dump), "--tokenizers", str(root / "tokenizers.yaml"),
            "--segments", "speech", "--nj", "3", "--threads", "1"]
    for job in (3, 1, 2):
        assert cli(args + ["--shard", str(job)]) == 0
        assert not (dump / "tokens" / "speech.scp").exists()
    assert cli(args + ["--shard", "4"]) == 1
    assert cli(args) == 0  # all shards done: only the merge runs
    assert (dump / "tokens" / "speech.ark").read_bytes() == (ref / "tokens" / "speech.ark").read_bytes()


def test_resumes_after_being_killed(corpus):
    root, data, ref = corpus
    dump = _prepare(root, data, "killed")
    cmd = [sys.executable, "-m", "speechlm", "tokenize", "--manifest-dir", str(dump), "--tokenizers",
           str(root / "tokenizers.yaml"), "--segments", "speech", "--nj", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    journals = [dump / "tokens" / "shards" / f"speech.{i}-of-2.journal" for i in (1, 2)]
    deadline = time.time() + 60
    # kill once both shards have started (a loaded machine can run one far ahead of the other)
    while time.time() < deadline and not (
            all(j.exists() and j.read_text().count("\n") for j in journals)
            and sum(j.read_text().count("\n") for j in journals) >= 40):
        assert proc.poll() is None, "finished before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = sum(j.read_text().count("\n") for j in journals if j.exists())
    assert 0 < done_before < N_UTTS and not (dump / "tokens" / "speech.scp").exists()
    assert cli(cmd[3:]) == 0
    assert (dump / "tokens" / "speech.ark").read_bytes() == (ref / "tokens" / "speech.ark").read_bytes()
    logs = "".join(p.read_text() for p in (dump / "tokens" / "log").glob("tokenize.*.log"))
    assert "resuming after" in logs


def test_same_audio_in_another_task_is_linked_not_encoded(corpus, caplog):
    root, data, ref = corpus
    asr = _prepare(root, data, "shared", task="asr")
    tts = _prepare(root, data, "shared", task="tts")
    tok = ["--tokenizers", str(root / "tokenizers.yaml"), "--segments", "speech"]
    assert cli(["tokenize", "--manifest-dir", str(asr), *tok]) == 0
    # shard jobs run at once (run.pl, slurm.pl): none links the archive, the merge call does
    for job in (1, 2):
        assert cli(["tokenize", "--manifest-dir", str(tts), *tok, "--nj", "2", "--shard", str(job)]) == 0
    assert not (tts / "tokens" / "speech.scp").exists() and not list((tts / "tokens").glob("shards/speech.*"))
    with caplog.at_level(logging.INFO):
        assert cli(["tokenize", "--manifest-dir", str(tts), *tok, "--nj", "2"]) == 0
    assert "linked its archive" in caplog.text
    a, t = TokenReader(asr / "tokens" / "speech.scp"), TokenReader(tts / "tokens" / "speech.scp")
    assert list(a) == list(t) and all(np.array_equal(a[u], t[u]) for u in a)
    assert all(str(tts) in line for line in (tts / "tokens" / "speech.scp").read_text().splitlines())
    assert (tts / "tokens" / "speech.lengths").read_text() == (asr / "tokens" / "speech.lengths").read_text()


@pytest.mark.parametrize("batch_size", [1, 3])
def test_bad_audio_is_reported_by_id_and_skipped(tmp_path, caplog, batch_size):
    data = _make_corpus(tmp_path, 6, n_sources=2)
    bad = data / "wav" / "corrupt.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    lines = (data / "wav.scp").read_text().splitlines()
    victim = lines[2].split()[0]
    lines[2] = f"{victim} {bad}"
    (data / "wav.scp").write_text("\n".join(lines) + "\n")
    (tmp_path / "tok.yaml").write_text("codec: {type: codec2}\nphone: {type: g2p}\n")
    dump = _prepare(tmp_path, data, "dump")
    with caplog.at_level(logging.WARNING):
        assert cli(["tokenize", "--manifest-dir", str(dump), "--tokenizers", str(tmp_path / "tok.yaml"),
                    "--batch-size", str(batch_size)]) == 0
    assert victim in caplog.text and "1 FAILED" in caplog.text
    failed = (dump / "tokens" / "speech.failed").read_text()
    assert failed.startswith(victim) and "corrupt.wav" in failed
    speech, phones = _arrays(dump, "speech"), _arrays(dump, "phones")
    assert victim not in speech and len(speech) == 5 and len(phones) == 6  # text segment unaffected
    assert phones[victim].shape[1] == 1


def test_changed_options_redo_and_bad_names_are_errors(tmp_path, caplog):
    data = _make_corpus(tmp_path, 4, n_sources=2)
    dump = _prepare(tmp_path, data, "dump", task="asr")
    tok = tmp_path / "tok.yaml"
    tok.write_text("codec: {type: codec2}\ntext_bpe: {type: g2p}\n")
    args = ["tokenize", "--manifest-dir", str(dump), "--tokenizers", str(tok)]
    assert cli(args) == 0
    assert _arrays(dump, "speech")[next(iter(_arrays(dump, "speech")))].shape[1] == 8
    tok.write_text("codec: {type: codec2, layout: fields}\ntext_bpe: {type: g2p}\n")
    with caplog.at_level(logging.INFO):
        assert cli(args) == 0
    assert "changed" in caplog.text
    assert next(iter(_arrays(dump, "speech").values())).shape[1] == 14
    assert cli(args + ["--segments", "speach"]) == 1
    assert "did you mean 'speech'" in caplog.text
    tok.write_text("codec: {type: codec2}\n")
    assert cli(args) == 1
    assert "no tokenizer named 'text_bpe'" in caplog.text
    # a job that cannot start (here: a codec dir that does not exist) fails the stage with its log tail
    tok.write_text(f"codec: {{type: hf_codec, model_dir: {tmp_path / 'nowhere'}}}\ntext_bpe: {{type: g2p}}\n")
    assert cli(args + ["--nj", "2"]) == 1
    assert "shard 1/2 failed" in caplog.text and "no config.json" in caplog.text


def test_a_recording_shared_by_several_rows_is_encoded_once(tmp_path, monkeypatch):
    """The steps of a spoken dialogue share its request recording: encoded once, the same tokens for each row."""
    from speechlm.tokenizers.codec2 import Codec2Tokenizer

    d = tmp_path / "data"
    (d / "wav").mkdir(parents=True)
    a = synth(d / "wav" / "a.wav", SENTENCES[0])
    b = synth(d / "wav" / "b.wav", SENTENCES[1], voice="en+f2")
    rows = {"ep1-00": a, "ep1-01": a, "ep1-02": a, "ep2-00": b, "ep2-01": b}
    (d / "wav.scp").write_text("".join(f"{u} {p}\n" for u, p in rows.items()))
    (d / "text").write_text("".join(f"{u} {SENTENCES[0] if p == a else SENTENCES[1]}\n" for u, p in rows.items()))
    (d / "utt2spk").write_text("".join(f"{u} {u[:3]}\n" for u in rows))
    (tmp_path / "tokenizers.yaml").write_text("codec: {type: codec2}\nphone: {type: g2p}\n")
    encoded = []
    real = Codec2Tokenizer.encode
    monkeypatch.setattr(Codec2Tokenizer, "encode", lambda self, wav, sr=None: encoded.append(len(wav)) or real(self, wav, sr))
    out = _prepare(tmp_path, d, "dump")
    assert cli(["tokenize", "--manifest-dir", str(out), "--tokenizers", str(tmp_path / "tokenizers.yaml"),
                "--nj", "1", "--batch-size", "1"]) == 0
    assert len(encoded) == 2  # two recordings, five rows
    toks = dict(TokenReader(out / "tokens" / "speech.scp").items())
    ref = build_tokenizer({"type": "codec2"})
    for u, p in rows.items():
        np.testing.assert_array_equal(toks[u], toks["ep1-00" if p == a else "ep2-00"])
    assert not np.array_equal(toks["ep1-00"][:10], toks["ep2-00"][:10]) and ref.n_streams == toks["ep1-00"].shape[1]
