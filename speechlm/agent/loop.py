"""The agent loop: a spoken request -> the model's next assistant turn -> a tool call, checked and
run on the environment -> its result fed back -> ... -> an answer (in text, optionally spoken).

Modes (what turns the user's speech into the model's input):

- ``e2e``: the model's ``spoken_dialogue`` task reads the user turn's speech and the history text;
  with a task whose target is ``response.monologue`` (``spoken_dialogue_monologue``) the model
  first writes what it heard (``user <words> | <turn>``, an inner monologue): the words join the
  history as the user's turn, like a cascade's transcript, and the turn is applied; with ``hear``
  (``auto``: where the model has an ``asr`` task) those words are what its ``asr`` task hears with
  its own decoding options (the recipe's: joint CTC/attention beam search), and the model writes
  the turn after them;
- ``cascade``: the model's ``asr`` task transcribes the turn, its text-only ``command`` task
  reads the transcript and the history;
- ``cascade-whisper``: the bundled Whisper tiny.en transcribes instead of the model's ASR;
- ``text``: the episode's reference text goes to the ``command`` task (the cascade's ceiling).

One step decodes the next assistant turn (``call <tool> k = v ; ...`` or ``say <words>``, see
:mod:`speechlm.agent.calls`). A turn that does not parse, names an unknown tool or an argument
the tool does not take is an *invalid call*: it is recorded and the step is retried once with
the next hypothesis (the second of a beam, else a sample at ``retry_temperature``); a second
invalid turn ends the episode. A call with a missing or bad argument value is a real call: the
environment refuses it (state unchanged) and the error goes back to the model, which may
correct it or ask back (the recovery episodes). A cascade's call values are tied to what was
said (:mod:`speechlm.agent.ground`): decoded from the user's words, the tools' results and closed
words only (``copy_values``), and a value still not said is replaced by the user's closest words
(``ground``); an answer restates the tools' results, reports an error or asks back
(``valid_answers``, :mod:`speechlm.agent.answers`). An answer ends the user turn: the episode goes
on with the next user turn when it has one (a reply to an ask-back), else it ends. At most
``max_turns`` assistant steps per user turn.

Steps of many episodes are decoded together (one batch per step across episodes), so a few
hundred episodes run in minutes on a CPU; the decoding time of a batch counts for every episode
in it (the latency a user of that batch would see).
"""
from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from speechlm.agent.calls import (TURN_SEP, USER_PREFIX, Call, format_result, format_turn, normalize_words,
                                  parse_turn, render_history)
from speechlm.agent.env import make_env
from speechlm.agent.episodes import Episode
from speechlm.agent.known import catalogue, known_names, known_pairs, snap_names
from speechlm.agent.tools import ToolError, get_tool, validate_args
from speechlm.eval.recognizers import parse_speeds

log = logging.getLogger(__name__)

MODES = ("e2e", "cascade", "cascade-whisper", "text")
HEAR = ("auto", "asr", "monologue")
DIALOGUE_TASKS = ("spoken_dialogue", "spoken_dialogue_monologue")  # the e2e agent's task, first found
# what cascade-whisper's Whisper reads as said before each request: a voice assistant's requests
# lean it to their words (recipe README, "Valid calls only, and a prompt for Whisper")
WHISPER_PROMPT = ("Hey computer, set an alarm for seven thirty am, turn off the kitchen lights, play some jazz, "
                  "what's the weather in London tomorrow, add milk to my shopping list, email John.")
STRUCTURAL = ("unknown_tool", "unknown")  # ToolError kinds that make a call invalid (not the env's business)
MIN_VALUE_TOKENS = 8  # a copied value's length bound never below this: a closed-word value ("nine forty five am")


