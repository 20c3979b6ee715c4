"""The editor's UI format (LiteGraph v0.4, what "Save" writes) -> the API format ComfyUI executes.

ComfyUI's backend has no such converter: the frontend's ``graphToPrompt()`` does it. This follows
its rules from our node declarations (checked against frontend 1.35 in tests/test_convert.py):
``widgets_values`` are positional over the widget inputs in declaration order (required, then
optional), with the editor's "control after generate" values after some (``ui.control_values``); a
linked widget takes its link; ``Reroute`` nodes are followed, ``PrimitiveNode`` values are copied
into their targets, notes are dropped; muted nodes (mode 2) vanish, bypassed nodes (mode 4) pass
each consumer the bypassed node's input of the same type; list constants become
``{"__value__": [...]}``. Chains of reroutes and bypassed nodes are followed in a loop, not by
recursion, so no chain length can crash the converter.
"""

from __future__ import annotations

from .errors import invalid_prompt
from .ui import control_values, declared_inputs, is_widget

VIRTUAL = {"Reroute", "PrimitiveNode", "Note", "MarkdownNote"}
MUTED, BYPASSED = 2, 4


def is_ui_workflow(data) -> bool:
    return isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data


def _links(ui: dict) -> dict[int, tuple]:
    if not isinstance(ui["links"] or [], list):
        raise invalid_prompt("UI workflow 'links' must be a list", repr(ui["links"])[:200])
    links = {}
    for link in ui["links"] or []:
        if isinstance(link, dict):  # v1 files may store links as objects
            link = [link.get(k) for k in ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")]
        if not isinstance(link, list) or len(link) < 5 or not all(_scalar(x) for x in link[:5]):
            raise invalid_prompt("UI workflow has a malformed link", repr(link)[:200])
        links[link[0]] = (link[1], link[2], link[3], link[4], link[5] if len(link) > 5 else "*")
    return links


def _scalar(value) -> bool:
    return value is None or (isinstance(value, (int, str)) and not isinstance(value, bool))


def _check_node(node: dict) -> None:
    """The shape the converter relies on; anything else in a shared file is a clean error."""
    problem = None
    inputs = node.get("inputs")
    if inputs is not None and not (isinstance(inputs, list) and all(
            isinstance(i, dict) and isinstance(i.get("name"), str) and _scalar(i.get("link"))
            and _scalar(i.get("type")) for i in inputs)):
        problem = "inputs must be a list of {name, type, link} objects"
    elif not isinstance(node.get("widgets_values"), (list, dict, type(None))):
        problem = "widgets_values must be a list or an object"
    elif node["type"] == "PrimitiveNode" and not isinstance(node.get("widgets_values"), (list, type(None))):
        problem = "a PrimitiveNode's widgets_values must be a list"
    elif not _scalar(node.get("mode")) or not isinstance(node.get("title", ""), (str, type(None))):
        problem = "mode must be a number and title a string"
    if problem:
        raise invalid_prompt(f"UI workflow node {node['id']!r}: {problem}")


def _widget_values(node: dict, cls) -> dict:
    values = node.get("widgets_values")
    widgets = [(name, kind, options) for name, kind, options in declared_inputs(cls) if is_widget(kind, options)]
    if isinstance(values, dict):
        return {name: values[name] for name, _, _ in widgets if name in values}
    values = list(values or [])
    named, i = {}, 0
    for name, kind, options in widgets:
        if i < len(values):
            named[name] = values[i]
        elif "default" in options:  # a file saved before this input existed: the editor sends its default
            named[name] = options["default"]
        elif isinstance(kind, (list, tuple)) and kind:  # ... or a combo's first choice
            named[name] = kind[0]
        i += 1 + control_values(name, kind, options)
    return named


class _Graph:
    def __init__(self, ui: dict, registry: dict, display_names: dict):
        definitions = ui.get("definitions", {})
        if not isinstance(definitions, dict):
            raise invalid_prompt("UI workflow 'definitions' must be an object", repr(definitions)[:200])
        if definitions.get("subgraphs"):
            raise invalid_prompt("UI workflows with subgraphs are not supported yet; convert the subgraph "
                                 "back to nodes in the editor, or export the API format")
        self.registry = registry
        self.display_names = display_names
        self.nodes = {}
        for node in ui["nodes"]:
            if (not isinstance(node, dict) or not isinstance(node.get("id"), (int, str))
                    or isinstance(node.get("id"), bool) or not isinstance(node.get("type"), str)):
                raise invalid_prompt("UI workflow has a node without id or type", repr(node)[:200])
            _check_node(node)
            self.nodes[node["id"]] = node
        self.links = _links(ui)
        self.followed: dict[tuple, object] = {}  # (link id, wanted type) -> source(): chains are shared

    def source(self, link_id):
        """Follow a link through reroutes and bypassed nodes to (node id, slot), ("value", v) for
        a PrimitiveNode, or None where the chain ends or loops."""
        want_type, walked, found = None, {}, None  # walked: an ordered set
        while link_id is not None and link_id in self.links and link_id not in walked:
            origin, slot, _, _, link_type = self.links[link_id]
            want_type = want_type or link_type
            if (link_id, want_type) in self.followed:
                found = self.followed[link_id, want_type]
                break
            walked[link_id] = None
            node = self.nodes.get(origin)
            if node is None:
                raise invalid_prompt(f"UI workflow link {link_id} comes from node {origin}, which does not exist")
            if not isinstance(slot, int) or slot < 0:
                raise invalid_prompt(f"UI workflow link {link_id} has an invalid origin slot {slot!r}")
            if node.get("mode") == MUTED:
                break
            if node["type"] == "PrimitiveNode":
                found = ("value", (node.get("widgets_values") or [None])[0])
                break
            if node["type"] == "Reroute":
                link_id = (node.get("inputs") or [{}])[0].get("link")
            elif node.get("mode") == BYPASSED:
                link_id = self._bypassed_link(node, slot, want_type)
            else:
                found = (str(origin), slot)
                break
        self.followed.update(((walked_id, want_type), found) for walked_id in walked)
        return found

    @staticmethod
    def _bypassed_link(node: dict, slot: int, want_type):
        """The link a bypassed node passes on: its input at the same slot when of the wanted type,
        else its first input of that type."""
        inputs = node.get("inputs") or []
        same_slot = inputs[slot] if slot < len(inputs) else None
        candidates = ([same_slot] if same_slot and same_slot.get("type") == want_type else []) + [
            i for i in inputs if i.get("type") == want_type]
        return next((c["link"] for c in candidates if c.get("link") is not None), None)

    def to_api(self) -> dict:
        prompt = {}
        for node_id, node in self.nodes.items():
            kind = node["type"]
            if kind in VIRTUAL or node.get("mode") in (MUTED, BYPASSED):
                continue
            cls = self.registry.get(kind)
            if cls is None:
                raise invalid_prompt(f"Cannot execute because node {kind} does not exist.", f"Node ID '#{node_id}'")
            inputs = {}
            for name, value in _widget_values(node, cls).items():
                inputs[name] = {"__value__": value} if isinstance(value, list) else value
            for socket in node.get("inputs") or []:
                if socket.get("link") is None:
                    continue
                found = self.source(socket["link"])
                if found is None:
                    inputs.pop(socket["name"], None)
                elif found[0] == "value":
                    inputs[socket["name"]] = {"__value__": found[1]} if isinstance(found[1], list) else found[1]
                else:
                    inputs[socket["name"]] = [found[0], found[1]]
            title = node.get("title") or self.display_names.get(kind, kind)
            prompt[str(node_id)] = {"inputs": inputs, "class_type": kind, "_meta": {"title": title}}
        return prompt


def ui_to_api(ui: dict, registry: dict, display_names: dict | None = None) -> dict:
    if not is_ui_workflow(ui):
        raise invalid_prompt("Not a UI-format workflow (expected 'nodes' and 'links')")
    return _Graph(ui, registry, display_names or {}).to_api()
