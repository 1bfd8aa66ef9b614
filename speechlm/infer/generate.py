"""Batched generation for every stream strategy, with the KV cache.

Prompts come from ``build_example(..., with_targets=False)`` + ``collate`` (right padded); each
ends with the first target's marker. Rows of different lengths are decoded together (left padding
with per-row positions) and finished rows leave the batch.

Example:
    >>> cfg = DecodeConfig(search="sample", temperature=0.8, top_k=30, seed=1)
    >>> outs = generate(model, prompts, cfg)      # one [frames, S] global-id array per prompt
"""
from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from speechlm.config import ConfigError
from speechlm.data.batch import Batch
from speechlm.data.sequence import AUDIO_COND, TEXT_COND
from speechlm.infer.config import DecodeConfig
from speechlm.infer.context import DecodeContext, concat_batches, unconditional
from speechlm.infer.follow import Follower, PhoneFollower, prompt_followers
from speechlm.infer.sampling import filter_logits, ordinal_estimate, repetition_penalty, sample
from speechlm.infer.steps import FORCE, Hypothesis, Masker, RowState

log = logging.getLogger(__name__)

#: ``on_step(active row indices, all row states)``, called by :func:`sample_decode` after each step.
StepHook = Callable[[list[int], list[RowState]], None]


def target_tokenizers(model, prompts: Batch, templates: dict | None) -> list[list[str]]:
    """Target tokenizers of each prompt: from its last token (the first target's marker), then
    the remaining targets of its task template when ``templates`` are given."""
    by_marker = {i: name for name, i in model.vocab.markers.items()}
    out = []
    for b in range(len(prompts.lengths)):
        last = int(prompts.tokens[b, int(prompts.lengths[b]) - 1, 0])
        if last not in by_marker:
            raise ValueError(
                f"prompt {prompts.ids[b]!r} does not end with a segment marker (got id {last}); build prompts "
                f"with build_example(..., with_targets=False)"
            )
        names = [by_marker[last]]
        tpl = (templates or {}).get(prompts.tasks[b])
        if tpl is not None:
            names = [s.tokenizer for s in tpl.targets]
            if names[0] != by_marker[last]:
                raise ValueError(f"prompt {prompts.ids[b]!r} ends with <seg:{by_marker[last]}> but task "
                                 f"{tpl.name!r} starts its targets with {names[0]!r}")
        out.append(names)
    return out


def length_limits(prompts: Batch, config: DecodeConfig) -> list[tuple[int, int]]:
    """(min, max) target frames per prompt, absolute or relative to the condition rows."""
    kinds = prompts.kinds
    n_cond = ((kinds == TEXT_COND) | (kinds == AUDIO_COND)).sum(1).tolist()
    out = []
    for c in n_cond:
        lo = max(config.min_len, int(config.min_len_ratio * c))
        hi = config.max_len if config.max_len_ratio <= 0 else min(config.max_len, max(1, int(config.max_len_ratio * c)))
        out.append((min(lo, hi), hi))
    return out


def apply_length_prior(model, ctx: DecodeContext, prompts: Batch, states: list[RowState], config: DecodeConfig) -> None:
    """Use the length head's prediction from the prompt (its features kept by the prefill):
    ``min/max_len_prior`` bound each row's target length by multiples of it, and models with the
    progress input get it (times ``length_scale``) as the length of a row's one audio target;
    ``follow_max_stretch`` bounds each phone by the frames per phone it implies."""
    bounds = config.min_len_prior > 0 or config.max_len_prior > 0 or (config.follow_phones and config.follow_max_stretch > 0)
    progress = model.progress is not None
    if not bounds and not progress:
        return
    if ctx.length_features is None:
        raise ValueError("decode: min_len_prior/max_len_prior, follow_max_stretch and the progress input need a "
                         "model with a length head (train it with model.length_weight > 0)")
    B = len(states)
    pred = (model.predict_length(ctx.length_features[:B], prompts.kinds) * config.length_scale).tolist()
    for st, n in zip(states, pred):
        if progress and len(st.targets) == 1 and model.vocab.n_streams(st.targets[0]) > 1:
            st.progress_len = max(1, round(n))
        if st.follower is not None:
            st.follower.pace(max(1, round(n)))
        if config.max_len_prior > 0:
            st.max_len = min(st.max_len, max(1, math.ceil(config.max_len_prior * n)))
        st.min_len = min(max(st.min_len, int(config.min_len_prior * n)), st.max_len)


def context_room(model, ctx: DecodeContext, n: int) -> list[int] | None:
    """Positions left in the model's context after each of the first ``n`` prompts (None: no limit)."""
    from speechlm.train.build import model_context

    limit = model_context(model)
    return None if limit is None else (limit - ctx.next_pos[:n]).tolist()


