"""Sampling options behave as documented: greedy, temperature, top-k, top-p, min-p, repetition
penalty, vocabulary masks, seeds, length limits, n-best and guidance."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from speechlm.config import ConfigError, from_dict
from speechlm.data.batch import collate
from speechlm.data.sequence import build_example
from speechlm.infer import DecodeConfig, generate, generate_nbest
from speechlm.infer.sampling import filter_logits, repetition_penalty, sample
from speechlm.models import SpeechLM
from speechlm.tasks import load_template
from test_model_helpers import tiny_config, toy_examples, toy_vocab


def g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_greedy_is_argmax_and_temperature_zero_is_greedy():
    logits = torch.randn(16, 50)
    assert torch.equal(sample(logits, temperature=0.0), logits.argmax(-1))


def test_top_k_never_leaves_the_top_k():
    logits = torch.randn(64, 100)
    top = logits.topk(5, -1).indices
    for seed in range(30):
        idx = sample(logits, temperature=2.0, top_k=5, generator=g(seed))
        assert (top == idx[:, None]).any(-1).all()


def test_top_p_keeps_the_smallest_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(filter_logits(logits, top_p=0.7))
    assert kept.tolist() == [[True, True, False, False]]
    draws = torch.stack([sample(logits.expand(200, -1), top_p=0.7, generator=g(s)) for s in range(5)])
    assert set(draws.unique().tolist()) == {0, 1}


def test_min_p_drops_tokens_below_a_fraction_of_the_best():
    logits = torch.log(torch.tensor([[0.6, 0.25, 0.1, 0.05]]))
    kept = torch.isfinite(filter_logits(logits, min_p=0.2))
    assert kept.tolist() == [[True, True, False, False]]


def test_sampling_follows_the_softmax_at_temperature_one():
    logits = torch.log(torch.tensor([0.7, 0.2, 0.1]))[None].expand(20000, -1)
    freq = torch.bincount(sample(logits, generator=g(3)), minlength=3).float() / 20000
    assert torch.allclose(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.02)
    hot = torch.bincount(sample(logits, temperature=5.0, generator=g(3)), minlength=3).float() / 20000
    assert hot[2] > 0.25, "a high temperature flattens the distribution"


def test_repetition_penalty_discounts_seen_tokens():
    logits = torch.tensor([[2.0, -1.0, 1.0]])
    seen = torch.tensor([[True, True, False]])
    out = repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -2.0, 1.0]]


def test_decode_config_loads_from_a_mapping_and_validates():
    cfg = from_dict(DecodeConfig, {"search": "sample", "top_k": 20, "temperature": 0.7})
    assert cfg.top_k == 20 and cfg.validate() is cfg
    with pytest.raises(ConfigError, match="search"):
        DecodeConfig(search="nucleus").validate()
    with pytest.raises(ConfigError, match="unknown key 'topk'"):
        from_dict(DecodeConfig, {"topk": 3})


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    vocab = toy_vocab(2)
    model = SpeechLM(tiny_config("delay"), vocab).eval()
    prompts = collate(toy_examples(vocab, 3, with_targets=False))
    return model, vocab, prompts


def test_masks_keep_each_target_in_its_tokenizer_range(setup):
    model, vocab, prompts = setup
    outs = generate(model, prompts, DecodeConfig(search="sample", temperature=3.0, min_len=10, max_len=15, seed=1))
    text = range(*vocab.stream_range("text_bpe", 0))
    codec = [range(*vocab.stream_range("codec", k)) for k in range(2)]
    for task, out in zip(prompts.tasks, outs):
        assert len(out) > 0
        if task == "asr":  # text target: never audio, never a marker, pad in stream 1
            assert all(int(t) in text for t in out[:, 0]) and (out[:, 1] == vocab.pad_id).all()
        else:
            for k in range(2):
                assert all(int(t) in codec[k] for t in out[:, k])


def test_greedy_is_deterministic_and_matches_teacher_forced_argmax(setup):
    model, vocab, prompts = setup
    cfg = DecodeConfig(max_len=10)
    a = generate(model, prompts, cfg)
    assert all(np.array_equal(x, y) for x, y in zip(a, generate(model, prompts, cfg)))
    # feed the greedy text output back as a target: each token is the argmax over the text range
    b = prompts.tasks.index("asr")
    segs = {"speech": _asr_speech(prompts, b, vocab), "text": a[b][:, :1] - vocab.offset("text_bpe")}
    ex = build_example("u", load_template("asr"), segs, vocab, 2)
    with torch.no_grad():
        h, prep = model.hidden_states(collate([ex]))
    lo, hi = vocab.stream_range("text_bpe", 0)
    n = len(a[b])
    start = int(prep.lengths[0]) - n - 2  # position of the target marker
    logits = model.head.logits(h[0, start : start + n], 0)[:, lo:hi]
    assert (logits.argmax(-1) + lo).tolist() == a[b][:, 0].tolist()


def _asr_speech(prompts, b, vocab):
    n = int(prompts.lengths[b])
    speech = prompts.tokens[b, 2 : n - 1].numpy()
    return speech - np.array([vocab.offset("codec", k) for k in range(speech.shape[1])])


def test_seed_fixes_samples_and_top_k_one_is_greedy(setup):
    model, _, prompts = setup
    cfg = dict(search="sample", temperature=1.5, max_len=12)
    a = generate(model, prompts, DecodeConfig(seed=5, **cfg))
    b = generate(model, prompts, DecodeConfig(seed=5, **cfg))
    c = generate(model, prompts, DecodeConfig(seed=6, **cfg))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    greedy = generate(model, prompts, DecodeConfig(max_len=12))
    top1 = generate(model, prompts, DecodeConfig(seed=9, top_k=1, **cfg))
    assert all(np.array_equal(x, y) for x, y in zip(greedy, top1))


def _eager(model, vocab, **kw):
    """A copy of ``model`` whose logits all tie (zero final norm): greedy ends as soon as allowed."""
    eager = SpeechLM(tiny_config("delay", **kw), vocab).eval()
    eager.load_state_dict(model.state_dict(), strict=not kw)
    with torch.no_grad():
        eager.backbone.norm.weight.zero_()
    return eager


def test_length_limits(setup):
    model, vocab, prompts = setup
    outs = generate(model, prompts, DecodeConfig(max_len=7))
    assert all(len(o) <= 7 for o in outs)
    eager = _eager(model, vocab)  # greedy picks <eos> (id 1) as soon as it is allowed
    assert [len(o) for o in generate(eager, prompts, DecodeConfig(max_len=20))] == [0] * len(outs)
    assert [len(o) for o in generate(eager, prompts, DecodeConfig(min_len=4, max_len=20))] == [4] * len(outs)
    n_cond = ((prompts.kinds == 2) | (prompts.kinds == 3)).sum(1).tolist()
    rel = generate(eager, prompts, DecodeConfig(min_len_ratio=1.0, max_len=50))
    assert [len(o) for o in rel] == n_cond


def test_end_threshold_ends_at_the_median_of_the_models_stopping_time(setup):
    model, vocab, prompts = setup
    eager = _eager(model, vocab)
    # tied logits: every step where the end is allowed gives it p = 1 / (allowed columns); the row
    # ends at the first step n where 1 - (1 - p)^n reaches the threshold, whatever is sampled
    cols = {"asr": vocab.stream_range("text_bpe", 0), "plain_tts": vocab.stream_range("codec", 0)}
    for thr in (0.5, 0.9):
        outs = generate(eager, prompts, DecodeConfig(search="sample", temperature=1.0, end_threshold=thr, max_len=50, seed=3))
        for task, out in zip(prompts.tasks, outs):
            p = 1 / (cols[task][1] - cols[task][0] + 1)
            assert len(out) == math.ceil(math.log(1 - thr) / math.log(1 - p)) - 1, (task, thr)
    never = generate_nbest(eager, prompts, DecodeConfig(search="sample", end_threshold=1.0, max_len=9))
    assert [len(h[0].frames(2)) for h in never] == [9] * len(never)
    assert not any(h[0].stopped for h in never)  # the limit ended them: not counted as stopped
    assert all(h[0].stopped for h in generate_nbest(eager, prompts, DecodeConfig(max_len=9)))
    with pytest.raises(ConfigError, match="end_threshold"):
        DecodeConfig(end_threshold=1.5).validate()


def test_length_prior_bounds_lengths_by_the_length_head(setup):
    model, vocab, prompts = setup
    eager = _eager(model, vocab, length_weight=1.0)
    with torch.no_grad():  # predict 2 target rows per text-condition row (per audio row for ASR)
        eager.length_head[-1].weight.zero_()
        eager.length_head[-1].bias.fill_(math.log(2.0))
    text = (prompts.kinds == 2).sum(1)
    units = torch.where(text > 0, text, (prompts.kinds == 3).sum(1)).tolist()
    outs = generate(eager, prompts, DecodeConfig(min_len_prior=1.0, max_len=50))
    assert [len(o) for o in outs] == [2 * u for u in units]
    never = DecodeConfig(search="sample", end_threshold=1.0, max_len_prior=0.5, max_len=50)
    assert [len(o) for o in generate(eager, prompts, never)] == units
    with pytest.raises(ValueError, match="length head"):
        generate(model, prompts, DecodeConfig(min_len_prior=1.0))


def test_repetition_penalty_reduces_repeats(setup):
    model, vocab, prompts = setup
    b = prompts.tasks.index("asr")
    plain = generate(model, prompts, DecodeConfig(max_len=12))[b][:, 0]
    pen = generate(model, prompts, DecodeConfig(max_len=12, repetition_penalty=50.0))[b][:, 0]
    assert len(set(pen.tolist())) >= len(set(plain.tolist()))
    assert len(set(pen.tolist())) == min(len(pen), len(range(*vocab.stream_range("text_bpe", 0))))


def test_nbest_and_guidance(setup):
    model, _, prompts = setup
    hyps = generate_nbest(model, prompts, DecodeConfig(search="sample", nbest=3, temperature=2.0, max_len=8))
    assert [len(h) for h in hyps] == [3] * len(prompts.lengths)
    assert any(not np.array_equal(h[0].frames(2), h[1].frames(2)) for h in hyps), "n-best samples are identical"
    base = generate(model, prompts, DecodeConfig(max_len=8))
    same = generate(model, prompts, DecodeConfig(max_len=8, cfg_scale=1.0))
    guided = generate(model, prompts, DecodeConfig(max_len=8, cfg_scale=3.0))
    assert all(np.array_equal(x, y) for x, y in zip(base, same))
    assert not all(np.array_equal(x, y) for x, y in zip(base, guided))


def test_ordinal_estimate_takes_each_fields_median_or_mean():
    from speechlm.infer.sampling import ordinal_estimate

    # one 3-bit field, half the mass on level 1 and half on level 6: the argmax is a tail (1),
    # the mean their middle (3.5 -> 4, round half to even), the median the first level reaching 0.5
    p = torch.zeros(1, 8)
    p[0, 1], p[0, 6] = 0.5, 0.5
    assert ordinal_estimate(p, [3], "mean").tolist() == [4]
    assert ordinal_estimate(p, [3], "median").tolist() == [1]
    p[0, 1], p[0, 5], p[0, 6] = 0.4, 0.3, 0.3
    assert ordinal_estimate(p, [3], "median").tolist() == [5]
    # two fields (1 bit, then 2 bits) packed high first: token = f0 * 4 + f1, marginals apart
    joint = torch.zeros(2, 8)
    joint[0, 1 * 4 + 3] = 0.6  # f0 = 1, f1 = 3
    joint[0, 0 * 4 + 0] = 0.4  # f0 = 0, f1 = 0
    joint[1] = 1 / 8  # uniform: f0 median 0, f1 median 1; means 0.5 -> 0 and 1.5 -> 2
    assert ordinal_estimate(joint, [1, 2], "median").tolist() == [1 * 4 + 3, 0 * 4 + 1]
    assert ordinal_estimate(joint, [1, 2], "mean").tolist() == [1 * 4 + 2, 0 * 4 + 2]  # 0.6 -> 1, 1.8 -> 2
    with pytest.raises(ValueError, match="make 16"):
        ordinal_estimate(joint, [2, 2])


def test_codec2_declares_its_ordinal_fields():
    pytest.importorskip("pycodec2")
    from speechlm.tokenizers.codec2 import Codec2Tokenizer

    assert Codec2Tokenizer().ordinal_fields == [[1, 1], [7], [5], *[[5, 5]] * 5]
    assert Codec2Tokenizer(layout="fields").ordinal_fields == [[1], [1], [7], [5], *[[5]] * 10]
    assert Codec2Tokenizer(layout="bytes").ordinal_fields is None


def test_ordinal_decoding_replaces_values_but_not_ends_or_text(setup):
    model, vocab, prompts = setup
    eager = _eager(model, vocab)  # tied logits: every allowed column equally likely
    fields = {"codec": [[3], [3]]}  # N_CODES = 8 levels per stream
    base = dict(min_len=5, max_len=5)
    greedy = generate(eager, prompts, DecodeConfig(**base))
    off = [vocab.offset("codec", k) for k in range(2)]
    for how, level in (("median", 3), ("mean", 4)):  # uniform over 8: median 3, mean 3.5 -> 4
        outs = generate_nbest(eager, prompts, DecodeConfig(ordinal=how, **base), ordinal_fields=fields)
        for task, hyps, plain in zip(prompts.tasks, outs, greedy):
            out = hyps[0].frames(2)
            if task == "asr":  # text_bpe has no ordinal fields: greedy as before
                assert np.array_equal(out, plain)
            else:
                assert len(out) == 5 and (out == np.array(off) + level).all(), (how, out)
                assert (plain == np.array(off)).all(), "greedy takes the first of the tied columns"
    one = generate_nbest(eager, prompts, DecodeConfig(ordinal="median", ordinal_streams=[1], **base), ordinal_fields=fields)
    tts = prompts.tasks.index("plain_tts")
    assert (one[tts][0].frames(2) == np.array([off[0], off[1] + 3])).all(), "stream 0 left to the search"
    # the distribution the search draws from: top-k 1 leaves the argmax alone
    top1 = generate_nbest(model, prompts, DecodeConfig(search="sample", top_k=1, ordinal="mean", **base), ordinal_fields=fields)
    assert all(np.array_equal(h[0].frames(2), p) for h, p in zip(top1, generate(model, prompts, DecodeConfig(**base))))
    # ends keep their own probability: a row free to end ends as greedy does (tied: <eos> comes first)
    ends = generate_nbest(eager, prompts, DecodeConfig(ordinal="median", max_len=20), ordinal_fields=fields)
    assert [len(h[0].frames(2)) for h in ends] == [0] * len(ends)
    with pytest.raises(ValueError, match="ordinal fields"):
        generate(eager, prompts, DecodeConfig(ordinal="median", **base))
    with pytest.raises(ConfigError, match="ordinal"):
        DecodeConfig(ordinal="mode").validate()
    with pytest.raises(ConfigError, match="not applied by search 'beam'"):
        DecodeConfig(search="beam", ordinal="mean").validate()


def test_pipeline_decodes_codec2_by_its_fields_medians(tmp_path):
    """Through a packed model (what `speechlm decode` loads): the pipeline gives the sampler its
    tokenizers' fields, and each Codec 2 field takes the median of its levels."""
    pytest.importorskip("pycodec2")
    from speechlm.infer.pipeline import Pipeline
    from test_model_helpers import packed_model_dir

    pipe = Pipeline.load(packed_model_dir(tmp_path / "m", ["plain_tts"], ["<unk>", *"abc "]))
    assert pipe.ordinal_fields() == {"codec": [[1, 1], [7], [5], *[[5, 5]] * 5]}
    with torch.no_grad():
        pipe.model.backbone.norm.weight.zero_()  # tied logits: every level of a field equally likely
    cond = pipe.condition_tokens(pipe.template("plain_tts"), {"phones": "hello world"}, "u")
    base = dict(min_len=6, max_len=6)
    plain = pipe.generate_tokens("plain_tts", [cond], DecodeConfig(**base))[0]
    med = pipe.generate_tokens("plain_tts", [cond], DecodeConfig(ordinal="median", **base))[0]
    assert plain.shape == med.shape == (6, 8) and (plain == 0).all()
    # voicing bits: median of 2 levels 0; pitch 128 levels: 63; energy 32: 15; LSP pairs 15 and 15
    assert (med == np.array([0, 63, 15, *[15 * 32 + 15] * 5])).all(), med
