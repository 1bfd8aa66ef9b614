"""Spoken versions of episodes: many voices of three engines, optional noise, 16 kHz wav files.

Engines (Debian packages, installed by ``tools/install.sh``):

  espeak-ng  accents x variants (timbre), rate (words per minute) and pitch
  flite      the voices of Debian's flite (kal, kal16, awb, rms, slt) and a duration stretch
  festival   the installed festvox voices (kal_diphone, ked_diphone, cmu_us_slt_arctic_hts) and
             a duration stretch; many utterances per festival process (its start-up costs 0.4 s)

Every engine's output goes through ``sox -D`` to 16 kHz mono 16-bit wav (``-D``: no dither,
whose random noise made re-synthesis of the same plan differ; see the mini_espeak corpus).

Splits: each engine has training voices and held-out test voices; the test split may also use
engines that training never hears (by default training uses espeak-ng and festival, the test
split adds flite), so a score on it shows the cross-engine gap. A file is named by a hash of
what was synthesized, so a re-run skips existing files (resumable) and gives the same bytes.

Noise: ``white`` or ``babble`` (a sum of three to five other utterances of the same run) mixed at
a given SNR in dB over the speech's power.
"""
from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tqdm import tqdm

log = logging.getLogger(__name__)

FS = 16000
ENGINES = ("espeak-ng", "flite", "festival")

# espeak-ng: accents are English voices, variants change the timbre. The held-out test variants
# are never used in training (the same split as the mini_espeak corpus).
ESPEAK_ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd",
                  "en-029", "en-us-nyc"]
ESPEAK_TRAIN = ["m1", "m2", "m3", "m5", "m7", "m8", "f1", "f2", "f3", "f5", "adam", "Andy", "aunty",
                "benjamin", "caleb", "ed", "edward", "Gene", "iven", "john", "linda", "max", "Michael",
                "Mike", "paul", "pedro", "quincy", "rob", "robert", "travis", "victor", "norbert",
                "grandma", "grandpa"]
ESPEAK_TEST = ["m4", "m6", "f4", "david", "steph", "shelby"]
ESPEAK_PITCHES = list(range(30, 75, 5))
ESPEAK_RATES = list(range(140, 215, 10))

# flite and festival: (train voices, test voices). An engine used only by the test split uses
# both lists. flite's awb_time speaks only times, so it is left out.
FLITE_VOICES = (["kal", "slt"], ["awb", "rms", "kal16"])
FESTIVAL_VOICES = (["kal_diphone", "cmu_us_slt_arctic_hts"], ["ked_diphone"])
STRETCHES = [0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.2]  # duration stretch (> 1 = slower)

FESTIVAL_CHUNK = 40  # utterances per festival process


@dataclass(frozen=True)
class Voice:
    """One voice setting of one engine."""

    engine: str
    name: str  # espeak-ng: "accent+variant"; flite/festival: the voice name
    rate: float = 1.0  # espeak-ng: words per minute; flite/festival: duration stretch
    pitch: int = 50  # espeak-ng only

    @property
    def id(self) -> str:
        """A speaker id without whitespace: ``espeak-ng_en-us+m3_p45_s160``, ``flite_slt_d110``."""
        if self.engine == "espeak-ng":
            return f"espeak-ng_{self.name.lower()}_p{self.pitch:02d}_s{int(self.rate):03d}"
        return f"{self.engine}_{self.name}_d{int(round(self.rate * 100)):03d}"

    def to_dict(self) -> dict:
        return {"engine": self.engine, "name": self.name, "rate": self.rate, "pitch": self.pitch}


