"""Phone alignments of espeak-ng speech, from the synthesizer itself (libespeak-ng phoneme events).

espeak-ng knows when it starts each phone; its library reports that (``espeakINITIALIZE_PHONEME_EVENTS``,
in IPA with ``espeakINITIALIZE_PHONEME_IPA``) through the synthesis callback, where the command line
does not (``--pho`` needs mbrola). :func:`synthesize` returns the samples and the phones with their
start and end times, so a corpus spoken by espeak-ng comes with exact alignments and no aligner.

Alignments are written next to each wav as ``<name>.phn``: one ``start end phone`` line per phone
(seconds; pauses are left out), read back by :func:`read_phn`.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import pickle
import threading
from pathlib import Path

import numpy as np

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_PHONEME_EVENTS, _INIT_PHONEME_IPA = 0x0001, 0x0002
_EVENT_LIST_TERMINATED, _EVENT_PHONEME = 0, 7
_RATE, _VOLUME, _PITCH = 1, 2, 3
_CHARS_UTF8 = 1


class _Id(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):  # espeak_EVENT of speak_lib.h
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _Id)]


class _Voice(ctypes.Structure):  # espeak_VOICE of speak_lib.h
    _fields_ = [("name", ctypes.c_char_p), ("languages", ctypes.c_char_p), ("identifier", ctypes.c_char_p),
                ("gender", ctypes.c_ubyte), ("age", ctypes.c_ubyte), ("variant", ctypes.c_ubyte),
                ("xx1", ctypes.c_ubyte), ("score", ctypes.c_int), ("spare", ctypes.c_void_p)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


class _Espeak:
    """The process-wide library (espeak-ng keeps global state: one synthesis at a time)."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        try:
            self.lib = ctypes.CDLL(name)
        except OSError as e:
            raise RuntimeError(f"libespeak-ng not found ({e}); Debian: apt-get install espeak-ng") from e
        self.sample_rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None,
                                                      _INIT_PHONEME_EVENTS | _INIT_PHONEME_IPA)
        if self.sample_rate <= 0:
            raise RuntimeError("espeak_Initialize failed (is espeak-ng-data installed?)")
        self.lock = threading.Lock()
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, str]] = []
        self._cb = _CALLBACK(self._on_audio)  # kept referenced: the library calls it later
        self.lib.espeak_SetSynthCallback(self._cb)

    def _on_audio(self, wav, n, events) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (n,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            e = events[i]
            if e.type == _EVENT_PHONEME:
                self._events.append((int(e.sample), e.id.string.decode("utf-8", "replace")))
            i += 1
        return 0

    def synthesize(self, text: str, voice: str, rate: int, pitch: int, amplitude: int):
        """In a forked child: espeak-ng carries state from one synthesis to the next (the same text
        came out a few samples shorter the second time), so each one starts from the freshly
        initialized library, as the command line does (one process per call, ~1 ms per fork)."""
        with self.lock:
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: synthesize, send, exit without running the parent's cleanup
                try:
                    os.close(r)
                    try:
                        result = self._synthesize(text, voice, rate, pitch, amplitude)
                    except Exception as e:  # noqa: BLE001 - handed to the parent, which raises it
                        result = e
                    with os.fdopen(w, "wb") as f:
                        pickle.dump(result, f)
                finally:
                    os._exit(0)  # never back into the parent's code (nothing sent: the parent reports it)
            os.close(w)
            with os.fdopen(r, "rb") as f:
                data = f.read()
            os.waitpid(pid, 0)
        if not data:
            raise RuntimeError(f"espeak-ng synthesis of {text!r} died")
        out = pickle.loads(data)
        if isinstance(out, BaseException):
            raise out
        return out

    def _synthesize(self, text: str, voice: str, rate: int, pitch: int, amplitude: int):
        self._chunks, self._events = [], []
        # as the command line sets it: by name, else by properties (a language, with an optional
        # +variant: en-gb+f3), which falls back to a near voice as the command line does
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            spec = _Voice(languages=voice.encode())
            if self.lib.espeak_SetVoiceByProperties(ctypes.byref(spec)) != 0:
                raise ValueError(f"espeak-ng: no voice for {voice!r}")
        for param, value in ((_RATE, rate), (_PITCH, pitch), (_VOLUME, amplitude)):
            self.lib.espeak_SetParameter(param, int(value), 0)
        data = text.encode()
        if self.lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, _CHARS_UTF8, None, None) != 0:
            raise RuntimeError(f"espeak-ng could not synthesize {text!r}")
        self.lib.espeak_Synchronize()
        wav = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return wav, list(self._events)


_ENGINE: _Espeak | None = None


def synthesize(text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50, amplitude: int = 100
               ) -> tuple[np.ndarray, int, list[tuple[float, float, str]]]:
    """``(int16 samples, sample rate, [(start_s, end_s, phone)])`` of ``text`` spoken by espeak-ng
    (the ``-v/-s/-p/-a`` settings of the command line); pauses are not phones."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _Espeak()
    wav, events = _ENGINE.synthesize(text, voice, rate, pitch, amplitude)
    sr = _ENGINE.sample_rate
    phones = []
    for k, (sample, phone) in enumerate(events):
        end = events[k + 1][0] if k + 1 < len(events) else len(wav)
        if phone.strip() and end > sample:
            phones.append((sample / sr, end / sr, phone.strip()))
    return wav, sr, phones


def phn_path(wav_path: str | Path) -> Path:
    """Where the alignment of ``wav_path`` lives."""
    p = Path(wav_path)
    return p.with_suffix(".phn")


def write_phn(path: str | Path, phones: list[tuple[float, float, str]]) -> None:
    """Write ``start end phone`` lines (atomically)."""
    from speechlm.utils.fileio import atomic_open

    with atomic_open(path) as f:
        f.writelines(f"{a:.5f} {b:.5f} {ph}\n" for a, b, ph in phones)


def read_phn(path: str | Path) -> list[tuple[float, float, str]]:
    """The ``(start_s, end_s, phone)`` lines of a ``.phn`` file; errors name the file and line."""
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                a, b, ph = float(parts[0]), float(parts[1]), parts[2]
            except (IndexError, ValueError):
                raise ValueError(f"{path} line {lineno}: expected 'start end phone', got {line.strip()!r}") from None
            if b < a:
                raise ValueError(f"{path} line {lineno}: phone {ph!r} ends ({b}) before it starts ({a})")
            out.append((a, b, ph))
    return out


__all__ = ["phn_path", "read_phn", "synthesize", "write_phn"]
