"""Manual (not run by CI): record what ComfyUI's own editor makes of each UI workflow.

tests/test_convert.py compares our UI -> API converter with these recordings, so they must come
from the real frontend, never from our code. How they were made:

1. ComfyUI v0.8.0 (frontend package 1.35.9) with this pack linked into ``custom_nodes/``:
   ``python main.py --cpu --listen 127.0.0.1 --port 8188``.
2. ``pip install playwright`` (no browser download: a system Chromium is used) and run
   ``python tests/manual/record_frontend_conversions.py --chromium /usr/bin/chromium --shots /tmp/shots``.

For every ``workflows/*.ui.json`` and ``tests/data/ui/*.ui.json`` the editor loads the file
(``app.loadGraphData``), then ``app.graphToPrompt()`` converts it exactly as pressing Run would;
its ``output`` part is written to ``tests/data/ui/<name>.frontend.api.json`` and its ``workflow``
part (the graph as the editor saves it) to ``tests/data/ui/<name>.editor-saved.json``. A
screenshot of the loaded graph goes to ``--shots``. A ``<name>.object_info.json`` beside a UI
file declares node types that exist only for a test (registered in the editor before loading
it). Nodes the editor could not build (missing types) are printed and make the script exit 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "ui"

LOAD_AND_CONVERT = """async ([graph, name, defs]) => {
    if (defs) await window.app.registerNodesFromDefs(defs);
    await window.app.loadGraphData(graph, true, true, name, {showMissingNodesDialog: false,
                                                            showMissingModelsDialog: false});
    const broken = window.app.graph.nodes.filter(n => n.has_errors).map(n => `${n.id} ${n.type}`);
    const {workflow, output} = await window.app.graphToPrompt();
    // JSON text, as the editor saves and sends it (undefined fields dropped, not made null)
    return JSON.stringify({workflow, output, broken, frontend: window.__COMFYUI_FRONTEND_VERSION__ ?? null});
}"""


def ui_files() -> list[Path]:
    return sorted((ROOT / "workflows").glob("*.ui.json")) + sorted(DATA.glob("*.ui.json"))


def record(url: str, chromium: str, shots: Path | None) -> int:
    from playwright.sync_api import sync_playwright

    failures = 0
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 2400, "height": 1400})
        page.goto(url)
        page.wait_for_function("window.app && window.app.graph && window.app.canvas", timeout=120_000)
        page.wait_for_timeout(2000)  # let the extensions finish registering
        for path in ui_files():
            name = path.name.removesuffix(".ui.json")
            defs = path.with_name(f"{name}.object_info.json")  # node types that only a test declares
            defs = json.loads(defs.read_text()) if defs.exists() else None
            result = json.loads(page.evaluate(LOAD_AND_CONVERT, [json.loads(path.read_text()), path.name, defs]))
            target = DATA / f"{name}.frontend.api.json"
            target.write_text(json.dumps(result["output"], indent=2, ensure_ascii=False) + "\n")
            saved = DATA / f"{name}.editor-saved.json"  # the file as the editor would save it
            saved.write_text(json.dumps(result["workflow"], indent=1, ensure_ascii=False) + "\n")
            print(f"{path.relative_to(ROOT)} -> {target.relative_to(ROOT)}: {len(result['output'])} nodes, "
                  f"frontend {result['frontend']}, broken nodes: {result['broken'] or 'none'}")
            failures += bool(result["broken"])
            if shots:
                shots.mkdir(parents=True, exist_ok=True)
                page.evaluate("""() => {  // full detail at any zoom, the whole graph in view
                    window.app.canvas._min_font_size_for_lod = 0;
                    window.app.canvas.updateLowQualityThreshold();
                    window.app.canvas.fitViewToSelectionAnimated({duration: 1});
                }""")
                page.wait_for_timeout(500)
                page.screenshot(path=str(shots / f"{name}.png"))
        browser.close()
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8188")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--shots", type=Path, help="folder for one screenshot per workflow")
    args = parser.parse_args()
    return record(args.url, args.chromium, args.shots)


if __name__ == "__main__":
    sys.exit(main())
