"""Run records and the results tables of a sweep, written atomically (temp file + rename).

Each finished run writes ``runs/<run_id>/result.json``; those files are the truth.
``results.jsonl`` and ``results.csv`` are rebuilt from them after every run, so a kill at any
moment leaves every finished row on disk and no half-written file.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

from ..core.files import atomic_write_text

RESULT = "result.json"
COLUMNS = ["run_id", "status", "repeat", "run_seconds"]  # every table has them, even an empty one


def fresh_run_dir(run_dir: Path) -> Path:
    """An empty folder for a run that starts (again): files an interrupted or failed attempt left
    there would sit beside the new ones and shift their numbers. A symlink is removed, never followed."""
    if run_dir.is_symlink() or run_dir.is_file():
        run_dir.unlink()
    elif run_dir.exists():
        shutil.rmtree(run_dir)
    return run_dir


def write_record(run_dir: Path, record: dict) -> None:
    atomic_write_text(run_dir / RESULT, json.dumps(record, indent=1, default=str))


def read_records(output_dir: Path) -> list[dict]:
    records = []
    for path in sorted((output_dir / "runs").glob(f"*/{RESULT}")):
        try:
            records.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError):
            continue  # not ours or unreadable: the run counts as unfinished and runs again
    return records


def table_rows(records: list[dict]) -> list[dict]:
    """One row per score row of every finished run (one row for a run without scores), with the
    run's id, its overrides as ``set:<NODE.INPUT>`` columns, status and timing. A score row's
    ``cached`` column says whether the run reused it from an earlier run instead of computing it."""
    rows = []
    for record in records:
        base = {"run_id": record["run_id"], "status": record["status"], "repeat": record.get("repeat", 0),
                **{f"set:{k}": v for k, v in record.get("overrides", {}).items()},
                "run_seconds": record.get("seconds")}
        scores = record.get("scores") or [{}]
        rows += [{**base, **row} for row in scores]
    return rows


def write_tables(output_dir: Path) -> int:
    rows = table_rows(read_records(output_dir))
    atomic_write_text(output_dir / "results.jsonl",
                      "".join(json.dumps(r, default=str) + "\n" for r in rows))
    columns = list(COLUMNS)
    for row in rows:
        columns += [c for c in row if c not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(output_dir / "results.csv", buffer.getvalue())
    return len(rows)
