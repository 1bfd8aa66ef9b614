"""speechlm: an open toolkit for speech language models and voice agents."""
__version__ = "0.1.0"


def load(path, device: str = "cpu"):
    """Load a model dir (``speechlm pack`` output): returns a :class:`speechlm.infer.pipeline.Pipeline`
    with ``asr(wav)``, ``tts(text, speaker_prompt)`` and ``generate(task, **inputs)``."""
    from speechlm.infer.pipeline import load as _load

    return _load(path, device)