def cap_to_context(model, ctx: DecodeContext, states: list[RowState]) -> None:
    """A text target (one frame a position) ends where the model's context does: a longer prompt
    and output would index past an HF model's position table (a crash) or into positions no
    training sequence reached. Audio targets keep their lengths."""
    room = context_room(model, ctx, len(states))
    if room is None:
        return
    for st, r in zip(states, room):
        if all(model.vocab.n_streams(t) == 1 for t in st.targets):
            st.max_len = max(1, min(st.max_len, int(r)))
            st.min_len = min(st.min_len, st.max_len)


def repeat_rows(prompts: Batch, n: int) -> Batch:
    if n == 1:
        return prompts
    idx = torch.arange(len(prompts.lengths)).repeat_interleave(n)
    return Batch([prompts.ids[i] for i in idx], [prompts.tasks[i] for i in idx], prompts.tokens[idx],
                 prompts.loss_weight[idx], prompts.kinds[idx], prompts.lengths[idx], prompts.prefix_lens[idx])


class Chooser:
    """Turns one model stream's logits into tokens for every active row: guidance, masks,
    repetition penalty, sampling, ordinal estimates, forced tokens. ``ordinal_fields``: tokenizer
    name -> its :attr:`~speechlm.tokenizers.base.Tokenizer.ordinal_fields` (``config.ordinal``)."""

    def __init__(self, model, config: DecodeConfig, generator: torch.Generator,
                 ordinal_fields: dict[str, list[list[int]]] | None = None) -> None:
        self.model, self.cfg, self.gen = model, config, generator
        if config.ordinal and ordinal_fields is None:
            raise ValueError(f"decode: ordinal: {config.ordinal!r} needs the tokenizers' ordinal fields (decode "
                             "through speechlm.infer.pipeline.Pipeline, or pass ordinal_fields)")
        self.fields = ordinal_fields or {}
        self._value_cols: dict = {}  # (stream, allowed set, full?) -> columns of the stream's values in order
        self.masker = Masker(model)
        self.seen: dict[int, torch.Tensor] = {}
        self.rows: list[RowState] = []  # states of the active rows (end_threshold keeps its sums there)
        self._gids: dict = {}  # (stream, allowed set) -> global ids of its columns

    def __call__(self, k: int, h: torch.Tensor, acts: list[tuple]) -> torch.Tensor:
        """Tokens (global ids) of model stream ``k`` for rows with hidden states ``h``."""
        B, dev = len(acts), h.device
        forced_ids = [a[1] if a[0] == FORCE else -1 for a in acts]
        keys = {a[1] for a in acts if a[0] != FORCE}
        if not keys:
            return torch.tensor(forced_ids, device=dev)
        # a tensor only when some row is forced (kernels per call are what a decoding step costs)
        forced = torch.tensor(forced_ids, device=dev) if max(forced_ids) >= 0 else None
        gids = None
        if len(keys) == 1:  # one allowed set for every row: logits of those columns only
            key = next(iter(keys))
            cols, weight = self.masker.allowed(k, key, dev)
            gids = self._gids.get((k, key))
            if gids is None:
                gids = self._gids[(k, key)] = self.masker.to_global(k, cols)
            logits = self.model.logits(h, k, weight=weight).float()
        else:
            cols = None
            logits = self.model.logits(h, k).float()
        if logits.shape[0] == 2 * B:  # classifier-free guidance
            c, u = logits[:B], logits[B:]
            logits = u + self.cfg.cfg_scale * (c - u)
        if cols is None:
            masks = torch.stack([self.masker.mask(k, a[1] if a[0] != FORCE else None, dev) for a in acts])
            logits = logits.masked_fill(~masks, float("-inf"))
        following = self.following(acts)
        if following:
            logits = self.follow_rule(k, logits, following, cols)
        if k == 0 and self.cfg.end_threshold > 0:
            logits = self.end_rule(logits, acts, cols)
        pen = self.cfg.repetition_penalty != 1.0
        if pen and k in self.seen:
            seen = self.seen[k] if cols is None else self.seen[k][:, cols]
            logits = repetition_penalty(logits, seen, self.cfg.repetition_penalty)
        idx = sample(logits, self.cfg.temperature_used, self.cfg.top_k, self.cfg.top_p, self.cfg.min_p, self.gen)
        if self.cfg.ordinal:
            idx = self.ordinal(k, logits, idx, acts, cols)
        if len(self.rows) == B:  # a hypothesis' score: log-probability of its chosen tokens (temperature 1)
            lp = logits.log_softmax(-1).gather(1, idx[:, None])[:, 0].tolist()
            for st, v, f in zip(self.rows, lp, forced_ids):
                if f < 0 and math.isfinite(v):
                    st.hyp.score += v
        if gids is not None and not pen:
            ids = gids[idx]  # the columns' global ids, gathered once per allowed set
        else:
            full = idx if cols is None else cols[idx]
            ids = self.masker.to_global(k, full)
        if forced is not None:
            ids = torch.where(forced >= 0, forced, ids)
        for r, f, key in following:
            a, b = self.model.vocab.stream_range(key[0], key[1])
            if a <= int(ids[r]) < b:  # not an end token
                f.observe(int(ids[r]) - a)
        if pen:
            seen = self.seen.setdefault(k, torch.zeros(B, self.masker.columns(k), dtype=torch.bool, device=dev))
            sampled = forced < 0 if forced is not None else torch.ones(B, dtype=torch.bool, device=dev)
            seen[sampled.nonzero()[:, 0], full[sampled]] = True
        return ids

    def ordinal(self, k: int, logits: torch.Tensor, idx: torch.Tensor, acts: list[tuple],
                cols: torch.Tensor | None) -> torch.Tensor:
        """``config.ordinal``: a row whose chosen column is a value of an ordinal stream (not an end
        token: its probability stays the search's) takes the fields' median / expected value under
        the distribution the search draws from (greedy: temperature 1) instead."""
        keys = {a[1] for a in acts if a[0] != FORCE}
        probs = None
        for key in keys:
            tok, src, _ = key
            streams = self.fields.get(tok)
            if not streams or not streams[src] or (self.cfg.ordinal_streams and src not in self.cfg.ordinal_streams):
                continue
            rows = torch.tensor([r for r, a in enumerate(acts) if a[0] != FORCE and a[1] == key], device=idx.device)
            pos = self.value_columns(k, key, cols, logits.shape[1], idx.device)
            chosen = idx[rows]
            is_value = (chosen[:, None] == pos[None]).any(-1)
            if not bool(is_value.any()):
                continue
            if probs is None:
                t = self.cfg.temperature_used or 1.0
                probs = filter_logits(logits / t, self.cfg.top_k, self.cfg.top_p, self.cfg.min_p).softmax(-1)
            rows = rows[is_value]
            est = ordinal_estimate(probs[rows][:, pos], streams[src], self.cfg.ordinal)
            idx = idx.clone()
            idx[rows] = pos[est]
        return idx

    def value_columns(self, k: int, key: tuple, cols: torch.Tensor | None, n_cols: int, device) -> torch.Tensor:
        """Columns of this call's logits (``cols``: the allowed ones, or all of stream ``k``) that
        hold tokenizer stream ``key[1]``'s values 0, 1, ... in order."""
        ck = (k, key, cols is None)
        if ck not in self._value_cols:
            a, b = self.model.vocab.stream_range(key[0], key[1])
            glob = self.masker.to_global(k, cols if cols is not None else torch.arange(n_cols, device=device))
            where = torch.full((len(self.model.vocab),), -1, dtype=torch.int64, device=device)
            where[glob] = torch.arange(len(glob), device=device)
            pos = where[a:b]
            if bool((pos < 0).any()):
                raise ValueError(f"ordinal / followed decoding: {key[0]!r} stream {key[1]} has values outside model "
                                 f"stream {k}'s columns")
            self._value_cols[ck] = pos
        return self._value_cols[ck]

    def following(self, acts: list[tuple]) -> list[tuple]:
        """``(row, follower, key)`` of the rows whose :class:`~speechlm.infer.follow.Follower`
        governs the stream they sample in this call."""
        if len(self.rows) != len(acts):
            return []
        return [(r, st.follower, a[1]) for r, (a, st) in enumerate(zip(acts, self.rows))
                if a[0] != FORCE and st.follower is not None and st.follower.applies(a[1][0], a[1][1])]

    def follow_rule(self, k: int, logits: torch.Tensor, following: list[tuple], cols: torch.Tensor | None) -> torch.Tensor:
        """Those rows may take only what their follower allows (phone following: the phones of the
        text in order), and end only once it lets them."""
        keep = torch.ones_like(logits, dtype=torch.bool)
        glob = None
        for r, f, key in following:
            allowed = f.allowed()
            if allowed is None:
                continue
            pos = self.value_columns(k, key, cols, logits.shape[1], logits.device)
            keep[r] = False
            keep[r, pos[allowed]] = True
            if key[2] and f.may_end():
                if glob is None:
                    glob = self.masker.to_global(k, cols if cols is not None else torch.arange(logits.shape[1], device=logits.device))
                keep[r] |= torch.isin(glob, torch.tensor(key[2], dtype=glob.dtype, device=glob.device))
        return logits.masked_fill(~keep, float("-inf"))

    def end_rule(self, logits: torch.Tensor, acts: list[tuple], cols: torch.Tensor | None) -> torch.Tensor:
        """``end_threshold``: a row ends once the probability that the model would have ended it by
        now (one minus the product of (1 - p_end) over its steps, temperature 1) reaches the
        threshold, and never before: the median of the model's own stopping time at 0.5, instead
        of one random draw from it."""
        ends = [a[1][2] if a[0] != FORCE else () for a in acts]
        if not any(ends):
            return logits
        glob = self.masker.to_global(0, cols if cols is not None else torch.arange(logits.shape[1], device=logits.device))
        by_ends = {e: torch.isin(glob, torch.tensor(e, dtype=glob.dtype, device=glob.device)) for e in set(ends)}
        is_end = torch.stack([by_ends[e] for e in ends])
        p_end = (logits.softmax(-1) * is_end).sum(-1).tolist()
        stop = []
        for st, p, e in zip(self.rows, p_end, ends):
            if e:
                st.survival *= 1.0 - p
            stop.append(bool(e) and 1.0 - st.survival >= self.cfg.end_threshold)
        stop_t = torch.tensor(stop, device=logits.device)[:, None]
        return logits.masked_fill(torch.where(stop_t, ~is_end, is_end), float("-inf"))

    def select(self, rows: torch.Tensor) -> None:
        self.seen = {k: v.index_select(0, rows) for k, v in self.seen.items()}


