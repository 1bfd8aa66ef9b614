"""pyproject.toml declares what the library imports: every third-party import of speechlm/ names a
requirement (core, an extra, or [tool.speechlm] no-deps), and each requirement appears once, with
its version range."""
from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: import name -> distribution name, where the two differ by more than ``_`` vs ``-`` and case
IMPORT_TO_DIST = {"yaml": "pyyaml", "espnet2": "espnet", "webrtcvad": "webrtcvad-wheels", "sklearn": "scikit-learn"}


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(req: str) -> str:
    return normalize(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", req).group(0))


def declared() -> dict[str, list[tuple[str, str]]]:
    """Requirement name -> [(where, requirement string)] over core, extras and no-deps."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    groups = {"dependencies": project["project"]["dependencies"]}
    groups.update({f"[{k}]": v for k, v in project["project"]["optional-dependencies"].items()})
    groups.update({f"no-deps[{k}]": v for k, v in project["tool"]["speechlm"]["no-deps"].items()})
    found: dict[str, list[tuple[str, str]]] = {}
    for where, reqs in groups.items():
        for req in reqs:
            found.setdefault(requirement_name(req), []).append((where, req))
    return found


def third_party_imports(package: Path) -> dict[str, set[str]]:
    """Top-level module name -> files that import it (every ``import``, also inside functions)."""
    found: dict[str, set[str]] = {}
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != package.name:
                    found.setdefault(top, set()).add(str(path.relative_to(package.parent)))
    return found


def test_every_import_is_declared():
    imports = third_party_imports(ROOT / "speechlm")
    assert "torch" in imports and "yaml" in imports  # the scan sees imports at all
    names = declared()
    missing = {mod: sorted(files)[:3] for mod, files in imports.items()
               if normalize(IMPORT_TO_DIST.get(mod, mod)) not in names}
    assert not missing, ("imported but not declared in pyproject.toml (add them, or map the import name "
                         f"in IMPORT_TO_DIST): {missing}")


def test_each_requirement_once_with_a_version_range():
    for name, places in declared().items():
        assert len(places) == 1, f"{name} is required in several places: {places}; keep one"
        where, req = places[0]
        assert re.search(r"(==|>=|<=|~=|<|>)\s*\d", req), f"{where}: {req!r} has no version range"


def test_the_scan_finds_an_undeclared_import(tmp_path):
    pkg = tmp_path / "speechlm"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "sub" / "m.py").write_text("import os\nfrom speechlm import x\nfrom . import y\n\n"
                                      "def f():\n    import notdeclared.sub\n")
    assert third_party_imports(pkg) == {"notdeclared": {"speechlm/sub/m.py"}}


def test_presets_by_name_and_old_paths_fail_clearly(tmp_path, caplog):
    """Built-in presets ship in the package and go by name; a path wins over a name; the presets'
    old place in the checkout (conf/model/*.yaml) fails naming the preset to give instead."""
    from speechlm.cli import main
    from speechlm.conf import builtin_dir, preset_names, resolve_config
    from speechlm.config import ConfigError

    assert {"tiny", "30m", "360m", "1.7b"} <= set(preset_names("model")) and "tiny" in preset_names("train")
    assert resolve_config("model", "tiny") == builtin_dir("model") / "tiny.yaml"
    mine = tmp_path / "tiny"
    mine.write_text("dim: 8\n")
    assert resolve_config("model", mine) == mine
    try:
        resolve_config("model", "../../../conf/model/360m.yaml")
    except ConfigError as e:
        assert "give the name '360m'" in str(e) and "1.7b, 30m, 360m, tiny" in str(e)
    else:
        raise AssertionError("an old preset path must fail")
    assert main(["train", "--data", f"asr:a:{tmp_path}:1", "--vocab", str(tmp_path / "v.json"), "--model-config",
                 "conf/model/tiny.yaml", "--out-dir", str(tmp_path / "exp")]) == 1
    assert "--model-config tiny" in caplog.text and not (tmp_path / "exp").exists()


def test_modules_import_extras_only_where_used():
    """The core install imports every module: a package of an extra is imported inside the function
    that needs it (or under ``try``), never at a module's top level."""
    core = {requirement_name(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    eager = []
    for path in sorted((ROOT / "speechlm").rglob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:  # top level only; ``try`` bodies are optional
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "speechlm" and \
                        normalize(IMPORT_TO_DIST.get(top, top)) not in core:
                    eager.append(f"{path.relative_to(ROOT)}: {name}")
    assert not eager, f"top-level imports of packages outside the core install: {eager}"
