"""``LL_SCORES``: a table of metric values, each row identified by its key columns."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ScoreTable:
    keys: tuple[str, ...]
    rows: list[dict] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        cols = list(self.keys)
        for row in self.rows:
            cols += [c for c in row if c not in cols]
        return cols

    def __len__(self) -> int:
        return len(self.rows)
