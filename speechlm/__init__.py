"""speechlm: an open toolkit for speech language models and voice agents."""
__version__ = "0.1.0"


def load(path, device: str = "cpu", allow_pipes: bool = False):
    """Load a model dir (``speechlm pack`` output): returns a :class:`speechlm.infer.pipeline.Pipeline`
    with ``asr(wav)``, ``tts(text, speaker_prompt)``, ``generate(task, **inputs)`` and
    ``generate_nbest(task, n, **inputs)``. Audio inputs are paths or arrays: a Kaldi ``cmd |``
    string is run through the shell only with ``allow_pipes=True``."""
    from speechlm.infer.pipeline import load as _load

    return _load(path, device, allow_pipes)
