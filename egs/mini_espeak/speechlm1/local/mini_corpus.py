#!/usr/bin/env python3
"""The mini_espeak corpus: English sentences from a small grammar, spoken by espeak-ng voices.

Three steps, run by local/data.sh (standard library only, deterministic under --seed):

  plan   sentences + voice settings -> plan.tsv (one line per utterance)
  synth  plan shard -> 16-bit wav files (espeak-ng | sox); existing files are kept, so it resumes
  write  plan.tsv + wavs -> Kaldi data dirs data/{train,dev,test}

Splits: every sentence is used once. dev has new sentences spoken by training voices; test has
new sentences spoken by held-out voices (espeak-ng variants never used in train or dev).
A speaker (voice setting) is accent + variant + pitch + rate, e.g. ``en-gb-x-rp_m3_p45_s160``.

``plan --voices en-us`` (comma list of ``VOICE[:RATE[:PITCH]]``) replaces the random voice settings
by the given ones in every split, e.g. one voice (``en-us_default_p50_s160``) for the diagnosis
of a model without speaker variation; test then has no held-out voices. Each split has the sentences
of the same seed without ``--voices``; loudness still varies per utterance.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import random
import subprocess
import sys
import wave
from pathlib import Path

from speechlm.data.kaldi import Utt, write_data_dir, write_file

# ---------------------------------------------------------------------------------------------
# Voices. Accents are espeak-ng English voices; variants change the timbre (m = male, f = female,
# names are espeak-ng's own variant files). Test voices use only the held-out variants.
ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd",
           "en-029", "en-us-nyc"]
TRAIN_VARIANTS = ["m1", "m2", "m3", "m5", "m7", "m8", "f1", "f2", "f3", "f5", "adam", "Andy",
                  "aunty", "benjamin", "caleb", "ed", "edward", "Gene", "iven", "john", "linda",
                  "max", "Michael", "Mike", "paul", "pedro", "quincy", "rob", "robert", "travis",
                  "victor", "norbert", "grandma", "grandpa"]
TEST_VARIANTS = ["m4", "m6", "f4", "david", "steph", "shelby"]
PITCHES = list(range(30, 75, 5))  # espeak-ng -p (0-99, default 50)
RATES = list(range(130, 220, 10))  # espeak-ng -s, words per minute (default 175)
AMPLITUDES = list(range(70, 130, 10))  # espeak-ng -a, per utterance (default 100)

# ---------------------------------------------------------------------------------------------
# Grammar: templates with {slots}; a slot is a word list below or a number generator.
W = {
    "name": "anna ben carla david emma frank grace henry isabel jack karen leo maria nick olivia "
            "peter rachel sam tina victor wendy james lucy oscar sophie tom alice george".split(),
    "city": ["boston", "london", "paris", "berlin", "madrid", "chicago", "denver", "seattle",
             "dublin", "toronto", "sydney", "tokyo", "miami", "houston", "oslo", "vienna",
             "lisbon", "rome", "atlanta", "phoenix", "glasgow", "cardiff", "austin", "portland"],
    "room": ["kitchen", "bedroom", "living room", "bathroom", "office", "garage", "hallway",
             "basement", "dining room", "guest room"],
    "device": ["lights", "fan", "heater", "radio", "television", "lamp", "air conditioner",
               "coffee machine", "speaker", "dishwasher", "oven"],
    "onoff": ["on", "off"],
    "openable": ["window", "door", "blinds", "curtains", "garage door", "front gate"],
    "genre": ["jazz", "classical", "rock", "country", "pop", "blues", "folk", "piano", "relaxing"],
    "chore": ["buy milk", "call the bank", "water the plants", "feed the cat", "pay the rent",
              "take out the trash", "book a table", "check the mail", "charge my phone",
              "pick up the kids", "walk the dog", "clean the car", "send the report"],
    "when": ["today", "tomorrow", "tonight", "this morning", "this evening", "on monday",
             "on tuesday", "on wednesday", "on thursday", "on friday", "on saturday",
             "on sunday", "next week", "this afternoon", "later today", "this weekend"],
    "grocery": ["apples", "eggs", "bananas", "tomatoes", "potatoes", "onions", "lemons",
                "carrots", "oranges", "bottles of water", "loaves of bread", "cans of soup"],
    "wadj": ["sunny", "cloudy", "windy", "cold", "warm", "rainy", "foggy", "hot", "dry", "humid",
             "clear", "stormy", "chilly", "mild"],
    "precip": ["rain", "snow", "showers", "thunderstorms", "light rain", "heavy rain", "sleet",
               "drizzle", "hail"],
    "place": ["library", "station", "airport", "bakery", "pharmacy", "post office", "museum",
              "hospital", "market", "park", "school", "cinema", "bank", "gym", "restaurant"],
    "object": ["book", "letter", "car", "bicycle", "laptop", "umbrella", "package", "garden",
               "kitchen", "report", "ticket", "suitcase", "table", "fence", "window"],
    "verb": ["clean", "paint", "fix", "sell", "check", "move", "open", "wash", "finish", "pack"],
    "verb_past": ["cleaned", "painted", "fixed", "sold", "checked", "moved", "opened", "washed",
                  "finished", "packed", "found", "lost", "borrowed", "carried"],
    "placephrase": ["in the garden", "at the office", "near the station", "on the table",
                    "under the bed", "in the car", "at home", "behind the door", "by the window",
                    "next to the sofa"],
    "thing": ["keys", "wallet", "glasses", "phone", "jacket", "bag", "hat", "gloves", "notebook",
              "charger"],
    "relative": ["sister", "brother", "mother", "father", "aunt", "uncle", "cousin",
                 "grandmother", "grandfather", "friend"],
    "dwelling": ["house", "flat", "cottage", "village", "town", "farm"],
    "animal": ["cat", "dog", "rabbit", "puppy", "kitten", "old dog", "parrot"],
    "food": ["soup", "bread", "coffee", "tea", "pasta", "salad", "cake", "fish", "rice", "pizza"],
    "taste": ["great", "sweet", "salty", "bitter", "strange", "fresh", "delicious", "spicy"],
    "activity": ["cooking dinner", "playing tennis", "watching a film", "going shopping",
                 "visiting friends", "working late", "reading books", "painting the fence",
                 "studying together", "running in the park"],
    "book": ["manual", "report", "textbook", "novel", "magazine", "contract"],
    "time_phrase": ["the guests arrive", "it gets dark", "the weekend", "dinner", "noon",
                    "the end of the month", "the rain starts", "we leave"],
    "day_ref": ["tomorrow", "on monday", "on friday", "every day", "on weekdays", "on sunday"],
}

TEMPLATES = [
    # commands
    "turn {onoff} the {room} {device}",
    "please turn {onoff} the {device} in the {room}",
    "set the {device} to {n_small} percent",
    "set the thermostat to {temp} degrees",
    "set an alarm for {time}",
    "wake me up at {time} {day_ref}",
    "remind me to {chore} {when}",
    "play some {genre} music in the {room}",
    "call {name} {when}",
    "send a message to {name} saying i will be late",
    "add {qty} {grocery} to my shopping list",
    "open the {openable} in the {room}",
    "close the {openable} please",
    "start a timer for {n_small} minutes",
    "dim the lights in the {room} to {n_small} percent",
    "navigate to the nearest {place}",
    "what is the weather like in {city} {when}",
    "how long does it take to drive to {city}",
    "book a table for {qty} people at {time}",
    # weather
    "it will be {wadj} and {wadj} in {city} {when}",
    "the temperature in {city} is {temp} degrees",
    "expect {precip} {when} with winds of {n_small} miles per hour",
    "there is a {n_small} percent chance of {precip} {when}",
    "{when} will be {wadj} with a high of {temp} degrees",
    "{city} had {precip} all day",
    # numbers
    "the meeting starts at {time} in room {n_big}",
    "my phone number ends in {digit} {digit} {digit} {digit}",
    "{name} bought {qty} {grocery} for {n_small} dollars",
    "the train to {city} leaves from platform {n_tiny} at {time}",
    "flight {digit} {digit} {digit} to {city} is delayed by {n_small} minutes",
    "the total comes to {n_big} dollars and {n_small} cents",
    "please read page {n_big} of the {book}",
    "the bus number {n_small} stops near the {place}",
    "we need {qty} {grocery} and {qty} {grocery}",
    # everyday statements and questions
    "{name} {verb_past} the {object} {placephrase}",
    "we should {verb} the {object} before {time_phrase}",
    "my {relative} lives in a small {dwelling} near {city}",
    "the {animal} is sleeping {placephrase}",
    "{name} is going to the {place} {when}",
    "i left my {thing} {placephrase}",
    "do you know where the {place} is",
    "the {food} tastes {taste} today",
    "can you help me find my {thing}",
    "{name} and {name} are {activity} {when}",
    "where did you put the {thing}",
    "my {relative} {verb_past} the {object} {when}",
    "is the {place} open {when}",
    "{name} works at the {place} in {city}",
]

ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen " \
       "fifteen sixteen seventeen eighteen nineteen".split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    """0 <= n < 10000 in words: 342 -> 'three hundred forty two'."""
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else " " + ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + number_words(rest))
    rest = n % 1000
    return number_words(n // 1000) + " thousand" + ("" if rest == 0 else " " + number_words(rest))


def time_words(rng: random.Random) -> str:
    hour = ONES[rng.randint(1, 12)]
    return rng.choice([f"{hour} o'clock", f"half past {hour}", f"quarter past {hour}",
                       f"quarter to {hour}", f"{hour} {number_words(rng.choice(range(10, 60, 5)))}",
                       f"{hour} in the morning", f"{hour} in the evening"])


def fill(slot: str, rng: random.Random) -> str:
    if slot == "n_tiny":
        return number_words(rng.randint(1, 12))
    if slot == "n_small":
        return number_words(rng.randint(2, 99))
    if slot == "n_big":
        return number_words(rng.randint(100, 2500))
    if slot == "temp":
        return number_words(rng.randint(0, 40)) if rng.random() < 0.5 else number_words(rng.randint(40, 99))
    if slot == "qty":
        return number_words(rng.randint(2, 12))
    if slot == "digit":
        return ONES[rng.randint(0, 9)]
    if slot == "time":
        return time_words(rng)
    return rng.choice(W[slot])


def sentence(rng: random.Random) -> str:
    parts = rng.choice(TEMPLATES).split("{")
    out = [parts[0]]
    for part in parts[1:]:
        slot, rest = part.split("}", 1)
        out.append(fill(slot, rng) + rest)
    return " ".join("".join(out).split())


def make_sentences(n: int, rng: random.Random, min_words: int = 3, max_words: int = 12) -> list[str]:
    """n distinct sentences of min_words..max_words words, in generation order."""
    seen: dict[str, None] = {}
    attempts = 0
    while len(seen) < n:
        attempts += 1
        if attempts > 100 * n + 10000:
            raise ValueError(f"the grammar gave only {len(seen)} distinct sentences; ask for fewer "
                             f"utterances (--num_utts) or add templates to {__file__}")
        s = sentence(rng)
        if min_words <= len(s.split()) <= max_words:
            seen.setdefault(s)
    return list(seen)


QUESTION_WORDS = ("what", "how", "do", "can", "where", "is", "did")


def spoken_form(text: str) -> str:
    """What espeak-ng reads: capitalized, with a full stop or question mark for the intonation."""
    end = "?" if text.split()[0] in QUESTION_WORDS else "."
    return text[0].upper() + text[1:] + end


def speaker_id(accent: str, variant: str, pitch: int, rate: int) -> str:
    """``accent_variant_pPP_sRRR``; a voice without a variant (``--voices en-us``) is ``default``."""
    return f"{accent}_{variant.lower() or 'default'}_p{pitch:02d}_s{rate:03d}"


def espeak_voice(accent: str, variant: str) -> str:
    """The espeak-ng ``-v`` argument: ``accent+variant``, or the accent alone (its own voice)."""
    return f"{accent}+{variant}" if variant else accent


DEFAULT_RATE, DEFAULT_PITCH = 160, 50  # of a --voices entry without them (espeak-ng's pitch default)
VOICE_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def parse_voices(spec: str) -> list[tuple]:
    """``--voices``: comma list of ``VOICE[:RATE[:PITCH]]`` -> voice settings (accent, variant,
    pitch, rate); VOICE is an espeak-ng voice, optionally with a variant (``en-gb+f3``)."""
    out: dict[tuple, None] = {}
    for item in spec.split(","):
        parts = item.strip().split(":")
        if not parts[0] or len(parts) > 3:
            raise ValueError(f"--voices: bad entry {item!r}; expected VOICE[:RATE[:PITCH]], e.g. en-us or en-us:160:50")
        accent, _, variant = parts[0].partition("+")
        if not accent or not set(accent) <= VOICE_CHARS or not set(variant) <= VOICE_CHARS or (_ and not variant):
            raise ValueError(f"--voices: bad voice name {parts[0]!r} (an espeak-ng voice, optionally +variant)")
        try:
            rate = int(parts[1]) if len(parts) > 1 and parts[1] else DEFAULT_RATE
            pitch = int(parts[2]) if len(parts) > 2 and parts[2] else DEFAULT_PITCH
        except ValueError:
            raise ValueError(f"--voices: rate and pitch of {item!r} must be integers") from None
        if not 80 <= rate <= 450 or not 0 <= pitch <= 99:
            raise ValueError(f"--voices: {item!r}: rate must be in 80..450 (words/min), pitch in 0..99")
        out.setdefault((accent, variant, pitch, rate))
    return list(out)


def sample_speakers(n: int, variants: list[str], rng: random.Random) -> list[tuple]:
    """n distinct voice settings (accent, variant, pitch, rate)."""
    combos = len(ACCENTS) * len(variants) * len(PITCHES) * len(RATES)
    if n > combos:
        raise ValueError(f"{n} speakers asked for, only {combos} voice settings exist")
    chosen: dict[tuple, None] = {}
    while len(chosen) < n:
        chosen.setdefault((rng.choice(ACCENTS), rng.choice(variants), rng.choice(PITCHES), rng.choice(RATES)))
    return list(chosen)


def split_sizes(args) -> tuple[int, int, int]:
    auto = max(2, round(0.04 * args.num_utts))
    n_dev = args.num_dev or auto
    n_test = args.num_test or auto
    n_train = args.num_utts - n_dev - n_test
    if n_train < 2:
        raise ValueError(f"--num_utts {args.num_utts} leaves {n_train} training utterances after "
                         f"{n_dev} dev and {n_test} test ones; ask for more utterances")
    return n_train, n_dev, n_test


def cmd_plan(args) -> None:
    rng = random.Random(args.seed)
    n_train, n_dev, n_test = split_sizes(args)
    sentences = make_sentences(args.num_utts, rng)
    rng.shuffle(sentences)
    split_text = {"test": sentences[:n_test], "dev": sentences[n_test:n_test + n_dev],
                  "train": sentences[n_test + n_dev:]}
    if args.voices:  # the given voices in every split (no held-out test voices)
        train_spk = test_spk = parse_voices(args.voices)
    else:
        train_spk = sample_speakers(max(2, round(n_train / args.utts_per_spk)), TRAIN_VARIANTS, rng)
        test_spk = sample_speakers(max(1, n_test // 5), TEST_VARIANTS, rng)
    rows = []
    for split in ("train", "dev", "test"):
        speakers = test_spk if split == "test" else train_spk
        order = list(range(len(speakers)))
        rng.shuffle(order)  # dev's few utterances go to random training voices
        # dev voices speak in pairs, so each dev utterance has another one of its voice as TTS prompt
        per_voice = 2 if split == "dev" else 1
        for i, text in enumerate(split_text[split]):
            accent, variant, pitch, rate = speakers[order[(i // per_voice) % len(order)]]
            spk = speaker_id(accent, variant, pitch, rate)
            amp = rng.choice(AMPLITUDES)
            voice = espeak_voice(accent, variant)
            spoken = spoken_form(text)
            digest = hashlib.sha1(f"{voice}|{rate}|{pitch}|{amp}|{spoken}".encode()).hexdigest()[:10]
            utt = f"{spk}-{split}{i:05d}"
            rows.append([split, utt, spk, voice, str(rate), str(pitch), str(amp), f"{spk}/{digest}.wav", spoken, text])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, out)
    voices = (f"{len(train_spk)} voice(s) from --voices in every split (no held-out test voices)" if args.voices
              else f"{len(train_spk)} training voices, {len(test_spk)} test voices")
    print(f"plan {out}: {n_train} train, {n_dev} dev, {n_test} test utterances; {voices}", file=sys.stderr)


def read_plan(path: str) -> list[list[str]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            row = line.rstrip("\n").split("\t")
            if len(row) != 10:
                raise ValueError(f"{path} line {lineno}: expected 10 tab-separated fields, got {len(row)}")
            rows.append(row)
    return rows


def espeak_alignment(spoken: str, voice: str, rate: str, pitch: str, amp: str, cli_wav: bytes):
    """The phones of an utterance with their times, from libespeak-ng's phoneme events, checked
    against the command line's audio (the library must speak the same samples: the times are its)."""
    import numpy as np

    from speechlm.data.espeak_align import synthesize

    samples, _, phones = synthesize(spoken, voice, int(rate), int(pitch), int(amp))
    cli = np.frombuffer(cli_wav[44:44 + 2 * len(samples)], dtype="<i2")  # espeak-ng --stdout: 44-byte header
    if len(cli) < len(samples) or not np.array_equal(cli, samples):
        raise ValueError(f"libespeak-ng does not reproduce espeak-ng -v {voice}'s audio, so its phone "
                         f"times would not fit this wav")
    return phones


