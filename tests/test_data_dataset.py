"""Dataset over task:name:dumpdir:weight entries: lazy index, sequences, context skips, prompts."""
from __future__ import annotations

import pickle

import kaldiio
import numpy as np
import pytest

from speechlm.data.dataset import DataSpec, MultiTaskData
from speechlm.data.sequence import build_example
from speechlm.data.synthetic import make_dump, synthetic_vocab
from speechlm.tasks import load_template


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    root = tmp_path_factory.mktemp("dump")
    make_dump(root / "asr", "asr", 40, seed=0)
    make_dump(root / "tts", "tts", 30, seed=1, prefix="t", n_speakers=3)
    return root


@pytest.fixture(scope="module")
def vocab():
    return synthetic_vocab(["asr", "tts"])


def test_spec_parse():
    s = DataSpec.parse("asr:mini:dump/train/asr:2.5")
    assert (s.task, s.name, s.path, s.weight) == ("asr", "mini", "dump/train/asr", 2.5)
    assert DataSpec.parse("asr:mini:/abs/dir").weight == 1.0
    assert DataSpec.parse("asr:mini:C:/x:3").path == "C:/x"
    with pytest.raises(ValueError, match="task:name:dumpdir"):
        DataSpec.parse("asr:dump")
    with pytest.raises(ValueError, match="weight must be > 0"):
        DataSpec.parse("asr:a:d:0")


def test_example_matches_direct_read(dumps, vocab):
    data = MultiTaskData([DataSpec.parse(f"asr:a:{dumps / 'asr'}")], vocab, n_streams=4)
    entry = data.entries[0]
    assert len(entry) == 40
    speech = kaldiio.load_scp(str(dumps / "asr" / "tokens" / "speech.scp"))
    text = kaldiio.load_scp(str(dumps / "asr" / "tokens" / "text.scp"))
    for i in (0, 7, 39):
        utt = entry.utt_id(i)
        ex = data.example(0, i)
        ref = build_example(utt, load_template("asr"), {"speech": speech[utt], "text": text[utt]}, vocab, 4)
        assert ex.id == f"asr:a/{utt}"
        np.testing.assert_array_equal(ex.tokens, ref.tokens)
        np.testing.assert_array_equal(ex.loss_weight, ref.loss_weight)
        assert len(ex) == entry.seq_lengths()[i]  # index length is exact without prompts


def test_too_long_skipped_and_counted_never_truncated(dumps, vocab, caplog):
    full = MultiTaskData([DataSpec.parse(f"asr:a:{dumps / 'asr'}")], vocab, 4).entries[0]
    limit = int(np.median(full.seq_lengths()))
    with caplog.at_level("WARNING"):
        data = MultiTaskData([DataSpec.parse(f"asr:a:{dumps / 'asr'}")], vocab, 4, max_len=limit)
    entry = data.entries[0]
    assert entry.n_too_long == int((full.seq_lengths() > limit).sum()) > 0
    assert "longer than the model context" in caplog.text
    assert len(entry) + entry.n_too_long == len(full)
    for i in range(len(entry)):
        ex = entry.example(i)
        assert len(ex) <= limit and ex.tokens[-1, 0] == vocab.eos_id  # whole sequences only


def test_untokenized_examples_skipped(tmp_path, vocab):
    d = make_dump(tmp_path / "asr", "asr", 10)
    lines = (d / "tokens" / "text.scp").read_text().splitlines()
    (d / "tokens" / "text.scp").write_text("\n".join(lines[:-2]) + "\n")
    entry = MultiTaskData([DataSpec.parse(f"asr:a:{d}")], vocab, 4).entries[0]
    assert len(entry) == 8 and entry.n_untokenized == 2


def test_errors_name_the_culprit(tmp_path, vocab, dumps):
    d = make_dump(tmp_path / "asr", "asr", 5)
    (d / "tokens" / "text.lengths").unlink()
    with pytest.raises(FileNotFoundError, match="text.lengths"):
        MultiTaskData([DataSpec.parse(f"asr:a:{d}")], vocab, 4)
    with pytest.raises(ValueError, match="task 'asr'"):
        MultiTaskData([DataSpec.parse(f"tts:a:{dumps / 'asr'}")], vocab, 4)
    with pytest.raises(ValueError, match="repeat task:name"):
        MultiTaskData([DataSpec.parse(f"asr:a:{dumps / 'asr'}")] * 2, vocab, 4)


