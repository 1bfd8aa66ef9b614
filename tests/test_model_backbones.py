"""Backbones: parity of the built-in decoder with transformers' Llama, the HF backbone's vocabulary
expansion, and incremental decoding with the KV cache against a full forward (every strategy,
both backbones)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from speechlm.data.batch import collate
from speechlm.data.sequence import AUDIO_TGT
from speechlm.infer.context import DecodeContext
from speechlm.models import BuiltinDecoder, SpeechLM, load_llama_weights
from test_model_helpers import tiny_config, toy_examples, toy_vocab

transformers = pytest.importorskip("transformers")
STRATEGIES = ["flat", "parallel", "delay", "multiscale", "ar_nar"]


def tiny_llama_config(vocab_size: int = 50, tie: bool = False):
    return transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=tie, attn_implementation="sdpa",
    )


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A tiny Llama saved with save_pretrained (what a user's local LLM directory looks like)."""
    torch.manual_seed(0)
    lm = transformers.LlamaForCausalLM(tiny_llama_config()).eval()
    d = tmp_path_factory.mktemp("llama")
    lm.save_pretrained(d)
    return d, lm


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A tiny BERT encoder saved with save_pretrained (what a sentence encoder's directory, e.g.
    tools/install_minilm.sh's, looks like: BertModel weights, no LM head)."""
    torch.manual_seed(0)
    enc = transformers.BertModel(transformers.BertConfig(
        vocab_size=50, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=256)).eval()
    d = tmp_path_factory.mktemp("bert")
    enc.save_pretrained(d)
    return d, enc


def backbone_kw(backbone: str, llama_dir, bert_dir) -> dict:
    paths = {"hf": llama_dir[0], "hf_bert": bert_dir[0]}
    return {"backbone": "hf", "hf_path": str(paths[backbone])} if backbone in paths else {}


def test_builtin_matches_transformers_llama(llama_dir):
    _, lm = llama_dir
    ours = BuiltinDecoder(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128).eval()
    load_llama_weights(ours, lm)
    x = torch.randn(2, 9, 64)
    with torch.no_grad():
        ref = lm.model(inputs_embeds=x).last_hidden_state
        got = ours(x)
        assert torch.allclose(got, ref, atol=1e-5), f"max diff {(got - ref).abs().max():.2e}"
        # and with explicit positions, a cache, and one token at a time
        cache = ours.new_cache()
        steps = [ours(x[:, t : t + 1], torch.full((2, 1), t), None, cache) for t in range(9)]
        assert torch.allclose(torch.cat(steps, 1), ref, atol=1e-5)


def test_hf_backbone_keeps_pretrained_text_rows(llama_dir, tmp_path):
    path, lm = llama_dir
    vocab = toy_vocab(2)
    vocab.add_tokenizer("llm", [50])  # the LLM's own tokenizer, added after the codec: ids shift
    cfg = tiny_config("delay", backbone="hf", hf_path=str(path), hf_text_tokenizer="llm", tie_embeddings=False)
    model = SpeechLM(cfg, vocab)
    a, b = vocab.stream_range("llm", 0)
    assert a > 64 and len(model.embed.weight) == len(vocab)
    assert torch.equal(model.embed.weight[a:b], lm.model.embed_tokens.weight)
    assert torch.equal(model.head.weight[a:b], lm.lm_head.weight)
    other = model.embed.weight[: a]
    ref_std = lm.model.embed_tokens.weight.detach().std()
    assert abs(float(other.detach().std()) - float(ref_std)) < 0.3 * float(ref_std), "new rows should get the LLM's statistics"
    assert not any("embed_tokens" in k for k in model.state_dict()), "the LLM's own embedding must be dropped"
    # the body is the pretrained one
    assert torch.equal(model.backbone.body.layers[0].mlp.up_proj.weight, lm.model.layers[0].mlp.up_proj.weight)
    # save / load without the original directory
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "hf_backbone" / "config.json").is_file()
    loaded = SpeechLM.from_pretrained(tmp_path / "m")
    batch = collate(toy_examples(vocab, 2))
    with torch.no_grad():
        assert torch.allclose(model.eval()(batch).loss, loaded.eval()(batch).loss, atol=1e-6)