def cmd_synth(args) -> None:
    wav_dir = Path(args.wav_dir)
    done = made = 0
    failed = []
    for split, utt, spk, voice, rate, pitch, amp, rel, spoken, _ in read_plan(args.plan):
        path = wav_dir / rel
        phn = path.with_suffix(".phn")
        if path.exists() and (phn.exists() or not args.align):
            done += 1
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.wav")
        espeak = subprocess.run(["espeak-ng", "-v", voice, "-s", rate, "-p", pitch, "-a", amp, "--stdout", spoken],
                                capture_output=True)
        # -D: no dither. sox dithers with a random seed by default, so the same plan gave different
        # files (+-2 LSB), different Codec 2 tokens in the silences (21% of frames) and runs that
        # trained differently (mini recipe ASR CER 19% vs 41% from one corpus to its re-synthesis)
        sox = None
        if espeak.returncode == 0:
            sox = subprocess.run(["sox", "-D", "-t", "wav", "-", "-r", str(args.fs), "-b", "16", "-c", "1", str(tmp)],
                                 input=espeak.stdout, stderr=subprocess.PIPE)
        if sox is None or sox.returncode != 0 or not tmp.exists():
            reason = espeak.stderr.decode(errors="replace").strip() or (sox.stderr.decode().strip() if sox else "")
            failed.append(f"{utt} (espeak-ng -v {voice}: {reason})")
            tmp.unlink(missing_ok=True)
            continue
        if args.align:
            from speechlm.data.espeak_align import write_phn

            try:
                write_phn(phn, espeak_alignment(spoken, voice, rate, pitch, amp, espeak.stdout))
            except ValueError as e:
                failed.append(f"{utt} ({e})")
                tmp.unlink(missing_ok=True)
                continue
        os.replace(tmp, path)
        made += 1
    print(f"{args.plan}: synthesized {made}, kept {done} existing, {len(failed)} failed", file=sys.stderr)
    if failed:
        raise SystemExit("synthesis failed for: " + "; ".join(failed[:10]))


