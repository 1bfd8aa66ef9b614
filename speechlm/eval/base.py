"""The metric interface shared by every evaluator: inputs, results, the registries.

A metric compares a hypothesis with a reference, both Kaldi-style mappings ``utt -> value``
where a value is a text string or an audio spec (a path, a ``cmd |`` pipe, or a
``{"path", "start", "end"}`` dict, see :mod:`speechlm.eval.audio`). It returns a
:class:`MetricResult`: one record per utterance plus corpus-level summary numbers.

Example:
    >>> from speechlm.eval import build_metric
    >>> res = build_metric("wer")({"u1": "a x c d"}, {"u1": "a b c d"})
    >>> res.summary["wer"]
    25.0
"""
from __future__ import annotations

import inspect
import logging
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Mapping

from speechlm.registry import Registry

logger = logging.getLogger(__name__)

Kind = Literal["text", "audio"]

#: Metrics by name (``wer``, ``cer``, ``intelligibility``, ``spk_sim``, ``dnsmos``, ``stoi``, ...).
METRICS: Registry[type["Metric"]] = Registry("metric", entry_points="speechlm.metrics")
#: Speech recognizers used to measure the intelligibility of generated speech.
RECOGNIZERS: Registry[type] = Registry("recognizer")


@dataclass
class MetricResult:
    """What a metric returns.

    Attributes:
        name: the metric's registry name.
        summary: corpus-level numbers; the first key is the headline figure.
        per_utt: ``utt -> {field: value}``; ``key`` names the field that ranks utterances.
        key: the per-utterance field used to find the worst utterances.
        higher_is_better: direction of ``key``.
        info: free-form description (recognizer, model, mode) for the report.
    """

    name: str
    summary: dict[str, float]
    per_utt: dict[str, dict[str, Any]]
    key: str
    higher_is_better: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def headline(self) -> tuple[str, float]:
        """The first summary entry: ``(name, value)``."""
        k = next(iter(self.summary))
        return k, self.summary[k]

    def worst(self, n: int = 10) -> list[tuple[str, dict[str, Any]]]:
        """The ``n`` worst utterances by ``key`` (ties broken by utterance id)."""
        rows = [(u, r) for u, r in self.per_utt.items()
                if isinstance(r.get(self.key), (int, float)) and not math.isnan(r[self.key])]
        sign = 1.0 if self.higher_is_better else -1.0
        rows.sort(key=lambda ur: (sign * float(ur[1][self.key]), ur[0]))
        return rows[:n]


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


class Metric:
    """Base class of all metrics: subclasses set the class attributes and implement ``compute``.

    ``hyp_kind``/``ref_kind`` say what the metric reads (``ref_kind`` ``None``: no reference
    needed, e.g. DNSMOS). Constructor keyword arguments are the metric's options; the score
    command passes only those a metric's constructor accepts (see :func:`build_metric`).
    """

    name: ClassVar[str] = ""
    hyp_kind: ClassVar[Kind] = "text"
    ref_kind: ClassVar[Kind | None] = "text"
    higher_is_better: ClassVar[bool] = False

    def __call__(
        self,
        hyp: Mapping[str, Any],
        ref: Mapping[str, Any] | None = None,
        hyp_name: str = "hypothesis",
        ref_name: str = "reference",
    ) -> MetricResult:
        """Score ``hyp`` against ``ref``; ``*_name`` (usually file paths) appear in errors."""
        if self.ref_kind is None:
            ids = sorted(hyp)
            if not ids:
                raise ValueError(f"{hyp_name}: no utterances to score")
            return self.compute(ids, hyp, ref or {})
        if ref is None:
            raise ValueError(f"metric {self.name!r} needs a {self.ref_kind} reference")
        ids = common_ids(hyp, ref, hyp_name, ref_name)
        return self.compute(ids, hyp, ref)

    def compute(self, ids: list[str], hyp: Mapping[str, Any], ref: Mapping[str, Any]) -> MetricResult:
        raise NotImplementedError


def common_ids(
    hyp: Mapping[str, Any], ref: Mapping[str, Any], hyp_name: str = "hypothesis", ref_name: str = "reference"
) -> list[str]:
    """Sorted ids to score: every hypothesis id must be in the reference.

    A hypothesis id missing from the reference is an error naming both files and the id (the
    usual cause is scoring a decode dir against the wrong test set). Reference ids without a
    hypothesis are logged and skipped (a partial decode can still be scored).
    """
    if not hyp:
        raise ValueError(f"{hyp_name}: no utterances to score")
    extra = sorted(set(hyp) - set(ref))
    if extra:
        more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
        raise ValueError(
            f"{hyp_name}: utterance {extra[0]!r}{more} not found in {ref_name}; "
            "score against the reference of the test set that was decoded"
        )
    missing = sorted(set(ref) - set(hyp))
    if missing:
        logger.warning(
            "%s: %d of %d reference utterances have no hypothesis (first: %s); scoring the %d that do",
            hyp_name, len(missing), len(ref), missing[0], len(hyp),
        )
    return sorted(hyp)


def build_metric(name: str, **options: Any) -> Metric:
    """Instantiate metric ``name`` with the subset of ``options`` its constructor accepts.

    Options set to ``None`` are dropped, so the constructor's defaults apply.
    """
    cls = METRICS.get(name)
    params = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in options.items() if k in params and v is not None}
    return cls(**kwargs)


def mean(values: list[float]) -> float:
    """Mean of the finite values (NaN when there are none)."""
    vals = [float(v) for v in values if _finite(v)]
    return sum(vals) / len(vals) if vals else float("nan")
