"""Stage 1 of the real-corpus recipes on tiny fake corpora laid out like the real downloads
(LibriSpeech flac + trans.txt, LJSpeech-1.1 metadata.csv + wavs), audio synthesized here."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EGS = ROOT / "egs"

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("sox") is None,
                                reason="needs espeak-ng and sox")


def say(text: str, out: Path, rate: int) -> None:
    """espeak-ng speech as flac or wav (by suffix) at ``rate`` Hz."""
    out.parent.mkdir(parents=True, exist_ok=True)
    espeak = subprocess.Popen(["espeak-ng", "--stdout", text], stdout=subprocess.PIPE)
    subprocess.run(["sox", "-t", "wav", "-", "-r", str(rate), "-b", "16", str(out)], stdin=espeak.stdout, check=True)
    espeak.stdout.close()
    assert espeak.wait() == 0


def recipe_copy(corpus: str, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for name in ("speechlm.sh", "path.sh", "cmd.sh", "utils", "local", "conf", "run.sh"):
        (dst / name).symlink_to(EGS / corpus / "speechlm1" / name)
    return dst


def read_map(path: Path) -> dict[str, str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    keys = [line.split(" ", 1)[0] for line in lines]
    assert keys == sorted(keys, key=str.encode), f"{path} is not sorted"
    return dict(line.split(" ", 1) for line in lines)


def validate(data_dir: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-m", "speechlm", "validate-data", str(data_dir)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


LIBRI = {  # subset -> {speaker: {chapter: [transcripts]}}
    "train-clean-100": {"103": {"1240": ["CHAPTER ONE MISSUS RACHEL", "WAS SURPRISED"]},
                        "1034": {"121119": ["THE SUN WAS SHINING"]}},
    "dev-clean": {"84": {"121123": ["GO DO YOU HEAR", "BUT IN LESS THAN FIVE MINUTES"]}},
    "test-clean": {"1089": {"134686": ["HE HOPED THERE WOULD BE STEW"]}},
    "test-other": {"1688": {"142285": ["THERE WAS A KNOCK"]}},
}


@pytest.fixture(scope="module")
def librispeech(tmp_path_factory) -> Path:
    top = tmp_path_factory.mktemp("libri")
    for subset, speakers in LIBRI.items():
        for spk, chapters in speakers.items():
            for chapter, texts in chapters.items():
                d = top / "LibriSpeech" / subset / spk / chapter
                lines = []
                for i, text in enumerate(texts):
                    utt = f"{spk}-{chapter}-{i:04d}"
                    say(text.lower(), d / f"{utt}.flac", 16000)
                    lines.append(f"{utt} {text}\n")
                (d / f"{spk}-{chapter}.trans.txt").write_text("".join(lines))
    return top


def test_librispeech_stage1(librispeech, tmp_path):
    recipe = recipe_copy("librispeech", tmp_path / "speechlm1")
    res = subprocess.run(["./run.sh", "--stage", "1", "--stop_stage", "1"], cwd=recipe, capture_output=True,
                         text=True, env=dict(os.environ, LIBRISPEECH=str(librispeech)), timeout=300)
    assert res.returncode == 0, res.stderr
    for subset, speakers in LIBRI.items():
        d = recipe / "data" / subset.replace("-", "_")
        wav, text, utt2spk = (read_map(d / n) for n in ("wav.scp", "text", "utt2spk"))
        expect = {f"{s}-{c}-{i:04d}": (s, t) for s, cs in speakers.items() for c, ts in cs.items() for i, t in enumerate(ts)}
        assert set(wav) == set(text) == set(utt2spk) == set(expect)
        for utt, (spk, transcript) in expect.items():
            assert text[utt] == transcript and utt2spk[utt] == spk
            assert wav[utt].endswith(f"{utt}.flac") and Path(wav[utt]).is_file()
        spk2utt = read_map(d / "spk2utt")
        assert set(spk2utt) == set(speakers)
        validate(d)
    # sox pipes instead of paths, resampled
    res = subprocess.run(["local/data.sh", "--librispeech_dir", str(librispeech / "LibriSpeech"), "--pipe", "true",
                          "--fs", "8000", "--train_subsets", "dev-clean", "--train_name", "piped",
                          "--dev_subsets", "dev-clean", "--test_subsets", "test-clean"],
                         cwd=recipe, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    entry = read_map(recipe / "data" / "piped" / "wav.scp")["84-121123-0000"]
    assert entry.startswith("sox ") and entry.endswith(" -r 8000 -t wav - |")
    validate(recipe / "data" / "piped")


def test_librispeech_errors_name_the_culprit(librispeech, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(librispeech, broken)
    victim = broken / "LibriSpeech" / "dev-clean" / "84" / "121123" / "84-121123-0001.flac"
    victim.unlink()
    recipe = recipe_copy("librispeech", tmp_path / "speechlm1")
    res = subprocess.run(["local/data.sh", "--librispeech_dir", str(broken)], cwd=recipe,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert "84-121123.trans.txt line 2" in res.stderr and "84-121123-0001.flac not found" in res.stderr
    res = subprocess.run(["local/data.sh", "--librispeech_dir", str(tmp_path)], cwd=recipe,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "no LibriSpeech subset dirs" in res.stderr


LJ = [("LJ001-0001", "Printing, in the only sense", "Printing, in the only sense"),
      ("LJ001-0002", "in being comparatively modern.", "in being comparatively modern."),
      ("LJ001-0003", "For although the Chinese took", "For although the Chinese took"),
      ("LJ001-0004", "produced the block books in 1450", "produced the block books in fourteen fifty"),
      ("LJ002-0001", "the first books were printed", ""),
      ("LJ002-0002", "Dr. Smith said so", "Doctor Smith said so"),
      ("LJ002-0003", "the paper was \"good\"", "the paper was \"good\"")]


@pytest.fixture(scope="module")
def ljspeech(tmp_path_factory) -> Path:
    top = tmp_path_factory.mktemp("lj")
    corpus = top / "LJSpeech-1.1"
    for utt, raw, norm in LJ:
        say(norm or raw, corpus / "wavs" / f"{utt}.wav", 22050)
    (corpus / "metadata.csv").write_text("".join(f"{u}|{r}|{n}\n" for u, r, n in LJ), encoding="utf-8")
    return top


def test_ljspeech_stage1(ljspeech, tmp_path):
    recipe = recipe_copy("ljspeech", tmp_path / "speechlm1")
    # "$@" comes after the recipe's own settings, so this --local_data_opts wins
    res = subprocess.run(["./run.sh", "--stage", "1", "--stop_stage", "1", "--local_data_opts",
                          f"--ljspeech_dir {ljspeech} --num_dev 2 --num_test 2"],
                         cwd=recipe, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    splits = {s: read_map(recipe / "data" / s / "text") for s in ("train", "dev", "test")}
    assert list(splits["test"]) == ["LJ002-0002", "LJ002-0003"]  # the last lines of metadata.csv
    assert list(splits["dev"]) == ["LJ001-0004", "LJ002-0001"]
    assert len(splits["train"]) == 3
    assert splits["dev"]["LJ001-0004"] == "produced the block books in fourteen fifty"  # normalized text
    assert splits["dev"]["LJ002-0001"] == "the first books were printed"  # raw text where no normalized one
    assert splits["test"]["LJ002-0003"] == 'the paper was "good"'
    for s in splits:
        d = recipe / "data" / s
        assert set(read_map(d / "utt2spk").values()) == {"LJ"}
        assert all(Path(p).is_file() for p in read_map(d / "wav.scp").values())
        validate(d)
    # too small for the default split: a clear error
    res = subprocess.run(["local/data.sh", "--ljspeech_dir", str(ljspeech)], cwd=recipe,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "cannot be split into 250 dev, 250 test" in res.stderr
