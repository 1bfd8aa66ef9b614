"""model.history_noise: while training, generated audio slots read random tokens of their own
stream as input (exposure bias); targets, conditions, text and decoding stay as they are."""
from __future__ import annotations

import pytest
import torch

from speechlm.config import ConfigError
from speechlm.data.batch import collate
from speechlm.data.sequence import AUDIO_TGT
from speechlm.models import SpeechLM
from test_model_helpers import tiny_config, toy_examples, toy_vocab


@pytest.mark.parametrize("strategy", ["delay", "parallel", "multiscale", "ar_nar"])
def test_only_generated_audio_slots_change_and_stay_in_their_stream(strategy):
    vocab = toy_vocab(3)
    torch.manual_seed(0)
    model = SpeechLM(tiny_config(strategy, history_noise=0.5), vocab).train()
    batch = collate(toy_examples(vocab, 6, n_streams=3))
    prep = model.prepare(batch.tokens, batch.loss_weight, batch.kinds, batch.lengths, batch.prefix_lens)
    clean = model.pattern.ar_tokens(prep.layout.tokens, prep.layout.kinds)
    noisy = model.noisy_history(prep)
    changed = noisy != clean
    generated = (prep.layout.kinds == AUDIO_TGT)[..., None] & (prep.layout.weight > 0)
    assert not bool((changed & ~generated).any())  # conditions, text, specials and pads untouched
    share = float(changed.sum()) / float((generated & (clean != vocab.pad_id)).sum())
    assert 0.25 < share < 0.6  # half are drawn, a few draw their own token again
    for k in range(clean.shape[-1]):
        ck, nk = clean[..., k][changed[..., k]], noisy[..., k][changed[..., k]]
        for a, b in zip(ck.tolist(), nk.tolist()):
            assert vocab.tokenizer_of(a) == vocab.tokenizer_of(b) == ("codec", vocab.tokenizer_of(a)[1])


def test_training_loss_sees_the_noise_and_evaluation_does_not():
    vocab = toy_vocab(2)
    batch = collate(toy_examples(vocab, 4))
    torch.manual_seed(0)
    plain = SpeechLM(tiny_config("delay"), vocab)
    torch.manual_seed(0)
    noisy = SpeechLM(tiny_config("delay", history_noise=0.3), vocab)
    with torch.no_grad():
        assert torch.equal(plain.eval()(batch).loss, noisy.eval()(batch).loss)  # buffers only: same weights
        torch.manual_seed(1)
        a = noisy.train()(batch)
        assert not torch.equal(a.loss, plain.train()(batch).loss)
        assert torch.equal(a.weight_sum, plain(batch).weight_sum)  # the same targets carry the loss
    assert "_stream_lo" not in noisy.state_dict()  # nothing new in checkpoints
    with pytest.raises(ConfigError, match="history_noise"):
        tiny_config("delay", history_noise=1.0).validate()


def test_model_source_draws_what_the_model_predicts_for_that_slot():
    vocab = toy_vocab(2)
    batch = collate(toy_examples(vocab, 8, tasks=("plain_tts",)))
    torch.manual_seed(0)
    model = SpeechLM(tiny_config("delay", history_noise=0.99, history_noise_source="model"), vocab)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.eval()  # learn the toy TTS from clean histories first
    for _ in range(150):
        opt.zero_grad()
        model(batch).loss.backward()
        opt.step()
    model.train()
    prep = model.prepare(batch.tokens, batch.loss_weight, batch.kinds, batch.lengths, batch.prefix_lens)
    clean = model.pattern.ar_tokens(prep.layout.tokens, prep.layout.kinds)
    generated = (prep.layout.kinds == AUDIO_TGT)[..., None] & (prep.layout.weight > 0) & (clean != vocab.pad_id)
    torch.manual_seed(2)
    drawn = model.noisy_history(prep)
    # a model that learned the slot draws its true token mostly; a draw from the wrong slot (or
    # uniform, 1 in 8 here) would not
    assert float((drawn == clean)[generated].float().mean()) > 0.6
    assert torch.equal(drawn[~generated], clean[~generated])
    model.config.history_noise_source = "random"
    assert float((model.noisy_history(prep) == clean)[generated].float().mean()) < 0.3
    with pytest.raises(ConfigError, match="depth head"):
        SpeechLM(tiny_config("multiscale", history_noise=0.2, history_noise_source="model"), vocab)


def test_history_noise_streams_leaves_the_other_streams_clean():
    vocab = toy_vocab(3)
    torch.manual_seed(0)
    model = SpeechLM(tiny_config("delay", history_noise=0.9, history_noise_streams=[1, 2]), vocab).train()
    batch = collate(toy_examples(vocab, 6, n_streams=3))
    prep = model.prepare(batch.tokens, batch.loss_weight, batch.kinds, batch.lengths, batch.prefix_lens)
    clean = model.pattern.ar_tokens(prep.layout.tokens, prep.layout.kinds)
    changed = model.noisy_history(prep) != clean
    streams = {vocab.tokenizer_of(int(t))[1] for t in clean[changed].tolist()}
    assert streams == {1, 2}  # codec stream 0 (a phone stream's place) is never corrupted
    with pytest.raises(ConfigError, match="history_noise_streams"):
        tiny_config("delay", history_noise=0.5, history_noise_streams=[-1]).validate()