def test_hf_backbone_reads_a_bert_encoder_as_a_decoder(bert_dir, tmp_path):
    """An encoder checkpoint (BertModel) loads as the body with its weights and word embeddings,
    runs causally (is_decoder) and round-trips through save/load."""
    path, enc = bert_dir
    vocab = toy_vocab(2)
    vocab.add_tokenizer("enc", [50])
    model = SpeechLM(tiny_config("delay", backbone="hf", hf_path=str(path), hf_text_tokenizer="enc"), vocab).eval()
    assert model.backbone.config.is_decoder
    a, b = vocab.stream_range("enc", 0)
    assert torch.equal(model.embed.weight[a:b], enc.embeddings.word_embeddings.weight)
    body = model.backbone.body
    assert torch.equal(body.encoder.layer[1].intermediate.dense.weight, enc.encoder.layer[1].intermediate.dense.weight)
    x = torch.randn(1, 6, 64)
    changed = x.clone()
    changed[:, 4:] = torch.randn(1, 2, 64)
    with torch.no_grad():
        h, h2 = model.backbone(x), model.backbone(changed)
    assert torch.allclose(h[:, :4], h2[:, :4], atol=1e-6) and not torch.allclose(h[:, 4:], h2[:, 4:])
    model.save_pretrained(tmp_path / "m")
    loaded = SpeechLM.from_pretrained(tmp_path / "m").eval()
    batch = collate(toy_examples(vocab, 2))
    with torch.no_grad():
        assert torch.allclose(model(batch).loss, loaded(batch).loss, atol=1e-6)


def test_frozen_text_rows_do_not_move(llama_dir):
    path, lm = llama_dir
    vocab = toy_vocab(2)
    vocab.add_tokenizer("llm", [50])
    model = SpeechLM(tiny_config("parallel", backbone="hf", hf_path=str(path), hf_text_tokenizer="llm",
                                 freeze_text_rows=True), vocab)
    a, b = vocab.stream_range("llm", 0)
    before = model.embed.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = collate(toy_examples(vocab, 2))
    batch.tokens[:, 1, 0] = a + 3  # make sure a text row is used
    model(batch).loss.backward()
    opt.step()
    assert torch.equal(model.embed.weight[a:b], before[a:b])
    assert not torch.equal(model.embed.weight[:a], before[:a])


def incremental_vs_full(model: SpeechLM, vocab, n_streams: int) -> float:
    """Max |difference| of hidden states and stream logits between teacher-forced full forward and
    prefill + one-step-at-a-time decoding with the KV cache (rows of different lengths)."""
    full = collate(toy_examples(vocab, 3, n_streams))
    prompts = collate(toy_examples(vocab, 3, n_streams, with_targets=False))
    model.eval()
    worst = 0.0
    with torch.no_grad():
        h_full, prep = model.hidden_states(full)
        ctx, h = DecodeContext.prefill(model, prompts)
        p_prep = model.prepare(prompts.tokens, prompts.loss_weight, prompts.kinds, prompts.lengths, prompts.prefix_lens)
        start = p_prep.lengths  # reduced prompt lengths; target rows map 1:1 after it
        B = len(start)
        steps = int((prep.lengths - start).min())
        for i in range(steps):
            idx = start - 1 + i
            ref = h_full[torch.arange(B), idx]
            worst = max(worst, float((h - ref).abs().max()))
            for k in range(model.head.n_streams):
                worst = max(worst, float((model.head.logits(h, k) - model.head.logits(ref, k)).abs().max()))
            if i + 1 < steps:
                r = prep.last[torch.arange(B), idx + 1]
                rows = prep.layout.tokens[torch.arange(B), r].clone()
                if model.pattern.head == "ar_nar":  # the AR pass sees stream 0 of audio targets only
                    rows[prep.layout.kinds[torch.arange(B), r] == AUDIO_TGT, 1:] = vocab.pad_id
                h = ctx.step(model.embed(rows[:, None]))
    return worst


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("backbone", ["builtin", "hf", "hf_bert"])
def test_kv_cache_matches_full_forward(strategy, backbone, llama_dir, bert_dir):
    """(For the BERT encoder this also says it attends causally: the full forward sees every position.)"""
    torch.manual_seed(0)
    vocab = toy_vocab(3)
    kw = backbone_kw(backbone, llama_dir, bert_dir)
    model = SpeechLM(tiny_config(strategy, cond_reduction=2, **kw), vocab)
    assert incremental_vs_full(model, vocab, 3) < 1e-4


