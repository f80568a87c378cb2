"""Docs that run: every command and snippet in README.md and docs/ is checked, so they cannot drift.

- Every ssd_deploy command line in a ``bash`` block (or after a ``$ `` prompt) is parsed by that
  command's own parser: a flag that no longer exists, or a value it refuses, fails here.
- ``make`` targets, ``pip install`` extras and ``benchmarks/*.py`` scripts the docs name must exist.
- Every ``python`` block is executed in a scratch folder that holds what the docs assume
  (``export/ssd300.onnx``, a few photos). A block preceded by ``<!-- docs-check: gpu -->`` must fail
  with one line (no GPU or TensorRT here); one preceded by ``<!-- docs-check: service -->`` needs a
  running server, so it is compiled and its imports are run, not its requests.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "export" / "README.md",
        ROOT / "engines" / "README.md"]  # fmt: skip
SHELL = {"bash", "sh", "shell", "console"}
MARK = re.compile(r"<!--\s*docs-check:\s*([\w-]+)\s*-->")

#: Console script / ``python -m`` module -> the cli module that implements it.
COMMANDS = {
    "ssd-export": "export", "ssd-quantize": "quantize", "ssd-build": "build", "ssd-detect": "detect",
    "ssd-check": "check", "ssd-bench": "bench", "ssd-serve": "serve", "ssd-triton": "triton",
    "ssd-eval": "eval",
    "ssd_deploy.export": "export", "ssd_deploy.quantize": "quantize", "ssd_deploy.triton": "triton",
}  # fmt: skip


def _blocks(path: Path) -> list[tuple[str, str, int, str | None]]:
    """(language, text, first line number, docs-check mark) of every fenced block."""
    out = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)```(\w*)", lines[i])
        if not m:
            i += 1
            continue
        lang, start = m.group(2).lower(), i + 1
        mark = next(
            (MARK.search(lines[j]).group(1) for j in range(max(0, i - 2), i) if MARK.search(lines[j])), None
        )
        j = start
        while j < len(lines) and not lines[j].strip().startswith("```"):
            j += 1
        indent = len(m.group(1))
        out.append((lang, "\n".join(line[indent:] for line in lines[start:j]), start + 1, mark))
        i = j + 1
    return out


def _shell_lines(lang: str, text: str) -> list[tuple[int, str]]:
    """Command lines of a block (continuations joined): all of a shell block, the ``$ `` lines of others."""
    joined: list[tuple[int, str]] = []
    buf, first = "", 0
    for n, line in enumerate(text.splitlines()):
        if lang not in SHELL:
            if not line.startswith("$ "):
                continue
            line = line[2:]
        if not buf:
            first = n
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        joined.append((first, buf + line))
        buf = ""
    return [(n, line) for n, line in joined if line.strip() and not line.lstrip().startswith("#")]


def _argv(line: str) -> list[str]:
    return shlex.split(line, comments=True)


def _documented_lines() -> list[tuple[str, list[str]]]:
    out = []
    for path in DOCS:
        for lang, text, lineno, _ in _blocks(path):
            for n, line in _shell_lines(lang, text):
                try:
                    argv = _argv(line)
                except ValueError:
                    continue
                if argv:
                    out.append((f"{path.relative_to(ROOT)}:{lineno + n}", argv))
    return out


def _command(argv: list[str]) -> tuple[str, list[str]] | None:
    """The cli module and arguments of an ssd_deploy command line, else ``None``."""
    while argv and "=" in argv[0] and not argv[0].startswith("-"):  # VAR=value prefixes
        argv = argv[1:]
    if not argv:
        return None
    exe = Path(argv[0]).name
    if exe in COMMANDS:
        return COMMANDS[exe], argv[1:]
    if exe.startswith("python") and len(argv) > 2 and argv[1] == "-m" and argv[2] in COMMANDS:
        return COMMANDS[argv[2]], argv[3:]
    return None


LINES = _documented_lines()
COMMAND_LINES = [(where, c) for where, argv in LINES if (c := _command(argv))]


def test_the_docs_show_commands():
    assert len(COMMAND_LINES) >= 20, "the docs check found too few commands to mean anything"
    assert {c for _, (c, _) in COMMAND_LINES} >= {"export", "quantize", "build", "detect", "check", "bench",
                                                 "serve", "triton"}  # fmt: skip


def test_python_m_names_a_command():
    bad = [f"{where}: python -m {argv[2]} is not a command" for where, argv in LINES
           if Path(argv[0]).name.startswith("python") and argv[1:2] == ["-m"] and len(argv) > 2
           and argv[2].startswith("ssd_deploy") and argv[2] not in COMMANDS]  # fmt: skip
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("where, cmd", COMMAND_LINES, ids=[w for w, _ in COMMAND_LINES])
def test_documented_command_parses(where, cmd, capsys, scratch, monkeypatch):
    import importlib

    monkeypatch.chdir(scratch)  # the files the docs assume exist there
    module, args = cmd
    if module == "detect" and any(a == "--input" or a.startswith("--input=") for a in args):
        module = "detect_dataset"  # ssd-detect hands dataset mode to its own parser
    parser = importlib.import_module(f"ssd_deploy.cli.{module}").build_parser()
    try:
        parser.parse_args(args)
    except SystemExit as e:
        if e.code:
            pytest.fail(f"{where}: ssd-{module} {' '.join(args)}: {capsys.readouterr().err.strip()}")


def test_make_targets_pip_extras_and_scripts_exist():
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    problems = []
    for where, argv in LINES:
        argv = [a for a in argv if not a.startswith("-")]
        if argv[:1] == ["make"]:
            problems += [f"{where}: no make target {t!r}" for t in argv[1:] if t not in targets]
        for a in argv:
            m = re.search(r"(?:ssd_deploy|^\.)\[([\w,-]+)\]", a)
            if m and "pip" in " ".join(argv[:3]):
                problems += [f"{where}: no extra {e!r}" for e in m.group(1).split(",") if e not in extras]
            if a.startswith("benchmarks/") and a.endswith(".py") and not (ROOT / a).is_file():
                problems.append(f"{where}: {a} does not exist")
    assert not problems, "\n".join(problems)


# -- python snippets ----------------------------------------------------------------------------------
PY_BLOCKS = [(f"{p.relative_to(ROOT)}:{n}", text, mark) for p in DOCS for lang, text, n, mark in _blocks(p)
             if lang == "python"]  # fmt: skip


@pytest.fixture(scope="module")
def scratch(tmp_path_factory, ssd300_onnx):
    """A folder laid out as the docs assume: export/ssd300.onnx and some photos."""
    import numpy as np
    from PIL import Image

    d = tmp_path_factory.mktemp("docs")
    (d / "export").mkdir()
    os.symlink(ssd300_onnx, d / "export" / "ssd300.onnx")
    rng = np.random.default_rng(0)
    for name in ("street.jpg", "a.jpg", "b.png", "image.jpg", "photo.jpg"):
        Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(d / name)
    return d


def _imports_only(text: str) -> str:
    tree = ast.parse(text)
    tree.body = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    return ast.unparse(tree)


@pytest.mark.parametrize("where, text, mark", PY_BLOCKS, ids=[w for w, _, _ in PY_BLOCKS])
def test_python_snippet_runs(where, text, mark, scratch):
    compile(text, where, "exec")  # a syntax error fails every kind of block
    code = _imports_only(text) if mark == "service" else text
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=scratch, capture_output=True, text=True, env=env,
                          timeout=300)  # fmt: skip
    if mark == "gpu":
        assert proc.returncode != 0, f"{where}: expected to fail without a GPU"
        last = proc.stderr.strip().splitlines()[-1]
        assert "Error" in last and ("TensorRT" in last or "GPU" in last or "plan" in last), proc.stderr
        return
    assert proc.returncode == 0, f"{where}:\n{proc.stderr[-2000:]}"
