"""The SpeechLM learns with every strategy; loss bookkeeping, options, presets and strict save/load."""
from __future__ import annotations

import json

import pytest
import torch

from speechlm.conf import builtin_dir
from speechlm.config import ConfigError, load_config
from speechlm.data.batch import collate
from speechlm.models import PATTERNS, ModelConfig, SpeechLM
from speechlm.utils.precision import autocast
from speechlm.vocab import Vocabulary
from test_model_helpers import cached_trained_model, tiny_config, toy_examples, toy_vocab, train

STRATEGIES = ["flat", "parallel", "delay", "multiscale", "ar_nar"]
PRESETS = builtin_dir("model")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_strategy_learns_a_two_stream_task(strategy):
    model, _, losses = cached_trained_model(strategy)
    assert losses[0] > 2.0, "a fresh model should not know the task"
    assert losses[-1] < 0.05, f"{strategy}: loss {losses[-1]:.4f} after 150 steps"


def test_loss_is_sum_over_weighted_slots_and_stats_add_up():
    vocab = toy_vocab(3)
    batch = collate(toy_examples(vocab, 3, n_streams=3))
    model = SpeechLM(tiny_config("delay"), vocab)
    out = model(batch)
    # every loss-weighted slot of the batch is predicted exactly once
    assert float(out.weight_sum) == pytest.approx(float(batch.loss_weight.sum()))
    assert float(out.loss.detach()) == pytest.approx(float(out.loss_sum / out.weight_sum), rel=1e-6)
    acc_sum, acc_n = out.stats["acc"]
    assert float(acc_n) == sum(float(out.stats[f"acc_s{k}"][1]) for k in range(3))
    assert float(acc_n) == float((batch.loss_weight > 0).sum())
    # halving one segment's weights changes weight_sum by exactly that amount
    batch.loss_weight[0] *= 0.5
    out2 = model(batch)
    assert float(out2.weight_sum) == pytest.approx(float(batch.loss_weight.sum()))


def test_stream_weights_scale_per_stream_losses():
    vocab = toy_vocab(2)
    batch = collate(toy_examples(vocab, 2))
    torch.manual_seed(0)
    model = SpeechLM(tiny_config("parallel", stream_weights=[1.0, 0.0]), vocab)
    out = model(batch)
    assert "acc_s1" not in out.stats, "stream 1 has weight 0 and must carry no loss"
    with pytest.raises(ValueError, match="stream_weights"):
        SpeechLM(tiny_config("parallel", stream_weights=[1.0]), vocab)


@pytest.mark.parametrize("strategy", ["delay", "ar_nar"])
def test_stream_weights_leave_text_targets_alone(strategy):
    vocab = toy_vocab(2)
    asr = collate(toy_examples(vocab, 3, tasks=("asr",)))
    tts = collate(toy_examples(vocab, 3, tasks=("plain_tts",)))
    torch.manual_seed(0)
    plain = SpeechLM(tiny_config(strategy), vocab)
    torch.manual_seed(0)
    heavy = SpeechLM(tiny_config(strategy, stream_weights=[4.0, 1.0]), vocab)
    with torch.no_grad():
        assert float(heavy(asr).weight_sum) == float(plain(asr).weight_sum)  # ASR text in stream 0: weight 1
        assert float(heavy(tts).weight_sum) > float(plain(tts).weight_sum)  # audio's stream 0 weighs 4x


def test_non_text_streams_use_their_codebook_columns_only():
    vocab = toy_vocab(2)
    model = SpeechLM(tiny_config("parallel"), vocab)
    a, b = vocab.stream_range("codec", 1)
    assert model.head.logits(torch.randn(3, 64), 1).shape == (3, b - a)
    assert model.head.ids(1).tolist() == list(range(a, b))


def test_condition_reduction_prefix_lm_and_ctc_learn():
    vocab = toy_vocab(2)
    batch = collate(toy_examples(vocab, 4))
    torch.manual_seed(0)
    model = SpeechLM(tiny_config("delay", cond_reduction=2, ctc_weight=0.3, ctc_tokenizer="text_bpe"), vocab)
    prep = model.prepare(batch.tokens, batch.loss_weight, batch.kinds, batch.lengths, batch.prefix_lens)
    assert int(prep.lengths.sum()) < int(prep.layout.lengths.sum()), "audio conditions were not stacked"
    mask = model.attention_mask(prep)
    b = batch.tasks.index("asr")
    p = int(prep.prefix[b])
    assert p > 0 and bool(mask[b, 0, 0, p - 1]) and not bool(mask[b, 0, p, p + 1]), "prefix-LM mask is wrong"
    out = model(batch)
    assert "ctc" in out.stats and float(out.stats["ctc"][1]) == float(((batch.kinds == 4).sum()))
    losses = train(model, batch, 150)
    assert losses[-1] < 0.3


