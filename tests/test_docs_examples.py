"""Every code block of README.md and docs/*.md holds as written.

- Python blocks run, each in a fresh process, in a sandbox directory that holds the small files
  the docs name (a raw Criteo ``train.txt`` and ``test.txt``, ``x.npy``/``y.npy`` and a trained run
  at ``runs/RUN``); the blocks of one page run in page order in the same sandbox, so a block may
  use what an earlier block or command of its page wrote.
- Shell blocks run with bash (``-euo pipefail``) in the same sandbox and must succeed. Every
  ``fastme`` command in them (also behind ``python -m``, ``torchrun -m`` or ``&&``), run or not, is
  parsed by fastme's own parser first, so no page shows an option that does not exist; every
  ``pip install -e '.[extra]'`` names extras that pyproject.toml defines.
- A block marked ``<!-- docs-test: skip (why) -->`` is not run (but still parsed); the reason is
  required (a GPU, the user's own files, an install, minutes of CPU).
- A block marked ``<!-- docs-test: needs MODULE ... -->`` (an optional extra's packages, e.g.
  ``onnx onnxruntime`` of ``.[export]``) runs where they are installed, as in CI, and is skipped,
  with the reason, where they are not (the README's test command installs no extras).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(
    r"(?:<!--\s*docs-test:\s*(?P<mark>.*?)\s*-->\s*\n)?"
    r"^```(?P<lang>[a-z]*)\n(?P<body>.*?)^```",
    re.S | re.M,
)
SHELL = ("bash", "sh", "")


def blocks(page: Path):
    """(line number, language, mark, body) of each fenced block of ``page``."""
    text = page.read_text()
    for m in BLOCK.finditer(text):
        yield text.count("\n", 0, m.start("body")), m["lang"], m["mark"] or "", m["body"]


def commands(body: str):
    """The shell commands of a block: continuation lines and quoted newlines joined, comments
    and empty lines dropped, ``a && b`` split."""
    joined = re.sub(r"\\\n\s*", " ", body)
    pending = ""
    for line in joined.splitlines():
        pending += line + "\n"
        try:
            words = shlex.split(pending, comments=True)
        except ValueError:  # a quotation that goes on on the next line
            continue
        pending = ""
        if not words:
            continue
        current: list[str] = []
        for word in words + ["&&"]:
            if word == "&&":
                if current:
                    yield current
                current = []
            else:
                current.append(word)


def fastme_argv(words: list[str]) -> list[str] | None:
    """The arguments given to fastme's parser by a command line (None: not a fastme command)."""
    if words[0] == "fastme":
        return words[1:]
    for i in range(len(words) - 1):
        if words[i] == "-m" and words[i + 1] == "fastme":
            return words[i + 2 :]
    return None


def test_every_page_has_been_read():
    found = [(page.name, line) for page in PAGES for line, *_ in blocks(page)]
    assert len(found) >= 10, found  # the pattern still matches the pages' fences


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_shell_commands_parse(page, capsys):
    from fastme.cli import build_parser

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    )
    parser = build_parser()
    for line, lang, _mark, body in blocks(page):
        if lang not in SHELL:
            continue
        for words in commands(body):
            argv = fastme_argv(words)
            if argv is not None and "--help" not in argv:
                try:
                    parser.parse_args(argv)
                except SystemExit:
                    pytest.fail(
                        f"{page.name}:{line}: {' '.join(words)!r} does not parse: "
                        f"{capsys.readouterr().err.strip()}"
                    )
            if words[:2] == ["pip", "install"]:
                for spec in words[2:]:
                    named = re.fullmatch(r"\.\[(.*)\]", spec)
                    if named:
                        unknown = set(named[1].split(",")) - extras
                        assert not unknown, f"{page.name}:{line}: no extra {unknown}"
                    assert not spec.startswith("fastme["), (
                        f"{page.name}:{line}: fastme is not on a package index: {spec}"
                    )


def _criteo_lines(n: int, seed: int, labeled: bool = True) -> str:
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n):
        ints = [str(v) if rng.random() > 0.2 else "" for v in rng.integers(-1, 40, 13)]
        cats = ["%08x" % v if rng.random() > 0.1 else "" for v in rng.integers(0, 12, 26)]
        click = int(rng.random() < 0.2 + 0.5 * (cats[0] in ("00000001", "00000002")))
        lines.append("\t".join(([str(click)] if labeled else []) + ints + cats))
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A directory holding what the docs' examples name, and the environment to run them in."""
    root = tmp_path_factory.mktemp("docs")
    (root / "train.txt").write_text(_criteo_lines(3000, seed=0))
    (root / "test.txt").write_text(_criteo_lines(200, seed=1, labeled=False))
    rng = np.random.default_rng(2)
    x = np.stack([rng.integers(0, d, 2000) for d in (1000, 50, 7)], 1)
    np.save(root / "x.npy", x)
    np.save(root / "y.npy", (rng.random(2000) < 0.3).astype(np.float32))
    env = {
        **os.environ,
        "FASTME_CACHE_DIR": str(root / "cache"),
        "PYTHONPATH": str(ROOT),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
        "TQDM_DISABLE": "1",
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastme",
            "train",
            "--data",
            "criteo:train.txt",
            "--model",
            "dnn",
            "--mode",
            "me",
            "--scale",
            "2",
            "--model-option",
            "hidden_dim=16",
            "--epochs",
            "2",
            "--batch-size",
            "256",
            "--min-count",
            "2",
            "--no-progress",
            "--out",
            "runs/RUN",
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return root, env


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_examples_run(page, sandbox):
    root, env = sandbox
    ran, skipped = 0, []
    for line, lang, mark, body in blocks(page):
        where = f"{page.name}:{line}"
        if mark.startswith("skip"):
            assert re.fullmatch(r"skip \(.+\)", mark), f"{where}: a skip needs its reason: {mark}"
            continue
        if mark.startswith("needs"):
            missing = [m for m in mark.split()[1:] if importlib.util.find_spec(m) is None]
            if missing:
                skipped.append(f"{where} needs {', '.join(missing)}")
                continue
        if lang == "python":
            done = subprocess.run(
                [sys.executable, "-c", body],
                cwd=root,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
        elif lang in SHELL:
            done = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", body],
                cwd=root,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
        else:
            continue
        ran += 1
        assert done.returncode == 0, f"{where} failed:\n{body}\n{done.stdout}\n{done.stderr}"
    if skipped:
        pytest.skip(f"ran {ran} blocks; not installed here: {'; '.join(skipped)}")
    if ran == 0:
        pytest.skip(f"{page.name} has no block to run")
