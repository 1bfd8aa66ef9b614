"""``README.md`` of a model dir: a Hugging Face model card (``huggingface_hub.ModelCard``).

The front matter (``ModelCardData``) gives license, language, ``pipeline_tag``,
``library_name: speechlm``, ``base_model``, datasets and tags; the body says what the model does,
how to use it (an example per task of the model), its training data and command, and its results
(the run's ``RESULTS.md`` table).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from speechlm.tasks import TaskTemplate

#: modalities whose values are audio files
AUDIO_MODALITIES = ("audio", "spk_prompt")
#: Hugging Face pipeline tags by (condition kind, target kind); the first task that maps wins
PIPELINE_TAGS = {("audio", "text"): "automatic-speech-recognition", ("text", "audio"): "text-to-speech",
                 ("audio", "audio"): "audio-to-audio", ("text", "text"): "text-generation",
                 ("", "audio"): "audio-to-audio", ("", "text"): "text-generation"}


@dataclass
class CardInfo:
    """What the card says beyond the model dir itself (``speechlm pack`` flags and the run)."""

    name: str
    license: str | None = None
    language: list[str] = field(default_factory=list)
    base_model: str | None = None
    datasets: list[str] = field(default_factory=list)
    repo_id: str | None = None  # the hub repo the model is uploaded to (usage example)
    path: str = "path/to/this/dir"  # where the dir is (usage example without repo_id)
    checkpoint: str = ""  # which checkpoint, e.g. "step_00001000 (step 1000)"
    training_data: str = ""  # the run's data entries
    command: str = ""  # the training command
    results: str = ""  # the run's RESULTS.md
    notes: list[str] = field(default_factory=list)  # extra lines (e.g. the length head refit)
    voices: list[str] = field(default_factory=list)  # the speaker prompts in voices/ (by name)


def _kind(template: TaskTemplate, segments) -> str:
    if not segments:
        return ""
    return "audio" if segments[0].modality in AUDIO_MODALITIES else "text"


def pipeline_tag(templates: dict[str, TaskTemplate]) -> str | None:
    """The hub pipeline tag of the model's first task that has one."""
    for name in sorted(templates):
        t = templates[name]
        tag = PIPELINE_TAGS.get((_kind(t, t.conditions), _kind(t, t.targets)))
        if tag:
            return tag
    return None


def _example_value(seg) -> str:
    return f'"{seg.name}.wav"' if seg.modality in AUDIO_MODALITIES else '"hello world"'


def usage_lines(templates: dict[str, TaskTemplate], voices: list[str] = ()) -> list[str]:
    """One call per task of the model, through the :class:`~speechlm.infer.pipeline.Pipeline` API
    (``voices``: the model dir's speaker prompts, which a prompted TTS task uses when given none)."""
    from speechlm.infer.pipeline import default_voice, tts_task

    lm_tts = {tts_task(templates, False), tts_task(templates, True)} - {None}  # what lm.tts picks by itself
    lines = []
    for name in sorted(templates):
        t = templates[name]
        audio_out = bool(t.targets) and t.targets[0].modality in AUDIO_MODALITIES
        result = "wav, sample_rate" if audio_out else "text"
        conds = {s.modality: s for s in t.conditions}
        if name == "asr" and len(t.conditions) == 1 and not audio_out:
            call = f"lm.asr({_example_value(t.conditions[0])})"
        elif name in lm_tts:
            prompt = f", speaker_prompt={_example_value(conds['spk_prompt'])}" if "spk_prompt" in conds else ""
            if prompt and voices:
                lines.append(f"wav, sample_rate = lm.tts(\"hello world\")  # in the voice of "
                             f"voices/{default_voice(voices)}.wav")
            call = f"lm.tts(\"hello world\"{prompt})"
        else:
            args = "".join(f", {s.name}={_example_value(s)}" for s in t.conditions)
            call = f"lm.generate(\"{name}\"{args})"
        lines.append(f"{result} = {call}  # {t.description or name}")
    return lines


def build_card(info: CardInfo, templates: dict[str, TaskTemplate], model_desc: str):
    """The :class:`huggingface_hub.ModelCard` of a model dir."""
    from huggingface_hub import ModelCard, ModelCardData

    tasks = sorted(templates)
    data = ModelCardData(license=info.license, language=info.language or None, library_name="speechlm",
                         pipeline_tag=pipeline_tag(templates), base_model=info.base_model,
                         datasets=info.datasets or None, tags=["speech", "speechlm", *tasks])
    if info.repo_id:
        load = (f"from huggingface_hub import snapshot_download\n"
                f"lm = speechlm.load(snapshot_download(\"{info.repo_id}\"))")
    else:
        load = f"lm = speechlm.load(\"{info.path}\")"
    body = [
        f"# {info.name}", "",
        f"A speechlm model: {model_desc}.", "",
        f"Tasks: {', '.join(tasks)}." + (f" Checkpoint: {info.checkpoint}." if info.checkpoint else ""), "",
        "## Use", "", "```python", "import speechlm", load, *usage_lines(templates, info.voices), "```", "",
        "or `speechlm decode --model-dir DIR --manifest-dir DUMP --out-dir OUT` on a dumped data set.", "",
        "## Training data", "", "```", info.training_data.strip() or "(not recorded)", "```", "",
        "## Training command", "", "```", info.command.strip() or "(not recorded)", "```", "",
        "## Results", "", info.results.strip() or "No scoring results yet.", "",
        *info.notes,
    ]
    return ModelCard("---\n" + data.to_yaml() + "\n---\n\n" + "\n".join(body).rstrip() + "\n")


def model_description(model_dir: Path) -> str:
    """``delay`` strategy, builtin backbone (4 layers, dim 256), 5 streams, 1234 tokens."""
    from speechlm.models.model_dir import VOCAB, read_config
    from speechlm.vocab import Vocabulary

    c = read_config(model_dir)
    body = (f"{c.n_layers} layers, dim {c.dim}" if c.backbone == "builtin" else
            (c.hf_path or "hf") + (f", its first {c.hf_layers} layers" if c.hf_layers else ""))
    n = len(Vocabulary.load(model_dir / VOCAB))
    return f"`{c.strategy}` stream strategy, {c.backbone} backbone ({body}), {c.n_streams} streams, {n} tokens"


__all__ = ["CardInfo", "build_card", "pipeline_tag", "usage_lines", "model_description"]
