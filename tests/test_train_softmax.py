"""``softmax: seen``: training's text softmax spans only the tokens the training data holds (a
pretrained tokenizer's unused pieces cost no time); validation and decoding keep every column."""
from __future__ import annotations

import kaldiio
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from speechlm.conf import resolve_config
from speechlm.config import ConfigError, load_config
from speechlm.data.dataset import DataSpec
from speechlm.data.synthetic import make_dump, synthetic_vocab
from speechlm.models import ModelConfig
from speechlm.train.config import load_train_config
from speechlm.train.trainer import Trainer

SIZES = {"codec": [64, 64, 64, 64], "text_bpe": [3000], "phone": [40]}  # a large text vocabulary


@pytest.fixture(scope="module")
def dump(tmp_path_factory):
    root = tmp_path_factory.mktemp("softmax")
    make_dump(root / "asr", "asr", 24, seed=0, frames=(10, 40), tokenizers=SIZES)
    return root


def _trainer(root, out, softmax):
    cfg = load_train_config(str(resolve_config("train", "tiny")), {
        "max_steps": 3, "save_every": 0, "valid_every": 0, "batch_tokens": 600, "pool_size": 24,
        "progress_bar": False, "weight_decay": 0.0, "softmax": softmax})
    mc = load_config(ModelConfig, str(resolve_config("model", "tiny")))
    mc.tie_embeddings = True  # the hf parser's case: the output rows are the input embeddings
    return Trainer(cfg, mc, synthetic_vocab(["asr"], SIZES), [DataSpec.parse(f"asr:a:{root / 'asr'}")],
                   str(out)).setup()


def test_seen_softmax_spans_the_datas_tokens_and_leaves_the_others_untouched(dump, tmp_path):
    vocab = synthetic_vocab(["asr"], SIZES)
    a, b = vocab.stream_range("text_bpe")
    said = set()  # the text tokens of the dump, read from its ark directly
    for _, toks in kaldiio.load_scp(str(dump / "asr" / "tokens" / "text.scp")).items():
        said.update((np.asarray(toks).reshape(-1) + a).tolist())
    tr = _trainer(dump, tmp_path / "seen", "seen")
    assert tr.train_data.text_ids() == sorted(said)
    head = tr.model.head
    g = [tuple(r) for r in head.g0_bounds.tolist()].index((a, b))
    cols = getattr(head, f"g0_cols_{g}")
    assert cols.tolist() == sorted(said) and len(said) < b - a

    # training mode: the logits span the seen columns, and the CE is the full softmax's with the
    # unseen columns masked out
    h = torch.randn(5, head.weight.shape[1])
    y = cols[torch.tensor([0, 3, 7, 1, 2])]
    head.train()
    logits, local = head.group_logits(h, y, g)
    assert logits.shape[1] == len(cols) + len(head.sp_ids) and (cols[local] == y).all()
    head.eval()
    full, full_local = head.group_logits(h, y, g)
    assert full.shape[1] == (b - a) + len(head.sp_ids)
    masked = full.clone()
    unseen = torch.ones(b - a, dtype=torch.bool)
    unseen[cols - a] = False
    masked[:, : b - a][:, unseen] = float("-inf")
    assert torch.allclose(F.cross_entropy(logits, local), F.cross_entropy(masked, full_local), atol=1e-5)

    # trained: the unseen rows get no gradient (no weight decay here), every seen row moves
    before = tr.model.head.weight.detach().clone()
    tr.train()
    after = tr.model.head.weight.detach()
    moved = (after != before).any(-1)
    unseen_ids = torch.tensor([i for i in range(a, b) if i not in said])
    assert not moved[unseen_ids].any() and moved[cols].all()


def test_all_softmax_moves_every_text_row_and_a_bad_value_is_an_error(dump, tmp_path):
    tr = _trainer(dump, tmp_path / "all", "all")
    vocab = synthetic_vocab(["asr"], SIZES)
    a, b = vocab.stream_range("text_bpe")
    before = tr.model.head.weight.detach().clone()
    tr.train()
    assert (tr.model.head.weight.detach() != before).any(-1)[a:b].all()  # every column is a negative
    with pytest.raises(ConfigError, match="softmax: 'some' is not one of all, seen"):
        load_train_config(None, {"softmax": "some"})