def test_speaker_prompt_same_speaker_deterministic(dumps, vocab):
    specs = [DataSpec.parse(f"tts:b:{dumps / 'tts'}")]
    data = MultiTaskData(specs, vocab, 4, seed=3)
    entry = data.entries[0]
    again = MultiTaskData(specs, vocab, 4, seed=3).entries[0]
    other_seed = MultiTaskData(specs, vocab, 4, seed=4).entries[0]
    seg = entry.template.conditions[0]
    assert seg.modality == "spk_prompt"
    speech = kaldiio.load_scp(str(dumps / "tts" / "tokens" / "speech.scp"))
    differs = 0
    for i in range(len(entry)):
        row = int(entry.rows[i])
        p = entry._prompt.prompt(row, seg)
        np.testing.assert_array_equal(p, again._prompt.prompt(row, seg))
        differs += not np.array_equal(p, other_seed._prompt.prompt(row, seg))
        assert len(p) <= seg.max_frames
        # the prompt is a slice of another utterance of the same speaker
        spk = entry.spk[row]
        hits = [u for u in speech.keys() if u != entry.utt_id(i) and entry.spk[list(entry.ids).index(u.encode())] == spk
                and any(np.array_equal(speech[u][s:s + len(p)], p) for s in range(len(speech[u]) - len(p) + 1))]
        assert hits, f"prompt of {entry.utt_id(i)} not found in another utterance of its speaker"
    assert differs > 0
    assert len(data.example(0, 0)) <= entry.seq_lengths()[0]  # the index length is an upper bound


def test_picklable_for_workers(dumps, vocab):
    data = MultiTaskData([DataSpec.parse(f"asr:a:{dumps / 'asr'}")], vocab, 4)
    data.example(0, 1)  # opens archive handles
    copy = pickle.loads(pickle.dumps(data))
    np.testing.assert_array_equal(copy.example(0, 1).tokens, data.example(0, 1).tokens)


def test_speaker_without_other_utterance_skipped(tmp_path, vocab):
    d = make_dump(tmp_path / "tts", "tts", 5, n_speakers=4, prefix="t")  # spk0: t0, t4; others alone
    entry = MultiTaskData([DataSpec.parse(f"tts:b:{d}")], vocab, 4).entries[0]
    assert entry.n_no_prompt == 3 and sorted(entry.utt_id(i) for i in range(len(entry))) == ["t0000000", "t0000004"]
    assert entry.example(0).id.endswith("t0000000")


def test_loader_workers_give_the_same_batches(dumps, vocab):
    from speechlm.data.loader import train_batches
    from speechlm.data.sampler import BucketSampler

    data = MultiTaskData([DataSpec.parse(f"asr:a:{dumps / 'asr'}:1"), DataSpec.parse(f"tts:b:{dumps / 'tts'}:1")],
                         vocab, 4)
    sampler = BucketSampler(data.lengths(), [1, 1], 800, pool_size=30)
    out = []
    for workers in (0, 2):
        it = train_batches(data, sampler, 3, rank=1, world_size=2, num_workers=workers)
        out.append([next(it) for _ in range(4)])
    for a, b in zip(*out):
        assert a.meta["index"] == b.meta["index"] and a.ids == b.ids
        assert (a.tokens == b.tokens).all()
    assert [b.meta["index"] for b in out[0]] == [4, 6, 8, 10]


def test_epochs_vary_prompts_and_condition_dropout(tmp_path, vocab):
    d = make_dump(tmp_path / "tts", "tts", 20, n_speakers=2, prefix="t")
    tpl = (d / "template.yaml").read_text() + "condition_dropout: 0.5\n"
    (d / "template.yaml").write_text(tpl)
    data = MultiTaskData([DataSpec.parse(f"tts:b:{d}")], vocab, 4, seed=1)
    n = len(data.entries[0])
    dropped, prompts_differ = 0, 0
    for i in range(n):
        a, b = data.example(0, i), data.example(0, i + n)  # the same example in epochs 0 and 1
        np.testing.assert_array_equal(a.tokens, data.example(0, i).tokens)  # deterministic
        phone_marker = vocab.marker_id("phone")
        for ex in (a, b):
            start = int(np.flatnonzero(ex.tokens[:, 0] == phone_marker)[0])
            if ex.tokens[start + 1, 0] == vocab.marker_id("codec"):  # no phone tokens: dropped
                dropped += 1
                assert ex.tokens[1, 0] == vocab.marker_id("codec") and ex.tokens[2, 0] == phone_marker
        prompts_differ += a.tokens.shape != b.tokens.shape or not np.array_equal(a.tokens, b.tokens)
    assert 0.25 < dropped / (2 * n) < 0.75
    assert prompts_differ > n // 2


def test_valid_batches_cover_once_over_uneven_ranks(dumps, vocab):
    from speechlm.data.loader import valid_batches

    data = MultiTaskData([DataSpec.parse(f"asr:a:{dumps / 'asr'}"), DataSpec.parse(f"tts:b:{dumps / 'tts'}")],
                         vocab, 4)
    counted, per_rank = [], []
    for rank in range(3):
        got = list(valid_batches(data, 900, rank, 3))
        per_rank.append(len(got))
        counted += [i for b, c in got if c for i in b.ids]
        assert all(len(set(b.tasks)) == 1 for b, _ in got)  # one task per batch: per-task metrics
    assert len(set(per_rank)) == 1  # every rank runs the same number of forwards
    assert sorted(counted) == sorted(f"{e.spec.key}/{e.utt_id(i)}" for e in data.entries for i in range(len(e)))