def test_guided_attention_penalizes_off_diagonal_attention_and_learns(tmp_path):
    from speechlm.data.sequence import AUDIO_TGT, TEXT_COND
    from speechlm.models.losses import guided_attention_loss

    vocab = toy_vocab(2)
    batch = collate(toy_examples(vocab, 4, tasks=("plain_tts",)))
    torch.manual_seed(0)
    model = SpeechLM(tiny_config("parallel", guided_attn_weight=1.0, guided_attn_layer=1), vocab)
    assert model.guided_attn is model.backbone.layers[1].self_attn
    prep = model.prepare(batch.tokens, batch.loss_weight, batch.kinds, batch.lengths, batch.prefix_lens)
    # hand-made attention: reading the text in order costs less than reading it backwards, and
    # attending to anything but the text costs the most (1 per frame)
    B, T = prep.kinds.shape
    costs = []
    for how in ("forward", "backward", "elsewhere"):
        probs = torch.zeros(B, T, T)
        for b in range(B):
            q = (prep.kinds[b] == AUDIO_TGT).nonzero()[:, 0]
            k = (prep.kinds[b] == TEXT_COND).nonzero()[:, 0]
            k = k.flip(0) if how == "backward" else k
            for i, qi in enumerate(q):
                probs[b, qi, k[i * len(k) // len(q)] if how != "elsewhere" else qi] = 1.0
        costs.append(float(guided_attention_loss(prep.kinds, probs, model.config.guided_attn_sigma, {})))
    n_frames = float((prep.kinds == AUDIO_TGT).sum())
    assert costs[0] < 0.3 * costs[1] and costs[2] == pytest.approx(n_frames)
    out = model(batch)
    assert float(out.stats["guided_attn"][1]) == float((prep.kinds == AUDIO_TGT).sum())

    def penalty(m) -> float:  # per frame, after training the same steps
        train(m, batch, 100)
        m.train()
        g = m(batch).stats["guided_attn"]
        m.eval()
        return float(g[0] / g[1])

    # the loss is what makes the head read the text: a negligible weight leaves it far off the diagonal
    torch.manual_seed(0)
    unguided = SpeechLM(tiny_config("parallel", guided_attn_weight=1e-9, guided_attn_layer=1), vocab)
    guided, free = penalty(model), penalty(unguided)
    assert guided < 0.5 * free, (guided, free)
    assert "guided_attn" not in model(batch).stats  # training-only: inference is unchanged
    model.save_pretrained(tmp_path / "m")
    assert SpeechLM.from_pretrained(tmp_path / "m").guided_attn is not None
    with pytest.raises(ConfigError, match="builtin"):
        ModelConfig(guided_attn_weight=1.0, backbone="hf", hf_path="x").validate()


def test_length_head_learns_target_rows_per_text_row(tmp_path):
    """Toy TTS at two speaking rates (1 or 3 frames per phone, told by the first phone): the head
    learns each example's length from the prompt, and decoding reads it from the prefill."""
    import numpy as np

    from speechlm.data.sequence import build_example
    from speechlm.infer.context import DecodeContext
    from speechlm.tasks import load_template

    vocab = toy_vocab(2)
    rng = np.random.default_rng(0)
    full, prompts, n_frames = [], [], []
    for i in range(8):
        phones = rng.integers(0, 3, (3 + i % 4, 1))
        rate = 1 + 2 * (i % 2)
        phones[0, 0] = 3 + i % 2  # the "voice": phone 3 speaks 1 frame per phone, phone 4 three
        frames = np.repeat(np.concatenate([phones, phones + 1], 1), rate, 0)
        segs = {"phones": phones, "speech": frames}
        full.append(build_example(f"u{i}", load_template("plain_tts"), segs, vocab, 2))
        prompts.append(build_example(f"u{i}", load_template("plain_tts"), segs, vocab, 2, with_targets=False))
        n_frames.append(len(frames))
    batch = collate(full)
    torch.manual_seed(0)
    model = SpeechLM(tiny_config("delay", length_weight=1.0), vocab)
    torch.manual_seed(0)  # the head does not change how the rest of the model starts
    plain = SpeechLM(tiny_config("delay"), vocab).state_dict()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in plain.items())
    model.train()
    before = model(batch).stats["length_err"]
    train(model, batch, 300)
    model.train()
    after = model(batch).stats["length_err"]
    model.eval()
    assert float(after[1]) == len(full) and float(after[0] / after[1]) < 0.1 < float(before[0] / before[1])
    model.save_pretrained(tmp_path / "m")
    loaded = SpeechLM.from_pretrained(tmp_path / "m").eval()
    p = collate(prompts)
    with torch.no_grad():
        ctx, _ = DecodeContext.prefill(loaded, p)
        pred = loaded.predict_length(ctx.length_features, p.kinds).tolist()
    assert all(abs(a / b - 1) < 0.15 for a, b in zip(pred, n_frames)), (pred, n_frames)
    with pytest.raises(ConfigError, match="length_weight"):
        ModelConfig(length_weight=-1).validate()


def test_bf16_autocast_runs_and_stays_finite():
    vocab = toy_vocab(2)
    batch = collate(toy_examples(vocab, 2))
    torch.manual_seed(0)
    model = SpeechLM(tiny_config("delay"), vocab)
    with autocast("bf16", "cpu"):  # what the trainer does for precision: bf16
        out = model(batch)
    out.loss.backward()
    assert torch.isfinite(out.loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert out.loss.dtype == torch.float32


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_save_and_load_round_trip(tmp_path, strategy):
    vocab = toy_vocab(2)
    batch = collate(toy_examples(vocab, 2))
    torch.manual_seed(0)
    model = SpeechLM(tiny_config(strategy, cond_reduction=2, ctc_weight=0.2, ctc_tokenizer="text_bpe"), vocab).eval()
    model.save_pretrained(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} == {"config.json", "model.safetensors", "token_list.json",
                                                            "llama_config.json"}
    loaded = SpeechLM.from_pretrained(tmp_path / "m").eval()
    torch.manual_seed(1)
    a = model(batch).loss
    torch.manual_seed(1)
    b = loaded(batch).loss
    assert torch.equal(a, b)
    assert loaded.vocab.tokens == vocab.tokens


def test_strict_loading_names_missing_and_unexpected_keys(tmp_path):
    from safetensors.torch import load_file, save_file

    vocab = toy_vocab(2)
    SpeechLM(tiny_config("delay"), vocab).save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    state["extra.weight"] = torch.zeros(2)
    del state["backbone.layers.0.mlp.up_proj.weight"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(KeyError, match=r"missing keys: backbone\.layers\.0\.mlp\.up_proj\.weight.*unexpected keys: extra\.weight"):
        SpeechLM.from_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["dimm"] = 3
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="unknown key 'dimm'.*did you mean 'dim'"):
        SpeechLM.from_pretrained(tmp_path)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="model.strategy.*'delai'.*did you mean 'delay'"):
        SpeechLM(ModelConfig(strategy="delai"), toy_vocab())
    with pytest.raises(ConfigError, match="ctc_tokenizer"):
        ModelConfig(ctc_weight=0.5).validate()
    with pytest.raises(ConfigError, match="hf_path"):
        ModelConfig(backbone="hf").validate()


@pytest.mark.parametrize("preset", ["tiny", "30m", "360m", "1.7b"])
def test_size_presets_load(preset):
    cfg = load_config(ModelConfig, PRESETS / f"{preset}.yaml").validate()
    assert cfg.strategy in PATTERNS
    if preset == "tiny":
        model = SpeechLM(cfg, toy_vocab())
        assert model.num_parameters() < 500_000
    else:  # parameter count of the backbone from its shape (building 1.7B here would be slow)
        from speechlm.models.builtin import default_ffn_dim

        ffn = cfg.ffn_dim or default_ffn_dim(cfg.dim)
        kv = cfg.n_kv_heads or cfg.n_heads
        per_layer = 2 * cfg.dim * cfg.dim + 2 * cfg.dim * (cfg.dim // cfg.n_heads) * kv + 3 * cfg.dim * ffn
        expected = {"30m": 30e6, "360m": 360e6, "1.7b": 1.7e9}[preset]
        assert 0.5 * expected < per_layer * cfg.n_layers < 1.2 * expected


def test_embedding_sums_streams_and_pad_beyond_stream_0_adds_nothing():
    vocab = toy_vocab(3)
    model = SpeechLM(tiny_config("parallel"), vocab)
    a, b = vocab.offset("codec", 0), vocab.offset("codec", 1)
    emb = model.embed.weight
    x = model.embed(torch.tensor([[a, b, 0], [a, 0, 0]]))
    assert torch.allclose(x[0], emb[a] + emb[b]) and torch.allclose(x[1], emb[a])
    assert model.head.weight is model.embed.weight, "tie_embeddings shares the table"
    untied = SpeechLM(tiny_config("parallel", tie_embeddings=False), vocab)
    assert untied.head.weight is not untied.embed.weight


def test_weighted_losses_accumulate_exactly():
    """Two half batches, each scaled by the total weight, give the gradient of the whole batch."""
    vocab = toy_vocab(2)
    exs = toy_examples(vocab, 2)
    torch.manual_seed(0)
    model = SpeechLM(tiny_config("delay"), vocab)
    model(collate(exs)).loss.backward()
    full = model.embed.weight.grad.clone()
    model.zero_grad()
    parts = [collate(exs[:2]), collate(exs[2:])]
    total = sum(float(model(p).weight_sum) for p in parts)
    for p in parts:
        out = model(p)
        (out.loss * out.weight_sum / total).backward()
    assert torch.allclose(model.embed.weight.grad, full, atol=1e-6)


def test_loading_with_an_extended_vocabulary_keeps_old_rows(tmp_path):
    model, vocab, _ = cached_trained_model("delay")
    model.save_pretrained(tmp_path / "m")
    bigger = Vocabulary.load(tmp_path / "m" / "token_list.json")
    bigger.add_tokenizer("ssl", [32])
    bigger.add_task("asr2")
    grown = SpeechLM.from_pretrained(tmp_path / "m", vocab=bigger)
    n = len(vocab)
    assert len(grown.embed.weight) == len(bigger) > n
    assert torch.equal(grown.embed.weight[:n], model.embed.weight[:n])
    batch = collate(toy_examples(vocab, 2))
    with torch.no_grad():
        assert torch.allclose(grown.hidden_states(batch)[0], model.hidden_states(batch)[0])
    other = toy_vocab(2)
    other.add_task("zzz")
    other.tokens[70] = "<changed>"
    with pytest.raises(ValueError, match="id 70"):
        SpeechLM.from_pretrained(tmp_path / "m", vocab=other)


@pytest.mark.parametrize("full", [False, True])
def test_stream0_scores_audio_targets_over_their_own_range_plus_specials(full):
    """With ``stream0_full_vocab: false`` rows of other tokenizers (here text) take no part in the
    stream-0 softmax of audio targets; with the whole vocabulary they do."""
    vocab = toy_vocab(2)
    batch = collate(toy_examples(vocab, 2, tasks=("plain_tts",)))
    torch.manual_seed(0)
    model = SpeechLM(tiny_config("delay", stream0_full_vocab=full), vocab)
    before = float(model(batch).loss_sum)
    with torch.no_grad():
        a, b = vocab.stream_range("text_bpe", 0)
        model.head.weight[a:b] += 5.0 * torch.randn(b - a, model.head.weight.shape[1])
    changed = abs(float(model(batch).loss_sum) - before) > 1e-4
    assert changed == full


def test_ctc_tasks_train_the_ctc_head_on_their_examples_only():
    """``model.ctc_tasks``: only those tasks' rows enter the CTC loss (an agent's call after its
    monologue is not what was said); empty: every audio-conditioned text target."""
    import dataclasses

    vocab = toy_vocab(2)
    asr = toy_examples(vocab, 4, tasks=("asr",))
    other = [dataclasses.replace(e, task="spoken_command") for e in toy_examples(vocab, 2, tasks=("asr",))]
    batch = collate(asr + other)
    n_text = [int((batch.kinds[i] == 4).sum()) for i in range(len(batch.tasks))]
    counts = {}
    for tasks in ([], ["asr"], ["spoken_command"]):
        torch.manual_seed(0)
        model = SpeechLM(tiny_config("delay", ctc_weight=0.3, ctc_tokenizer="text_bpe", ctc_tasks=tasks), vocab)
        counts[tuple(tasks)] = float(model(batch).stats["ctc"][1])
    assert counts[()] == sum(n_text)
    assert counts[("asr",)] == sum(n for n, t in zip(n_text, batch.tasks) if t == "asr") < sum(n_text)
    assert counts[("spoken_command",)] == sum(n for n, t in zip(n_text, batch.tasks) if t == "spoken_command")
    with pytest.raises(ConfigError, match="ctc_tasks"):
        tiny_config("delay", ctc_tasks=["asr"]).validate()