@dataclass
class SynthConfig:
    """Which engines each split uses, noise, and the output rate."""

    train_engines: list[str] = field(default_factory=lambda: ["espeak-ng", "festival"])
    test_engines: list[str] = field(default_factory=lambda: ["espeak-ng", "festival", "flite"])
    snrs: list[float] = field(default_factory=list)  # dB; empty = clean only
    noise_rate: float = 1.0  # share of user turns that get noise when snrs is given
    noise_kinds: list[str] = field(default_factory=lambda: ["white", "babble"])
    engine_weights: dict[str, float] = field(default_factory=dict)  # engine -> weight (default 1 each)
    seed: int = 0
    fs: int = FS

    def engines(self, split: str) -> list[str]:
        return self.test_engines if split == "test" else self.train_engines

    def validate(self) -> "SynthConfig":
        for which in ("train_engines", "test_engines"):
            bad = [e for e in getattr(self, which) if e not in ENGINES]
            if bad or not getattr(self, which):
                raise ValueError(f"{which}: unknown or no engines {bad}; valid: {', '.join(ENGINES)}")
        bad = [k for k in self.noise_kinds if k not in ("white", "babble")]
        if bad or not self.noise_kinds:
            raise ValueError(f"noise kinds {bad}: valid kinds are white and babble")
        bad = {e: w for e, w in self.engine_weights.items() if e not in ENGINES or w < 0}
        if bad:
            raise ValueError(f"engine weights {bad}: engines are {', '.join(ENGINES)}, weights >= 0")
        if not 0 <= self.noise_rate <= 1:
            raise ValueError(f"noise_rate must be in [0, 1], got {self.noise_rate}")
        return self


def installed_engines() -> list[str]:
    """The engines whose programs are on the PATH."""
    progs = {"espeak-ng": "espeak-ng", "flite": "flite", "festival": "festival"}
    return [e for e, p in progs.items() if shutil.which(p)]


def require_engines(engines: Iterable[str]) -> None:
    """Raise naming the Debian packages to install when an engine is missing."""
    missing = sorted(set(engines) - set(installed_engines()))
    if missing:
        raise FileNotFoundError(
            f"speech engines not installed: {', '.join(missing)}; install them with tools/install.sh "
            "(Debian: apt-get install espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k "
            "festvox-us-slt-hts sox) or leave them out of --train-engines/--test-engines")


def _festival_voice_installed(name: str) -> bool:
    roots = [Path("/usr/share/festival/voices"), Path("/usr/lib/festival/voices")]
    return any(any(r.glob(f"*/{name}")) for r in roots if r.is_dir())


def voice_names(engine: str, split: str, train_engines: Sequence[str]) -> list[str]:
    """The voices (espeak-ng: variants) ``split`` may use for ``engine``.

    Training uses the training voices; the test split uses the held-out ones, and every voice of
    an engine that training does not use at all.
    """
    table = {"espeak-ng": (ESPEAK_TRAIN, ESPEAK_TEST), "flite": FLITE_VOICES, "festival": FESTIVAL_VOICES}[engine]
    if split != "test":
        names = list(table[0])
    elif engine in train_engines:
        names = list(table[1])
    else:
        names = [*table[0], *table[1]]
    if engine == "festival":
        names = [n for n in names if _festival_voice_installed(n)]
    return names


def sample_voice(rng: random.Random, split: str, config: SynthConfig) -> Voice:
    """One voice setting for ``split``: an engine (by ``engine_weights``, uniform by default),
    then a voice, rate and pitch."""
    engines = [e for e in config.engines(split) if voice_names(e, split, config.train_engines)
               and config.engine_weights.get(e, 1.0) > 0]
    if not engines:
        raise FileNotFoundError(f"no installed voice for the {split} split among {config.engines(split)}")
    engine = rng.choices(engines, weights=[config.engine_weights.get(e, 1.0) for e in engines])[0]
    name = rng.choice(voice_names(engine, split, config.train_engines))
    if engine == "espeak-ng":
        return Voice(engine, f"{rng.choice(ESPEAK_ACCENTS)}+{name}", rng.choice(ESPEAK_RATES), rng.choice(ESPEAK_PITCHES))
    return Voice(engine, name, rng.choice(STRETCHES))


# ---------------------------------------------------------------------------------------------
# Text as the engines should read it.
_NUM = ("one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|fifteen|twenty|thirty|"
        "forty|fifty|o'clock|oh")
_AMPM = re.compile(rf"\b({_NUM}) (am|pm)\b")
QUESTION_WORDS = {"what", "what's", "how", "how's", "how'd", "do", "does", "did", "can", "could", "where",
                  "where's", "when", "when's", "is", "are", "will", "which", "who", "who's", "would", "have",
                  "any", "got", "you"}


def spoken_form(text: str) -> str:
    """Capitalised, ``am``/``pm`` after a number spelled as letters, and an end mark for the
    intonation (``?`` after a question word): ``seven am`` -> ``Seven a m.``."""
    words = " ".join(text.split())
    words = _AMPM.sub(lambda m: f"{m.group(1)} {' '.join(m.group(2))}", words)
    if not words:
        return words
    end = "?" if words.split()[0].strip(",") in QUESTION_WORDS else "."
    return words[0].upper() + words[1:] + end


