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
from loralab.headless.sweep import expand, load_experiment, shard

QUICKSTART = Path(loralab.__file__).parent / "workflows" / "quickstart.json"


def small_workflow(tmp_path: Path, nodes=("1", "2", "3", "5", "7")) -> Path:
    wf = json.loads(QUICKSTART.read_text())
    wf = {k: wf[k] for k in nodes}
    wf["2"]["inputs"]["text"] = "standard: a photo of a cat"
    for generate in {"5", "6"} & set(nodes):
        wf[generate]["inputs"].update(width=32, height=32, images_per_prompt=1, steps=2)
    path = tmp_path / "small.json"
    path.write_text(json.dumps(wf))
    return path


def experiment(tmp_path: Path, axes: str, extra: str = "", nodes=("1", "2", "3", "5", "7")) -> Path:
    small_workflow(tmp_path, nodes)
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
    runs = list(expand(exp))
    assert [(r.overrides, r.repeat) for r in runs] == [
        ({"5.steps": 1, "5.cfg": 3.0}, 0), ({"5.steps": 1, "5.cfg": 3.0}, 1),
        ({"5.steps": 2, "5.cfg": 4.0}, 0), ({"5.steps": 2, "5.cfg": 4.0}, 1)]
    assert len({r.run_id for r in runs}) == 4
    assert next(expand(exp)).run_id == runs[0].run_id


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
    exp = experiment(tmp_path, '"Prompts.text" = ["", "standard: a photo of a cat"]')
    out = tmp_path / "out"
    assert main(["sweep", str(exp), "-o", str(out), "-q"]) == 1  # Prompts fails when it runs: no prompt
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


