"""Manual (not run by CI): lay the shipped UI workflows out for people, in ComfyUI's own editor.

Every ``workflows/<name>.ui.json`` is loaded into the real editor and

1. a seed workflow (all but quickstart and train_lora) without a ``LoRALabSaveReport`` gets a
   report stage built with the editor's API (``LiteGraph.createNode``, ``graph.add``,
   ``node.connect``): Save Report (``output/<name>/report_*.html``) wired to the workflow's main
   score tables and figures, a new Image Grid of its main images and, beside a Pareto Front, a new
   Plot Scatter of the same table and columns (``REPORTS`` below says which);
2. its nodes are placed by stage, left to right, one group per stage (``STAGES``): in a stage,
   nodes the others depend on come first (by depth, then by their old place), stacked in
   columns of at most ``MAX_COLUMN`` px (lower where that shows the whole graph larger on a
   ``SCREEN``); node sizes are the editor's, never smaller than ``computeSize()`` or the title;
3. its one Note moves above the groups, widened, its text sized by the editor's textarea, with a
   line on the run time and one on the report;
4. the editor checks the result (no two nodes overlap, title bars included; no node on the
   Note; groups apart; every other node in exactly one group) and the graph is written back as
   ``app.graphToPrompt()``'s ``workflow`` (what the editor saves), indent 1. Existing nodes,
   links and widget values must come out unchanged (checked); a failed check exits 1 and writes
   nothing. Running it again on its output changes nothing and adds no second report.

Run it like ``record_frontend_conversions.py`` (ComfyUI v0.8.0, frontend 1.35.9, this pack in
``custom_nodes/``, ``python main.py --cpu --listen 127.0.0.1 --port 8188``; playwright with a system
Chromium)::

    python tests/manual/layout_workflows.py --chromium /usr/bin/chromium --shots /tmp/layout_shots [NAME ...]

then re-record the conversions (``record_frontend_conversions.py``) and copy each
``tests/data/ui/<name>.frontend.api.json`` to ``workflows/<name>.json`` (the API twins).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / "workflows"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

# Stage groups, left to right: (title, colour from the editor's group palette, node types).
STAGES = [
    ("1 · Data & model", "#3f789e", {
        "LoRALabLoadPipeline", "LoRALabLoadLoRA", "LoRALabWorldDataset", "LoRALabImageFolder",
        "LoRALabSingleImageConcept", "LoRALabPrompts", "LoRALabWorldPrompts", "LoadImage"}),
    ("2 · Train", "#b06634", {
        "LoRALabNoiseStrategy", "LoRALabLoRAConfig", "LoRALabTrainConfig", "LoRALabLCMDistillConfig",
        "LoRALabTrainLoRA", "LoRALabFineTune", "LoRALabSaveLoRA", "LoRALabBlendLoRAs"}),
    ("3 · Sample", "#8A8", {
        "LoRALabSampler", "LoRALabGenerate", "LoRALabImg2Img", "LoRALabApplyLoRA",
        "LoRALabSaveImage", "LoRALabPreviewImage", "SaveImage", "PreviewImage"}),
    ("4 · Score", "#b58b2a", {
        "LoRALabPixelMetrics", "LoRALabFIDKID", "LoRALabCLIPScore", "LoRALabCLIPSimilarity", "LoRALabLPIPS",
        "LoRALabWorldAdherence", "LoRALabWorldStyle", "LoRALabCombineScores"}),
    ("5 · Report", "#a1309b", {
        "LoRALabSummarize", "LoRALabCompare", "LoRALabPareto", "LoRALabShowScores", "LoRALabSaveScores",
        "LoRALabPlotTrainingCurves", "LoRALabPlotScatter", "LoRALabPlotBars", "LoRALabPlotRadar",
        "LoRALabPlotLine", "LoRALabImageGrid", "LoRALabSaveReport"}),
]
IMAGE_SINKS = {"LoRALabSaveImage", "LoRALabPreviewImage", "SaveImage", "PreviewImage"}  # join a figure's stage
NOTES = {"Note", "MarkdownNote"}

GAP_X, GAP_Y = 60, 40          # between columns / between a node and the next one's title bar
MAX_COLUMN = 1600              # a column's height at most (title bars included)
SCREEN = (2300, 1250)         # the view a layout is made to fill (a 2400 x 1400 window less the menus)
MAX_TITLE_WIDTH = 760          # nodes are widened to show their whole title, up to this width
PAD, GROUP_GAP = 30, 80        # inside a group's border / between groups
ORIGIN = (20, 20)              # top-left of the Note (its title bar)
NOTE_WIDTH, NOTE_GAP = 760, 60  # the Note's width; space between it and the groups
RUN_PREFIX, REPORT_PREFIX = "Time on 2 CPU cores:", "Report:"  # the Note's lines this script writes

# Run times of the defaults on 2 CPU cores (workflows/seed_results.md, README), without the report.
TIMES = {
    "quickstart": "about 10 s", "train_lora": "about 60 s", "knowledge_transfer": "about 20 s",
    "lcm_lora": "about 1.5 min", "lora_rank": "about 1.5 min", "fashion_lora": "about 30 s",
    "garment_concept": "about 2.5 min", "style_noise": "about 25 s",
}

# The report of each seed workflow. scores: (node id, output) -> scores_1.. in this order;
# figures -> figure_1..: an existing (node id, output), a new grid (images/image_scores from
# Generate "images"; with "images_2", that Generate's in images_2/image_scores_2) or a new scatter
# of the table behind Pareto Front "pareto", with its columns.
REPORTS = {
    "knowledge_transfer": {
        "title": "Report: seed 000, knowledge transfer from an SDXL teacher to an SD1.5 student's LoRA",
        "scores": [(18, "summary"),       # mean ± std, 95% CI per model and category
                   (16, "comparison"),    # % change vs base, per category
                   (17, "comparison"),    # % change vs base, overall
                   (33, "scores")],       # per image: student (base, LoRA) and teacher
        "figures": [
            {"grid": {"images": 12, "images_2": 7, "columns": "model",
                      "node_title": "Image grid: student + LoRA vs student base",
                      "title": "Student with the LoRA vs the base student, per prompt"}},
            {"grid": {"images": 6, "columns": "",
                      "node_title": "Image grid: the teacher's images (references)",
                      "title": "Teacher images (the references and training images)"}},
        ],
    },
    "lcm_lora": {
        "title": "Report: seed 001, LCM-LoRA vs fine-tuned LoRA vs base model (FID, adherence, seconds per image)",
        "scores": [(23, "summary"),       # Seconds per image per model (Figure 2)
                   (35, "summary"),       # Adherence per model
                   (21, "scores"),        # FID of the three models
                   (34, "scores")],       # adherence per image, three models
        "figures": [
            {"grid": {"images": 17, "images_2": 15, "columns": "model",
                      "node_title": "Image grid: LCM-LoRA (4 steps) vs base (25 steps)",
                      "title": "LCM-LoRA, 4 steps CFG 1 vs base model, 25 steps CFG 7.5"}},
        ],
    },
    "lora_rank": {
        "title": "Report: seed 002, LoRA rank 16 vs rank 64 (Table 1, Figures 1 and 2)",
        "scores": [(22, "summary"),       # Table 1: mean and std per rank and category
                   (23, "comparison"),    # change vs the base model, per category
                   (24, "scores"),        # Figure 1: runtime, peak memory, file size per rank
                   (21, "scores")],       # all scores, per image
        "figures": [
            {"grid": {"images": 17, "images_2": 16, "columns": "model",
                      "node_title": "Image grid: rank 64 vs rank 16",
                      "title": "Rank 64 vs rank 16 LoRA, per prompt"}},
            (34, "image"),                # Figure 2: training loss per rank
        ],
    },
    "fashion_lora": {
        "title": "Report: seed 003, LoRA on the UNet (rank 2) vs the base model: FID, adherence, style, CLIP",
        "scores": [(19, "comparison"),    # LoRA vs base (paired)
                   (17, "scores"),        # FID / KID of both sets
                   (9, "cost"),           # Save LoRA: trainable parameters, file size
                   (18, "scores")],       # scores of both sets, per image
        "figures": [
            {"grid": {"images": 11, "images_2": 12, "columns": "model",
                      "node_title": "Image grid: LoRA vs base model",
                      "title": "LoRA vs base model, held-out pastel prompts"}},
        ],
    },
    "garment_concept": {
        "title": "Report: seed 003, a garment concept from one photo (DreamBooth-style LoRA)",
        "scores": [(17, "summary"),       # concept probability per prompt
                   (16, "scores")],       # concept probability per image
        "figures": [
            {"grid": {"images": 13, "columns": "seed",
                      "node_title": "Image grid: concept images per prompt and seed",
                      "title": "Concept images after training (rows: prompt, columns: seed)"}},
            (4, "images"),                # the one training photo
        ],
    },
    "style_noise": {
        "title": "Report: seed 004, style LoRA of noise strategy L1 with one scheduler (content vs style)",
        "scores": [(20, "summary"),       # mean, std, 95% CI
                   (19, "comparison"),    # style gain over the base model: paired t-test
                   (21, "front"),         # Pareto: content kept vs style strength
                   (16, "scores")],       # per image: CLIP content/style, LPIPS, adherence, style, seconds
        "figures": [
            {"grid": {"images": 13, "images_2": 12, "columns": "model",
                      "node_title": "Image grid: styled vs base",
                      "title": "Styled (LoRA) vs base images, per prompt"}},
            {"scatter": {"pareto": 21, "node_title": "Scatter: content kept (adherence) vs style strength",
                         "title": "Content kept (World Adherence) vs style strength (World Style pastel)"}},
            (31, "image"),                # training curves: loss and learning rate
        ],
    },
}

LOAD = """async ([graph, name]) => {
    await window.app.loadGraphData(graph, true, true, name, {showMissingNodesDialog: false,
                                                            showMissingModelsDialog: false});
    const broken = window.app.graph.nodes.filter(n => n.has_errors).map(n => `${n.id} ${n.type}`);
    const {workflow} = await window.app.graphToPrompt();  // the graph as the editor saves it
    return JSON.stringify({graph: workflow, broken});
}"""

ADD_REPORT = """([name, spec]) => {
    const {app, LiteGraph} = window, graph = app.graph;
    if (graph.nodes.some(n => n.type === "LoRALabSaveReport")) return JSON.stringify({added: []});
    const added = [];
    let place = 0;
    const node = id => {
        const n = graph.getNodeById(id);
        if (!n) throw new Error(`${name}: no node ${id}`);
        return n;
    };
    const make = (type, title, values) => {
        const n = LiteGraph.createNode(type);
        if (!n) throw new Error(`${name}: the editor has no node type ${type}`);
        n.title = title;
        n.pos = [100000, 100000 + place++];  // after every existing node in its stage (then laid out)
        graph.add(n);
        for (const [key, value] of Object.entries(values)) {
            const w = n.widgets?.find(w => w.name === key);
            if (!w) throw new Error(`${name}: ${type} has no widget ${key}`);
            w.value = value;
        }
        added.push(n.id);
        return n;
    };
    const wire = (src, output, dst, input) => {
        const slot = typeof output === "number" ? output : src.findOutputSlot(output);
        if (slot < 0) throw new Error(`${name}: node ${src.id} has no output ${output}`);
        if (!src.connect(slot, dst, input))
            throw new Error(`${name}: ${src.id}.${output} -> ${dst.type}.${input} failed`);
    };
    const report = make("LoRALabSaveReport", spec.title, {title: spec.title, filename_prefix: `${name}/report`});
    spec.scores.forEach(([id, output], i) => wire(node(id), output, report, `scores_${i + 1}`));
    spec.figures.forEach((figure, i) => {
        let src = null, output = 0;
        if (Array.isArray(figure)) {
            [src, output] = [node(figure[0]), figure[1]];
        } else if (figure.grid) {
            const g = figure.grid;
            src = make("LoRALabImageGrid", g.node_title, {rows: "prompt", columns: g.columns, title: g.title,
                                                           filename_prefix: `${name}/grid`});
            wire(node(g.images), "images", src, "images");
            wire(node(g.images), "cost", src, "image_scores");
            if (g.images_2 != null) {
                wire(node(g.images_2), "images", src, "images_2");
                wire(node(g.images_2), "cost", src, "image_scores_2");
            }
        } else if (figure.scatter) {
            const s = figure.scatter, pareto = node(s.pareto);
            if (pareto.type !== "LoRALabPareto") throw new Error(`${name}: node ${s.pareto} is no Pareto Front`);
            const value = key => pareto.widgets.find(w => w.name === key).value;
            src = make("LoRALabPlotScatter", s.node_title, {
                x: value("x"), x_better: value("x_better"), y: value("y"), y_better: value("y_better"),
                group_by: value("group_by"), title: s.title});
            const link = graph.getLink(pareto.inputs.find(i => i.name === "scores").link);
            wire(graph.getNodeById(link.origin_id), link.origin_slot, src, "scores");
        }
        wire(src, output, report, `figure_${i + 1}`);
    });
    return JSON.stringify({added});
}"""

MEASURE = """(widest) => {
    const {app, LiteGraph} = window, graph = app.graph, context = document.createElement("canvas").getContext("2d");
    return JSON.stringify({title_height: LiteGraph.NODE_TITLE_HEIGHT, nodes: graph.nodes.map(n => {
        const computed = n.computeSize();
        context.font = n.titleFontStyle;  // drawTitleText truncates a title wider than size[0] - 2 title heights
        const title = Math.ceil(context.measureText(n.getTitle() ?? "").width) + 2 * LiteGraph.NODE_TITLE_HEIGHT + 8;
        const size = [Math.max(n.size[0], computed[0], Math.min(title, widest)), Math.max(n.size[1], computed[1])];
        if (size[0] > n.size[0] || size[1] > n.size[1])  // never smaller than its content or its title
            n.setSize(size);
        const sources = (n.inputs ?? []).filter(i => i.link != null).map(i => graph.getLink(i.link).origin_id);
        const widgets = Object.fromEntries((n.widgets ?? []).map(w => [w.name, w.value]));
        return {id: n.id, type: n.type, title: n.title, pos: [...n.pos], size: [...n.size], sources, widgets};
    })});
}"""

NOTE_HEIGHT = """async ([id, text, width]) => {  // the height at which the Note's textarea shows all its text
    const {app} = window, note = app.graph.getNodeById(id), widget = note.widgets[0];
    widget.value = text;
    app.canvas.ds.scale = 1;
    app.canvas.ds.offset = [-note.pos[0] + 10, -note.pos[1] + 40];
    let height = 80;
    for (let tries = 0; tries < 40; tries++) {
        note.setSize([width, height]);
        app.canvas.setDirty(true, true);
        app.canvas.draw(true, true);
        await new Promise(r => requestAnimationFrame(() => setTimeout(r, 30)));
        const el = widget.element;
        if (el.scrollHeight <= el.clientHeight + 1) return height;
        height += Math.max(12, el.scrollHeight - el.clientHeight);
    }
    return height;
}"""

APPLY = """([places, groups]) => {
    const {app, LiteGraph} = window, graph = app.graph;
    for (const [id, x, y, w, h] of places) {
        const n = graph.getNodeById(id);
        n.pos = [x, y];
        n.setSize([w, h]);
    }
    const keep = new Set(groups.map(g => g.title));
    for (const g of [...graph.groups]) if (!keep.has(g.title)) graph.remove(g);  // stale groups go
    for (const spec of groups) {
        let g = graph.groups.find(g => g.title === spec.title);
        if (!g) {
            g = new LiteGraph.LGraphGroup(spec.title);
            graph.add(g);
        }
        g.pos = [spec.x, spec.y];
        g.size = [spec.w, spec.h];
        g.color = spec.color;
        g.font_size = 24;
        g.recomputeInsideNodes();
    }
    app.canvas.ds.scale = 1;
    app.canvas.ds.offset = [0, 0];
    app.canvas.setDirty(true, true);
}"""

CHECK = """async () => {
    const {app} = window, graph = app.graph, problems = [];
    const box = n => { n.updateArea(); return [...n.getBounding()]; };
    const meets = (a, b) => a[0] < b[0] + b[2] && b[0] < a[0] + a[2] && a[1] < b[1] + b[3] && b[1] < a[1] + a[3];
    const holds = (o, i) => i[0] >= o[0] && i[1] >= o[1] && i[0] + i[2] <= o[0] + o[2] && i[1] + i[3] <= o[1] + o[3];
    const nodes = graph.nodes.map(n => [n, box(n)]), groups = graph.groups.map(g => [g, [...g._bounding]]);
    const name = n => `${n.id} ${n.type} '${n.title}'`;
    for (let i = 0; i < nodes.length; i++)
        for (let j = i + 1; j < nodes.length; j++)
            if (meets(nodes[i][1], nodes[j][1]))
                problems.push(`nodes overlap: ${name(nodes[i][0])} / ${name(nodes[j][0])}`);
    for (let i = 0; i < groups.length; i++)
        for (let j = i + 1; j < groups.length; j++)
            if (meets(groups[i][1], groups[j][1]))
                problems.push(`groups overlap: ${groups[i][0].title} / ${groups[j][0].title}`);
    for (const [n, b] of nodes) {
        const inside = groups.filter(([, g]) => holds(g, b)).length;
        const note = n.type === "Note" || n.type === "MarkdownNote";
        if (note ? groups.some(([, g]) => meets(g, b)) : inside !== 1)
            problems.push(`${name(n)} lies in ${note ? "a group" : inside + " groups"}`);
    }
    const {workflow} = await app.graphToPrompt();
    return JSON.stringify({problems, workflow});
}"""

FIT = """() => {  // full detail at any zoom, the whole graph in view clear of the menus, no minimap
    const {app} = window, canvas = app.canvas, graph = app.graph;
    canvas._min_font_size_for_lod = 0;
    canvas.updateLowQualityThreshold();
    canvas.deselectAll();
    document.querySelectorAll(".minimap-main-container").forEach(e => { e.style.display = "none"; });
    const boxes = [...graph.nodes.map(n => { n.updateArea(); return n.getBounding(); }),
                   ...graph.groups.map(g => g._bounding)];
    const [x0, y0] = [Math.min(...boxes.map(b => b[0])), Math.min(...boxes.map(b => b[1]))];
    const [x1, y1] = [Math.max(...boxes.map(b => b[0] + b[2])), Math.max(...boxes.map(b => b[1] + b[3]))];
    const [left, top, right, bottom] = [80, 110, 30, 60];  // the side bar, the tabs and menu, the zoom buttons
    const [w, h] = [window.innerWidth - left - right, window.innerHeight - top - bottom];
    const scale = Math.min(w / (x1 - x0), h / (y1 - y0));
    canvas.ds.scale = scale;
    canvas.ds.offset = [(left + (w - (x1 - x0) * scale) / 2) / scale - x0,
                        (top + (h - (y1 - y0) * scale) / 2) / scale - y0];
    canvas.setDirty(true, true);
}"""


def stage_of(nodes: dict[int, dict]) -> dict[int, int]:
    """Stage index of every node but the Note: by type; an image sink joins its figure's stage (a
    saved plot sits by the plot); an unknown type goes to the last stage of what feeds it."""
    by_type = {t: i for i, (_, _, types) in enumerate(STAGES) for t in types}
    stages: dict[int, int] = {}

    def visit(nid: int) -> int:
        if nid not in stages:
            node = nodes[nid]
            fed = [visit(s) for s in node["sources"]]
            if node["type"] in IMAGE_SINKS:
                stages[nid] = max([by_type[node["type"]], *fed])
            elif node["type"] in by_type:
                stages[nid] = by_type[node["type"]]
            else:
                print(f"  note: no stage for {node['type']} ({nid}); placed after its inputs")
                stages[nid] = max(fed, default=0)
        return stages[nid]

    for nid, node in nodes.items():
        if node["type"] not in NOTES:
            visit(nid)
    return stages


def columns(layers: list[list[dict]], limit: float, title_height: int) -> list[list[dict]]:
    """A stage's layers (nodes of equal depth, in order) stacked into columns no taller than
    ``limit``: a layer that does not fit under the previous one starts a new column, and a layer
    taller than ``limit`` goes on in the next column."""
    cols: list[list[dict]] = [[]]
    height = 0.0
    for layer in layers:
        size = sum(n["size"][1] + title_height for n in layer) + GAP_Y * (len(layer) - 1)
        if cols[-1] and height + GAP_Y + size > limit:
            cols.append([])
        for n in layer:
            h = n["size"][1] + title_height
            if cols[-1] and height + GAP_Y + h > limit:
                cols.append([])
            height = h if not cols[-1] else height + GAP_Y + h
            cols[-1].append(n)
    return cols


def layout(nodes: dict[int, dict], title_height: int, note_id: int, note_height: float):
    """Positions [(id, x, y, w, h)] and groups [{title, color, x, y, w, h}]; the Note on top.

    Every stage uses one column height limit, at most MAX_COLUMN: the one that shows the whole
    graph largest on a SCREEN-sized view (small workflows get shorter columns)."""
    stages = stage_of(nodes)
    depth: dict[int, int] = {}

    def depth_of(nid: int) -> int:  # longest chain of same-stage inputs above the node
        if nid not in depth:
            inner = [s for s in nodes[nid]["sources"] if stages.get(s) == stages[nid]]
            depth[nid] = 1 + max(map(depth_of, inner)) if inner else 0
        return depth[nid]

    layered = []  # (title, colour, layers) of the stages this workflow has
    for index, (title, color, _) in enumerate(STAGES):
        members = [n for nid, n in nodes.items() if stages.get(nid) == index]
        if members:
            members.sort(key=lambda n: (depth_of(n["id"]), n["pos"][0], n["pos"][1], n["id"]))
            depths = sorted({depth_of(n["id"]) for n in members})
            layers = [[n for n in members if depth_of(n["id"]) == d] for d in depths]
            layered.append((title, color, layers))

    group_title = 24 * 1.4  # LGraphGroup.titleHeight at font size 24

    def arrange(limit: float):
        laid = []
        for title, color, layers in layered:
            cols = columns(layers, limit, title_height)
            widths = [max(n["size"][0] for n in col) for col in cols]
            heights = [sum(n["size"][1] + title_height for n in col) + GAP_Y * (len(col) - 1) for col in cols]
            laid.append((title, color, cols, widths, max(heights)))
        width = sum(sum(w) + GAP_X * (len(w) - 1) + 2 * PAD for _, _, _, w, _ in laid) + GROUP_GAP * (len(laid) - 1)
        height = title_height + note_height + NOTE_GAP + group_title + 2 * PAD + max(h for *_, h in laid)
        return min(SCREEN[0] / max(width, NOTE_WIDTH), SCREEN[1] / height), laid

    tallest = max(n["size"][1] + title_height for n in nodes.values() if n["id"] != note_id)
    limits = range(int(tallest), max(MAX_COLUMN, int(tallest)) + 1, 10)
    _, laid = max((arrange(limit) for limit in limits), key=lambda scaled: scaled[0])  # first of the best
    note_x, note_top = ORIGIN
    places = [(note_id, note_x, note_top + title_height, NOTE_WIDTH, note_height)]
    top = note_top + title_height + note_height + NOTE_GAP
    content = max(h for *_, h in laid)
    x = note_x
    groups = []
    for title, color, cols, widths, _ in laid:
        cx = x + PAD
        for col, width in zip(cols, widths, strict=True):
            y = top + group_title + PAD
            for n in col:
                places.append((n["id"], cx, y + title_height, n["size"][0], n["size"][1]))
                y += title_height + n["size"][1] + GAP_Y
            cx += width + GAP_X
        w = sum(widths) + GAP_X * (len(cols) - 1) + 2 * PAD
        groups.append({"title": title, "color": color, "x": x, "y": top,
                       "w": w, "h": group_title + 2 * PAD + content})
        x += w + GROUP_GAP
    return places, groups


def note_text(text: str, name: str, report_prefix: str | None) -> str:
    """The Note's text with this script's two paragraphs (run time; report) written afresh: the
    run time after the first paragraph, the report last."""
    paragraphs = [p for p in re.split(r"\n\s*\n", text.strip())
                  if not p.startswith((RUN_PREFIX, REPORT_PREFIX))]
    time = f"{RUN_PREFIX} {TIMES[name]} with these defaults (the embedded world models)."
    paragraphs.insert(1, time)
    if report_prefix:
        paragraphs.append(f"{REPORT_PREFIX} Save Report writes output/{report_prefix}_*.html (a new number each run; "
                          "with loralab run -o DIR, under DIR): one page to open in any browser, with the "
                          "settings, the tables and figures wired to it, and links to every file the save nodes "
                          "wrote.")
    return "\n\n".join(paragraphs)


def unchanged(before: dict, after: dict, added: set[int], note_id: int) -> list[str]:
    """Existing nodes keep their type, title, mode, widget values and links; existing links stay."""
    problems = []
    old_links = {link[0]: link for link in before["links"]}
    new_links = {link[0]: link for link in after["links"]}
    for lid, link in old_links.items():
        if new_links.get(lid) != link:
            problems.append(f"link {lid} changed: {link} -> {new_links.get(lid)}")
    for link in new_links.values():
        if link[0] not in old_links and link[3] not in added:
            problems.append(f"new link {link} ends at an existing node")
    after_nodes = {n["id"]: n for n in after["nodes"]}
    for old in before["nodes"]:
        new = after_nodes.get(old["id"])
        if new is None:
            problems.append(f"node {old['id']} is gone")
            continue
        keys = ("type", "title", "mode", "flags") + (() if old["id"] == note_id else ("widgets_values",))
        problems += [f"node {old['id']}: {k} changed" for k in keys if old.get(k) != new.get(k)]
        if [i.get("link") for i in old.get("inputs", [])] != [i.get("link") for i in new.get("inputs", [])]:
            problems.append(f"node {old['id']}: inputs changed")
        if len(old.get("outputs", [])) != len(new.get("outputs", [])):
            problems.append(f"node {old['id']}: outputs changed")
            continue
        for o, n in zip(old.get("outputs", []), new.get("outputs", []), strict=True):
            extra = set(n.get("links") or []) - set(o.get("links") or [])
            if not set(o.get("links") or []) <= set(n.get("links") or []) or any(
                    new_links[lid][3] not in added for lid in extra):
                problems.append(f"node {old['id']}: output {o['name']} links changed")
    return problems


def lay_out(page, path: Path, write: bool, shots: Path | None) -> list[str]:
    name = path.name.removesuffix(".ui.json")
    loaded = json.loads(page.evaluate(LOAD, [json.loads(path.read_text()), path.name]))
    if loaded["broken"]:
        return [f"nodes the editor could not build: {loaded['broken']}"]
    before = loaded["graph"]
    added: list[int] = []
    if name in REPORTS:
        added = json.loads(page.evaluate(ADD_REPORT, [name, REPORTS[name]]))["added"]
    measured = json.loads(page.evaluate(MEASURE, MAX_TITLE_WIDTH))
    nodes = {n["id"]: n for n in measured["nodes"]}
    notes = [n for n in nodes.values() if n["type"] in NOTES]
    if len(notes) != 1:
        return [f"{len(notes)} notes, expected one"]
    note = notes[0]
    report = next((n for n in nodes.values() if n["type"] == "LoRALabSaveReport"), None)
    prefix = report["widgets"]["filename_prefix"] if report else None
    text = note_text(next(n["widgets_values"][0] for n in before["nodes"] if n["id"] == note["id"]), name, prefix)
    page.evaluate("([id, x, y]) => { window.app.graph.getNodeById(id).pos = [x, y]; }",
                  [note["id"], ORIGIN[0], ORIGIN[1] + measured["title_height"]])
    height = page.evaluate(NOTE_HEIGHT, [note["id"], text, NOTE_WIDTH])
    places, groups = layout(nodes, measured["title_height"], note["id"], height)
    page.evaluate(APPLY, [places, groups])
    page.wait_for_timeout(200)
    checked = json.loads(page.evaluate(CHECK))
    problems = checked["problems"] + unchanged(before, checked["workflow"], set(added), note["id"])
    stage_names = [g["title"] for g in groups]
    print(f"{path.relative_to(ROOT)}: {len(nodes)} nodes ({len(added)} added), groups: {', '.join(stage_names)}")
    if not problems and write:
        path.write_text(json.dumps(checked["workflow"], indent=1, ensure_ascii=False) + "\n")
    if shots:
        shots.mkdir(parents=True, exist_ok=True)
        page.evaluate(FIT)
        page.wait_for_timeout(800)
        page.screenshot(path=str(shots / f"{name}.png"))
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="workflow names (default: every workflows/*.ui.json)")
    parser.add_argument("--url", default="http://127.0.0.1:8188")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--shots", type=Path, help="folder for one screenshot per workflow")
    parser.add_argument("--shot-scale", type=float, default=1.0, help="device pixels per CSS pixel of the shots")
    parser.add_argument("--dry-run", action="store_true", help="lay out and check, write nothing")
    args = parser.parse_args()
    paths = [WORKFLOWS / f"{n}.ui.json" for n in args.names] or sorted(WORKFLOWS.glob("*.ui.json"))

    from playwright.sync_api import sync_playwright

    failures = 0
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 2400, "height": 1400}, device_scale_factor=args.shot_scale)
        page.goto(args.url)
        page.wait_for_function("window.app && window.app.graph && window.app.canvas", timeout=120_000)
        page.wait_for_timeout(2000)  # let the extensions finish registering
        for path in paths:
            problems = lay_out(page, path, not args.dry_run, args.shots)
            for problem in problems:
                print(f"  FAIL {problem}")
            failures += bool(problems)
        browser.close()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
