"""Sweeps handed to the engines clusters already run: a Slurm job array (task i runs block i of n
of the runs) and Ray (one task per run). Both reuse the run ids, the atomic
``runs/<id>/result.json`` files and the results tables, so a resubmitted array or a restarted
driver skips the finished runs, and ``loralab sweep --collect`` merges what several engines wrote.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .errors import invalid_prompt, printable
from .results import read_records, write_record, write_tables

SLURM_FOLDER = "slurm"


# --- Slurm -----------------------------------------------------------------------------------------

def _passed_options(args) -> list[str]:
    """The sweep's own options a task must repeat (models, inputs, cache, extra [set] values)."""
    out = []
    for folder in getattr(args, "models_dir", []):
        out += ["--models-dir", str(Path(folder).resolve())]
    for folder in getattr(args, "input_dir", []):
        out += ["--input-dir", str(Path(folder).resolve())]
    if getattr(args, "cache_dir", None):
        out += ["--cache-dir", str(Path(args.cache_dir).resolve())]
    for text in getattr(args, "overrides", []):
        out += ["--set", text]
    return out


def slurm_tasks(args, exp, base: dict, plan) -> int:
    """Array size: ``--array-tasks``, else one task per value of the most upstream axis (each task
    then trains its LoRA once for all its samplers; zip mode: one per combination), at most one
    per run."""
    from .sweep_cli import _axis_depths

    if args.array_tasks:
        return max(1, min(args.array_tasks, len(plan)))
    if not exp.axes:
        return 1
    depths = _axis_depths(exp, base)
    upstream = min(exp.axes, key=lambda a: depths[a])
    return max(1, min(len(exp.axes[upstream]), len(plan)))


def slurm_script(args, exp, base: dict, output_dir: Path, plan) -> str:
    """A job-array script whose task i runs block i of n of the runs (``SLURM_ARRAY_TASK_ID``)."""
    tasks = slurm_tasks(args, exp, base, plan)
    parallel = f"%{args.array_parallelism}" if args.array_parallelism else ""
    logs = output_dir / SLURM_FOLDER
    command = " ".join(map(shlex.quote, [sys.executable, "-m", "loralab", "sweep", str(exp.path.resolve()),
                                         "--output", str(output_dir)]))
    command += f' --shard "${{SLURM_ARRAY_TASK_ID}}/{tasks}" --block --quiet '
    command += " ".join(map(shlex.quote, _passed_options(args)))
    extra = [f"#SBATCH {line}" for line in shlex.split(args.sbatch or "")]
    lines = [
        "#!/bin/bash",
        f"# loralab sweep {exp.path.name}: {len(plan)} runs in {tasks} array tasks (task i runs block i of {tasks}).",
        "# Resubmit the same command to finish failed or unfinished runs: finished ones are skipped.",
        f"#SBATCH --job-name=loralab-{shlex.quote(exp.path.stem)[:40]}",
        f"#SBATCH --array=1-{tasks}{parallel}",
        f"#SBATCH --output={logs}/%A_%a.out",
        *extra,
        "set -euo pipefail",
        f"cd {shlex.quote(str(Path.cwd()))}",
        "export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}",
        f"exec {command.strip()}",
    ]
    return "\n".join(lines) + "\n"


def submit_slurm(args, exp, base: dict, output_dir: Path, plan) -> int:
    from ..core.files import atomic_write_text

    script = output_dir / SLURM_FOLDER / "sweep.sbatch"
    atomic_write_text(script, slurm_script(args, exp, base, output_dir, plan))
    script.chmod(0o755)
    if args.dry_run:
        tasks = slurm_tasks(args, exp, base, plan)
        print(f"wrote {script} ({tasks} array tasks for {len(plan)} runs); submit it with: sbatch {script}")
        return 0
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise invalid_prompt("--slurm: 'sbatch' is not on PATH", f"the script is written: {script}; run it on a "
                             "Slurm login node, or add --dry-run to only write it")
    done = subprocess.run([sbatch, str(script)], capture_output=True, text=True, check=False)
    print(printable(done.stdout.strip() or done.stderr.strip()))
    return 0 if done.returncode == 0 else 1