def wav_name(text: str, voice: Voice, fs: int = FS) -> str:
    """Relative path ``<speaker>/<hash>.wav``: same text and voice -> same file."""
    digest = hashlib.sha1(f"{voice.engine}|{voice.name}|{voice.rate}|{voice.pitch}|{fs}|{text}".encode()).hexdigest()[:12]
    return f"{voice.id}/{digest}.wav"


def _run(cmd: list[str], what: str, **kw) -> None:
    proc = subprocess.run(cmd, capture_output=True, **kw)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip() if isinstance(proc.stderr, bytes) else str(proc.stderr)
        raise RuntimeError(f"{what}: {' '.join(cmd[:4])} ... failed (exit {proc.returncode}): {err[-300:]}")


def _to_16k(src: Path, dst: Path, fs: int) -> None:
    """Engine output -> ``dst``: mono, ``fs`` Hz, 16 bit, no dither; written to a temp name first."""
    tmp = dst.with_name(dst.stem + ".tmp.wav")
    try:
        _run(["sox", "-D", str(src), "-r", str(fs), "-b", "16", "-c", "1", str(tmp)], f"sox {src}")
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def synth_one(text: str, voice: Voice, path: Path, fs: int = FS) -> None:
    """Synthesize ``text`` with ``voice`` (espeak-ng or flite) into ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    spoken = spoken_form(text)
    with tempfile.TemporaryDirectory(prefix="agent-synth-") as td:
        raw = Path(td) / "raw.wav"
        if voice.engine == "espeak-ng":
            _run(["espeak-ng", "-v", voice.name, "-s", str(int(voice.rate)), "-p", str(voice.pitch), "-w", str(raw), spoken],
                 f"espeak-ng voice {voice.name}")
        elif voice.engine == "flite":
            _run(["flite", "-voice", voice.name, "--setf", f"duration_stretch={voice.rate}", "-t", spoken, "-o", str(raw)],
                 f"flite voice {voice.name}")
        elif voice.engine == "festival":
            synth_festival([(text, path)], voice, fs)
            return
        else:
            raise ValueError(f"unknown engine {voice.engine!r}; valid: {', '.join(ENGINES)}")
        _to_16k(raw, path, fs)


def _scheme_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def synth_festival(items: list[tuple[str, Path]], voice: Voice, fs: int = FS) -> None:
    """Synthesize many ``(text, path)`` with one festival process (its start-up dominates)."""
    with tempfile.TemporaryDirectory(prefix="agent-festival-") as td:
        lines = [f"(voice_{voice.name})", f"(Parameter.set 'Duration_Stretch {voice.rate})"]
        raws = []
        for i, (text, _) in enumerate(items):
            raw = Path(td) / f"{i}.wav"
            raws.append(raw)
            lines.append(f"(utt.save.wave (utt.synth (Utterance Text {_scheme_string(spoken_form(text))})) "
                         f"{_scheme_string(str(raw))} 'riff)")
        script = Path(td) / "run.scm"
        script.write_text("\n".join(lines) + "\n", encoding="utf-8")
        _run(["festival", "--batch", str(script)], f"festival voice {voice.name}")
        for raw, (text, path) in zip(raws, items):
            if not raw.is_file():
                raise RuntimeError(f"festival voice {voice.name} wrote nothing for {text!r}")
            path.parent.mkdir(parents=True, exist_ok=True)
            _to_16k(raw, path, fs)


# ---------------------------------------------------------------------------------------------
# Noise.
def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    import soundfile as sf

    wav, sr = sf.read(str(path), dtype="float32", always_2d=False)
    return (wav.mean(axis=1) if wav.ndim == 2 else wav), int(sr)


def write_wav(path: Path, wav: np.ndarray, fs: int) -> None:
    """16-bit PCM, clipped; temp name then rename."""
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.wav")
    pcm = np.clip(np.round(wav * 32767.0), -32768, 32767).astype(np.int16)
    sf.write(str(tmp), pcm, fs, subtype="PCM_16")
    os.replace(tmp, path)


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``speech + g * noise`` with ``g`` so that power(speech) / power(g * noise) = ``snr_db``
    (noise tiled or cut to the speech's length); the sum is scaled down if it would clip."""
    if noise.size == 0:
        raise ValueError("empty noise")
    reps = int(np.ceil(speech.size / noise.size))
    noise = np.tile(noise, reps)[: speech.size]
    p_s = float(np.mean(speech.astype(np.float64) ** 2))
    p_n = float(np.mean(noise.astype(np.float64) ** 2))
    if p_s == 0 or p_n == 0:
        return speech.copy()
    gain = np.sqrt(p_s / (p_n * 10 ** (snr_db / 10)))
    out = speech + gain * noise
    peak = float(np.max(np.abs(out)))
    return out / peak * 0.99 if peak > 0.99 else out


