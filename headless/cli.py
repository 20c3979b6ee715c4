"""``loralab`` command line.

    loralab run WORKFLOW.json [--output DIR] [--set NODE.INPUT=VALUE ...] [--check]
    loralab sweep EXPERIMENT.toml [--output DIR] [--dry-run] [--shard i/n] [--collect]
    loralab report OUTPUT_DIR         the HTML page of a finished sweep or run (rebuilt from its files)
    loralab convert UI.json [-o API.json]
    loralab nodes [--object-info]
    loralab workflows                 the shipped workflows; run them by name: loralab run quickstart

Exit codes: 0 done, 1 a node failed while running, 2 the workflow, experiment or command line is
invalid (nothing is run), 130 interrupted (Ctrl-C; finished files are complete).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import NodeExecutionError, WorkflowError, escape_logs, invalid_prompt, printable


def _registry():
    from .. import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    return NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models-dir", action="append", default=[], metavar="DIR",
                   help="folder with checkpoints/ and diffusers model folders (repeatable; default: "
                        "$LORALAB_MODELS_DIR or ./models)")
    p.add_argument("--input-dir", action="append", default=[], metavar="DIR",
                   help="folder(s) datasets are read from (default: $LORALAB_INPUT_DIR or ./input)")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="keep expensive node results (generated image sets) here across runs and processes")
    p.add_argument("--json", action="store_true", help="print errors and the summary as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.add_argument("--traceback", action="store_true", help="show the Python traceback of a failing node")


def _parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="loralab", description="LoRA Lab headless runner.")
    parser.add_argument("--version", action="version", version=f"loralab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute a workflow (API or UI format) without a ComfyUI server")
    run.add_argument("workflow", help="workflow JSON file (ComfyUI API format, or the editor's UI format), "
                                      "or the name of a shipped workflow (see loralab workflows)")
    run.add_argument("--output", "-o", default="output", help="output folder (default: ./output)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE.INPUT=VALUE",
                     help="override an input; NODE is a node id or title; VALUE is JSON or text")
    run.add_argument("--check", action="store_true", help="validate only; run nothing")
    _common(run)
    sweep = sub.add_parser("sweep", help="run a grid of overrides of one workflow; resumable")
    sweep.add_argument("experiment", help="experiment TOML file, or the name of a shipped one (see loralab workflows)")
    sweep.add_argument("--output", "-o", help="output folder (default: ./output/<experiment name>)")
    sweep.add_argument("--dry-run", action="store_true", help="list the runs and whether they are done")
    sweep.add_argument("--shard", metavar="i/n", help="run only part i of n (for several machines)")
    sweep.add_argument("--collect", action="store_true",
                       help="only rebuild results.jsonl/csv from the finished runs (after merging runs/ folders)")
    sweep.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE.INPUT=VALUE",
                       help="add to the experiment's [set] for every run (e.g. a quick pass with fewer "
                            "training steps); runs with other values are other runs")
    sweep.add_argument("--block", action="store_true",
                       help="with --shard: a contiguous block of the runs instead of every n-th (runs sharing "
                            "upstream nodes, e.g. one LoRA's samplers, stay in one process)")
    engines = sweep.add_argument_group("engines (see README: Many machines)")
    engines.add_argument("--slurm", action="store_true",
                         help="write <output>/slurm/sweep.sbatch, a job array whose task i runs block i of n, and "
                              "submit it with sbatch (--dry-run: only write it)")
    engines.add_argument("--array-tasks", type=int, default=0, metavar="N",
                         help="Slurm: array size (default: one task per value of the most upstream axis)")
    engines.add_argument("--array-parallelism", type=int, default=0, metavar="N",
                         help="Slurm: at most N array tasks at once (--array=1-n%%N)")
    engines.add_argument("--sbatch", default="", metavar="OPTIONS",
                         help='Slurm: extra #SBATCH options, e.g. "--partition=gpu --gres=gpu:1 --time=4:00:00"')
    engines.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                         help="run each run as a Ray task (a local cluster, or ADDRESS, e.g. 'auto'); "
                              "pip install 'loralab[ray]'")
    engines.add_argument("--ray-cpus-per-run", type=float, default=1.0, metavar="N", help="Ray: CPUs per run")
    engines.add_argument("--ray-gpus-per-run", type=float, default=0.0, metavar="N", help="Ray: GPUs per run")
    sweep.add_argument("--max-runs", type=int, default=10_000, metavar="N",
                       help="refuse an experiment of more runs than this (default: 10,000)")
    _common(sweep)
    report = sub.add_parser("report", help="write OUTPUT_DIR/report.html for a finished (or collected) sweep or run")
    report.add_argument("output_dir", help="the output folder of loralab sweep (runs/) or loralab run (run.json)")
    report.add_argument("--experiment", metavar="EXP.toml", help="the sweep's experiment file (default: the one "
                        "its runs recorded)")
    report.add_argument("--title", help="the page's heading")
    report.add_argument("--rows", metavar="AXIS", help="grid rows: an axis of the experiment (default: the first)")
    report.add_argument("--columns", metavar="AXIS", help="grid columns: an axis (default: the second)")
    report.add_argument("--images", metavar="PREFIX", help="the Save Image filename_prefix whose images fill the grid")
    report.add_argument("--scores", metavar="NODE", help="the node (id or title) whose rows are the per-image table")
    report.add_argument("--compare", metavar="AXIS", help="the axis whose values are t-tested against a baseline")
    report.add_argument("--baseline", metavar="LABEL", help="the baseline value's label (default: the axis's first)")
    report.add_argument("--pareto", metavar="X,Y", help="two metric columns for the Pareto front (higher is better)")
    report.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    report.add_argument("--traceback", action="store_true", help=argparse.SUPPRESS)
    convert = sub.add_parser("convert", help="convert an editor (UI) workflow to the API format")
    convert.add_argument("workflow")
    convert.add_argument("--output", "-o", help="write here (default: stdout)")
    convert.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    convert.add_argument("--traceback", action="store_true", help=argparse.SUPPRESS)
    nodes = sub.add_parser("nodes", help="list LoRA Lab's nodes")
    nodes.add_argument("--object-info", action="store_true", help="ComfyUI's /object_info JSON")
    nodes.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    nodes.add_argument("--traceback", action="store_true", help=argparse.SUPPRESS)
    listing = sub.add_parser("workflows", help="list the shipped workflows and experiments")
    listing.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    listing.add_argument("--traceback", action="store_true", help=argparse.SUPPRESS)
    world = sub.add_parser("build-world", help="retrain a shipped world model (models/build_world.py recipes)")
    world.add_argument("what", choices=WORLD_RECIPES)
    world.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    world.add_argument("--traceback", action="store_true", help=argparse.SUPPRESS)
    return parser


# The recipes in models/build_world.py, in the order they depend on each other.
WORLD_RECIPES = ("evaluator", "vae", "vae-decoder", "student", "teacher", "evaluate", "examples")


def cmd_build_world(args) -> int:
    """Run a recipe of models/build_world.py (shipped beside the package) as its own script does."""
    import runpy

    from ..core.checkpoints import MODELS_DIR

    argv, sys.argv = sys.argv, ["build_world.py", args.what]
    try:
        runpy.run_path(str(MODELS_DIR / "build_world.py"), run_name="__main__")
    finally:
        sys.argv = argv
    return 0


def _quiet_libraries() -> None:
    """Loading bars from diffusers/transformers would interleave with ours."""
    import diffusers.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def load_any(path: str) -> tuple[dict, dict | None]:
    """(API prompt, UI workflow or None) from a file in either format."""
    from .convert import is_ui_workflow, ui_to_api
    from .graph import read_json

    data = read_json(path)
    if is_ui_workflow(data):
        registry, names = _registry()
        return ui_to_api(data, registry, names), data
    return data, None


def host_options(args) -> dict:
    """What the command line says about the host (folders, progress), as plain values a worker
    process (Ray) can apply too."""
    return {"models_dir": [str(Path(p).resolve()) for p in getattr(args, "models_dir", None) or []],
            "input_dir": [str(Path(p).resolve()) for p in getattr(args, "input_dir", None) or []],
            "quiet": bool(getattr(args, "quiet", False))}


def apply_host_options(options: dict) -> None:
    """Activate the headless host these options describe (unset ones keep the host's defaults,
    which the environment may give: core/host.py). Model folders are read when node choices are
    listed, i.e. during validation, so this runs before anything is loaded."""
    from ..core import host

    changes = {"models": tuple(map(Path, options["models_dir"])) if options.get("models_dir") else None,
               "inputs": tuple(map(Path, options["input_dir"])) if options.get("input_dir") else None,
               "show_progress": False if options.get("quiet") else None}
    host.configure(**{k: v for k, v in changes.items() if v is not None})


def _prepare(args) -> None:
    apply_host_options(host_options(args))


def make_executor(args, registry):
    from .diskcache import DiskCache, cache_namespace
    from .execute import Executor

    disk = DiskCache(Path(args.cache_dir) / cache_namespace()) if args.cache_dir else None
    return Executor(registry, show_progress=not args.quiet, disk_cache=disk)


def execute_workflow(prompt: dict, ui: dict | None, output_dir: Path, executor, registry):
    """Validate and run one workflow into ``output_dir``; returns (RunResult, image paths)."""
    from ..core import runtime
    from .graph import validate
    from .ui import api_to_ui

    prompt, _, order = validate(prompt, registry)
    runtime.configure(output_dir)
    # Saved PNGs carry an editor graph too, so they open in ComfyUI like its own images.
    extra = {"extra_pnginfo": {"workflow": ui or api_to_ui(prompt, registry)}}
    result = executor.run(prompt, order, extra)
    # Only what this run wrote: a cached output node's files belong to the run that wrote them.
    images = [path for node in result.nodes if not node.cached for path in _node_images(node, output_dir)]
    return result, images


def write_run_record(output_dir: Path, prompt: dict, result, summary: dict, registry) -> None:
    """``run.json``: what ``loralab report`` needs to rebuild this run's page (the workflow, its
    score rows, its images and which of them are figures)."""
    from ..core.files import atomic_write_text
    from .report import FIGURE_NODES
    from .sweep_cli import _score_keys, _scores

    figures = []
    for node in result.nodes:
        if node.class_type in FIGURE_NODES and not node.cached:
            title = (prompt.get(node.node_id, {}).get("_meta") or {}).get("title") or node.class_type
            figures += [{"path": path, "title": title} for path in _node_images(node, output_dir)]
    record = {**summary, "prompt": prompt, "figures": figures, "scores": _scores(result, prompt, registry),
              "score_keys": _score_keys(result, prompt, registry)}
    atomic_write_text(output_dir / "run.json", json.dumps(record, indent=1, default=str))


def _node_images(node, output_dir: Path) -> list[str]:
    from ..core import runtime

    roots = {"output": output_dir, "temp": runtime.temp_directory()}
    return [str(roots.get(img.get("type"), output_dir) / img["subfolder"] / img["filename"])
            for entry in node.ui for img in entry.get("images", [])]


def output_folder(path: str | Path) -> Path:
    """The output folder, checked before any work: it, or the first part of it that exists, must
    be a folder (a file there would fail only when the first result is saved)."""
    folder = Path(path).resolve()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise invalid_prompt(f"Output folder {str(folder)!r} cannot be created: {str(existing)!r} is a file")
    return folder


def cmd_run(args) -> int:
    from .graph import apply_overrides, validate
    from .shipped import resolve

    registry, _ = _registry()
    output_dir = output_folder(args.output)
    prompt, ui = load_any(resolve(args.workflow, "run"))
    prompt = apply_overrides(prompt, args.overrides, registry)
    _, outputs, order = validate(prompt, registry)  # before any heavy import: a bad file fails fast
    if args.check:
        print(json.dumps({"valid": True, "nodes": order, "outputs": outputs}) if args.json else
              f"valid: {len(order)} nodes to run for {len(outputs)} output(s)")
        return 0
    _quiet_libraries()
    result, images = execute_workflow(prompt, ui if not args.overrides else None, output_dir,
                                      make_executor(args, registry), registry)
    summary = {"workflow": str(args.workflow), "output": str(output_dir), "images": images,
               "nodes": [{"id": n.node_id, "class_type": n.class_type, "seconds": round(n.seconds, 4)}
                         for n in result.nodes]}
    from ..core.runtime import is_main_process

    if not is_main_process():  # processes 1..N-1 of a multi-process run wrote nothing to report
        return 0
    write_run_record(output_dir, prompt, result, summary, registry)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        total = sum(n.seconds for n in result.nodes)
        print(printable(f"Ran {len(result.nodes)} nodes in {total:.2f} s; wrote {len(images)} image(s) "
                        f"under {output_dir}"))
        for n in sorted(result.nodes, key=lambda n: -n.seconds)[:5]:
            print(printable(f"  {n.seconds:8.3f} s  node {n.node_id} ({n.class_type})"))
    return 0


def cmd_convert(args) -> int:
    from ..core.files import atomic_write_text
    from .convert import ui_to_api
    from .graph import read_json

    registry, names = _registry()
    text = json.dumps(ui_to_api(read_json(args.workflow), registry, names), indent=2) + "\n"
    if args.output:
        atomic_write_text(Path(args.output), text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_nodes(args) -> int:
    from .catalog import describe, object_info

    registry, names = _registry()
    print(json.dumps(object_info(registry, names), indent=1) if args.object_info else describe(registry, names))
    return 0


def cmd_workflows(args) -> int:
    from .shipped import listing

    print(printable(listing()))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _prepare(args)
    escape_logs()
    commands = {"run": cmd_run, "convert": cmd_convert, "nodes": cmd_nodes, "workflows": cmd_workflows,
                "build-world": cmd_build_world}
    try:
        if args.command == "sweep":
            from .sweep_cli import cmd_sweep

            return cmd_sweep(args)
        if args.command == "report":
            from .report import cmd_report

            return cmd_report(args)
        return commands[args.command](args)
    except WorkflowError as e:
        print(json.dumps(e.to_json(), indent=2) if args.json else printable(f"error: {e}"), file=sys.stderr)
        return e.exit_code
    except NodeExecutionError as e:
        if args.traceback:
            import traceback

            print(printable("".join(traceback.format_exception(e.exc))), end="", file=sys.stderr)
        print(json.dumps({"execution_error": e.to_json()}, indent=2) if args.json else printable(f"error: {e}"),
              file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted: files already written are complete; nothing half-written was left",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