# --- Ray -------------------------------------------------------------------------------------------

_WORKER: dict = {}  # per Ray worker process: one executor, so runs sharing upstream nodes reuse them


def _ray_run(payload: dict) -> dict:
    """One run in a Ray worker; raises on a failed run so that Ray retries it."""
    from .cli import _quiet_libraries, _registry, apply_host_options
    from .diskcache import DiskCache
    from .execute import Executor
    from .sweep import Experiment, Run
    from .sweep_cli import run_one

    apply_host_options(payload["host"])
    if "executor" not in _WORKER:
        _quiet_libraries()
        registry, _ = _registry()
        disk = DiskCache(Path(payload["disk_cache"])) if payload["disk_cache"] else None
        _WORKER["registry"], _WORKER["executor"] = registry, Executor(registry, show_progress=False, disk_cache=disk)
    exp = Experiment(Path(payload["experiment"]), Path(payload["workflow"]), {})
    record = run_one(Run(**payload["run"]), payload["digest"], payload["base"], exp, _WORKER["registry"],
                     _WORKER["executor"], Path(payload["output_dir"]))
    if record["status"] == "failed":
        raise RuntimeError(record["error"])
    return record


def run_on_ray(args, exp, output_dir: Path, base: dict, plan, states) -> int:
    """One Ray task per unfinished run (``--ray-cpus-per-run``, ``--ray-gpus-per-run``), retried
    once; rows reach results.csv as runs finish. The workers write ``runs/<id>/result.json``
    themselves, so the folder must be shared by the driver and the workers (one machine, or a
    shared file system), and a restarted driver skips what finished."""
    try:
        import ray
    except ImportError:
        raise invalid_prompt("--ray needs Ray", "pip install 'loralab[ray]'") from None
    from .cli import host_options
    from .diskcache import cache_namespace

    pending = [(run, digest) for (run, digest), state in zip(plan, states, strict=True) if state != "done"]
    print(f"{len(plan) - len(pending)} of {len(plan)} runs already done; {len(pending)} to run on Ray")
    if not pending:
        write_tables(output_dir)
        return 0
    ray.init(address=args.ray or None, ignore_reinit_error=True, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    remote = ray.remote(num_cpus=args.ray_cpus_per_run, num_gpus=args.ray_gpus_per_run, max_retries=1,
                        retry_exceptions=True)(_ray_run)
    # Plain values only travel to the workers (no objects of ours are pickled).
    disk = str(Path(args.cache_dir).resolve() / cache_namespace()) if args.cache_dir else None
    common = {"base": base, "experiment": str(exp.path), "workflow": str(exp.workflow), "output_dir": str(output_dir),
              "host": host_options(args), "disk_cache": disk}
    futures = {remote.remote({**common, "digest": digest, "run": {"run_id": run.run_id, "overrides": run.overrides,
                                                                   "repeat": run.repeat}}): (run, digest)
               for run, digest in pending}
    failed, start = 0, time.perf_counter()
    while futures:
        ready, _ = ray.wait(list(futures), num_returns=1)
        run, digest = futures.pop(ready[0])
        try:
            record = ray.get(ready[0])
        except Exception as e:  # noqa: BLE001 - the run failed twice (RayTaskError wraps the node's error)
            failed += 1
            message = str(getattr(e, "cause", None) or e).strip().splitlines()[-1][:2000]
            write_record(output_dir / "runs" / run.run_id, {
                "run_id": run.run_id, "overrides": run.overrides, "repeat": run.repeat, "experiment": str(exp.path),
                "workflow": str(exp.workflow), "workflow_hash": digest, "status": "failed", "error": message})
            print(printable(f"{run.run_id} failed twice: {message}"), file=sys.stderr)
        else:
            if not args.quiet:
                print(f"{run.run_id} done in {record['seconds']:.2f} s "
                      f"({len(pending) - len(futures)}/{len(pending)}, {time.perf_counter() - start:.0f} s)")
        write_tables(output_dir)
    finished = sum(1 for r in read_records(output_dir) if r.get("status") == "done")
    print(f"{finished} finished runs; results in {output_dir / 'results.csv'} and results.jsonl")
    return 1 if failed else 0
