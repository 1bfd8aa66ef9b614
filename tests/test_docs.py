"""The code blocks of the docs run (doctest-style), so README.md and the recipe tutorial cannot drift
from the code.

Every fenced block of ``README.md``, ``docs/*.md`` and ``egs/TEMPLATE/speechlm1/README.md`` is
checked by its language:

- ``python``: executed in a fresh directory where every ``speechlm.load("DIR")`` path is a tiny
  packed model (built with the tests' ``packed_model_dir``: Codec 2, characters, g2p phones, the
  ``asr``, ``tts`` and ``plain_tts`` tasks, a length head and the progress input) and every
  ``"*.wav"`` string it names is a short recording;
- ``bash``: each command is checked without running a long job: ``speechlm ...`` lines are parsed
  by the real command-line parser of that subcommand (unknown or missing options, bad choices),
  ``./run.sh ...`` lines by the recipe's stage script (its own option parser, ending with
  ``--help``), ``cd DIR`` must name a directory, ``setup.sh`` is run into a temporary dir, and
  sourcing the virtual env or ``path.sh`` is accepted;
- ``yaml``: a task template (``conditions`` and ``targets``) is loaded by the template loader.

A block that cannot run offline in seconds carries a marker on the line before its fence,
``<!-- doc-test: skip (the reason) -->``; any other block this test cannot run is a failure, so a new
block either runs here or says why it cannot.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "egs" / "TEMPLATE" / "speechlm1" / "README.md",
        *sorted((ROOT / "docs").glob("*.md"))]
RECIPE = ROOT / "egs" / "mini_espeak" / "speechlm1"  # `./run.sh` lines outside a recipe dir run here
MARKER = re.compile(r"^\s*<!--\s*doc-test:\s*(.*?)\s*-->\s*$")
SKIP = re.compile(r"^skip\s*\((.+)\)$")
FENCE = re.compile(r"^\s*```\s*([\w+-]*)\s*$")


@dataclass(frozen=True)
class Block:
    doc: str  # path relative to the repo
    line: int  # line of the opening fence (1-based)
    lang: str
    text: str
    skip: str | None  # the reason of a skip marker


def read_blocks(path: Path) -> list[Block]:
    """The fenced blocks of one markdown file; a malformed or stray marker is an error naming the line."""
    rel = str(path.relative_to(ROOT))
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    pending: tuple[int, str] | None = None  # (line, reason) of a marker waiting for its block
    i = 0
    while i < len(lines):
        m = MARKER.match(lines[i])
        if m:
            s = SKIP.match(m.group(1))
            if not s:
                raise AssertionError(f"{rel}:{i + 1}: doc-test marker must read 'skip (reason)', got {m.group(1)!r}")
            pending = (i + 1, s.group(1))
            i += 1
            continue
        f = FENCE.match(lines[i])
        if f:
            end = next((j for j in range(i + 1, len(lines)) if re.match(r"^\s*```\s*$", lines[j])), None)
            if end is None:
                raise AssertionError(f"{rel}:{i + 1}: code block is never closed")
            indent = len(lines[i]) - len(lines[i].lstrip())
            body = "\n".join(line[indent:] if not line[:indent].strip() else line for line in lines[i + 1:end])
            blocks.append(Block(rel, i + 1, f.group(1).lower(), body + "\n", pending[1] if pending else None))
            pending = None
            i = end + 1
            continue
        if pending and lines[i].strip():
            raise AssertionError(f"{rel}:{pending[0]}: doc-test marker is not followed by a code block")
        i += 1
    if pending:
        raise AssertionError(f"{rel}:{pending[0]}: doc-test marker is not followed by a code block")
    return blocks


BLOCKS = [b for doc in DOCS for b in read_blocks(doc)]


# ---- python blocks ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_packed(tmp_path_factory) -> Path:
    """One tiny packed model for every python block (copied to the paths a block loads)."""
    from test_model_helpers import packed_model_dir

    chars = ["<unk>", "<space>", *"abcdefghijklmnopqrstuvwxyz'"]
    return packed_model_dir(tmp_path_factory.mktemp("doc_model") / "packed", ["asr", "tts", "plain_tts"], chars,
                            progress=True, length_weight=1.0)


def run_python(block: Block, workdir: Path, model_dir: Path) -> None:
    import soundfile as sf

    for m in re.finditer(r"speechlm\.load\(\s*[\"']([^\"']+)[\"']", block.text):
        shutil.copytree(model_dir, workdir / m.group(1), dirs_exist_ok=True)
    sr = 16000
    tone = (0.1 * np.sin(2 * np.pi * 220 * np.arange(sr) / sr)).astype(np.float32)  # one second, 220 Hz
    for m in re.finditer(r"[\"']([\w./-]+\.wav)[\"']", block.text):
        (workdir / m.group(1)).parent.mkdir(parents=True, exist_ok=True)
        sf.write(workdir / m.group(1), tone, sr)
    code = compile(block.text, f"{block.doc}:{block.line}", "exec")
    with contextlib.chdir(workdir), contextlib.redirect_stdout(io.StringIO()):
        exec(code, {"__name__": "__doc_block__"})


# ---- shell blocks -------------------------------------------------------------------------------
def shell_commands(text: str) -> list[list[str]]:
    """The commands of a shell block: continuation lines joined, comments dropped, ``&&``/``;`` split."""
    text = text.replace("\\\n", "")
    commands: list[list[str]] = []
    for line in text.splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=";&|<>()")
        lex.whitespace_split = True
        cmd: list[str] = []
        for tok in lex:
            if tok in ("&&", ";", "||"):
                commands.append(cmd)
                cmd = []
            elif tok in ("|", "&", "<", ">", "(", ")"):
                raise AssertionError(f"cannot check the shell syntax {tok!r} in: {line}")
            else:
                cmd.append(tok)
        commands.append(cmd)
    return [c for c in commands if c]


def parse_speechlm(argv: list[str], monkeypatch) -> None:
    """Parse ``speechlm ARGV`` with the real parser; the subcommand itself is not run."""
    import importlib
    import pkgutil

    import speechlm.bin
    import speechlm.cli

    ran: list = []
    for mod in pkgutil.iter_modules(speechlm.bin.__path__):
        module = importlib.import_module(f"speechlm.bin.{mod.name}")
        if hasattr(module, "main"):
            monkeypatch.setattr(module, "main", lambda args: ran.append(args) or 0)
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            rc = speechlm.cli.main(argv)
    except SystemExit as e:
        rc = e.code or 0
    assert rc == 0, f"`speechlm {' '.join(argv)}` does not parse: {err.getvalue().strip()}"
    help_only = any(a in ("-h", "--help") for a in argv) or not argv
    assert ran or help_only, f"`speechlm {' '.join(argv)}` parsed but named no subcommand"


def run_shell(block: Block, workdir: Path, monkeypatch) -> None:
    cwd = ROOT
    for cmd in shell_commands(block.text):
        name, args = cmd[0], cmd[1:]
        where = f"{block.doc}:{block.line}: `{shlex.join(cmd)}`"
        if name == "speechlm":
            parse_speechlm(args, monkeypatch)
        elif name.startswith("python") and args[:2] == ["-m", "speechlm"]:
            parse_speechlm(args[2:], monkeypatch)
        elif name in ("./run.sh", "./speechlm.sh"):
            recipe = cwd if (cwd / name).exists() else RECIPE
            r = subprocess.run(["bash", name, *args, "--help"], cwd=recipe, capture_output=True, text=True)
            assert r.returncode == 0 and "Options" in r.stdout, f"{where}: {r.stderr.strip()}"
        elif name == "cd":
            assert len(args) == 1 and (cwd / args[0]).is_dir(), f"{where}: no such directory"
            cwd = (cwd / args[0]).resolve()
        elif name in (".", "source"):
            assert args and (args[0] == ".venv/bin/activate" or args[0].endswith("path.sh")), \
                f"{where}: only the virtual env or a recipe's path.sh may be sourced"
        elif name.endswith("TEMPLATE/speechlm1/setup.sh"):
            target = workdir / args[0]
            r = subprocess.run(["bash", str(cwd / name), str(target)], capture_output=True, text=True)
            assert r.returncode == 0, f"{where}: {r.stderr.strip()}"
            for f in ("run.sh", "speechlm.sh", "path.sh", "cmd.sh", "utils", "local/data.sh", "conf/tokenizers.yaml"):
                assert (target / f).exists(), f"{where}: did not make {f}"
        else:
            raise AssertionError(f"{where}: this test cannot run this command; make it one it checks, or mark the "
                                 "block with <!-- doc-test: skip (why) --> on the line before its fence")


# ---- yaml blocks --------------------------------------------------------------------------------
def run_yaml(block: Block, workdir: Path) -> None:
    import yaml

    from speechlm.tasks import load_template

    data = yaml.safe_load(block.text)
    if isinstance(data, dict) and "conditions" in data and "targets" in data:
        path = workdir / f"{data.get('name', 'task')}.yaml"
        path.write_text(block.text)
        template = load_template(str(path))
        assert template.name == data["name"]
        return
    raise AssertionError(f"{block.doc}:{block.line}: this test checks YAML task templates only; mark this block "
                         "with <!-- doc-test: skip (why) -->")


@pytest.mark.parametrize("block", BLOCKS, ids=[f"{b.doc}:{b.line}" for b in BLOCKS])
def test_doc_block_runs(block: Block, tmp_path: Path, monkeypatch, request) -> None:
    if block.skip:
        pytest.skip(block.skip)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    if block.lang == "python":
        run_python(block, tmp_path, request.getfixturevalue("tiny_packed"))
    elif block.lang in ("bash", "sh", "shell"):
        run_shell(block, tmp_path, monkeypatch)
    elif block.lang in ("yaml", "yml"):
        run_yaml(block, tmp_path)
    else:
        raise AssertionError(f"{block.doc}:{block.line}: a {block.lang or 'plain'} block this test cannot run; mark "
                             "it with <!-- doc-test: skip (why) --> on the line before its fence")


def test_blocks_are_found_and_markers_give_reasons() -> None:
    """The parser sees the blocks (a broken fence would hide them) and every skip says why."""
    by_doc = {d: [b for b in BLOCKS if b.doc == d] for d in ("README.md", "egs/TEMPLATE/speechlm1/README.md")}
    assert all(len(bs) >= 5 for bs in by_doc.values()), {d: len(bs) for d, bs in by_doc.items()}
    assert any(b.lang == "python" and not b.skip for b in BLOCKS)
    assert all(b.skip is None or len(b.skip) > 5 for b in BLOCKS)


REPO_PATH = re.compile(r"`((?:speechlm|egs|tools|tests|bench|docs)/[\w./-]*\w)`")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_doc_paths_exist_inside_the_repo(doc: Path) -> None:
    """Repo paths and test names the docs give in backticks exist, and relative links stay inside the repo."""
    text = doc.read_text(encoding="utf-8")
    missing = []
    for m in REPO_PATH.finditer(text):
        p = m.group(1)
        if not (ROOT / p).exists() and not (ROOT / p.split(":")[0]).exists():
            missing.append(p)
    for m in LINK.finditer(text):
        target = m.group(1)
        if re.match(r"^[a-z]+:", target):  # http:, mailto:
            continue
        resolved = (doc.parent / target).resolve()
        if not resolved.is_relative_to(ROOT) or not resolved.exists():
            missing.append(target)
    tests = "".join(p.read_text(encoding="utf-8") for p in (ROOT / "tests").glob("test_*.py"))
    for name in set(re.findall(r"`(test_\w+)`", text)):  # regression tests the docs cite
        if not re.search(rf"def {name}\(", tests):
            missing.append(name)
    assert not missing, f"{doc.relative_to(ROOT)} names paths or tests that do not exist in the repo: {missing}"


# ---- command synopses in the prose ----------------------------------------------------------------
def speechlm_help(path: tuple[str, ...]) -> str:
    """``speechlm PATH --help`` (the real parser's text)."""
    import speechlm.cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            speechlm.cli.main([*path, "--help"])
        except SystemExit:
            pass
    return out.getvalue()


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_inline_commands_name_real_options(doc: Path) -> None:
    """Every `speechlm CMD ... --opt` written in the prose (and each `CMD --opt ...` synopsis of
    interfaces.md's command list) names a command that exists and options that command has."""
    import functools

    helper = functools.lru_cache(maxsize=None)(speechlm_help)
    commands = set(re.findall(r"^  ([a-z][\w-]+) ", helper(()), re.M))
    assert {"train", "decode", "pack"} <= commands, "could not read the command list of `speechlm --help`"
    text = doc.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # blocks: test_doc_block_runs
    wrong = []
    for m in re.finditer(r"`([^`]+)`", text):
        words = m.group(1).split()
        explicit = words[:1] == ["speechlm"] or words[:3] in (["python3", "-m", "speechlm"], ["python", "-m", "speechlm"])
        if explicit:
            words = words[3:] if words[0].startswith("python") else words[1:]
        elif not (words and words[0] in commands and any(w.startswith("--") for w in words)):
            continue
        if not words or words[0].startswith("-") or words[0].isupper() or not re.match(r"^[a-z][\w-]*$", words[0]):
            continue  # `speechlm --help`, `speechlm CMD --help`
        if words[0] not in commands:
            wrong.append(f"`{m.group(1)}`: no command {words[0]!r}")
            continue
        path = tuple(words[:2]) if words[0] == "agent" and len(words) > 1 and not words[1].startswith("-") else tuple(words[:1])
        help_text = helper(path)
        if not help_text:
            wrong.append(f"`{m.group(1)}`: `speechlm {' '.join(path)} --help` prints nothing")
            continue
        for opt in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", m.group(1)):
            if not re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", help_text):
                wrong.append(f"`{m.group(1)[:60]}...`: `speechlm {' '.join(path)}` has no {opt}")
    assert not wrong, f"{doc.relative_to(ROOT)}:\n" + "\n".join(wrong)