def test_toml_1_0_mixed_integer_and_float_arrays_are_valid_axes(tmp_path, capsys):
    exp = experiment(tmp_path, '"Generate A.cfg" = [1, 7.5]')
    assert main(["sweep", str(exp), "-o", str(tmp_path / "o"), "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "2 runs, 0 done"


DEEP = "[" * 10_000 + "]" * 10_000


@pytest.mark.parametrize("text,message", [
    ('workflow = "list.json"\n[axes]\n"5.steps" = [1]', "must be a JSON object of nodes"),
    ('workflow = "list_inputs.json"\n[axes]\n"5.steps" = [1]', "inputs must be a JSON object"),
    ('workflow = "small.json"\nset = 5', "[set] must map"),
    ('workflow = "small.json"\naxes = 5', "[axes] must map"),
    ('workflow = "small.json"\n[axes]\n"5.seed" = [1979-05-27T07:32:00Z]', "datetime"),
    ('workflow = "small.json"\n[set]\n"5.seed" = 1979-05-27', "date"),
    ('workflow = "small.json"\n[set]\n"5.seed" = 07:32:00', "time"),
    (f'workflow = "small.json"\n[axes]\n"5.steps" = {DEEP}', "nested too deeply"),
    ('workflow = "small.json"\na = {b = }', "not valid TOML"),
    ('workflow = "small.json"\n[axes]\n"5.steps" = [1, 2', "not valid TOML"),
    ('workflow = "small.json"\n[axes]\n"5.steps" = [1]\n[set.x]\ny = 1', "[set] 'x'"),
    ('workflow = "small.json"\n[axes]\n"Generate A.stepz" = [1, 2]', "has no input 'stepz'"),
    ('workflow = "small.json"\n[set]\n"5.stepz" = 1', "has no input 'stepz'"),
    ('workflow = "small.json"\n[axes]\nconfig = [{ "Generate A.cfgg" = 1 }]', "has no input 'cfgg'"),
])
def test_hostile_experiment_files_exit_2_with_a_message(tmp_path, capsys, text, message):
    wf = json.loads(small_workflow(tmp_path).read_text())
    (tmp_path / "list.json").write_text(json.dumps([wf]))
    wf["5"]["inputs"] = [1, 2]
    (tmp_path / "list_inputs.json").write_text(json.dumps(wf))
    (tmp_path / "bad.toml").write_text(text)
    assert main(["sweep", str(tmp_path / "bad.toml"), "-o", str(tmp_path / "o"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_a_typo_in_an_axis_input_names_the_valid_inputs(tmp_path, capsys):
    exp = experiment(tmp_path, '"Generate A.stepz" = [1, 2]')
    assert main(["sweep", str(exp), "-o", str(tmp_path / "o"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "stepz" in err and all(name in err for name in ("steps", "cfg", "seed", "images_per_prompt"))


def test_grids_are_counted_before_expansion_and_refused_above_max_runs(tmp_path, capsys):
    # 10^9 runs: refused at once, before anything is expanded or validated.
    axes = "\n".join(f'"Generate A.{name}" = [{", ".join(str(i) for i in range(1, 11))}]'
                     for name in ("steps", "seed", "cfg", "width", "height", "images_per_prompt"))
    axes += '\n"Sampler A.eta" = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]\nbundle = [' + ", ".join(
        f'{{ "Generate A.negative_prompt" = "n{i}" }}' for i in range(100)) + "]"
    exp = experiment(tmp_path, axes, "repeats = 1")
    start = time.perf_counter()
    assert main(["sweep", str(exp), "-o", str(tmp_path / "o"), "--dry-run"]) == 2
    assert time.perf_counter() - start < 5
    err = capsys.readouterr().err
    assert "1,000,000,000 runs" in err and "--max-runs" in err
    exp = experiment(tmp_path, AXES_3x4, "repeats = 2")  # 24 runs
    assert main(["sweep", str(exp), "-o", str(tmp_path / "o"), "--dry-run", "--max-runs", "23"]) == 2
    assert "24 runs" in capsys.readouterr().err
    assert main(["sweep", str(exp), "-o", str(tmp_path / "o"), "--dry-run", "--max-runs", "24"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "24 runs, 0 done"


def test_expansion_is_lazy(tmp_path):
    axes = "\n".join(f'"5.{name}" = [{", ".join(str(i) for i in range(1, 201))}]' for name in ("steps", "seed", "cfg"))
    exp = load_experiment(experiment(tmp_path, axes))  # 8 million combinations
    start = time.perf_counter()
    first = next(iter(shard(expand(exp), "2/4")))
    assert time.perf_counter() - start < 0.5  # made on demand, not all at once
    assert first.overrides == {"5.steps": 1, "5.seed": 1, "5.cfg": 2}


def test_an_output_path_that_is_a_file_is_refused_before_any_work(tmp_path, capsys):
    exp = experiment(tmp_path, '"Generate A.seed" = [0, 1]')
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    for target in (taken, taken / "sub"):
        assert main(["sweep", str(exp), "-o", str(target), "-q"]) == 2
        assert "is a file" in capsys.readouterr().err
        assert main(["run", str(tmp_path / "small.json"), "-o", str(target), "-q"]) == 2
        assert "is a file" in capsys.readouterr().err
    assert taken.read_text() == "not a folder"


def test_editing_the_base_workflow_reruns_the_finished_runs(tmp_path, capsys):
    exp = experiment(tmp_path, '"Generate A.seed" = [0, 1]')
    out = tmp_path / "out"
    assert main(["sweep", str(exp), "-o", str(out), "-q"]) == 0
    ids = sorted(r["run_id"] for r in records(out))
    wf = json.loads((tmp_path / "small.json").read_text())
    wf["2"]["inputs"]["text"] = "standard: a photo of a dog"
    (tmp_path / "small.json").write_text(json.dumps(wf))
    capsys.readouterr()
    assert main(["sweep", str(exp), "-o", str(out), "--dry-run"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[-1] == "2 runs, 0 done" and all("stale" in line for line in listed[:-1])
    assert main(["sweep", str(exp), "-o", str(out), "-q"]) == 0
    again = records(out)
    assert sorted(r["run_id"] for r in again) == ids  # run ids name the overrides; the hash checks the rest
    assert all("5" in r["executed"] for r in again)  # generated again from the new prompt
    assert main(["sweep", str(exp), "-o", str(out), "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "2 runs, 2 done"


def test_an_interrupted_run_restarts_in_a_clean_folder_and_the_table_always_has_a_header(tmp_path, monkeypatch):
    import loralab.headless.cli as cli

    exp = experiment(tmp_path, '"Generate A.seed" = [0, 1]')
    out = tmp_path / "out"
    real = cli.execute_workflow

    def interrupted(prompt, ui, run_dir, executor, registry):
        (run_dir / "quickstart").mkdir(parents=True)
        (run_dir / "quickstart" / "euler_00001_.png").write_bytes(b"orphan of a killed run")
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "execute_workflow", interrupted)
    assert main(["sweep", str(exp), "-o", str(out), "-q"]) == 130
    header = (out / "results.csv").read_text().splitlines()
    assert header and header[0].startswith("run_id,status,repeat")
    monkeypatch.setattr(cli, "execute_workflow", real)
    assert main(["sweep", str(exp), "-o", str(out), "-q"]) == 0
    for record in records(out):
        on_disk = sorted(str(p) for p in (out / "runs" / record["run_id"]).rglob("*.png"))
        assert on_disk == sorted(record["images"]) and len(on_disk) == 1
        assert all(Path(p).name == "euler_00001_.png" for p in on_disk)


def test_cached_unswept_nodes_are_marked_and_their_images_saved_once(tmp_path):
    exp = experiment(tmp_path, '"Generate A.seed" = [0, 1, 2]', nodes=("1", "2", "3", "4", "5", "6", "7", "8"))
    out = tmp_path / "out"
    assert main(["sweep", str(exp), "-o", str(out), "-q"]) == 0
    runs = sorted(records(out), key=lambda r: r["overrides"]["Generate A.seed"])
    saved_b = [sorted((out / "runs" / r["run_id"]).rglob("dpmpp_2m_karras_*.png")) for r in runs]
    assert [len(files) for files in saved_b] == [1, 0, 0]  # Generate B is not swept: saved by the run that made it
    assert all(not any("dpmpp_2m_karras" in p for p in r["images"]) for r in runs[1:])
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    by_run = {r["run_id"]: r["overrides"]["Generate A.seed"] for r in runs}
    computed = sorted((by_run[row["run_id"]], row["node"], row["cached"]) for row in rows)
    assert computed == [(0, "5", "False"), (0, "6", "False"), (1, "5", "False"), (1, "6", "True"),
                        (2, "5", "False"), (2, "6", "True")]
