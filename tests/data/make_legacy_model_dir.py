"""Writes ``tests/data/legacy_model_dir/``: a tiny model dir in the format speechlm wrote before
the model directory moved to ``config.json`` (issue 15): ``config.yaml`` (the model config as
YAML), ``model.safetensors``, ``token_list.json``, plus ``tokenizers.yaml`` + a char list and a
task (what ``speechlm pack`` adds), and ``expected.json``: outputs of that model computed when it
was written (loss of a fixed batch, greedy decodes).

The model is a tiny ``delay`` model over the toy vocabulary of ``tests/test_model_helpers.py``
(2 codec streams of 8 codes, 12 text tokens, 6 phones), trained a little so that its decodes
are not trivial. It was run once with the code of commit 949305b (the last one writing
``config.yaml``), and its output is committed: ``tests/test_model_dir.py`` checks that today's
loader gives the same outputs. Re-running it with newer code would write the new format, so do
not regenerate it::

    OMP_NUM_THREADS=1 .venv/bin/python tests/data/make_legacy_model_dir.py
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

OUT = HERE / "legacy_model_dir"
#: the 12 text tokens of the toy vocabulary, as a char tokenizer's list
CHARS = ["<unk>", "<space>", *"abcdefghij"]
ASR_TEMPLATE = """name: asr
description: speech recognition, speech in -> text out
prefix_lm: true
conditions:
  - {name: speech, modality: audio, tokenizer: codec, source: wav.scp}
targets:
  - {name: text, modality: text, tokenizer: text_bpe, source: text}
"""
#: condition tokens the expected decodes start from (local codec ids, 2 streams)
ASR_SPEECH = [[[3, 1], [5, 2], [0, 7]], [[6, 6], [1, 0]]]


def toy_batch(vocab):
    from test_model_helpers import toy_examples

    from speechlm.data.batch import collate

    return collate(toy_examples(vocab, 4, 2))


def expected_outputs(model_dir: Path) -> dict:
    """Loss of the toy batch and greedy ASR decodes, from the dir loaded as users load it."""
    import speechlm

    pipe = speechlm.load(model_dir)
    with torch.no_grad():
        loss = float(pipe.model(toy_batch(pipe.vocab)).loss)
    inputs = [{"speech": np.asarray(s, dtype=np.int64)} for s in ASR_SPEECH]
    asr = pipe.generate_tokens("asr", inputs, pipe.decode_config("asr"))
    return {"loss": loss, "asr_tokens": [a.tolist() for a in asr]}


def main() -> None:
    from test_model_helpers import tiny_config, toy_vocab, train

    from speechlm.models import SpeechLM

    shutil.rmtree(OUT, ignore_errors=True)
    (OUT / "tokenizers" / "text_bpe").mkdir(parents=True)
    (OUT / "tokenizers" / "text_bpe" / "chars.txt").write_text("\n".join(CHARS) + "\n")
    (OUT / "tokenizers.yaml").write_text("text_bpe: {type: char, vocab: tokenizers/text_bpe/chars.txt}\n")
    (OUT / "tasks").mkdir()
    (OUT / "tasks" / "asr.yaml").write_text(ASR_TEMPLATE)
    (OUT / "decode.yaml").write_text("search: greedy\nmax_len: 8\n")
    torch.manual_seed(3)
    vocab = toy_vocab(2)
    model = SpeechLM(tiny_config("delay", dim=16, n_layers=1, n_heads=2, n_kv_heads=1, max_len=64), vocab)
    train(model, toy_batch(vocab), 60, lr=1e-2)
    model.save_pretrained(OUT)
    (OUT / "expected.json").write_text(json.dumps(expected_outputs(OUT)) + "\n")
    print(sorted(str(p.relative_to(OUT)) for p in OUT.rglob("*") if p.is_file()))


if __name__ == "__main__":
    main()
