"""Phone alignments from libespeak-ng's phoneme events, and the Codec 2 tokenizer led by a phone stream."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from speechlm.cli import main as cli
from speechlm.data.token_archive import TokenReader

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")

TEXT = "My phone number ends in three three six nine."


def _aligned_wav(path, text=TEXT, voice="en-us", rate=160):
    from speechlm.data.espeak_align import phn_path, synthesize, write_phn

    samples, sr, phones = synthesize(text, voice, rate, 50, 100)
    sf.write(path, samples, sr, subtype="PCM_16")
    write_phn(phn_path(path), phones)
    return samples, sr, phones


def test_library_speaks_what_the_command_line_does_with_phone_times():
    from speechlm.data.espeak_align import synthesize

    first, sr, phones = synthesize(TEXT, "en-us", 160, 50, 90)
    again, _, phones_again = synthesize(TEXT, "en-us", 160, 50, 90)
    assert np.array_equal(first, again) and phones == phones_again  # no state carried between calls
    cli_wav = subprocess.run(["espeak-ng", "-v", "en-us", "-s", "160", "-p", "50", "-a", "90", "--stdout", TEXT],
                             capture_output=True, check=True).stdout
    cli_samples = np.frombuffer(cli_wav[44:], dtype="<i2")
    assert np.array_equal(cli_samples[: len(first)], first)  # the times fit the command line's audio
    names = [p for _, _, p in phones]
    assert names[:4] == ["m", "aɪ", "f", "oʊ"] and names.count("θ") == 2 and names[-1] == "n"
    starts = [a for a, _, _ in phones]
    assert starts == sorted(starts) and all(b > a for a, b, _ in phones)
    assert phones[-1][1] <= len(first) / sr + 1e-6
    variant, _, _ = synthesize(TEXT, "en-gb+f3", 190, 35, 80)  # a +variant, set as the command line sets it
    cli_wav = subprocess.run(["espeak-ng", "-v", "en-gb+f3", "-s", "190", "-p", "35", "-a", "80", "--stdout", TEXT],
                             capture_output=True, check=True).stdout
    assert np.array_equal(np.frombuffer(cli_wav[44:], dtype="<i2")[: len(variant)], variant)


def test_phn_files_round_trip_and_name_a_bad_line(tmp_path):
    from speechlm.data.espeak_align import read_phn, write_phn

    phones = [(0.0, 0.07, "m"), (0.07, 0.16, "aɪ")]
    write_phn(tmp_path / "a.phn", phones)
    assert read_phn(tmp_path / "a.phn") == phones
    (tmp_path / "b.phn").write_text("0.0 0.1 m\n0.1 oops\n")
    with pytest.raises(ValueError, match=r"b\.phn line 2"):
        read_phn(tmp_path / "b.phn")


def test_codec2_phones_leads_each_frame_with_its_phone(tmp_path):
    from speechlm.tokenizers import build_tokenizer

    samples, sr, phones = _aligned_wav(tmp_path / "a.wav")
    tok = build_tokenizer({"type": "codec2_phones"})
    plain = build_tokenizer({"type": "codec2"})
    wav = samples.astype(np.float32) / 32768
    codes = tok.encode_file(wav, sr, tmp_path / "a.wav")
    assert codes.shape[1] == plain.n_streams + 1 and tok.codebook_sizes[1:] == plain.codebook_sizes
    assert np.array_equal(codes[:, 1:], plain.encode(wav, sr))
    ids = codes[:, 0]
    for start, end, phone in phones:  # the frame whose centre lies inside a phone carries it
        frame = int((start + end) / 2 * tok.frame_rate)
        if (frame + 0.5) / tok.frame_rate < end and (frame + 0.5) / tok.frame_rate >= start:
            assert tok.phones[ids[frame]] == phone
    runs = [tok.phones[i] for k, i in enumerate(ids) if k == 0 or i != ids[k - 1]]
    long_phones = [p for a, b, p in phones if b - a >= 2 / tok.frame_rate]
    assert [p for p in runs if p in long_phones][:5] == long_phones[:5]
    assert len(tok.decode(codes)) == len(plain.decode(codes[:, 1:]))  # decoding drops the phone stream
    with pytest.raises(ValueError, match="bare waveform"):
        tok.encode(wav, sr)
    with pytest.raises(ValueError, match="wav file with its alignment"):  # a pipe has nothing beside it
        tok.encode_file(wav, sr, f"sox {tmp_path / 'a.wav'} -t wav - |")
    plain_codes = plain.encode_file(wav, sr, tmp_path / "a.wav")  # other tokenizers ignore the source
    assert np.array_equal(plain_codes, codes[:, 1:])
    (tmp_path / "a.phn").unlink()
    with pytest.raises(FileNotFoundError, match=r"a\.phn"):
        tok.encode_file(wav, sr, tmp_path / "a.wav")


def test_tokenize_stage_reads_the_alignment_beside_each_wav(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    texts = {"s1-u1": "Turn on the lights.", "s1-u2": "Six three nine.", "s1-u3": TEXT}
    for utt, text in texts.items():
        _aligned_wav(data / f"{utt}.wav", text)
    (data / "wav.scp").write_text("".join(f"{u} {data / u}.wav\n" for u in texts))
    (data / "text").write_text("".join(f"{u} {t}\n" for u, t in texts.items()))
    (data / "utt2spk").write_text("".join(f"{u} s1\n" for u in texts))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "tts_phones.yaml").write_text(
        "name: tts_phones\ndescription: test\nprefix_lm: true\nconditions:\n"
        "  - {name: phones, modality: text, tokenizer: phones, source: text}\n"
        "targets:\n  - {name: speech, modality: audio, tokenizer: codec_ph, source: wav.scp}\n")
    (tmp_path / "tokenizers.yaml").write_text("phones: {type: espeak_phones}\ncodec_ph: {type: codec2_phones}\n")
    out = tmp_path / "dump" / "tts_phones"
    assert cli(["prepare", "--task", "tts_phones", "--data-dir", str(data), "--out-dir", str(out),
                "--task-dir", str(tmp_path / "tasks")]) == 0
    assert cli(["tokenize", "--manifest-dir", str(out), "--tokenizers", str(tmp_path / "tokenizers.yaml"),
                "--nj", "1"]) == 0
    reader = TokenReader(out / "tokens" / "speech.scp")
    assert sorted(reader) == sorted(texts)
    from speechlm.tokenizers.codec2_phones import PHONES

    codes = reader["s1-u2"]
    assert codes.shape[1] == 9
    assert {"s", "ɪ", "k", "θ", "ɹ", "iː", "n", "aɪ"} <= {PHONES[i] for i in codes[:, 0]}
    cond = TokenReader(out / "tokens" / "phones.scp")
    from speechlm.data.espeak_align import read_phn

    for utt in texts:  # the condition spells exactly the phones of the alignment the stream comes from
        aligned = [PHONES.index(p) for _, _, p in read_phn(data / f"{utt}.phn")]
        assert [int(p) for p in cond[utt][:, 0]] == aligned


def test_espeak_phones_spells_what_espeak_speaks():
    from speechlm.data.espeak_align import synthesize
    from speechlm.tokenizers import build_tokenizer
    from speechlm.tokenizers.codec2_phones import PHONES

    tok = build_tokenizer({"type": "espeak_phones"})
    _, _, phones = synthesize(TEXT, "en-us", 160, 50, 100)
    ids = tok.encode(TEXT)
    assert ids.shape == (len(phones), 1) and [PHONES[i] for i in ids[:, 0]] == [p for _, _, p in phones]
    assert tok.decode(ids).split() == [p for _, _, p in phones]
    assert tok.phones == list(PHONES)  # the phone stream's inventory: decoding can hold one to the other


def test_phone_list_spells_the_phones_another_accent_speaks(tmp_path):
    """An en-029 voice speaks other phones than espeak_phones' en-us spelling of the same text; the
    alignment's phones through phone_list are exactly the runs of the target's phone stream."""
    from speechlm.models.next_phone import SILENCE, phone_runs
    from speechlm.tokenizers import build_tokenizer

    samples, sr, phones = _aligned_wav(tmp_path / "a.wav", voice="en-029")
    spoken = build_tokenizer({"type": "phone_list"}).encode(" ".join(p for _, _, p in phones))[:, 0].tolist()
    us = build_tokenizer({"type": "espeak_phones"}).encode(TEXT)[:, 0].tolist()
    stream = build_tokenizer({"type": "codec2_phones"}).encode_file(samples.astype(np.float32) / 32768, sr,
                                                                   tmp_path / "a.wav")[:, 0].tolist()
    assert phone_runs(spoken, SILENCE) != phone_runs(us, SILENCE)  # the accents differ
    framed = phone_runs(stream, SILENCE)  # phones shorter than a frame may be missing from the stream
    assert set(framed) <= set(spoken) and framed == [p for p in phone_runs(spoken, SILENCE) if p in framed]
    tok = build_tokenizer({"type": "phone_list"})
    assert tok.encode("m aɪ nope <sil>")[:, 0].tolist() == [tok.phones.index("m"), tok.phones.index("aɪ"), 1, 0]
    assert tok.decode(tok.encode("m aɪ")) == "m aɪ"


def test_decoding_encodes_a_prompt_file_with_its_alignment(tmp_path):
    """Pipeline.encode_value (speaker prompts at decoding) reads the alignment beside a wav path."""
    from types import SimpleNamespace

    from speechlm.infer.pipeline import Pipeline
    from speechlm.tokenizers import build_tokenizer

    _aligned_wav(tmp_path / "p.wav")
    tok = build_tokenizer({"type": "codec2_phones"})
    pipe = SimpleNamespace(tokenizers={"codec_ph": tok}, allow_pipes=False)
    codes = Pipeline.encode_value(pipe, "codec_ph", str(tmp_path / "p.wav"))
    assert codes.shape[1] == 9 and (codes[:, 0] > 1).mean() > 0.5  # mostly phones, not silence
    with pytest.raises(ValueError, match="bare waveform"):  # a waveform alone has no alignment
        Pipeline.encode_value(pipe, "codec_ph", (np.zeros(8000, np.float32), 8000))