def make_noise(kind: str, n: int, rng: np.random.Generator, babble_sources: Sequence[Path]) -> np.ndarray:
    """``white``: Gaussian samples; ``babble``: the sum of 3-5 other utterances, each started at
    a random offset and looped to ``n`` samples."""
    if kind == "white":
        return rng.standard_normal(n).astype(np.float32)
    if kind == "babble":
        if len(babble_sources) < 3:
            raise ValueError("babble noise needs at least three other utterances in the run")
        k = int(rng.integers(3, 6))
        picks = rng.choice(len(babble_sources), size=min(k, len(babble_sources)), replace=False)
        out = np.zeros(n, dtype=np.float64)
        for i in picks:
            src, _ = read_wav(babble_sources[int(i)])
            src = np.roll(np.tile(src, int(np.ceil(n / src.size)) + 1), -int(rng.integers(0, src.size)))[:n]
            out += src / (np.sqrt(np.mean(src.astype(np.float64) ** 2)) + 1e-9)
        return out.astype(np.float32)
    raise ValueError(f"unknown noise kind {kind!r}; valid: white, babble")


def noisy_name(clean_rel: str, kind: str, snr: float) -> str:
    """``spk/hash.wav`` -> ``spk/hash_babble_snr10.wav``."""
    stem = clean_rel[:-4]
    return f"{stem}_{kind}_snr{snr:g}.wav"


def add_noise(clean: Path, out: Path, kind: str, snr: float, seed: int, babble_sources: Sequence[Path]) -> None:
    """Write ``clean`` + noise of ``kind`` at ``snr`` dB to ``out`` (deterministic under ``seed``)."""
    speech, fs = read_wav(clean)
    rng = np.random.default_rng(seed)
    others = [p for p in babble_sources if p != clean]
    noise = make_noise(kind, speech.size, rng, others)
    write_wav(out, mix_at_snr(speech, noise, snr), fs)


# ---------------------------------------------------------------------------------------------
# Running many jobs.
@dataclass
class Job:
    """One file to make: ``text`` spoken by ``voice`` into ``wav_dir/rel``; optional noise."""

    text: str
    voice: Voice
    rel: str
    noise: str | None = None  # kind
    snr: float | None = None
    noisy_rel: str | None = None
    seed: int = 0


def _seed_of(*parts) -> int:
    return int(hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:8], 16)


def run_jobs(jobs: list[Job], wav_dir: str | os.PathLike, nj: int = 1, fs: int = FS) -> dict:
    """Make every job's clean file (then its noisy one), ``nj`` at a time; files that exist are
    kept. Returns counts ``{"made": n, "kept": n, "noisy": n}``; raises listing failures."""
    wav_dir = Path(wav_dir)
    todo: dict[str, Job] = {}
    kept = 0
    for j in jobs:
        if j.rel in todo:
            continue
        if (wav_dir / j.rel).is_file():
            kept += 1
            continue
        todo[j.rel] = j
    # espeak-ng/flite: one process per file; festival: chunks of files per voice setting.
    units: list[tuple[Voice, list[Job]]] = []
    fest: dict[Voice, list[Job]] = {}
    for j in todo.values():
        if j.voice.engine == "festival":
            fest.setdefault(j.voice, []).append(j)
        else:
            units.append((j.voice, [j]))
    for v, js in fest.items():
        units += [(v, js[i:i + FESTIVAL_CHUNK]) for i in range(0, len(js), FESTIVAL_CHUNK)]
    failed: list[str] = []

    def work(unit: tuple[Voice, list[Job]]) -> int:
        voice, js = unit
        try:
            if voice.engine == "festival":
                synth_festival([(j.text, wav_dir / j.rel) for j in js], voice, fs)
            else:
                synth_one(js[0].text, voice, wav_dir / js[0].rel, fs)
        except (RuntimeError, OSError) as e:
            failed.append(f"{js[0].rel} ({e})")
        return len(js)

    made = 0
    with ThreadPoolExecutor(max(1, nj)) as pool, tqdm(total=len(todo), desc="synthesizing", unit="utt",
                                                          disable=len(todo) < 50) as bar:
        for n in pool.map(work, units):
            made += n
            bar.update(n)
    if failed:
        raise RuntimeError(f"synthesis failed for {len(failed)} file(s), e.g. " + "; ".join(failed[:5]))
    noisy_jobs = [j for j in jobs if j.noise and not (wav_dir / j.noisy_rel).is_file()]
    if noisy_jobs:
        sources = sorted({wav_dir / j.rel for j in jobs})

        def noisy(j: Job) -> None:
            add_noise(wav_dir / j.rel, wav_dir / j.noisy_rel, j.noise, j.snr, j.seed, sources)

        with ThreadPoolExecutor(max(1, nj)) as pool:
            list(pool.map(noisy, noisy_jobs))
    log.info("synthesized %d files, kept %d existing, %d noisy", made, kept, len(noisy_jobs))
    return {"made": made, "kept": kept, "noisy": len(noisy_jobs)}