@dataclass
class LoopConfig:
    """Options of :func:`run_agent` (the ``speechlm agent run`` flags)."""

    mode: str = "e2e"
    max_turns: int = 4  # assistant steps per user turn
    batch_size: int = 16
    max_len: int = 200  # target tokens per assistant turn (caps the model dir's decode max_len)
    retry: bool = True
    retry_temperature: float = 0.7
    valid_calls: bool = True  # decode only calls the tools accept, or answers (speechlm.agent.grammar)
    copy_values: bool = True  # cascades: values hold only words said, returned by tools, or closed_words
    # cascades, with copy_values: where the user said names the home knows (a place, a room, a
    # station...), a slot of that kind takes one of them (speechlm.agent.grammar)
    typed_values: bool = True
    valid_answers: bool = True  # with valid_calls: an answer restates the tools' results (speechlm.agent.answers)
    ground: float = 0.5  # a value the user did not say -> their closest span within this distance (0: off)
    # cascades: heard words this close in spelling to a name of the home become that name (0: off;
    # speechlm.agent.known.snap_names)
    snap_names: float = 0.85
    # e2e with an inner monologue: who writes the words heard. asr: the model's own asr task with its
    # decode config (joint CTC/attention beam in the recipe), forced as the monologue; monologue: the
    # dialogue task's free-running words; auto: asr where the model has that task (recipe README, run Z)
    hear: str = "auto"
    whisper_prompt: str = WHISPER_PROMPT  # cascade-whisper: Whisper's initial prompt ("": none)
    # cascade-whisper: the CTranslate2 Whisper dir ("": the bundled tiny.en), e.g. one fine-tuned by
    # speechlm finetune-whisper (which hears without the prompt)
    whisper_model_dir: str = ""
    # cascade-whisper: a word LM of the requests (speechlm agent train-lm; "": none) re-ranks
    # Whisper's whisper_nbest texts by its log probability + whisper_lm_weight x the LM's
    whisper_lm: str = ""
    whisper_lm_weight: float = 0.5
    whisper_nbest: int = 8
    # cascade-whisper: playback speeds Whisper hears each request at, the likeliest text kept
    # (speechlm.eval.recognizers.FasterWhisper; recipe README, "Hearing at three speeds")
    whisper_speeds: str = "1"
    ttft: bool = False  # also time the first token of each first step (one extra prefill per batch)
    speak: bool = False
    dialogue_task: str = ""  # the e2e task; "": the model's own (DIALOGUE_TASKS, the first it has)
    command_task: str = "command"
    asr_task: str = "asr"
    env: str = "home"
    seed: int = 0

    def validate(self) -> "LoopConfig":
        if self.mode not in MODES:
            raise ValueError(f"agent mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.max_turns < 1 or self.batch_size < 1 or self.max_len < 1:
            raise ValueError("agent: max_turns, batch_size and max_len must be >= 1")
        if not 0 <= self.ground <= 1:
            raise ValueError(f"agent: ground is a character distance in [0, 1], got {self.ground}")
        if not 0 <= self.snap_names <= 1:
            raise ValueError(f"agent: snap_names is a similarity in [0, 1], got {self.snap_names}")
        if self.whisper_model_dir and self.mode != "cascade-whisper":
            raise ValueError(f"agent: whisper_model_dir is the Whisper of mode cascade-whisper, got mode {self.mode}")
        if self.whisper_lm_weight < 0 or self.whisper_nbest < 1:
            raise ValueError(f"agent: whisper_lm_weight must be >= 0 and whisper_nbest >= 1, got "
                             f"{self.whisper_lm_weight} and {self.whisper_nbest}")
        if parse_speeds(self.whisper_speeds) != (1.0,) and self.mode != "cascade-whisper":
            raise ValueError(f"agent: whisper_speeds are Whisper's, mode cascade-whisper, got mode {self.mode}")
        if self.hear not in HEAR:
            raise ValueError(f"agent: hear {self.hear!r} is not one of {', '.join(HEAR)}")
        return self


@dataclass
class EpisodeRun:
    """The state of one episode while the loop runs it."""

    ep: Episode
    env: Any
    user: int = 0  # current user turn
    steps_this_turn: int = 0
    history: list[dict] = field(default_factory=list)  # user / assistant / tool turns so far
    steps: list[dict] = field(default_factory=list)  # every decoded hypothesis: text, kind, retry
    calls: list[dict] = field(default_factory=list)  # calls run on the environment (ok or refused)
    invalid: list[dict] = field(default_factory=list)
    answer: Optional[str] = None
    ended: Optional[str] = None  # answer | max_turns | invalid | input_error
    transcripts: list[str] = field(default_factory=list)
    timing: dict = field(default_factory=lambda: {"asr": 0.0, "encode": 0.0, "decode": 0.0, "tool": 0.0,
                                                  "ttft": None, "first_call": None})
    audio_seconds: float = 0.0
    cache: dict = field(default_factory=dict)  # user turn -> audio tokens; "names" -> the catalogue
    speech: Optional[str] = None
    error: Optional[str] = None  # why an input could not be decoded (ended == "input_error")

    @property
    def done(self) -> bool:
        return self.ended is not None

    @property
    def request_done(self) -> bool:
        """The user's current turn was carried out: it ended in an answer after calls, all accepted.
        Training's dialogues go on only after an ask-back or a tool error, so a live session
        (``agent chat``, the server) starts the next request as a new dialogue in this state."""
        calls = [c for c in self.calls if c["user"] == self.user]
        return self.ended == "answer" and bool(calls) and all(c["ok"] for c in calls)

    def set_transcript(self, text: str) -> None:
        """The current user turn's transcript (earlier turns without one stay empty)."""
        self.transcripts = (self.transcripts + [""] * self.user)[: self.user] + [text]

    @property
    def elapsed(self) -> float:
        t = self.timing
        return t["asr"] + t["encode"] + t["decode"] + t["tool"]


# ---- text ----------------------------------------------------------------------------------------
_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen " \
        "seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    """``42`` -> ``forty two`` (0 <= n < 1e6)."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        return _ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + number_words(n % 100))
    if n < 1_000_000:
        return number_words(n // 1000) + " thousand" + ("" if n % 1000 == 0 else " " + number_words(n % 1000))
    return " ".join(_ONES[int(d)] for d in str(n))


def spoken_form(text: str) -> str:
    """A recognizer's written text in the spoken, lower-case word form the models read
    (``Wake me at 7:30 a.m.!`` -> ``wake me at seven thirty am``): numbers spelled out, times
    split at the colon, punctuation dropped (apostrophes kept)."""
    t = text.lower().replace("a.m.", "am").replace("p.m.", "pm").replace("%", " percent")

    def time_words(m: re.Match) -> str:
        h, mnt = int(m.group(1)), int(m.group(2))
        return number_words(h) + ("" if mnt == 0 else (" oh " if mnt < 10 else " ") + number_words(mnt))

    t = re.sub(r"\b(\d{1,2}):(\d{2})\b", time_words, t)
    t = re.sub(r"(\d+)(st|nd|rd|th)\b", lambda m: m.group(1), t)
    t = re.sub(r"\d+", lambda m: " " + number_words(int(m.group(0))) + " ", t)
    t = re.sub(r"[^a-z' ]+", " ", t)
    return normalize_words(t)


def classify_turn(text: str) -> tuple[str, Any, Optional[str]]:
    """``(kind, payload, error)``: ``("call", Call, None)``, ``("answer", str, None)`` or
    ``("invalid", text, why)`` for text that does not parse, an unknown tool or an argument the
    tool does not take (missing or bad values are left to the environment)."""
    try:
        kind, payload = parse_turn(text)
    except ValueError as e:  # CallSyntaxError, or any other malformed model output: never end the run
        return "invalid", text, str(e)
    if kind == "call":
        try:
            validate_args(get_tool(payload.name), payload.args)
        except ToolError as e:
            if e.kind in STRUCTURAL:
                return "invalid", text, str(e)
    return kind, payload, None


# ---- model inputs ----------------------------------------------------------------------------------
def history_text(run: EpisodeRun) -> str:
    """The history condition: the dialogue before the current user turn's request, and the
    assistant and tool turns after it (the request itself is the speech / request condition)."""
    turns = [t for t in run.history
             if not (t["role"] == "user" and (t.get("current") or t.get("hidden") or not t["text"]))]
    return render_history([{"role": t["role"], "text": t["text"]} for t in turns])


def resolve_audio(path: str, base: Optional[Path]) -> str:
    p = Path(path)
    if p.is_absolute() or p.exists() or base is None or path.rstrip().endswith("|"):
        return path
    return str(base / p)


def audio_seconds(path: str) -> float:
    import soundfile as sf

    try:
        info = sf.info(path)
        return info.frames / float(info.samplerate)
    except Exception:  # pipes and segments: read it
        from speechlm.data.audio import read_audio

        wav, sr = read_audio(path)
        return len(wav) / float(sr)


class Decoder:
    """Batched text decoding of one task of a :class:`~speechlm.infer.pipeline.Pipeline`, n-best."""

    def __init__(self, pipe, task: str, max_len: int) -> None:
        self.pipe, self.task = pipe, task
        self.template = pipe.template(task)
        target = self.template.targets[0]
        if target.modality != "text":
            raise ValueError(f"task {task!r}: the agent needs a text target, its first target is {target.modality}")
        self.tokenizer = target.tokenizer
        self.config = pipe.decode_config(task)
        self.config.max_len = min(self.config.max_len, max_len)
        # built on first use, kept for every step: the decoding rules' token sets
        self._marks: dict[str, set[int]] = {}
        self._closed: Optional[set[int]] = None
        self._grammars: dict[bool, Any] = {}  # monologue -> CallGrammar

    def encode(self, inputs: dict[str, Any], utt: str) -> dict[str, np.ndarray]:
        """Condition tokens of one prompt; an input that cannot be decoded (no tokens, longer than
        the model's context, unreadable audio) is an ``InputError`` naming ``utt``."""
        toks = self.pipe.condition_tokens(self.template, inputs, utt)
        self.pipe.prompt_example(self.template, toks, utt)
        return toks

    def __call__(self, inputs: list[dict[str, np.ndarray]], ids: list[str], config=None,
                 followers=None) -> list[list[str]]:
        """Hypothesis texts (best first) of each prompt (``followers``: a rule each, or None)."""
        outs = self.pipe.generate_outputs(self.task, inputs, config or self.config, ids, followers)
        return [[str(self.pipe.detokenize(self.tokenizer, o.tokens)) for o in row] for row in outs]

    def encode_text(self, text: str) -> list[int]:
        """``text``'s local ids in the target's tokenizer, in order."""
        return np.asarray(self.pipe.tokenizers[self.tokenizer].encode(text)).reshape(-1).tolist()

    def local_ids(self, text: str) -> set[int]:
        return set(self.encode_text(text))

    def marks(self, char: str) -> set[int]:
        """Local ids of the tokens that hold ``char`` where a call writes it (`` = ``, `` ; ``)."""
        if char not in self._marks:
            tok = self.pipe.tokenizers[self.tokenizer]
            self._marks[char] = {i for i in self.local_ids(f"a {char} b") if char in str(tok.decode(np.array([[i]])))}
        return self._marks[char]

    def closed_ids(self) -> set[int]:
        """The tokens of the closed words (:func:`speechlm.agent.ground.closed_words`)."""
        from speechlm.agent.ground import closed_words

        if self._closed is None:
            self._closed = self.local_ids(closed_words())
        return self._closed

    def value_ids(self, texts: list[str]) -> tuple[set[int], int]:
        """The tokens of ``texts`` and of the closed words, and the most tokens one of ``texts`` holds."""
        ids, longest = set(self.closed_ids()), 0
        for t in texts:
            toks = self.encode_text(t)
            ids.update(toks)
            longest = max(longest, len(toks))
        return ids, longest

    def value_follower(self, texts: list[str]):
        """A rule that lets a call's values (after `` = ``, until `` ; ``) hold only the tokens of
        ``texts`` and of the closed words."""
        from speechlm.infer.follow import SpanFollower

        return SpanFollower(self.tokenizer, self.marks("="), self.marks(";"), self.value_ids(texts)[0])

    def call_follower(self, monologue: bool, texts: Optional[list[str]] = None, answers: Optional[list[str]] = None,
                      heard: Optional[list[int]] = None, typed: Optional[dict[str, list[str]]] = None):
        """A rule that lets a turn be only a call the tools accept, or an answer
        (:mod:`speechlm.agent.grammar`); with ``texts`` a free value is a span of one of them (a
        time, a date or a number: any of their tokens and the closed words, no longer than the
        longest text), and a value of an argument of ``typed`` a span of its names there;
        ``answers``: the only answers it may give (None: any words); ``heard``: the inner
        monologue's tokens (None: the model's own)."""
        grammar = self.grammar(monologue)
        trie = None if answers is None else grammar.answer_trie(answers)
        if texts is None:
            return grammar.follower(answers=trie, heard=heard)
        spans = [grammar.value_tokens(t) for t in texts]
        longest = max((len(s) for s in spans), default=0)
        typed_spans = {arg: [grammar.value_tokens(n) for n in names] for arg, names in (typed or {}).items()}
        return grammar.follower(spans, self.closed_ids(), max(longest, MIN_VALUE_TOKENS), trie, heard, typed_spans)

    def grammar(self, monologue: bool):
        """The :class:`~speechlm.agent.grammar.CallGrammar` of this tokenizer (built once)."""
        if monologue not in self._grammars:
            from speechlm.agent.grammar import CallGrammar
            from speechlm.agent.tools import TOOLS

            a, b = self.pipe.vocab.stream_range(self.tokenizer, 0)
            self._grammars[monologue] = CallGrammar(self.tokenizer, self.encode_text, b - a,
                                                    [TOOLS.get(n) for n in TOOLS.names()],
                                                    {c: self.marks(c) for c in "=;|"}, monologue)
        return self._grammars[monologue]


# ---- the loop ----------------------------------------------------------------------------------------
class AgentLoop:
    """Runs episodes through a model dir's pipeline (see the module docstring)."""

    def __init__(self, pipe, config: LoopConfig, audio_base: Optional[Path] = None, asr_pipe=None) -> None:
        """``asr_pipe``: the cascade's ASR model when it is not ``pipe`` (a parser trained apart)."""
        self.pipe, self.cfg, self.audio_base = pipe, config.validate(), audio_base
        # the voice_agent recipe packs the monologue task alone: a model's own dialogue task by default
        dialogue = config.dialogue_task or next((t for t in DIALOGUE_TASKS if t in pipe.templates), DIALOGUE_TASKS[0])
        task = dialogue if config.mode == "e2e" else config.command_task
        self.decoder = Decoder(pipe, task, config.max_len)
        # an inner monologue: the e2e task's target holds what the user said (see datadir.py)
        self.monologue = config.mode == "e2e" and self.decoder.template.targets[0].source == "response.monologue"
        self.asr = Decoder(asr_pipe or pipe, config.asr_task, config.max_len) if config.mode == "cascade" else None
        if self.monologue and config.hear != "monologue":
            if config.asr_task in pipe.templates:
                self.asr = Decoder(pipe, config.asr_task, config.max_len)
            elif config.hear == "asr":
                raise ValueError(f"agent: hear asr needs the model's {config.asr_task!r} task; it has: "
                                 f"{', '.join(pipe.templates)}")
        elif config.hear == "asr" and config.mode == "e2e":
            raise ValueError(f"agent: hear asr forces an inner monologue, and task {task!r} has none")
        self.hears = self.monologue and self.asr is not None  # the asr task writes the monologue's words
        # decoding rules (greedy and sampling searches only): valid calls; values copied, in the
        # cascades, which know the user's words before the call (the e2e model's heard words were
        # measured no better a source, its monologue's or its asr task's: the recipe README)
        followable = self.decoder.config.search in ("greedy", "sample")
        self.valid_calls = config.valid_calls and followable
        self.copy_values = config.copy_values and config.mode != "e2e" and followable
        self.valid_answers = config.valid_answers and self.valid_calls
        self._questions: Optional[list[str]] = None
        if not followable and (config.valid_calls or (config.copy_values and config.mode != "e2e")):
            log.info("agent: %s search: calls are not constrained while decoding (greedy or sample)",
                     self.decoder.config.search)
        self.whisper = None
        if config.mode == "cascade-whisper":
            from speechlm.eval.recognizers import build_recognizer

            import torch

            # as many threads as the loop's torch (agent run: 1 per job) so --nj jobs do not oversubscribe
            self.whisper = build_recognizer("whisper", model_dir=config.whisper_model_dir or None,
                                            threads=torch.get_num_threads(), prompt=config.whisper_prompt,
                                            speeds=config.whisper_speeds)
        self.whisper_lm = None
        if config.whisper_lm:
            if config.mode != "cascade-whisper":
                raise ValueError(f"agent: whisper_lm re-ranks Whisper's texts: mode cascade-whisper only, "
                                 f"got {config.mode}")
            from speechlm.agent.wordlm import WordLM

            self.whisper_lm = WordLM.load(config.whisper_lm)
        self._check_inputs()

    def _check_inputs(self) -> None:
        tpl = self.decoder.template
        audio = [s for s in tpl.conditions if s.is_audio]
        text = [s for s in tpl.conditions if not s.is_audio]
        if self.cfg.mode == "e2e" and (len(audio) != 1 or len(text) > 1):
            raise ValueError(f"task {tpl.name!r}: the e2e agent needs one audio condition (the user's speech) "
                             f"and at most one text condition (the history)")
        if self.cfg.mode != "e2e" and (audio or not 1 <= len(text) <= 3):
            raise ValueError(f"task {tpl.name!r}: the cascade needs text conditions only: the request "
                             f"(and the names it holds, and the history)")

    # -- inputs
    def request_audio(self, run: EpisodeRun) -> str:
        turn = run.ep.turns[run.user]
        if not turn.get("audio"):
            raise ValueError(f"episode {run.ep.id}: user turn {run.user} has no audio; synthesize the episodes "
                             f"(speechlm agent synth) or use --mode text")
        return resolve_audio(turn["audio"], self.audio_base)

    def step_inputs(self, run: EpisodeRun) -> dict[str, Any]:
        """Condition values (ready tokens for the cached audio) of the next step of ``run``."""
        tpl, hist = self.decoder.template, history_text(run)
        out: dict[str, Any] = {}
        if self.cfg.mode == "e2e":
            for seg in tpl.conditions:
                if seg.is_audio:
                    if run.user not in run.cache:
                        run.cache[run.user] = self.pipe.encode_value(seg.tokenizer, self.request_audio(run), run.ep.id)
                    out[seg.name] = run.cache[run.user]
                else:
                    out[seg.name] = hist
            return out
        text_segs = [s for s in tpl.conditions if not s.is_audio]
        # the request segment reads the data dir's ``text``, ``known`` the names it holds; the other one the history
        request = next((s for s in text_segs if s.source == "text"), text_segs[0])
        for seg in text_segs:
            if seg is request:
                out[seg.name] = run.transcripts[run.user]
            elif seg.source == "known":  # as the data dir has it: the names of the episode's initial state
                out[seg.name] = known_names(run.transcripts[run.user], self.catalogue(run))
            else:
                out[seg.name] = hist
        return out

    def transcribe(self, runs: list[EpisodeRun]) -> None:
        """Fill the current user turn's transcript of each run that lacks one (cascade modes)."""
        todo = [r for r in runs if len(r.transcripts) <= r.user]
        if not todo:
            return
        if self.cfg.mode == "text":
            for r in todo:
                r.transcripts.append(self.snapped(r, normalize_words(r.ep.turns[r.user]["text"])))
            return
        if self.whisper is not None:
            from speechlm.data.audio import load_audio

            for r in todo:
                t0 = time.perf_counter()
                wav = load_audio(self.request_audio(r), 16000, r.ep.id)
                if self.whisper_lm is None:
                    heard = spoken_form(self.whisper.transcribe(wav))
                else:
                    from speechlm.agent.wordlm import rescore

                    hyps = [(spoken_form(t), lp) for t, lp in self.whisper.nbest(wav, self.cfg.whisper_nbest)]
                    heard = rescore(hyps, self.whisper_lm, self.cfg.whisper_lm_weight)
                r.transcripts.append(self.snapped(r, heard))
                r.timing["asr"] += time.perf_counter() - t0
            return
        seg = self.asr.template.conditions[0]
        for i in range(0, len(todo), self.cfg.batch_size):
            chunk = todo[i : i + self.cfg.batch_size]
            t0 = time.perf_counter()
            inputs = [self.asr.encode({seg.name: self.request_audio(r)}, r.ep.id) for r in chunk]
            texts = self.asr(inputs, [r.ep.id for r in chunk])
            dt = time.perf_counter() - t0
            for r, hyps in zip(chunk, texts):
                r.transcripts.append(self.snapped(r, spoken_form(hyps[0])))
                r.timing["asr"] += dt

    def snapped(self, run: EpisodeRun, text: str) -> str:
        """A cascade's transcript with the words close to a name of the home written as it (``snap_names``)."""
        return snap_names(text, self.catalogue(run), self.cfg.snap_names) if self.cfg.snap_names > 0 else text

    # -- one step
    def start(self, ep: Episode) -> EpisodeRun:
        run = EpisodeRun(ep, make_env(self.cfg.env, ep.initial_state))
        self.begin_user_turn(run)
        return run

    def begin_user_turn(self, run: EpisodeRun) -> None:
        """Open user turn ``run.user`` (its history entry; ``speechlm agent chat`` and the server
        call it after appending a turn to a running episode)."""
        for t in run.history:
            t.pop("current", None)
        turn = run.ep.turns[run.user]
        if turn.get("audio") and self.cfg.mode != "text":
            run.audio_seconds += audio_seconds(resolve_audio(turn["audio"], self.audio_base))
        # The e2e model never reads the text of what the user said (its request is speech), so its
        # history keeps only assistant and tool turns; the cascades' user turns get their
        # transcript once it is known and later steps read them as ``user <words>``.
        run.history.append({"role": "user", "text": "", "current": True,
                            "hidden": self.cfg.mode == "e2e" and not self.monologue})
        run.steps_this_turn = 0

    def heard(self, run: EpisodeRun, text: str) -> str:
        """A monologue's ``user <words> | <turn>``: the words become the current user turn's text
        (read by later steps, reported as the transcript); returns the turn."""
        stripped = text.strip()
        if not (self.monologue and stripped.startswith(USER_PREFIX)):
            return text
        words, sep, turn = stripped[len(USER_PREFIX):].partition(TURN_SEP.strip())
        entry = next(t for t in reversed(run.history) if t["role"] == "user")
        entry["text"] = normalize_words(words)
        entry.pop("current", None)  # written down: later steps read it
        run.set_transcript(entry["text"])
        return turn if sep else ""

    def apply(self, run: EpisodeRun, text: str, retry: bool) -> str:
        """Apply one hypothesis to ``run``; returns its kind (``call``, ``answer`` or ``invalid``)."""
        kind, payload, err = classify_turn(self.heard(run, text))
        run.steps.append({"user": run.user, "text": text, "kind": kind, "retry": retry})
        if kind == "invalid":
            run.invalid.append({"user": run.user, "step": run.steps_this_turn, "text": text, "error": err,
                                "retry": retry})
            return kind
        run.steps_this_turn += 1
        if kind == "answer":
            if self.valid_answers:  # the option's own words (a tokenizer may space them otherwise)
                from speechlm.agent.answers import canonical_answer

                payload = canonical_answer(payload, self.answer_options(run)) or payload
            run.history.append({"role": "assistant", "text": format_turn("answer", payload)})
            run.answer = payload
            if run.user + 1 < len(run.ep.turns):
                run.user += 1
                self.begin_user_turn(run)
            else:
                run.ended = "answer"
            return kind
        call, grounded = self.ground(run, payload)
        if grounded:
            run.steps[-1]["grounded"] = grounded
        if run.timing["first_call"] is None:
            run.timing["first_call"] = run.elapsed
        t0 = time.perf_counter()
        try:
            result, ok = format_result(run.env.execute(call)), True
        except ToolError as e:
            result, ok = format_result(e), False
        run.timing["tool"] += time.perf_counter() - t0
        run.calls.append({**call.to_dict(), "ok": ok, "result": result, "user": run.user})
        run.history.append({"role": "assistant", "text": format_turn("call", call)})
        run.history.append({"role": "tool", "text": result})
        if run.steps_this_turn >= self.cfg.max_turns:
            run.ended = "max_turns"
        return kind

    @staticmethod
    def said_seen(run: EpisodeRun) -> tuple[list[str], list[str]]:
        """The user's words so far and the tools' results (the e2e model without a monologue has no words)."""
        said = [t["text"] for t in run.history if t["role"] == "user" and t["text"]]
        return said, [t["text"] for t in run.history if t["role"] == "tool"]

    def ground(self, run: EpisodeRun, call: Call) -> tuple[Call, dict]:
        """``call`` with its values grounded in the user's words so far (:mod:`speechlm.agent.ground`)."""
        from speechlm.agent.ground import ground_call

        return ground_call(call, *self.said_seen(run), self.cfg.ground)

    def answer_options(self, run: EpisodeRun) -> list[str]:
        """The answers ``run``'s next turn may give (:func:`speechlm.agent.answers.answer_options`)."""
        from speechlm.agent.answers import answer_options, ask_backs

        if self._questions is None:
            self._questions = ask_backs()
        return answer_options(run.history, self._questions)

    def hearing(self, run: EpisodeRun) -> bool:
        """Whether the asr task hears ``run``'s next step (its user turn's first: words not yet written)."""
        return self.hears and any(t.get("current") for t in run.history if t["role"] == "user")

    def heard_tokens(self, run: EpisodeRun) -> Optional[list[int]]:
        """The monologue's tokens when the asr task heard the words of ``run``'s next step (else None)."""
        return self.decoder.grammar(True).heard_tokens(run.transcripts[run.user]) if self.hearing(run) else None

    def followers(self, runs: list[EpisodeRun], heard: Optional[list] = None) -> Optional[list]:
        """The decoding rule of each run's next step: valid calls only (``valid_calls``), their values
        copied (``copy_values``), answers that restate the results (``valid_answers``), the words the
        asr task heard as the monologue (``hear``; ``heard``: each run's :meth:`heard_tokens`, if known);
        None when none."""
        from speechlm.infer.follow import PrefixFollower

        if not (self.valid_calls or self.copy_values or self.hears):
            return None
        if heard is None:
            heard = [self.heard_tokens(r) for r in runs]
        out = []
        for run, heard_run in zip(runs, heard):
            said, seen = self.said_seen(run)
            texts = [*said, *seen]
            if not self.valid_calls:  # (e2e copies no values)
                out.append(self.decoder.value_follower(texts) if self.copy_values else
                           PrefixFollower(self.decoder.tokenizer, heard_run or []))
                continue
            answers = self.answer_options(run) if self.valid_answers else None
            typed = self.named(run) if self.copy_values and self.cfg.typed_values else None
            out.append(self.decoder.call_follower(self.monologue, texts if self.copy_values else None, answers,
                                                  heard_run, typed))
        return out

    def catalogue(self, run: EpisodeRun) -> dict:
        """The names of ``run``'s home (:func:`speechlm.agent.known.catalogue` of its initial state), once."""
        if "names" not in run.cache:
            run.cache["names"] = catalogue(make_env(self.cfg.env, run.ep.initial_state).state)
        return run.cache["names"]

    def named(self, run: EpisodeRun) -> dict[str, list[str]]:
        """Slot -> the names of the home the user said so far."""
        out: dict[str, list[str]] = {}
        for said in self.said_seen(run)[0]:
            for slot, name in known_pairs(said, self.catalogue(run)):
                out.setdefault(slot, []).append(name)
        return out

    def retry_config(self, step: int):
        import copy

        cfg = copy.copy(self.decoder.config)
        cfg.search, cfg.nbest = "sample", 1
        cfg.temperature, cfg.top_k, cfg.top_p = self.cfg.retry_temperature, 0, 1.0
        cfg.seed = self.cfg.seed + 1000 + step
        return cfg.validate()

    def encode_all(self, runs: list[EpisodeRun]) -> tuple[list[EpisodeRun], list[dict[str, np.ndarray]]]:
        """The runs whose next prompt can be decoded and their condition tokens; a run whose input
        cannot be (an empty transcript, a prompt longer than the model's context, unreadable audio)
        ends with ``ended = "input_error"`` and the message in ``error``."""
        from speechlm.data.audio import AudioError
        from speechlm.infer.pipeline import InputError

        ok, inputs = [], []
        for r in runs:
            t0 = time.perf_counter()
            try:
                inputs.append(self.decoder.encode(self.step_inputs(r), r.ep.id))
                ok.append(r)
            except (InputError, AudioError) as e:
                log.warning("episode %s: %s", r.ep.id, e)
                r.ended, r.error = "input_error", str(e)
            r.timing["encode"] += time.perf_counter() - t0
        return ok, inputs

    def prepare(self, runs: list[EpisodeRun]) -> None:
        """Before a step: the cascades transcribe new user turns; the words go into the history (an
        e2e model that hears with its asr task writes them as its monologue: :meth:`followers`)."""
        if self.hears:
            self.transcribe([r for r in runs if self.hearing(r)])
        elif self.cfg.mode != "e2e":
            self.transcribe(runs)
            for r in runs:
                entry = next(t for t in reversed(r.history) if t["role"] == "user")
                entry["text"] = r.transcripts[r.user]

    def step(self, runs: list[EpisodeRun], wave: int) -> None:
        """Decode and apply one assistant step of every run (all not done)."""
        self.prepare(runs)
        cfg = self.decoder.config
        beam2 = self.cfg.retry and cfg.search == "beam" and cfg.beam_size >= 2
        if beam2:
            import copy

            cfg = copy.copy(cfg)
            cfg.nbest = max(cfg.nbest, 2)
        B = self.cfg.batch_size
        retry: list[EpisodeRun] = []
        ready, prompts = self.encode_all(runs)
        # prompts of similar length decode together (less padding in every step of a batch)
        order = sorted(range(len(ready)), key=lambda k: sum(len(v) for v in prompts[k].values()))
        for i in range(0, len(order), B):
            chunk, inputs = [ready[k] for k in order[i : i + B]], [prompts[k] for k in order[i : i + B]]
            ids = [f"{r.ep.id}/{wave}" for r in chunk]
            if self.cfg.ttft and wave == 0:
                import copy

                one = copy.copy(cfg)
                one.max_len, one.min_len = 1, 0
                t0 = time.perf_counter()
                self.decoder(inputs, ids, one)
                dt = time.perf_counter() - t0
                for r in chunk:
                    r.timing["ttft"] = r.elapsed + dt
            step_cfg, heard = cfg, [self.heard_tokens(r) for r in chunk]
            longest = max(len(h or ()) for h in heard)
            if longest:  # the words heard come on top of the turn
                import copy

                step_cfg = copy.copy(cfg)
                step_cfg.max_len += longest
            t0 = time.perf_counter()
            hyps = self.decoder(inputs, ids, step_cfg, self.followers(chunk, heard))
            dt = time.perf_counter() - t0
            for r, h in zip(chunk, hyps):
                r.timing["decode"] += dt
                if self.apply(r, h[0], retry=False) == "invalid":
                    if beam2 and len(h) > 1:
                        if self.apply(r, h[1], retry=True) == "invalid":
                            r.ended = "invalid"
                    elif self.cfg.retry:
                        retry.append(r)
                    else:
                        r.ended = "invalid"
        for i in range(0, len(retry), B):
            chunk, inputs = self.encode_all(retry[i : i + B])
            ids = [f"{r.ep.id}/{wave}/retry" for r in chunk]
            t0 = time.perf_counter()
            hyps = self.decoder(inputs, ids, self.retry_config(wave), self.followers(chunk))
            dt = time.perf_counter() - t0
            for r, h in zip(chunk, hyps):
                r.timing["decode"] += dt
                if self.apply(r, h[0], retry=True) == "invalid":
                    r.ended = "invalid"

    def run(self, episodes: list[Episode], on_finished: Optional[Callable[[int], None]] = None) -> list[EpisodeRun]:
        """Run ``episodes`` to the end, decoding their steps together; ``on_finished(n)`` is called
        when ``n`` more of them end (e.g. a progress bar's update)."""
        runs = [self.start(ep) for ep in episodes]
        active = list(runs)
        wave = 0
        while active:
            self.step(active, wave)
            wave += 1
            finished = [r for r in active if r.done]
            active = [r for r in active if not r.done]
            if on_finished and finished:
                on_finished(len(finished))
        return runs

    # -- outputs
    def speak(self, run: EpisodeRun, out_dir: Path) -> None:
        """Write the answer's speech: the model's TTS task when it has one, else espeak-ng."""
        if not run.answer:
            return
        from speechlm.data.audio import write_wav

        path = out_dir / "wav" / f"{run.ep.id}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        task = self.pipe.speech_task()
        if task is not None:
            wav, sr = self.pipe.tts(run.answer, task=task)
            write_wav(path, np.asarray(wav, dtype=np.float32), sr)
        else:
            import shutil
            import subprocess

            if shutil.which("espeak-ng") is None:
                raise FileNotFoundError("--speak: the model has no TTS task it can run without a prompt and "
                                        "espeak-ng is not installed (apt-get install espeak-ng)")
            tmp = path.with_suffix(".tmp.wav")
            subprocess.run(["espeak-ng", "-w", str(tmp), run.answer], check=True, capture_output=True)
            tmp.replace(path)
        run.speech = str(path)

    def prediction(self, run: EpisodeRun) -> dict:
        """The ``predictions.jsonl`` record of a finished run."""
        from speechlm.agent.intents import call_to_intent

        intent, ents = None, []
        if run.calls:
            # the request's intent and slots: the first call the environment accepted (after an
            # ask-back or a correction it holds the user's whole request), else the first call
            made = next((c for c in run.calls if c["ok"]), run.calls[0])
            first = Call(made["name"], made["args"])
            try:
                intent, slots = call_to_intent(first)
                ents = [{"type": t, "filler": v} for t, v in slots]
            except ValueError:
                pass
        t = run.timing
        audio = run.ep.turns[0].get("audio")
        scenario, _, action = (intent or "").partition("_")
        return {
            "id": run.ep.id, "slurp_id": run.ep.meta.get("slurp_id"), "mode": self.cfg.mode,
            # SLURP's prediction fields (its evaluation tool reads file, scenario, action, entities)
            "file": Path(audio).name if audio else None, "scenario": scenario or None, "action": action or None,
            "intent": intent, "entities": ents, "calls": run.calls, "answer": run.answer, "ended": run.ended,
            "error": run.error,
            "turns": [{"role": h["role"], "text": h["text"]} for h in run.history if not h.get("hidden")],
            "steps": run.steps, "invalid_calls": run.invalid, "transcripts": run.transcripts,
            "n_steps": sum(1 for s in run.steps if s["kind"] != "invalid"),
            "timings": {"ttft": t["ttft"], "first_call": t["first_call"], "total": run.elapsed,
                        "asr": t["asr"], "encode": t["encode"], "decode": t["decode"], "tool": t["tool"]},
            "audio_duration": run.audio_seconds or None, "speech": run.speech,
        }


# ---- files ----------------------------------------------------------------------------------------------
def read_jsonl_ids(path: Path) -> dict[str, dict]:
    """Records of a JSONL file by id; a torn last line (a killed run) is dropped."""
    out: dict[str, dict] = {}
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "id" in rec:
            out[rec["id"]] = rec
    return out


def run_agent(pipe, episodes: list[Episode], out_dir: str | Path, config: LoopConfig,
              audio_base: Optional[Path] = None, chunk: int = 0, asr_pipe=None) -> dict[str, int]:
    """Run the loop over ``episodes`` into ``out_dir`` (``predictions.jsonl``, ``final_states.jsonl``,
    ``wav/`` with ``speak``). Resumable: episodes already in both files are skipped; results are
    appended chunk by chunk (``chunk`` episodes, default 4 batches), so a killed run loses at most one."""
    from tqdm import tqdm

    from speechlm.utils.fileio import atomic_open

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pred_path, state_path = out / "predictions.jsonl", out / "final_states.jsonl"
    preds, states = read_jsonl_ids(pred_path), read_jsonl_ids(state_path)
    done = set(preds) & set(states)
    # rewrite both files with the complete records only (drops a half-written chunk)
    for path, recs in ((pred_path, preds), (state_path, states)):
        with atomic_open(path) as f:
            for k, rec in recs.items():
                if k in done:
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    todo = [ep for ep in episodes if ep.id not in done]
    if done:
        log.info("%s: %d of %d episodes already done, %d to run", out, len(episodes) - len(todo), len(episodes),
                 len(todo))
    loop = AgentLoop(pipe, config, audio_base, asr_pipe)
    chunk = chunk or 4 * config.batch_size
    bar = tqdm(total=len(todo), desc=f"agent {config.mode}", unit="episode", disable=None)
    for i in range(0, len(todo), chunk):
        runs = loop.run(todo[i : i + chunk], on_finished=bar.update)
        if config.speak:
            for r in runs:
                loop.speak(r, out)
        with open(pred_path, "a", encoding="utf-8") as fp, open(state_path, "a", encoding="utf-8") as fs:
            for r in runs:
                fs.write(json.dumps({"id": r.ep.id, "state": r.env.snapshot()}, ensure_ascii=False) + "\n")
            fs.flush()
            for r in runs:
                fp.write(json.dumps(loop.prediction(r), ensure_ascii=False) + "\n")
    bar.close()
    return {"episodes": len(episodes), "ran": len(todo), "skipped": len(episodes) - len(todo)}


__all__ = ["LoopConfig", "AgentLoop", "EpisodeRun", "run_agent", "classify_turn", "spoken_form", "number_words",
           "history_text", "MODES"]
