"""``loralab`` command line: ``loralab run WORKFLOW.json [--output DIR] [--set NODE.INPUT=VALUE]``.

Exit codes: 0 done, 1 a node failed while running, 2 the workflow or the command line is
invalid, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import NodeExecutionError, WorkflowError


def _registry():
    from .. import NODE_CLASS_MAPPINGS

    return NODE_CLASS_MAPPINGS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loralab", description="LoRA Lab headless runner.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute an API-format workflow without a ComfyUI server")
    run.add_argument("workflow", help="workflow JSON file (ComfyUI API format)")
    run.add_argument("--output", "-o", default="output", help="output folder (default: ./output)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE.INPUT=VALUE",
                     help="override an input; NODE is a node id or title; VALUE is JSON or text")
    run.add_argument("--models-dir", action="append", default=[], metavar="DIR",
                     help="folder with checkpoints/ and diffusers model folders (repeatable; default: "
                          "$LORALAB_MODELS_DIR or ./models)")
    run.add_argument("--json", action="store_true", help="print errors and the summary as JSON")
    run.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    run.add_argument("--traceback", action="store_true", help="show the Python traceback of a failing node")
    return parser


def _image_paths(result, output_dir: Path) -> list[str]:
    from ..core import runtime

    roots = {"output": output_dir, "temp": runtime.temp_directory()}
    return [str(roots.get(img.get("type"), output_dir) / img["subfolder"] / img["filename"])
            for ui in result.ui.values() for entry in ui for img in entry.get("images", [])]


def _quiet_libraries() -> None:
    """Loading bars from diffusers/transformers would interleave with ours."""
    import diffusers.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def cmd_run(args) -> int:
    from ..core import runtime
    from .execute import Executor
    from .graph import apply_overrides, load_workflow, validate
    from .ui import api_to_ui

    if args.models_dir:  # read when node choices are listed, i.e. during validation
        os.environ["LORALAB_MODELS_DIR"] = os.pathsep.join(args.models_dir)
    registry = _registry()
    _quiet_libraries()
    prompt = apply_overrides(load_workflow(args.workflow), args.overrides)
    prompt, _, order = validate(prompt, registry)
    output_dir = Path(args.output).resolve()
    runtime.configure(output_dir)
    if args.quiet:
        os.environ["LORALAB_NO_PROGRESS"] = "1"
    # Saved PNGs carry an editor graph too, so they open in ComfyUI like its own images.
    extra = {"extra_pnginfo": {"workflow": api_to_ui(prompt, registry)}}
    result = Executor(registry, show_progress=not args.quiet).run(prompt, order, extra)
    images = _image_paths(result, output_dir)
    summary = {"workflow": str(args.workflow), "output": str(output_dir), "images": images,
               "nodes": [{"id": n.node_id, "class_type": n.class_type, "seconds": round(n.seconds, 4)}
                         for n in result.nodes]}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        total = sum(n.seconds for n in result.nodes)
        print(f"Ran {len(result.nodes)} nodes in {total:.2f} s; wrote {len(images)} image(s) under {output_dir}")
        for n in sorted(result.nodes, key=lambda n: -n.seconds)[:5]:
            print(f"  {n.seconds:8.3f} s  node {n.node_id} ({n.class_type})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return cmd_run(args)
    except WorkflowError as e:
        print(json.dumps(e.to_json(), indent=2) if args.json else f"error: {e}", file=sys.stderr)
        return e.exit_code
    except NodeExecutionError as e:
        if args.traceback:
            import traceback

            traceback.print_exception(e.exc, file=sys.stderr)
        print(json.dumps({"execution_error": e.to_json()}, indent=2) if args.json else f"error: {e}",
              file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted: files already written are complete; nothing half-written was left",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