def plan_turn_jobs(texts: Sequence[str], voice: Voice, config: SynthConfig, key: str) -> list[Job]:
    """Jobs for the user turns of one episode: one voice, and one noise kind and SNR (or none)
    for all its turns, drawn from ``key`` (the episode id) and the run's seed."""
    rng = random.Random(_seed_of(config.seed, key, "noise"))
    noise = snr = None
    if config.snrs and rng.random() < config.noise_rate:
        noise, snr = rng.choice(config.noise_kinds), float(rng.choice(config.snrs))
    jobs = []
    for i, text in enumerate(texts):
        rel = wav_name(text, voice, config.fs)
        job = Job(text, voice, rel)
        if noise:
            job.noise, job.snr, job.noisy_rel = noise, snr, noisy_name(rel, noise, snr)
            job.seed = _seed_of(config.seed, key, i)
        jobs.append(job)
    return jobs


# ---------------------------------------------------------------------------------------------
# Episodes.
def episode_voice(episode_id: str, split: str, config: SynthConfig) -> Voice:
    """The voice of one episode: drawn from its split's pool, seeded by the run's seed and the
    episode id (so adding episodes does not change the voices of the others)."""
    return sample_voice(random.Random(_seed_of(config.seed, episode_id, "voice")), split, config)


def synthesize_episodes(episodes: list, wav_dir: str | os.PathLike, config: SynthConfig | None = None,
                        nj: int = 1, overwrite_audio: bool = False) -> dict:
    """Speak every user turn of every episode (one voice per episode) into ``wav_dir`` and set
    the turns' ``audio`` (absolute paths) and ``meta`` (voice, engine, noise, snr). Turns that
    already have audio (a real recording, an imported SLURP wav) are kept unless
    ``overwrite_audio``. Returns the counts of :func:`run_jobs` plus ``episodes``."""
    config = (config or SynthConfig()).validate()
    used = set(config.train_engines) | set(config.test_engines)
    require_engines(used & {e for ep in episodes for e in config.engines(ep.split)})
    wav_dir = Path(wav_dir).resolve()
    jobs: list[Job] = []
    placed: list[tuple[object, int, Job]] = []
    for ep in episodes:
        if not overwrite_audio and all(t.get("audio") for t in ep.turns) and "voice" not in ep.meta:
            continue  # real recordings stay
        voice = episode_voice(ep.id, ep.split, config)
        # the generator keeps a punctuated form of each turn for the synthesizers' pauses
        spoken = ep.meta.get("spoken")
        texts = spoken if isinstance(spoken, list) and len(spoken) == len(ep.turns) else [t["text"] for t in ep.turns]
        ep_jobs = plan_turn_jobs(texts, voice, config, ep.id)
        jobs += ep_jobs
        placed += [(ep, i, j) for i, j in enumerate(ep_jobs)]
    counts = run_jobs(jobs, wav_dir, nj, config.fs)
    for ep, i, j in placed:
        ep.turns[i]["audio"] = str(wav_dir / (j.noisy_rel or j.rel))
        ep.meta.update({"voice": j.voice.id, "engine": j.voice.engine, "noise": j.noise, "snr": j.snr})
    return {**counts, "episodes": len({id(p[0]) for p in placed})}
