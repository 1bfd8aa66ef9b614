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
