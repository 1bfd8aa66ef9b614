"""Decoding with trained tiny models: every strategy reproduces what it learned, batched decoding of
mixed-length prompts equals one-by-one decoding, beam search, CTC greedy and joint CTC/attention."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from speechlm.data.batch import collate
from speechlm.data.sequence import build_example
from speechlm.infer import DecodeConfig, generate, generate_nbest
from speechlm.infer.search import CTCPrefixScorer
from speechlm.models import SpeechLM
from speechlm.tasks import load_template
from test_model_helpers import N_TEXT, cached_trained_model, tiny_config, toy_examples, toy_vocab, train

STRATEGIES = ["flat", "parallel", "delay", "multiscale", "ar_nar"]


def targets_of(example) -> np.ndarray:
    return example.tokens[example.kinds >= 4]  # TEXT_TGT / AUDIO_TGT rows, markers and eos excluded


@pytest.fixture(scope="module", params=STRATEGIES)
def trained(request):
    model, vocab, losses = cached_trained_model(request.param)
    assert losses[-1] < 0.05
    return request.param, model, vocab


def test_decoding_reproduces_the_learned_targets(trained):
    """Audio targets come back as valid codec frames (de-interleaved), text targets as text ids."""
    strategy, model, vocab = trained
    prompts = toy_examples(vocab, 4, with_targets=False)
    full = toy_examples(vocab, 4)
    outs = generate(model, collate(prompts), DecodeConfig(max_len=20))
    for out, ex in zip(outs, full):
        assert np.array_equal(out, targets_of(ex)), f"{strategy}: {ex.id} decoded {out.tolist()}"


def test_batched_equals_one_by_one(trained):
    strategy, model, vocab = trained
    prompts = toy_examples(vocab, 4, with_targets=False)
    assert len({len(p) for p in prompts}) > 2, "the prompts should have different lengths"
    cfg = DecodeConfig(max_len=20)
    batched = generate(model, collate(prompts), cfg)
    single = [generate(model, collate([p]), cfg)[0] for p in prompts]
    assert all(np.array_equal(a, b) for a, b in zip(batched, single)), strategy
    assert len({len(o) for o in batched}) > 1, "rows should finish at different steps"


def test_beam_search_on_text_targets():
    model, vocab, _ = cached_trained_model("delay")  # text-target search does not depend on the strategy
    prompts = [p for p in toy_examples(vocab, 4, with_targets=False) if p.task == "asr"]
    full = [e for e in toy_examples(vocab, 4) if e.task == "asr"]
    batch = collate(prompts)
    greedy = generate(model, batch, DecodeConfig(max_len=20))
    beam1 = generate(model, batch, DecodeConfig(search="beam", beam_size=1, max_len=20))
    assert all(np.array_equal(a, b) for a, b in zip(greedy, beam1))
    hyps = generate_nbest(model, batch, DecodeConfig(search="beam", beam_size=4, nbest=3, max_len=20))
    for h, ex in zip(hyps, full):
        assert len(h) == 3 and h[0].score >= h[1].score >= h[2].score
        assert np.array_equal(h[0].frames(2), targets_of(ex))
    assert all(h[0].stopped for h in hyps)  # every best hypothesis ended with <eos>
    cut = generate_nbest(model, batch, DecodeConfig(search="beam", beam_size=4, max_len=1))
    assert not any(h[0].stopped for h in cut)  # the targets are longer than 1: the limit ended them
    with pytest.raises(ValueError, match="beam search is for text targets"):
        generate(model, collate(toy_examples(vocab, 1, with_targets=False)), DecodeConfig(search="beam"))


def test_ctc_prefix_scorer_matches_ctc_loss():
    torch.manual_seed(0)
    T, C = 12, 6
    logp = torch.randn(2, T, C).log_softmax(-1)
    lengths = torch.tensor([12, 9])
    scorer = CTCPrefixScorer(logp, lengths)
    for b, labels in ((0, [1, 3, 3, 2]), (1, [4, 1])):
        state = scorer.initial(torch.tensor([b]))
        for c in labels:  # extend one label at a time, keeping the state of the chosen candidate
            psi, r = scorer.score(state, torch.tensor([[c]]))
            state = {"rows": state["rows"], "r": r[:, 0], "last": torch.tensor([c]), "score": psi[:, 0]}
        full, _ = scorer.score(state, torch.tensor([[0]]))  # column 0 = end: full probability
        ref = -F.ctc_loss(logp[b : b + 1].transpose(0, 1), torch.tensor([labels]), lengths[b : b + 1],
                          torch.tensor([len(labels)]), blank=0, reduction="sum")
        assert float(full) == pytest.approx(float(ref), abs=1e-4)


def ctc_examples(vocab, n: int, with_targets: bool = True):
    """ASR toy where each text token is spoken as two frames (CTC-feasible)."""
    out = []
    for i in range(n):
        rng = np.random.default_rng(i)
        text = rng.integers(0, N_TEXT - 1, (2 + i % 3, 1))
        speech = np.repeat(np.concatenate([text % 8, (text * 3) % 8], 1), 2, axis=0)
        out.append(build_example(f"c{i}", load_template("asr"), {"speech": speech, "text": text}, vocab, 2, with_targets))
    return out


def test_ctc_greedy_and_joint_ctc_attention():
    torch.manual_seed(0)
    vocab = toy_vocab(2)
    model = SpeechLM(tiny_config("delay", ctc_weight=0.5, ctc_tokenizer="text_bpe"), vocab)
    losses = train(model, collate(ctc_examples(vocab, 6)), 200)
    assert losses[-1] < 0.1
    prompts = collate(ctc_examples(vocab, 6, with_targets=False))
    want = [targets_of(e) for e in ctc_examples(vocab, 6)]
    ctc = generate(model, prompts, DecodeConfig(search="ctc_greedy"))
    assert all(np.array_equal(a, b) for a, b in zip(ctc, want))
    joint = generate_nbest(model, prompts, DecodeConfig(search="beam", beam_size=3, ctc_weight=0.5, max_len=10))
    assert all(np.array_equal(h[0].frames(2), b) for h, b in zip(joint, want))
    plain = generate_nbest(model, prompts, DecodeConfig(search="beam", beam_size=3, max_len=10))
    assert [h[0].score for h in joint] != [h[0].score for h in plain], "the CTC term must change the scores"
    with pytest.raises(ValueError, match="no CTC head"):
        generate(SpeechLM(tiny_config("delay"), vocab), prompts, DecodeConfig(search="ctc_greedy"))


def test_kv_cache_and_recomputation_agree(trained):
    strategy, model, vocab = trained
    prompts = collate(toy_examples(vocab, 3, with_targets=False))
    cached = generate(model, prompts, DecodeConfig(max_len=20))
    recomputed = generate(model, prompts, DecodeConfig(max_len=20, kv_cache=False))
    assert all(np.array_equal(a, b) for a, b in zip(cached, recomputed)), strategy


@pytest.mark.parametrize("strategy", ["delay", "ar_nar", "flat"])
def test_multi_segment_targets_switch_masks_at_markers(tmp_path, strategy):
    """A task with two targets (text, then audio): the model emits the audio marker after the text
    and the decoder switches vocabulary masks there."""
    (tmp_path / "t2.yaml").write_text(
        "name: t2\nconditions: [{name: ph, modality: text, tokenizer: phone, source: text}]\n"
        "targets:\n  - {name: txt, modality: text, tokenizer: text_bpe, source: text.2}\n"
        "  - {name: sp, modality: audio, tokenizer: codec, source: wav.scp}\n")
    tpl = load_template(str(tmp_path / "t2.yaml"))
    vocab = toy_vocab(2)
    vocab.add_task("t2")

    def examples(with_targets: bool):
        out = []
        for i in range(4):
            ph = np.random.default_rng(i).integers(0, 6, (2 + i % 3, 1))
            segs = {"ph": ph, "txt": ph + 1, "sp": np.concatenate([ph, (ph * 3 + 1) % 8], 1)}
            out.append(build_example(f"m{i}", tpl, segs, vocab, 2, with_targets))
        return out

    torch.manual_seed(0)
    model = SpeechLM(tiny_config(strategy), vocab)
    assert train(model, collate(examples(True)), 200)[-1] < 0.05
    hyps = generate_nbest(model, collate(examples(False)), DecodeConfig(max_len=20), templates={"t2": tpl})
    for h, ex in zip(hyps, examples(True)):
        txt, sp = h[0].segments
        assert (txt.tokenizer, sp.tokenizer) == ("text_bpe", "codec")
        assert txt.end == vocab.marker_id("codec") and sp.end == vocab.eos_id
        assert np.array_equal(h[0].frames(2), targets_of(ex))
