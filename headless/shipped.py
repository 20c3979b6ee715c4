"""The workflows and experiments shipped in the package's ``workflows/`` folder: found by bare
name (``loralab run quickstart``, ``loralab sweep sampler_steps``) wherever the package is
installed, and listed by ``loralab workflows``."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import invalid_prompt

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
NOTES = ("Note", "MarkdownNote")  # the editor's comment nodes; the text is their first widget
KINDS = {".ui.json": "ui", ".json": "run", ".toml": "sweep"}  # longest suffix first


def _kind(path: Path) -> tuple[str, str] | None:
    """(name, kind) of a shipped file, or None for a file that is not a workflow."""
    for suffix, kind in KINDS.items():
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)], kind
    return None


def shipped(kind: str) -> list[str]:
    return sorted(name for name, k in filter(None, map(_kind, WORKFLOWS.glob("*"))) if k == kind)


def resolve(name: str, kind: str) -> str:
    """``name`` when such a file exists; else, for a bare name, the shipped file of that name
    (``quickstart`` -> ``workflows/quickstart.json``). A name found nowhere is an error that
    lists what is shipped."""
    if Path(name).exists() or Path(name).name != name:
        return name
    suffixes = [""] + [s for s, k in KINDS.items() if k == kind or (kind == "run" and k == "ui")]
    for suffix in suffixes:
        if (WORKFLOWS / f"{name}{suffix}").is_file():
            return str(WORKFLOWS / f"{name}{suffix}")
    raise invalid_prompt(f"No file {name!r} here and no shipped workflow of that name",
                         f"shipped (see loralab workflows): {', '.join(shipped(kind))}")


def _first_line(text: str) -> str:
    return next((line.strip().lstrip("#").strip() for line in text.splitlines() if line.strip("# \t")), "")


def description(path: Path) -> str:
    """The first line of a UI workflow's first note, of an experiment's leading comment, or, for
    a workflow without a note, the titles of its nodes."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        comments = [line for line in text.splitlines() if line.startswith("#")]
        return _first_line("\n".join(comments))
    data = json.loads(text)
    if "nodes" in data:
        notes = [n["widgets_values"][0] for n in data["nodes"] if n.get("type") in NOTES and n.get("widgets_values")]
        if notes:
            return _first_line(str(notes[0]))
        return ""
    titles = [n.get("_meta", {}).get("title") or n.get("class_type", "") for n in data.values()]
    return "nodes: " + ", ".join(titles)


def listing(width: int = 100) -> str:
    """One line per shipped workflow or experiment: its name, the command that takes it
    (``loralab run NAME`` or ``loralab sweep NAME``) and what it is."""
    names = sorted({_kind(p) for p in WORKFLOWS.glob("*")} - {None})
    lines = []
    for name, kind in names:
        if kind == "ui":
            continue
        files = [WORKFLOWS / f"{name}.ui.json"] if kind == "run" else []
        files.append(WORKFLOWS / f"{name}{'.json' if kind == 'run' else '.toml'}")
        about = next((d for d in map(description, filter(Path.is_file, files)) if d), "")
        about = about if len(about) <= width else about[: width - 3] + "..."
        lines.append(f"{name:20} {kind:6} {about}".rstrip())
    return "\n".join(lines)
