"""The repository's Dockerfile and .dockerignore read as Docker reads them, for the tests that do
without Docker what the image build does (tests/integration/test_wheel_install.py).

Only the forms the Dockerfile uses are understood: global ``ARG``s, ``FROM ... [AS name]``, and per
stage ``WORKDIR``, ``ENV k=v ...``, plain ``COPY src... dest``, ``RUN [--mount=...] script``,
``USER``, ``EXPOSE``, exec-form ``ENTRYPOINT``/``CMD``. Anything else fails loudly, so a change to
the Dockerfile that the tests cannot follow is seen, not skipped.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

KNOWN = {"ARG", "FROM", "WORKDIR", "ENV", "COPY", "RUN", "USER", "EXPOSE", "ENTRYPOINT", "CMD", "LABEL"}


@dataclass(frozen=True)
class Run:
    """A ``RUN`` instruction: its ``--mount`` options (key -> value each) and its shell script."""

    mounts: tuple[dict[str, str], ...]
    script: str


@dataclass
class Stage:
    name: str | None
    base: str
    workdir: str = "/"
    env: dict[str, str] = field(default_factory=dict)
    copies: list[tuple[list[str], str]] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    user: str | None = None
    expose: list[int] = field(default_factory=list)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)

    def run_containing(self, text: str) -> Run:
        """The one ``RUN`` whose script contains ``text``."""
        found = [run for run in self.runs if text in run.script]
        assert len(found) == 1, f"stage {self.name or self.base}: {len(found)} RUN lines contain {text!r}"
        return found[0]


@dataclass
class Dockerfile:
    args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction: continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, rest = (pending + stripped).partition(" ")
        result.append((keyword.upper(), rest.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return result


def _run(arguments: str) -> Run:
    mounts = []
    while arguments.startswith("--"):
        option, _, arguments = arguments.partition(" ")
        assert option.startswith("--mount="), f"RUN option not understood: {option}"
        mounts.append(dict(item.split("=", 1) for item in option.removeprefix("--mount=").split(",")))
        arguments = arguments.lstrip()
    return Run(tuple(mounts), arguments)


def parse(path: Path) -> Dockerfile:
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, rest in instructions(path.read_text()):
        assert keyword in KNOWN, f"{path.name}: instruction {keyword} not understood by tests/dockerfile.py"
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
            stages.append(Stage(name=words[2] if len(words) == 3 else None, base=base))
        else:
            _stage_instruction(stages[-1], keyword, rest)
    return Dockerfile(args, stages)


def _stage_instruction(stage: Stage, keyword: str, rest: str) -> None:
    if keyword == "WORKDIR":
        stage.workdir = str(PurePosixPath(stage.workdir) / rest)
    elif keyword == "ENV":
        pairs = shlex.split(rest)
        assert all("=" in p for p in pairs), f"ENV needs key=value pairs: {rest}"
        stage.env.update(dict(p.split("=", 1) for p in pairs))
    elif keyword == "COPY":
        words = shlex.split(rest)
        assert not any(w.startswith("--") for w in words), f"COPY options not understood: {rest}"
        stage.copies.append((words[:-1], words[-1]))
    elif keyword == "RUN":
        stage.runs.append(_run(rest))
    elif keyword == "USER":
        stage.user = rest
    elif keyword == "EXPOSE":
        stage.expose += [int(port.split("/")[0]) for port in rest.split()]
    elif keyword in ("ENTRYPOINT", "CMD"):
        value = json.loads(rest)
        assert isinstance(value, list), f"{keyword} must be in exec form (a JSON list): {rest}"
        setattr(stage, keyword.lower(), value)


def ignore_patterns(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    parts = re.split(r"(\*\*/|\*\*|\*|\?|\[[^\]]*\])", pattern.strip("/").removeprefix("./"))
    regex = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    out = "".join(
        regex.get(part) or (part if part.startswith("[") else re.escape(part)) for part in parts if part
    )
    return re.compile(out + r"\Z")


def ignored(relative: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``relative`` (a path in the context) out: the last pattern that
    matches it or one of its parent folders decides, ``!pattern`` taking it back in."""
    candidates = [str(p) for p in [PurePosixPath(relative), *PurePosixPath(relative).parents][:-1]]
    verdict = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _pattern_regex(pattern.removeprefix("!"))
        if any(regex.match(candidate) for candidate in candidates):
            verdict = not negated
    return verdict
