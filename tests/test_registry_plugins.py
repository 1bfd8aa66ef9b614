"""Plug-ins from other packages: an installed package's entry points add tokenizers, metrics,
backbones and stream strategies to the registries, loaded on first use; a broken one is named."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from speechlm.registry import ENTRY_POINT_GROUPS, Registry

PYPROJECT = """\
[build-system]
requires = ["setuptools>=64", "wheel"]
build-backend = "setuptools.build_meta"

[project]
name = "speechlm-test-plugin"
version = "0.1"

[tool.setuptools]
packages = ["speechlm_test_plugin"]

[project.entry-points."speechlm.tokenizers"]
bytes = "speechlm_test_plugin:ByteTokenizer"

[project.entry-points."speechlm.metrics"]
exact = "speechlm_test_plugin:ExactMatch"
broken = "speechlm_test_plugin.broken:Nothing"

[project.entry-points."speechlm.backbones"]
plugin_decoder = "speechlm_test_plugin:Decoder"

[project.entry-points."speechlm.strategies"]
plugin_delay = "speechlm_test_plugin:PluginDelay"
"""

MODULE = '''\
"""A third-party package extending speechlm."""
import numpy as np

from speechlm.eval.base import Metric, MetricResult
from speechlm.models.builtin import BuiltinDecoder
from speechlm.models.patterns import DelayPattern
from speechlm.tokenizers.base import TextTokenizer


class ByteTokenizer(TextTokenizer):
    """UTF-8 bytes as ids."""

    def __init__(self):
        self.options = {}

    @property
    def codebook_sizes(self):
        return [256]

    def encode(self, value):
        return np.frombuffer(value.encode("utf-8"), dtype=np.uint8).astype(np.int32)[:, None]

    def decode(self, tokens):
        return bytes(self._column(tokens)).decode("utf-8")


class ExactMatch(Metric):
    name = "exact"
    higher_is_better = True

    def compute(self, ids, hyp, ref):
        per_utt = {u: {"exact": float(hyp[u] == ref[u])} for u in ids}
        return MetricResult(self.name, {"exact": 100 * sum(r["exact"] for r in per_utt.values()) / len(ids)},
                            per_utt, key="exact", higher_is_better=True)


class Decoder(BuiltinDecoder):
    """The built-in decoder under another name."""


class PluginDelay(DelayPattern):
    """The delay layout under another name."""
'''

# Run in a fresh process: the registries are module-level and look entry points up once.
CHECK = textwrap.dedent("""
    import json, sys
    from speechlm.eval.base import METRICS, build_metric
    from speechlm.models.builtin import BACKBONES, BuiltinDecoder
    from speechlm.models.patterns import PATTERNS, DelayPattern
    from speechlm.registry import PluginLoadError
    from speechlm.tokenizers import build_tokenizer
    from speechlm.tokenizers.base import TOKENIZERS

    out = {"listed": {"tokenizers": "bytes" in TOKENIZERS.names(), "metrics": METRICS.names(),
                      "backbones": "plugin_decoder" in BACKBONES, "strategies": "plugin_delay" in PATTERNS},
           "loaded_by_listing": "speechlm_test_plugin" in sys.modules}
    tok = build_tokenizer({"type": "bytes"})
    ids = tok.encode("h\\u00e9")
    out["tokens"] = ids.tolist()
    out["roundtrip"] = tok.decode(ids)
    out["exact"] = build_metric("exact")({"a": "yes", "b": "no"}, {"a": "yes", "b": "nope"}).summary
    out["backbone"] = issubclass(BACKBONES.get("plugin_decoder"), BuiltinDecoder)
    out["strategy"] = issubclass(PATTERNS.get("plugin_delay"), DelayPattern)
    out["builtin_still_there"] = METRICS.get("wer").__name__
    try:
        METRICS.get("broken")
    except PluginLoadError as e:
        out["broken"] = str(e)
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """The plug-in package, written and pip-installed (no deps, no network) into a site dir."""
    root = tmp_path_factory.mktemp("plugin")
    src = root / "src"
    (src / "speechlm_test_plugin").mkdir(parents=True)
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "speechlm_test_plugin" / "__init__.py").write_text(MODULE)
    (src / "speechlm_test_plugin" / "broken.py").write_text("import a_module_that_is_not_installed\n")
    site = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(src)], check=True, capture_output=True, timeout=300)
    assert (site / "speechlm_test_plugin-0.1.dist-info" / "entry_points.txt").is_file()
    return site


def test_installed_plugins_join_the_registries(plugin_site, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(plugin_site), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", CHECK], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["listed"]["tokenizers"] and out["listed"]["backbones"] and out["listed"]["strategies"]
    assert {"exact", "broken", "wer"} <= set(out["listed"]["metrics"])
    assert out["loaded_by_listing"] is False  # listing names does not import the plug-in
    assert out["tokens"] == [[104], [195], [169]] and out["roundtrip"] == "h\u00e9"
    assert out["exact"] == {"exact": 50.0}
    assert out["backbone"] and out["strategy"] and out["builtin_still_there"]
    assert "metric 'broken'" in out["broken"] and "'speechlm_test_plugin.broken:Nothing'" in out["broken"]
    assert "group speechlm.metrics" in out["broken"] and "speechlm-test-plugin 0.1" in out["broken"]
    assert "a_module_that_is_not_installed" in out["broken"]


def test_without_the_package_the_names_are_unknown(tmp_path):
    """The same lookups in an environment without the plug-in: unknown names, listing the valid ones."""
    reg: Registry = Registry("metric", entry_points="speechlm.metrics")
    reg.register("wer")(object)
    with pytest.raises(KeyError, match="unknown metric 'exact'.*valid choices: wer"):
        reg.get("exact")
    assert reg.names() == ["wer"]


def test_the_registries_name_their_groups():
    from speechlm.eval.base import METRICS
    from speechlm.models.builtin import BACKBONES
    from speechlm.models.patterns import PATTERNS
    from speechlm.tokenizers.base import TOKENIZERS

    assert [r.group for r in (TOKENIZERS, METRICS, BACKBONES, PATTERNS)] == list(ENTRY_POINT_GROUPS)
