"""``loralab sweep``: run an experiment's runs in order, skip finished ones, record results."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .errors import NodeExecutionError, printable
from .hooks import hooks
from .results import fresh_run_dir, read_records, write_record, write_tables
from .sweep import Run, check_run_count, expand, load_experiment, run_count, shard, workflow_hash


def _tables(result):
    """Every table the run produced (as the pack's ``tables`` hook reads them), with its node id."""
    read = hooks().tables
    for node_id, slots in result.outputs.items():
        for values in slots:
            for value in values:
                if (table := read(value)) is not None:
                    yield node_id, table


def _scores(result, prompt: dict, registry: dict) -> list[dict]:
    """Every score table the run produced, row by row, tagged with its node and whether the
    node's outputs came from the cache (computed by an earlier run) rather than this run."""
    cached = {n.node_id for n in result.nodes if n.cached}
    return [{"node": node_id, "cached": node_id in cached, **row} for node_id, (_, rows) in _tables(result)
            for row in rows]


def _score_keys(result, prompt: dict, registry: dict) -> dict[str, list[str]]:
    """Each score node's key columns (what identifies a row), for loralab report."""
    return {node_id: list(keys) for node_id, (keys, _) in _tables(result)}


def _axis_depths(exp, base: dict) -> dict[str, int]:
    """Each axis's distance from the sources; a bundle axis sits as far upstream as its most
    upstream override."""
    from .graph import node_depths, parse_override, resolve_node

    depths = node_depths(base)

    def depth(target: str) -> int:
        return depths[resolve_node(base, parse_override(f"{target}=0")[0], f"axis {target!r}")]

    return {a: depth(a) if "." in a else min(depth(k) for table in values for k in table)
            for a, values in exp.axes.items()}


def _plan(exp, base: dict, registry: dict, shard_spec: str | None, block: bool = False) -> list[tuple[Run, str]]:
    """This shard's runs, each with the hash of its resolved workflow; every run is validated
    here, so a bad experiment is refused before anything runs."""
    from .graph import apply_overrides, validate

    plan = []
    for run in shard(expand(exp, _axis_depths(exp, base)), shard_spec, block and run_count(exp)):
        prompt, _, _ = validate(apply_overrides(base, run.as_set_args(), registry), registry)
        plan.append((run, workflow_hash(prompt)))
    return plan


def _state(run: Run, digest: str, finished: dict[str, dict]) -> str:
    """done, stale (finished, but from a workflow edited since: it runs again) or pending."""
    record = finished.get(run.run_id)
    if record is None:
        return "pending"
    return "done" if record.get("workflow_hash") == digest else "stale"


def run_one(run: Run, digest: str, base: dict, exp, registry: dict, executor, output_dir: Path) -> dict:
    """Execute one run of a sweep into ``runs/<id>/`` (emptied first) and write its
    ``result.json``; returns the record (status done or failed). Shared by the serial loop, the
    shards of a Slurm array and Ray's tasks."""
    from .cli import execute_workflow
    from .graph import apply_overrides

    run_dir = fresh_run_dir(output_dir / "runs" / run.run_id)
    prompt = apply_overrides(base, run.as_set_args(), registry)
    record = {"run_id": run.run_id, "overrides": run.overrides, "repeat": run.repeat,
              "experiment": str(exp.path), "workflow": str(exp.workflow), "workflow_hash": digest}
    start = time.perf_counter()
    try:
        result, images = execute_workflow(prompt, None, run_dir, executor, registry)
    except NodeExecutionError as e:
        record.update(status="failed", error=str(e), seconds=time.perf_counter() - start)
    else:
        record.update(status="done", seconds=time.perf_counter() - start, images=images,
                      executed=result.executed, scores=_scores(result, prompt, registry),
                      score_keys=_score_keys(result, prompt, registry),
                      nodes=[{"id": n.node_id, "class_type": n.class_type, "seconds": n.seconds,
                              "cached": n.cached} for n in result.nodes])
    write_record(run_dir, record)
    return record


def load_sweep(args):
    """(experiment with --set applied, output folder, base workflow, registry, plan, states)."""
    from .cli import _registry, load_any, output_folder
    from .graph import parse_override
    from .shipped import resolve

    exp = load_experiment(resolve(args.experiment, "sweep"))
    for text in getattr(args, "overrides", []):
        node, name, value = parse_override(text)
        exp.fixed[f"{node}.{name}"] = value
    output_dir = output_folder(args.output or Path("output") / exp.path.stem)
    check_run_count(exp, args.max_runs)  # before anything is expanded
    base, _ = load_any(str(exp.workflow))
    registry, _ = _registry()
    plan = _plan(exp, base, registry, args.shard, getattr(args, "block", False))
    finished = {r["run_id"]: r for r in read_records(output_dir) if r.get("status") == "done"}
    states = [_state(run, digest, finished) for run, digest in plan]
    return exp, output_dir, base, registry, plan, states


def cmd_sweep(args) -> int:
    from .cli import _quiet_libraries, make_executor

    exp, output_dir, base, registry, plan, states = load_sweep(args)
    if args.collect:
        done = sum(s == "done" for s in states)
        print(f"collected {write_tables(output_dir)} rows from {done} finished runs into {output_dir}")
        return 0
    if getattr(args, "slurm", False):
        from .engines import submit_slurm

        return submit_slurm(args, exp, base, output_dir, plan)
    if args.dry_run:
        for (run, _), state in zip(plan, states, strict=True):
            print(printable(f"{run.run_id}  {state:7}  r{run.repeat}  " + "  ".join(
                f"{k}={json.dumps(v)}" for k, v in run.overrides.items())))
        print(f"{len(plan)} runs, {states.count('done')} done")
        return 0
    if getattr(args, "ray", None) is not None:
        from .engines import run_on_ray

        return run_on_ray(args, exp, output_dir, base, plan, states)
    _quiet_libraries()
    executor = make_executor(args, registry)
    failed = 0
    try:
        for index, ((run, digest), state) in enumerate(zip(plan, states, strict=True), 1):
            if state == "done":
                continue
            record = run_one(run, digest, base, exp, registry, executor, output_dir)
            if record["status"] == "failed":
                failed += 1
                print(printable(f"[{index}/{len(plan)}] {run.run_id} failed: {record['error']}"), file=sys.stderr)
            elif not args.quiet:
                ran = sum(not n["cached"] for n in record["nodes"])
                print(f"[{index}/{len(plan)}] {run.run_id} done in {record['seconds']:.2f} s "
                      f"({ran} nodes run, {len(record['nodes']) - ran} cached)")
            write_tables(output_dir)
    finally:
        if (output_dir / "runs").is_dir():
            write_tables(output_dir)
    finished_now = sum(1 for r in read_records(output_dir) if r.get("status") == "done")
    print(f"{finished_now} finished runs; results in {output_dir / 'results.csv'} and results.jsonl")
    return 1 if failed else 0
