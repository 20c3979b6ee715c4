"""The node catalogue: ``loralab nodes`` and ComfyUI's ``/object_info`` JSON (server.py node_info)."""

from __future__ import annotations


def node_info(node_id: str, cls, display_names: dict) -> dict:
    inputs = cls.INPUT_TYPES()
    info = {
        "input": inputs,
        "input_order": {key: list(value) for key, value in inputs.items()},
        "output": cls.RETURN_TYPES,
        "output_is_list": getattr(cls, "OUTPUT_IS_LIST", [False] * len(cls.RETURN_TYPES)),
        "output_name": getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES),
        "name": node_id,
        "display_name": display_names.get(node_id, node_id),
        "description": getattr(cls, "DESCRIPTION", ""),
        "python_module": "custom_nodes.loralab",
        "category": getattr(cls, "CATEGORY", "sd"),
        "output_node": getattr(cls, "OUTPUT_NODE", False) is True,
    }
    if hasattr(cls, "OUTPUT_TOOLTIPS"):
        info["output_tooltips"] = cls.OUTPUT_TOOLTIPS
    return info


def object_info(registry: dict, display_names: dict) -> dict:
    return {node_id: node_info(node_id, cls, display_names) for node_id, cls in registry.items()}


def choices(values, width: int = 100) -> str:
    """A combo's choices in brackets, cut after about ``width`` characters (model lists are long)."""
    shown = []
    for value in values:
        if shown and len(", ".join(shown + [str(value)])) > width:
            return f"[{', '.join(shown)}, ... ({len(values)} choices)]"
        shown.append(str(value))
    return f"[{', '.join(shown)}]"


def describe(registry: dict, display_names: dict) -> str:
    """A readable catalogue: one block per node with its inputs and outputs."""
    lines = []
    for node_id, cls in sorted(registry.items(), key=lambda kv: (kv[1].CATEGORY, kv[0])):
        lines.append(f"{node_id}  ({display_names.get(node_id, node_id)}; {cls.CATEGORY})")
        for category, spec in cls.INPUT_TYPES().items():
            if category == "hidden":
                continue
            for name, declared in spec.items():
                kind = declared[0]
                shown = f"COMBO {choices(kind)}" if isinstance(kind, (list, tuple)) else kind
                options = declared[1] if len(declared) > 1 else {}
                extra = [f"default={options['default']!r}"] if "default" in options else []
                extra += [f"{k}={options[k]}" for k in ("min", "max") if k in options]
                optional = " (optional)" if category == "optional" else ""
                lines.append(f"    in  {name}: {shown}{optional} {' '.join(extra)}".rstrip())
        names = getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)
        lines += [f"    out {name}: {kind}" for name, kind in zip(names, cls.RETURN_TYPES, strict=True)]
    return "\n".join(lines)