def choose_rows(model, h: torch.Tensor, acts: list[list[tuple]], chooser: Chooser) -> torch.Tensor:
    """Tokens ``[B, S']`` of the next row for every active row (depth head: stream by stream)."""
    B, S2 = len(acts), len(acts[0])
    out = torch.full((B, S2), model.vocab.pad_id, dtype=torch.int64, device=h.device)
    last_sampled = max((k for k in range(S2) for a in acts if a[k][0] != FORCE), default=0)
    local = model.new_depth_cache()  # depth head: one incremental local step per stream
    for k in range(S2):
        col = [a[k] for a in acts]
        if k > last_sampled:
            out[:, k] = torch.tensor([c[1] for c in col], device=h.device)
            continue
        prev = None
        if k > 0 and local is not None:  # guidance: the unconditional half takes the same tokens
            prev = out[:, k - 1] if h.shape[0] == B else out[:, k - 1].repeat(h.shape[0] // B)
        out[:, k] = chooser(k, model.depth_step(h, k, prev, local), col)
    return out


@torch.no_grad()
def sample_decode(model, prompts: Batch, config: DecodeConfig, templates: dict | None = None,
                  on_step: StepHook | None = None,
                  ordinal_fields: dict[str, list[list[int]]] | None = None,
                  followers: Sequence[Follower | None] | None = None) -> list[list[Hypothesis]]:
    """Greedy / sampling decoding of every prompt (``config.nbest`` samples each).

    ``on_step(active, states)``, when given, is called after every decoding step with the indices
    of the rows that took the step (rows that ended in it included) and every row's
    :class:`RowState` (its emitted rows and finished segments): streaming reads the frames that
    became final there (:mod:`speechlm.infer.stream`). It may end a row (``states[i].done = True``:
    the row leaves the batch at this step, as the serving scheduler does for a cancelled request)
    and must not change the states otherwise; an exception it raises stops the decoding (a closed stream). Prompt ``p``'s sample ``s`` is row
    ``p * nbest + s``. Streams a strategy fills after the last step (``Pattern.fills_later``, e.g.
    ar_nar's streams 1..) are not final there.
    ``ordinal_fields``: the tokenizers' ordinal fields, for ``config.ordinal`` (see :class:`Chooser`).
    ``followers``: a rule per prompt (:mod:`speechlm.infer.follow`; each sample gets its own copy).
    """
    config.validate()
    model.eval()
    dev = next(model.parameters()).device
    prompts = repeat_rows(prompts.to(dev), config.nbest)
    B = len(prompts.lengths)
    gen = torch.Generator(device="cpu").manual_seed(config.seed)
    targets = target_tokenizers(model, prompts, templates)
    limits = length_limits(prompts, config)
    states = [RowState(model.pattern, t, model.vocab, lo, hi) for t, (lo, hi) in zip(targets, limits)]
    if config.follow_phones and followers is not None:
        raise ConfigError("decode: follow_phones and the caller's followers are one rule too many")
    if config.follow_phones:
        for st, f in zip(states, prompt_followers(model.vocab, prompts, targets, config)):
            st.follower = f
    elif followers is not None:
        if len(followers) * config.nbest != B:
            raise ValueError(f"decode: {len(followers)} followers for {B // config.nbest} prompts")
        for i, st in enumerate(states):
            st.follower = copy.deepcopy(followers[i // config.nbest])
    reads_phones = model.next_phone is not None and any(model.config.next_phone in t for t in targets)
    if reads_phones and not config.follow_phones and not any(isinstance(f, PhoneFollower) for f in followers or []):
        raise ConfigError(f"decode: the model reads the text's next phone in {model.config.next_phone!r} targets "
                          f"(model.next_phone): decode them with follow_phones (the text condition's phone tokenizer)")
    guided = config.cfg_scale != 1.0
    with model.autocast(dev, config.precision):
        run = concat_batches(prompts, unconditional(prompts, model.vocab.pad_id), model.vocab.pad_id) if guided else prompts
        ctx, h = DecodeContext.prefill(model, run, use_cache=config.kv_cache)
        apply_length_prior(model, ctx, prompts, states, config)
        cap_to_context(model, ctx, states)
        chooser = Chooser(model, config, gen, ordinal_fields)
        active = list(range(B))
        while active:
            acts = [states[i].plan() for i in active]
            chooser.rows = [states[i] for i in active]
            rows = choose_rows(model, h, acts, chooser)
            where = [states[i].progress_at(r) for i, r in zip(active, rows.tolist())]  # before advance
            nxt = [states[i].next_phone_at(r) for i, r in zip(active, rows.tolist())] if reads_phones else None
            fed = [states[i].advance(r) for i, r in zip(active, rows.tolist())]
            if on_step is not None:
                on_step(active, states)
            keep = [n for n, i in enumerate(active) if not states[i].done]
            if not keep:
                break
            if len(keep) < len(active):
                sel = torch.tensor(keep, device=dev)
                chooser.select(sel)
                fed, where = [fed[n] for n in keep], [where[n] for n in keep]
                nxt = [nxt[n] for n in keep] if nxt is not None else None
                active = [active[n] for n in keep]
                # with guidance the unconditional half of the batch sits after the conditional half
                ctx.select(torch.cat([sel, sel + len(rows)]) if guided else sel)
            x = model.step_input(torch.tensor(fed, device=dev), torch.tensor(where, device=dev),
                                 torch.tensor(nxt, device=dev) if nxt is not None else None)
            h = ctx.step(torch.cat([x, x]) if guided else x)
        model.pattern.after_decoding(model, prompts, states, config, gen)  # e.g. ar_nar's NAR levels
    hyps = [s.hyp for s in states]
    return [hyps[i : i + config.nbest] for i in range(0, B, config.nbest)]


def generate_nbest(model, prompts: Batch, config: DecodeConfig, templates: dict | None = None,
                   ordinal_fields: dict[str, list[list[int]]] | None = None,
                   followers: Sequence[Follower | None] | None = None) -> list[list[Hypothesis]]:
    """Hypotheses per prompt for any ``config.search`` (beam and CTC searches: text targets;
    ``ordinal_fields``: the tokenizers' ordinal fields for ``config.ordinal``, see :class:`Chooser`;
    ``followers``: greedy and sampling searches, see :func:`sample_decode`)."""
    config.validate()
    if followers is not None and config.search not in ("greedy", "sample"):
        raise ConfigError(f"decode: followed decoding needs search greedy or sample, not {config.search!r}")
    if config.search == "beam":
        from speechlm.infer.search import beam_search

        return beam_search(model, prompts, config)
    if config.search == "ctc_greedy":
        from speechlm.infer.search import ctc_greedy

        return ctc_greedy(model, prompts, config.precision)
    return sample_decode(model, prompts, config, templates, ordinal_fields=ordinal_fields, followers=followers)


def generate(model, prompts: Batch, config: DecodeConfig | None = None, templates: dict | None = None) -> list[np.ndarray]:
    """One ``[frames, S]`` global-id array per prompt (target tokens only, de-interleaved, without
    markers and ``<eos>``): the best hypothesis of :func:`generate_nbest`."""
    config = config or DecodeConfig()
    hyps = generate_nbest(model, prompts, config, templates)
    return [h[0].frames(model.n_streams, model.vocab.pad_id) for h in hyps]


__all__ = ["generate", "generate_nbest", "sample_decode", "DecodeConfig", "Hypothesis"]