@pytest.mark.parametrize("backbone", ["builtin", "hf", "hf_bert"])
def test_batched_decoding_with_row_dropping_matches_single_rows(backbone, llama_dir, bert_dir):
    """Rows stop at different steps (max length relative to the condition length), so finished rows
    leave the batch and the KV cache is re-indexed: outputs must equal one-by-one decoding."""
    from speechlm.infer import DecodeConfig, generate

    torch.manual_seed(0)
    vocab = toy_vocab(2)
    model = SpeechLM(tiny_config("delay", **backbone_kw(backbone, llama_dir, bert_dir)), vocab).eval()
    prompts = toy_examples(vocab, 4, with_targets=False)
    cfg = DecodeConfig(min_len_ratio=1.5, max_len_ratio=1.5, max_len=50)
    batched = generate(model, collate(prompts), cfg)
    assert len({len(o) for o in batched}) > 2
    for p, out in zip(prompts, batched):
        assert np.array_equal(out, generate(model, collate([p]), cfg)[0])


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_builtin_one_position_step_equals_forward(kv_heads):
    """``BuiltinDecoder.step`` (fused weights, RoPE table, decoding's fast path) gives forward's
    hidden states and cache, with per-row positions and a key mask (left-padded rows), and follows
    weight updates."""
    torch.manual_seed(0)
    bb = BuiltinDecoder(64, 2, 4, n_kv_heads=kv_heads).eval()
    with torch.no_grad():
        for p in bb.parameters():  # non-trivial norm gains
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 8, 64)
    valid = torch.ones(2, 8, dtype=torch.bool)
    valid[1, :2] = False  # row 1 is left-padded by two positions
    pos = (valid.cumsum(1) - 1).clamp(min=0)
    for update in (False, True):
        if update:
            with torch.no_grad():
                bb.layers[1].mlp.down_proj.weight.mul_(2.0)  # e.g. an optimizer step
                bb.norm.weight.add_(0.5)
        slow, fast = bb.new_cache(2), bb.new_cache(2)
        with torch.no_grad():
            prefill_mask = (valid[:, None, :5] & torch.ones(5, 5, dtype=torch.bool).tril())[:, None] | torch.eye(5, dtype=torch.bool)
            bb(x[:, :5], pos[:, :5], prefill_mask, slow)
            bb(x[:, :5], pos[:, :5], prefill_mask, fast)
            for t in range(5, 8):
                mask = valid[:, None, None, : t + 1]
                ref = bb(x[:, t : t + 1], pos[:, t : t + 1], mask, slow)[:, 0]
                out = bb.step(x[:, t], pos[:, t], mask, fast)
                torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        assert fast.length == slow.length == 8
        torch.testing.assert_close(fast.k[1][:, :, :8], slow.k[1][:, :, :8], rtol=1e-5, atol=1e-5)
    cache = bb.new_cache(2)  # positions 0..6 again, then position 7 under bf16 autocast
    with torch.no_grad():
        m = (valid[:, None, :7] & torch.ones(7, 7, dtype=torch.bool).tril())[:, None] | torch.eye(7, dtype=torch.bool)
        bb(x[:, :7], pos[:, :7], m, cache)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = bb.step(x[:, 7], pos[:, 7], valid[:, None, None, :8], cache)
    assert out.dtype == torch.float32 and float((out - ref).abs().max()) < 0.15


def test_builtin_dropout_acts_on_each_sublayer_in_training_only():
    """``dropout`` drops the attention weights and each sublayer's output while training (what
    regularizes a small model), and nothing at evaluation: there it equals the model without it."""
    torch.manual_seed(0)
    plain = BuiltinDecoder(dim=32, n_layers=2, n_heads=4, n_kv_heads=2)
    dropped = BuiltinDecoder(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, dropout=0.3)
    dropped.load_state_dict(plain.state_dict())
    x = torch.randn(2, 7, 32)
    plain.eval(), dropped.eval()
    assert torch.equal(plain(x), dropped(x))
    dropped.train()
    a, b = dropped(x), dropped(x)
    assert not torch.allclose(a, b)
    # with the attention weights left alone, outputs still differ: the sublayer outputs are dropped
    for layer in dropped.layers:
        layer.self_attn.dropout = 0.0
    assert not torch.allclose(dropped(x), dropped(x))
    for layer in dropped.layers:
        layer.dropout = 0.0
    assert torch.equal(dropped(x), plain(x))