def cmd_write(args) -> None:
    wav_dir = Path(args.wav_dir).resolve()
    splits: dict[str, list[Utt]] = {"train": [], "dev": [], "test": []}
    missing = []
    seconds = 0.0
    for split, utt, spk, *_, rel, _spoken, text in read_plan(args.plan):
        path = wav_dir / rel
        try:
            with wave.open(str(path)) as w:
                n, sr = w.getnframes(), w.getframerate()
        except (OSError, EOFError, wave.Error):
            missing.append(utt)
            continue
        seconds += n / sr
        splits[split].append(Utt(utt, str(path), text, spk, num_samples=n))
    if missing:
        raise SystemExit(f"{len(missing)} wav files missing or unreadable under {wav_dir} "
                         f"(e.g. {', '.join(missing[:5])}); re-run local/data.sh to synthesize them")
    for split, utts in splits.items():
        out = write_data_dir(Path(args.out) / f"{split}{args.suffix}", utts)
        write_phones(out, utts)
    print(f"mini_espeak: {sum(map(len, splits.values()))} utterances, {seconds / 3600:.2f} hours", file=sys.stderr)


def write_phones(out: Path, utts: list) -> None:
    """``phones``: each utterance's phones as its voice spoke them (from the ``.phn`` alignments
    beside the wavs; the ``phone_list`` tokenizer reads them), when every wav has one; else none."""
    from speechlm.data.espeak_align import phn_path, read_phn

    phns = {u.utt: phn_path(u.wav) for u in utts}
    if not all(p.is_file() for p in phns.values()):
        (out / "phones").unlink(missing_ok=True)  # a stale one would not match the wavs
        return
    write_file(out / "phones", {utt: " ".join(ph for _, _, ph in read_phn(p)) or "<sil>" for utt, p in phns.items()})


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("plan", help="choose sentences and voices")
    pp.add_argument("--num-utts", type=int, default=3000)
    pp.add_argument("--num-dev", type=int, default=0, help="0: 4%% of --num-utts, at least 2")
    pp.add_argument("--num-test", type=int, default=0, help="0: 4%% of --num-utts, at least 2")
    pp.add_argument("--utts-per-spk", type=int, default=20)
    pp.add_argument("--seed", type=int, default=1)
    pp.add_argument("--voices", default="",
                    help="comma list of VOICE[:RATE[:PITCH]] (espeak-ng voice, words/min default 160, pitch "
                         "default 50) spoken in every split instead of the random voice settings, e.g. en-us")
    pp.add_argument("--out", required=True)
    ps = sub.add_parser("synth", help="synthesize the wav files of a plan (shard)")
    ps.add_argument("--plan", required=True)
    ps.add_argument("--wav-dir", required=True)
    ps.add_argument("--fs", type=int, default=16000)
    ps.add_argument("--align", action="store_true",
                    help="also write each wav's phone alignment (<name>.phn, from libespeak-ng's phoneme events)")
    pw = sub.add_parser("write", help="write Kaldi data dirs")
    pw.add_argument("--plan", required=True)
    pw.add_argument("--wav-dir", required=True)
    pw.add_argument("--out", required=True)
    pw.add_argument("--suffix", default="", help="data dirs <split><suffix> (e.g. train_tts)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # write_data_dir's summary
    try:
        {"plan": cmd_plan, "synth": cmd_synth, "write": cmd_write}[args.cmd](args)
    except ValueError as e:
        raise SystemExit(f"mini_corpus.py {args.cmd}: {e}")


if __name__ == "__main__":
    main()
