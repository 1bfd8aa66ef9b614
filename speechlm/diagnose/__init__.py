"""Diagnostics of generated speech (``speechlm tts-diagnose``): teacher-forced resynthesis, decode-path
parity, per-field errors of Codec 2 frames and their drift along the utterance.

- :mod:`~speechlm.diagnose.fields`: Codec 2 stream tokens <-> fields (natural indices), expected values
- :mod:`~speechlm.diagnose.align`: frame alignments (linear, DTW) and per-field errors, drift bins
- :mod:`~speechlm.diagnose.teacher`: the teacher-forced pass over an example's target rows
- :mod:`~speechlm.diagnose.parity`: the same rows through the decoding loop, true tokens forced
- :mod:`~speechlm.diagnose.spectro`: spectrogram panels
- :mod:`~speechlm.diagnose.tts`: the whole diagnosis of a model on a TTS manifest
- :mod:`~speechlm.diagnose.report`: its ``diagnose.md``
"""
