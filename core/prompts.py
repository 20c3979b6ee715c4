"""``LL_PROMPTS``: prompts with the category each belongs to (seed 000 groups prompts into
standard / challenging / closeup and reports metrics per category)."""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_CATEGORY = "default"
_CATEGORY = re.compile(r"^\s*([A-Za-z][\w-]*)\s*:\s*(.+)$")


@dataclass(frozen=True)
class Prompt:
    text: str
    category: str = DEFAULT_CATEGORY


def parse_prompts(text: str) -> list[Prompt]:
    """One prompt per line; ``category: prompt`` sets a category (one word before the first
    colon); blank lines and lines starting with ``#`` are skipped."""
    prompts = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _CATEGORY.match(line)
        prompts.append(Prompt(m.group(2).strip(), m.group(1).lower()) if m else Prompt(line))
    return prompts
