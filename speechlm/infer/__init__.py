"""Generation: batched incremental decoding for every stream strategy, sampling, beam search,
CTC greedy and joint CTC/attention scoring (see ``docs/interfaces.md``, "Generation")."""
from speechlm.infer.config import DecodeConfig
from speechlm.infer.generate import generate, generate_nbest
from speechlm.infer.steps import Hypothesis, Segment

__all__ = ["DecodeConfig", "generate", "generate_nbest", "Hypothesis", "Segment"]
