"""``loralab sweep``: run an experiment's runs in order, skip finished ones, record results."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .errors import NodeExecutionError, printable
from .results import read_records, write_record, write_tables
from .sweep import expand, load_experiment, shard


def _scores(result, prompt: dict, registry: dict) -> list[dict]:
    """Every LL_SCORES table the run produced, row by row, tagged with its node."""
    rows = []
    for node_id, slots in result.outputs.items():
        returns = registry[prompt[node_id]["class_type"]].RETURN_TYPES
        for slot, kind in enumerate(returns):
            if kind == "LL_SCORES":
                for table in slots[slot]:
                    rows += [{"node": node_id, **row} for row in table.rows]
    return rows


def cmd_sweep(args) -> int:
    from .cli import _quiet_libraries, _registry, execute_workflow, load_any, make_executor
    from .graph import apply_overrides, node_depths, parse_override, resolve_node, validate

    exp = load_experiment(args.experiment)
    base, ui = load_any(str(exp.workflow))
    registry, _ = _registry()
    depths = node_depths(base)

    def depth(target: str) -> int:
        return depths[resolve_node(base, parse_override(f"{target}=0")[0], f"axis {target!r}")]

    # A bundle axis sits as far upstream as its most upstream override.
    axis_depth = {a: depth(a) if "." in a else min(depth(k) for table in values for k in table)
                  for a, values in exp.axes.items()}
    runs = shard(expand(exp, axis_depth), args.shard)
    for run in runs:  # refuse a bad experiment before running anything
        validate(apply_overrides(base, run.as_set_args(), registry), registry)
    output_dir = Path(args.output or Path("output") / exp.path.stem).resolve()
    done = {r["run_id"] for r in read_records(output_dir) if r.get("status") == "done"}
    if args.collect:
        print(f"collected {write_tables(output_dir)} rows from {len(done)} finished runs into {output_dir}")
        return 0
    if args.dry_run:
        for run in runs:
            state = "done" if run.run_id in done else "pending"
            print(printable(f"{run.run_id}  {state:7}  r{run.repeat}  " + "  ".join(
                f"{k}={json.dumps(v)}" for k, v in run.overrides.items())))
        print(f"{len(runs)} runs, {sum(r.run_id in done for r in runs)} done")
        return 0
    _quiet_libraries()
    executor = make_executor(args, registry)
    failed = 0
    try:
        for index, run in enumerate(runs, 1):
            if run.run_id in done:
                continue
            run_dir = output_dir / "runs" / run.run_id
            prompt = apply_overrides(base, run.as_set_args(), registry)
            record = {"run_id": run.run_id, "overrides": run.overrides, "repeat": run.repeat,
                      "experiment": str(exp.path), "workflow": str(exp.workflow)}
            start = time.perf_counter()
            try:
                result, images = execute_workflow(prompt, None, run_dir, executor, registry)
            except NodeExecutionError as e:
                failed += 1
                record.update(status="failed", error=str(e), seconds=time.perf_counter() - start)
                print(printable(f"[{index}/{len(runs)}] {run.run_id} failed: {e}"), file=sys.stderr)
            else:
                record.update(status="done", seconds=time.perf_counter() - start, images=images,
                              executed=result.executed, scores=_scores(result, prompt, registry),
                              nodes=[{"id": n.node_id, "class_type": n.class_type, "seconds": n.seconds,
                                      "cached": n.cached} for n in result.nodes])
                if not args.quiet:
                    print(f"[{index}/{len(runs)}] {run.run_id} done in {record['seconds']:.2f} s "
                          f"({len(result.executed)} nodes run, {len(result.nodes) - len(result.executed)} cached)")
            write_record(run_dir, record)
            write_tables(output_dir)
    finally:
        if (output_dir / "runs").is_dir():
            write_tables(output_dir)
    finished = sum(1 for r in read_records(output_dir) if r.get("status") == "done")
    print(f"{finished} finished runs; results in {output_dir / 'results.csv'} and results.jsonl")
    return 1 if failed else 0