@pytest.mark.parametrize("backbone", ["builtin", "hf", "hf_bert"])
def test_frozen_layers_get_no_gradient_and_do_not_move(backbone, llama_dir, bert_dir, tmp_path):
    """model.freeze_layers: the first layers (and an encoder's own embedding layer) get no gradient
    and keep their weights through an optimizer step; the layers above and the tied rows train; the
    forward is that of the unfrozen model; a saved model loads frozen again."""
    from speechlm.train.build import make_optimizer
    from speechlm.train.config import TrainConfig

    vocab = toy_vocab(2)
    kw = backbone_kw(backbone, llama_dir, bert_dir)
    torch.manual_seed(0)
    free = SpeechLM(tiny_config("delay", **kw), vocab)
    torch.manual_seed(0)
    model = SpeechLM(tiny_config("delay", freeze_layers=1, **kw), vocab)
    model.load_state_dict(free.state_dict())
    batch = collate(toy_examples(vocab, 2))
    with torch.no_grad():
        assert torch.equal(free.eval()(batch).loss, model.eval()(batch).loss)
    model.train()
    body = model.backbone.body if backbone != "builtin" else model.backbone
    layers = body.layers if backbone in ("builtin", "hf") else body.encoder.layer
    frozen = list(layers[0].parameters()) + (list(body.embeddings.parameters()) if backbone == "hf_bert" else [])
    before = [p.detach().clone() for p in frozen]
    trained = layers[1].parameters()
    opt = make_optimizer(model, TrainConfig(lr=1e-2, weight_decay=0.0))
    assert not {id(p) for p in frozen} & {id(p) for g in opt.param_groups for p in g["params"]}
    model(batch).loss.backward()
    assert all(p.grad is None for p in frozen)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)
    assert model.embed.weight.grad is not None  # through the tied output head
    opt.step()
    assert all(torch.equal(p, b) for p, b in zip(frozen, before))
    model.save_pretrained(tmp_path / "m")
    loaded = SpeechLM.from_pretrained(tmp_path / "m")
    loaded_layers = (loaded.backbone.body.encoder.layer if backbone == "hf_bert" else
                     (loaded.backbone.body.layers if backbone == "hf" else loaded.backbone.layers))
    assert not any(p.requires_grad for p in loaded_layers[0].parameters())
    assert all(p.requires_grad for p in loaded_layers[1].parameters())


@pytest.mark.parametrize("backbone", ["hf", "hf_bert"])
def test_hf_layers_keeps_the_first_layers_of_the_pretrained_model(backbone, llama_dir, bert_dir, tmp_path):
    """model.hf_layers: the body has that many layers, holding the pretrained model's first ones;
    a saved model loads with them, and more layers than the model has is an error."""
    vocab = toy_vocab(2)
    kw = backbone_kw(backbone, llama_dir, bert_dir)
    full = SpeechLM(tiny_config("delay", **kw), vocab)
    model = SpeechLM(tiny_config("delay", hf_layers=1, **kw), vocab).eval()
    layers = lambda m: m.backbone.body.layers if backbone == "hf" else m.backbone.body.encoder.layer
    assert len(layers(full)) == 2 and len(layers(model)) == 1 and model.backbone.n_layers == 1
    kept, first = layers(model)[0].state_dict(), layers(full)[0].state_dict()
    assert kept.keys() == first.keys() and all(torch.equal(kept[k], first[k]) for k in kept)
    model.save_pretrained(tmp_path / "m")
    loaded = SpeechLM.from_pretrained(tmp_path / "m").eval()
    assert len(layers(loaded)) == 1
    batch = collate(toy_examples(vocab, 2))
    with torch.no_grad():
        assert torch.allclose(model(batch).loss, loaded(batch).loss, atol=1e-6)
    with pytest.raises(ValueError, match="model.hf_layers 3: .* has 2 layers"):
        SpeechLM(tiny_config("delay", hf_layers=3, **kw), vocab)


@pytest.mark.parametrize("kw, words", [
    (dict(hf_layers=2), "hf_layers: .* backbone 'builtin'"),
    (dict(freeze_layers=3), "more than the backbone's 2 layers"),
    (dict(freeze_layers=1, cond_reduction=2), "cond_reduction would never learn"),
    (dict(freeze_layers=1, tie_embeddings=False), "tie_embeddings: false would never learn"),
    (dict(freeze_layers=-1), "freeze_layers must be >= 0"),
])
def test_bad_layer_options_are_refused(kw, words):
    from speechlm.config import ConfigError

    with pytest.raises(ConfigError, match=words):
        SpeechLM(tiny_config("delay", **kw), toy_vocab(2))
