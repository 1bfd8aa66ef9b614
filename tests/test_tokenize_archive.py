"""Token archives: resumable shard writer, merge in id order, reader of moved dirs, lengths files."""
from __future__ import annotations

import shutil

import kaldiio
import numpy as np
import pytest

from speechlm.data.token_archive import ShardWriter, TokenReader, merge_shards, read_lengths, write_lengths


def _arr(n: int, s: int = 3, v: int = 0) -> np.ndarray:
    return (np.arange(n * s, dtype=np.int32).reshape(n, s) + v)


def test_writer_resumes_after_a_torn_write(tmp_path):
    w = ShardWriter(tmp_path / "s")
    w.add("u1", _arr(4))
    w.add_failure("u2", "cannot read\naudio")
    w.add("u3", _arr(2, v=7))
    w.close()
    # simulate a kill in the middle of the next entry: garbage after the ark, half a journal line
    with open(tmp_path / "s.ark", "ab") as f:
        f.write(b"u4 NPY\x00partial")
    with open(tmp_path / "s.journal", "a") as f:
        f.write("u4\t99")
    w = ShardWriter(tmp_path / "s")
    assert set(w.entries) == {"u1", "u3"} and w.failed == {"u2": "cannot read audio"}
    assert "u1" in w and "u2" in w and "u4" not in w
    w.add("u4", _arr(5, v=100))
    w.close()
    np.testing.assert_array_equal(w.read("u4"), _arr(5, v=100))
    np.testing.assert_array_equal(w.read("u1"), _arr(4))


def test_merge_in_given_order_and_read_back(tmp_path):
    a, b = ShardWriter(tmp_path / "a"), ShardWriter(tmp_path / "b")
    a.add("x2", _arr(3, v=2))
    b.add("x1", _arr(1, 1, v=1))
    b.add_failure("x3", "bad")
    a.close()
    b.close()
    n, failed = merge_shards([a, b], tmp_path / "out" / "seg", ["x1", "x2", "x3", "x4"])
    assert n == 2 and failed == {"x3": "bad"}
    scp = (tmp_path / "out" / "seg.scp").read_text().splitlines()
    assert [line.split()[0] for line in scp] == ["x1", "x2"]
    assert read_lengths(tmp_path / "out" / "seg.lengths") == {"x1": 1, "x2": 3}
    plain = kaldiio.load_scp(str(tmp_path / "out" / "seg.scp"))
    assert plain["x2"].dtype == np.int32 and plain["x2"].shape == (3, 3)
    # a moved dump dir still reads: the ark is found beside the scp
    shutil.move(tmp_path / "out", tmp_path / "moved")
    r = TokenReader(tmp_path / "moved" / "seg.scp")
    assert list(r) == ["x1", "x2"] and len(r) == 2
    np.testing.assert_array_equal(r["x1"], _arr(1, 1, v=1))
    import pickle

    np.testing.assert_array_equal(pickle.loads(pickle.dumps(r))["x2"], _arr(3, v=2))


def test_bad_inputs_are_named(tmp_path):
    w = ShardWriter(tmp_path / "s")
    with pytest.raises(ValueError, match="whitespace"):
        w.add("a b", _arr(1))
    with pytest.raises(ValueError, match="utterance u: tokens must be integers"):
        w.add("u", np.zeros((2, 2), np.float32))
    w.add("v", np.arange(5))  # [n] becomes [n, 1]
    w.close()
    assert w.read("v").shape == (5, 1)
    (tmp_path / "len").write_text("a 3\nb x\n")
    with pytest.raises(ValueError, match="len:2"):
        read_lengths(tmp_path / "len")
    write_lengths(tmp_path / "len2", {"a": 1, "b": 2})
    assert read_lengths(tmp_path / "len2") == {"a": 1, "b": 2}
    with pytest.raises(FileNotFoundError, match="speechlm tokenize"):
        TokenReader(tmp_path / "none.scp")
