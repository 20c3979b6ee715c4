"""API-format workflow -> the editor's UI format (LiteGraph v0.4), from our node declarations.

Used to write the UI twins in ``workflows/`` and to embed a ``workflow`` chunk in PNGs saved by
a headless run, so dragging such a PNG into ComfyUI restores an editable graph.
"""

from __future__ import annotations

import itertools

from .graph import node_depths, title_of

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
SEED_NAMES = ("seed", "noise_seed")  # INTs the editor gives a control unless the node says otherwise
COLUMN, GAP, LINE, TEXTBOX = 380, 60, 24, 100  # layout in editor pixels


def is_widget(kind, options: dict) -> bool:
    """Whether the editor draws (and saves a value for) this input: forceInput makes it a socket."""
    return not options.get("forceInput") and (isinstance(kind, (list, tuple)) or kind in WIDGET_TYPES
                                               or kind == "COMBO")


def control_values(name: str, kind, options: dict) -> int:
    """How many values the editor saves after this widget's own (frontend 1.35.9's widget constructors):
    a "control after generate" mode after an INT that declares ``control_after_generate``, or declares
    nothing and is named ``seed``/``noise_seed``; after a FLOAT only when declared; after a COMBO when
    declared, the mode and the control's filter list. BOOLEAN and STRING widgets never get one."""
    declared = options.get("control_after_generate")
    if kind == "INT":
        return int(bool(name in SEED_NAMES if declared is None else declared))
    if not declared:
        return 0
    return 2 if isinstance(kind, (list, tuple)) or kind == "COMBO" else int(kind == "FLOAT")


def declared_inputs(cls) -> list[tuple[str, object, dict]]:
    """(name, type, options) of the visible inputs in declaration order: required, then optional."""
    spec = cls.INPUT_TYPES()
    return [(name, s[0], s[1] if len(s) > 1 else {})
            for category in ("required", "optional") for name, s in spec.get(category, {}).items()]


def litegraph_ids(prompt: dict) -> dict[str, int]:
    """LiteGraph's node ids are numbers: an API id that is one keeps it, any other ("10:5" from a
    subgraph, a name) takes the next free number."""
    numeric = {n: int(n) for n in prompt if n.isascii() and n.isdigit() and str(int(n)) == n}
    free = (i for i in itertools.count(1) if i not in numeric.values())
    return {n: numeric[n] if n in numeric else next(free) for n in prompt}


def api_to_ui(prompt: dict, registry: dict) -> dict:
    depths = node_depths(prompt)
    ids = litegraph_ids(prompt)
    column_y: dict[int, int] = {}
    nodes, links = [], []
    outputs_links: dict[tuple[int, int], list[int]] = {}
    for order, node_id in enumerate(sorted(prompt, key=lambda n: (depths[n], ids[n]))):
        node = prompt[node_id]
        cls = registry[node["class_type"]]
        inputs, widgets = [], []
        for name, kind, options in declared_inputs(cls):
            value = node["inputs"].get(name, options.get("default"))
            type_name = "COMBO" if isinstance(kind, (list, tuple)) else kind
            linked = isinstance(value, list)
            if linked:
                link_id = len(links) + 1
                links.append([link_id, ids[value[0]], value[1], ids[node_id], len(inputs), type_name])
                outputs_links.setdefault((ids[value[0]], value[1]), []).append(link_id)
            if not is_widget(kind, options):
                inputs.append({"name": name, "type": type_name, "link": links[-1][0] if linked else None})
                continue
            if linked:
                inputs.append({"name": name, "type": type_name, "widget": {"name": name}, "link": links[-1][0]})
                value = options.get("default", kind[0] if isinstance(kind, (list, tuple)) else None)
            if isinstance(value, dict) and "__value__" in value:
                value = value["__value__"]
            widgets.append(value)
            # "fixed", so a loaded workflow keeps its seeds; a COMBO's filter list stays empty
            widgets.extend(["fixed", ""][:control_values(name, kind, options)])
        depth = depths[node_id]
        multiline = sum(1 for _, kind, o in declared_inputs(cls) if kind == "STRING" and o.get("multiline"))
        height = LINE * (max(len(inputs), len(cls.RETURN_TYPES)) + len(widgets)) + TEXTBOX * multiline + 20
        y = column_y.get(depth, 50)
        column_y[depth] = y + height + GAP
        entry = {"id": ids[node_id], "type": node["class_type"], "pos": [50 + depth * COLUMN, y],
                 "size": [320, height], "flags": {}, "order": order, "mode": 0,
                 "inputs": inputs, "outputs": [], "properties": {"Node name for S&R": node["class_type"]},
                 "widgets_values": widgets}
        title = title_of(prompt, node_id)
        if title:
            entry["title"] = title
        nodes.append(entry)
    for entry in nodes:
        cls = registry[entry["type"]]
        names = getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)
        entry["outputs"] = [{"name": names[i], "type": t, "links": outputs_links.get((entry["id"], i), []),
                             "slot_index": i} for i, t in enumerate(cls.RETURN_TYPES)]
    return {"last_node_id": max(n["id"] for n in nodes), "last_link_id": len(links), "nodes": nodes,
            "links": links, "groups": [], "config": {}, "extra": {"ds": {"scale": 1, "offset": [0, 0]}},
            "version": 0.4}
