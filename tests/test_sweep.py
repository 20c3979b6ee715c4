"""Sweeps: grid expansion, caching across runs, sharding, resumable results."""

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
from loralab.headless.sweep import expand, load_experiment

QUICKSTART = Path(loralab.__file__).parent / "workflows" / "quickstart.json"


def small_workflow(tmp_path: Path) -> Path:
    wf = json.loads(QUICKSTART.read_text())
    wf = {k: wf[k] for k in ("1", "2", "3", "5", "7")}
    wf["2"]["inputs"]["text"] = "standard: a photo of a cat"
    wf["5"]["inputs"].update(width=32, height=32, images_per_prompt=1, steps=2)
    path = tmp_path / "small.json"
    path.write_text(json.dumps(wf))
    return path


def experiment(tmp_path: Path, axes: str, extra: str = "") -> Path:
    small_workflow(tmp_path)
    path = tmp_path / "exp.toml"
    path.write_text(f'workflow = "small.json"\n{extra}\n[axes]\n{axes}\n')
    return path


AXES_3x4 = '"Generate A.steps" = [1, 2, 3, 4]\n"Sampler A.sampler_name" = ["euler", "ddim", "lcm"]'


def records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/result.json"))]


def test_a_3x4_sweep_runs_the_upstream_node_3_times_and_writes_one_table(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["sweep", str(experiment(tmp_path, AXES_3x4)), "-o", str(out), "-q"]) == 0
    runs = records(out)
    assert len(runs) == 12 and all(r["status"] == "done" for r in runs)
    executed = [node for r in runs for node in r["executed"]]
    assert executed.count("3") == 3  # Sampler A: once per sampler, though listed second
    assert executed.count("1") == 1  # Load Pipeline: once for the whole sweep
    assert executed.count("5") == 12
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and {r["set:Sampler A.sampler_name"] for r in rows} == {"euler", "ddim", "lcm"}
    assert all(float(r["seconds_per_image"]) > 0 for r in rows)
    lines = (out / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["run_id"] for line in lines] == [r["run_id"] for r in rows]
    assert all(Path(p).is_file() for r in runs for p in r["images"])


