"""Sweeps on existing engines: a Slurm job array (its script checked by content, its task command
run by hand) and Ray on a local cluster, each giving the serial sweep's tables; resubmitting or
restarting skips finished runs."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import loralab
from loralab.headless.cli import main
from loralab.headless.sweep import expand, load_experiment, shard

QUICKSTART = Path(loralab.__file__).parent / "workflows" / "quickstart.json"
TIMING = {"run_seconds", "seconds_per_image", "peak_memory_mb", "cached"}  # differ from run to run


def experiment(tmp_path: Path, axes: str) -> Path:
    wf = json.loads(QUICKSTART.read_text())
    wf = {k: wf[k] for k in ("1", "2", "3", "5", "7")}
    wf["2"]["inputs"]["text"] = "standard: a red circle\nstandard: a blue square"
    wf["5"]["inputs"].update(width=32, height=32, images_per_prompt=1, steps=2)
    (tmp_path / "small.json").write_text(json.dumps(wf))
    path = tmp_path / "exp.toml"
    path.write_text(f'workflow = "small.json"\n[axes]\n{axes}\n')
    return path


AXES = '"Sampler A.sampler_name" = ["euler", "ddim"]\n"Generate A.steps" = [1, 2, 3]'


def table(folder: Path) -> list[tuple]:
    """results.csv without timing columns, as a sorted list of rows (order-free comparison)."""
    with open(folder / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return sorted(tuple(sorted((k, v) for k, v in r.items() if k not in TIMING)) for r in rows)


def test_block_shards_partition_the_runs_into_contiguous_parts(tmp_path):
    exp = load_experiment(experiment(tmp_path, AXES))
    runs = [r.run_id for r in expand(exp)]
    parts = [[r.run_id for r in shard(expand(exp), f"{i}/4", len(runs))] for i in range(1, 5)]
    assert sum(parts, []) == runs and all(parts)
    assert [len(p) for p in parts] == [1, 2, 1, 2]


def test_slurm_script_runs_block_i_of_n_and_its_tasks_give_the_serial_tables(tmp_path, capsys):
    exp = experiment(tmp_path, AXES)
    serial, array = tmp_path / "serial", tmp_path / "array"
    assert main(["sweep", str(exp), "-o", str(serial), "-q", "--set", "Generate A.cfg=7.5"]) == 0
    assert main(["sweep", str(exp), "-o", str(array), "--slurm", "--dry-run", "--array-parallelism", "2",
                 "--sbatch", "--partition=cpu --time=1:00:00", "--set", "Generate A.cfg=7.5"]) == 0
    script = (array / "slurm" / "sweep.sbatch").read_text()
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    # Sampler A is the most upstream axis: one task per sampler, each running its 3 step counts.
    assert "#SBATCH --array=1-2%2" in lines and "#SBATCH --partition=cpu" in lines and "#SBATCH --time=1:00:00" in lines
    assert f"#SBATCH --output={array}/slurm/%A_%a.out" in lines
    command = lines[-1]
    assert command.startswith(f"exec {sys.executable} -m loralab sweep {exp.resolve()} --output {array}")
    assert '--shard "${SLURM_ARRAY_TASK_ID}/2" --block --quiet' in command and "--set 'Generate A.cfg=7.5'" in command
    assert os.access(array / "slurm" / "sweep.sbatch", os.X_OK)
    # No scheduler here: run the array's two tasks by hand, as Slurm would (bash ignores #SBATCH).
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for task in ("1", "2"):
        done = subprocess.run(["bash", str(array / "slurm" / "sweep.sbatch")], env={**env, "SLURM_ARRAY_TASK_ID": task},
                              capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
    assert table(array) == table(serial)
    # Resubmitting skips the finished runs: nothing is executed again.
    before = {p: p.stat().st_mtime_ns for p in array.glob("runs/*/result.json")}
    subprocess.run(["bash", str(array / "slurm" / "sweep.sbatch")], env={**env, "SLURM_ARRAY_TASK_ID": "1"},
                   check=True, capture_output=True, timeout=600, cwd=tmp_path)
    assert {p: p.stat().st_mtime_ns for p in array.glob("runs/*/result.json")} == before
    # Without --dry-run and without sbatch: a clear refusal, the script still written.
    capsys.readouterr()
    assert main(["sweep", str(exp), "-o", str(array), "--slurm"]) == 2
    assert "'sbatch' is not on PATH" in capsys.readouterr().err


ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'loralab[ray]')")


def test_ray_gives_the_serial_tables_and_a_killed_driver_resumes(tmp_path):
    exp = experiment(tmp_path, AXES)
    serial, on_ray = tmp_path / "serial", tmp_path / "ray"
    assert main(["sweep", str(exp), "-o", str(serial), "-q"]) == 0
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "RAY_DISABLE_USAGE_STATS": "1"}
    command = [sys.executable, "-m", "loralab", "sweep", str(exp), "-o", str(on_ray), "--ray", "-q"]
    # Kill the driver once two runs have finished; the local cluster goes with it.
    driver = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              start_new_session=True)
    deadline = time.time() + 300
    while len(list(on_ray.glob("runs/*/result.json"))) < 2 and driver.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    finished = {p: p.read_bytes() for p in on_ray.glob("runs/*/result.json")
                if json.loads(p.read_text())["status"] == "done"}
    assert 2 <= len(finished) < 6
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    # Workers may finish the runs they hold after the driver dies; none is run a second time.
    already = int(done.stdout.split(" of 6 runs already done")[0].split()[-1])
    assert len(finished) <= already <= 6
    for path, content in finished.items():
        assert path.read_bytes() == content  # not run again
    assert table(on_ray) == table(serial)
