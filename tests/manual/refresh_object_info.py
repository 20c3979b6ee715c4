"""Manual (not run by CI): refresh tests/data/object_info.comfyui.json from a live ComfyUI.

1. ComfyUI v0.8.0 with this pack linked as ``custom_nodes/ComfyUI-LoRA-Lab`` (ComfyUI records the
   folder name in each node's ``python_module``; the fixture was recorded under this one) and no
   checkpoints or LoRA files in its ``models/`` folders (the model lists then hold the embedded model only):
   ``python main.py --cpu --listen 127.0.0.1 --port 8188``.
2. ``python tests/manual/refresh_object_info.py [--url http://127.0.0.1:8188]``

Keeps only this pack's nodes and writes them sorted, so a refresh's diff
shows exactly what ComfyUI now serves differently. tests/test_catalog.py checks these specs
against what ComfyUI and its editor require, and labels the one test that only says the file is current.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from pathlib import Path

TARGET = Path(__file__).resolve().parents[1] / "data" / "object_info.comfyui.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8188")
    args = parser.parse_args()
    with urllib.request.urlopen(f"{args.url}/object_info", timeout=60) as response:
        served = json.load(response)
    ours = {k: v for k, v in served.items() if k.startswith("LoRALab")}  # every pack node id has it
    if not ours:
        print("error: the server lists no LoRA Lab nodes; is the pack in custom_nodes/?", file=sys.stderr)
        return 1
    TARGET.write_text(json.dumps(ours, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    print(f"{TARGET}: {len(ours)} nodes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