def test_dry_run_lists_runs_and_shards_partition_them(tmp_path, capsys):
    exp = experiment(tmp_path, AXES_3x4)
    assert main(["sweep", str(exp), "-o", str(tmp_path / "o"), "--dry-run"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[-1] == "12 runs, 0 done" and all("pending" in line for line in listed[:-1])
    ids = {line.split()[0] for line in listed[:-1]}
    parts = []
    for i in (1, 2, 3):
        main(["sweep", str(exp), "-o", str(tmp_path / "o"), "--dry-run", "--shard", f"{i}/3"])
        parts.append({line.split()[0] for line in capsys.readouterr().out.splitlines()[:-1]})
    assert set.union(*parts) == ids and sum(len(p) for p in parts) == 12


def test_run_ids_derive_from_overrides_and_zip_mode_pairs_values(tmp_path):
    exp = load_experiment(experiment(tmp_path, '"5.steps" = [1, 2]\n"5.cfg" = [3.0, 4.0]', 'mode = "zip"\nrepeats = 2'))
    runs = expand(exp)
    assert [(r.overrides, r.repeat) for r in runs] == [
        ({"5.steps": 1, "5.cfg": 3.0}, 0), ({"5.steps": 1, "5.cfg": 3.0}, 1),
        ({"5.steps": 2, "5.cfg": 4.0}, 0), ({"5.steps": 2, "5.cfg": 4.0}, 1)]
    assert len({r.run_id for r in runs}) == 4
    assert expand(exp)[0].run_id == runs[0].run_id


def test_bundle_axes_cross_whole_configurations(tmp_path, capsys):
    axes = ('config = [{ "5.steps" = 1, "5.cfg" = 3.0 }, { "5.steps" = 2, "5.cfg" = 4.0 }]\n'
            '"Sampler A.sampler_name" = ["euler", "ddim"]')
    exp = experiment(tmp_path, axes)
    runs = expand(load_experiment(exp))
    assert sorted(tuple(sorted(r.overrides.items())) for r in runs) == sorted(
        tuple(sorted({"5.steps": s, "5.cfg": c, "Sampler A.sampler_name": n}.items()))
        for s, c in ((1, 3.0), (2, 4.0)) for n in ("euler", "ddim"))
    out = tmp_path / "out"
    assert main(["sweep", str(exp), "-o", str(out), "-q"]) == 0
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {(r["set:5.steps"], r["set:5.cfg"], r["set:Sampler A.sampler_name"]) for r in rows} == {
        ("1", "3.0", "euler"), ("1", "3.0", "ddim"), ("2", "4.0", "euler"), ("2", "4.0", "ddim")}
    executed = [node for r in records(out) for node in r["executed"]]
    assert executed.count("3") == 2  # the sampler axis is upstream of the bundle (Generate): it varies slowest

@pytest.mark.parametrize("text,message", [
    ('workflow = "small.json"\n[axes]\n"5.steps" = []', "non-empty list"),
    ('workflow = "small.json"\nmode = "random"', "valid modes"),
    ('workflow = "small.json"\nrepeat = 2', "unknown keys: repeat"),
    ('workflow = "small.json"\n[axes]\n"5.steps" = [100000]', "bigger than max"),
    ('workflow = "small.json"\n[axes]\n"Nope.steps" = [1]', "no node with id or unique title 'Nope'"),
    ('workflow "x"', "not valid TOML"),
    ('workflow = "small.json"\n[axes]\nconfig = [1, 2]', "bundle axis"),
    ('workflow = "small.json"\n[axes]\nconfig = [{ "Nope.steps" = 1 }]', "no node with id or unique title 'Nope'"),
])
def test_bad_experiments_exit_2_before_running_anything(tmp_path, capsys, text, message):
    small_workflow(tmp_path)
    (tmp_path / "bad.toml").write_text(text)
    assert main(["sweep", str(tmp_path / "bad.toml"), "-o", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_failed_run_is_recorded_and_retried_on_resume(tmp_path):
    exp = experiment(tmp_path, '"Sampler A.schedule" = ["default", "karras"]\n"Sampler A.sampler_name" = ["ddim"]')
    out = tmp_path / "out"
    assert main(["sweep", str(exp), "-o", str(out), "-q"]) == 1  # ddim has no karras schedule
    statuses = sorted(r["status"] for r in records(out))
    assert statuses == ["done", "failed"]
    done_before = {r["run_id"]: (out / "runs" / r["run_id"] / "result.json").stat().st_mtime_ns
                   for r in records(out) if r["status"] == "done"}
    assert main(["sweep", str(exp), "-o", str(out), "-q"]) == 1
    for run_id, mtime in done_before.items():  # finished runs are not run again
        assert (out / "runs" / run_id / "result.json").stat().st_mtime_ns == mtime


def test_killing_a_sweep_loses_no_finished_run_and_resume_completes_it(tmp_path):
    exp = experiment(tmp_path, '"Generate A.seed" = [0, 1, 2, 3, 4, 5, 6, 7]', 'repeats = 1')
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LORALAB_NO_PROGRESS": "1"}
    cmd = [sys.executable, "-m", "loralab", "sweep", str(exp), "-o", str(out), "-q"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("runs/*/result.json"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = records(out)
    assert 3 <= len(finished) < 8, "the kill must land part-way"
    assert not list(out.rglob("*.tmp")) or all(p.name.startswith(".") for p in out.rglob("*.tmp"))
    with open(out / "results.csv", newline="") as f:
        rows_at_kill = list(csv.DictReader(f))
    assert len(rows_at_kill) >= len(finished) - 1  # the table lags the run files by at most one run
    kept = {r["run_id"]: (out / "runs" / r["run_id"] / "result.json").read_text() for r in finished}
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    final = records(out)
    assert len(final) == 8 and all(r["status"] == "done" for r in final)
    for run_id, text in kept.items():
        assert (out / "runs" / run_id / "result.json").read_text() == text
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["set:Generate A.seed"] for r in rows) == [str(i) for i in range(8)]


def test_collect_merges_runs_from_separate_shards(tmp_path):
    exp = experiment(tmp_path, '"Generate A.seed" = [0, 1, 2, 3]')
    for i in (1, 2):
        assert main(["sweep", str(exp), "-o", str(tmp_path / f"host{i}"), "-q", "--shard", f"{i}/2"]) == 0
    merged = tmp_path / "merged" / "runs"
    merged.mkdir(parents=True)
    for i in (1, 2):
        for run in (tmp_path / f"host{i}" / "runs").iterdir():
            os.rename(run, merged / run.name)
    assert main(["sweep", str(exp), "-o", str(tmp_path / "merged"), "--collect"]) == 0
    with open(tmp_path / "merged" / "results.csv", newline="") as f:
        assert sorted(r["set:Generate A.seed"] for r in csv.DictReader(f)) == ["0", "1", "2", "3"]
    assert main(["sweep", str(exp), "-o", str(tmp_path / "merged"), "-q"]) == 0  # nothing left to run


def test_a_disk_cache_serves_generated_images_to_a_new_process(tmp_path):
    import numpy as np
    from PIL import Image

    exp = experiment(tmp_path, '"Generate A.seed" = [0, 1]')
    cache = tmp_path / "cache"
    assert main(["sweep", str(exp), "-o", str(tmp_path / "a"), "-q", "--cache-dir", str(cache)]) == 0
    # A second output folder starts the runs afresh; only the disk cache connects them.
    assert main(["sweep", str(exp), "-o", str(tmp_path / "b"), "-q", "--cache-dir", str(cache)]) == 0
    first, second = records(tmp_path / "a"), records(tmp_path / "b")
    assert all("5" in r["executed"] for r in first)
    assert not any("5" in r["executed"] for r in second)
    for a, b in zip(first, second, strict=True):
        assert [x["seed"] for x in a["scores"]] == [x["seed"] for x in b["scores"]]
        for pa, pb in zip(sorted(a["images"]), sorted(b["images"]), strict=True):
            assert np.array_equal(np.asarray(Image.open(pa)), np.asarray(Image.open(pb)))
    assert list(cache.rglob("tensors.safetensors")) and not list(cache.rglob("*.pkl"))
