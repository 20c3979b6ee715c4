"""API-format workflows: loading, ``--set`` overrides, ComfyUI-style validation, ordering.

Validation follows ComfyUI's ``execution.validate_prompt``: the same error types and messages,
values converted to the declared type, min/max and combo checks, link type checks. Unlike
ComfyUI, which runs the outputs that did validate, we refuse the whole workflow when any output
fails: a batch experiment must not silently drop results. Stricter than ComfyUI too:

- A FLOAT must be finite (NaN passes every min/max comparison); an input that means to accept
  NaN or infinity declares ``"allow_nonfinite": True`` in its options.
- A list constant (``{"__value__": [...]}``) stays wrapped after validation, so it is never
  mistaken for a link when the workflow runs; an input whose type only a node produces (IMAGE,
  LL_PIPELINE...) takes no constant at all.
- ``--set`` names an input the node declares (a workflow file may carry extra inputs, which are
  ignored, as in ComfyUI).

Graphs are walked with explicit stacks, never recursion, so their depth is unbounded.
"""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

from .errors import WorkflowError, invalid_prompt, node_label

Registry = dict[str, type]
PRIMITIVES = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}


def read_json(path: str | Path):
    """A workflow file's JSON; unreadable or malformed files are a clean ``invalid_prompt``."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise invalid_prompt(f"Cannot read workflow file {str(path)!r}", e.strerror or str(e)) from None
    except (ValueError, RecursionError) as e:  # also integers past Python's 4300-digit limit
        raise invalid_prompt(f"Workflow file {str(path)!r} is not valid JSON", str(e)) from None


def _copy(prompt):
    """A deep copy of a JSON workflow (an explicit error for values JSON cannot hold)."""
    try:
        return json.loads(json.dumps(prompt))
    except (TypeError, ValueError, RecursionError) as e:
        raise invalid_prompt("The workflow holds a value that is not plain JSON", str(e)[:300]) from None


def _brief(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def parse_override(text: str) -> tuple[str, str, object]:
    """``NODE.INPUT=VALUE`` -> (node, input, value); VALUE is JSON when it parses, else a string."""
    target, sep, raw = text.partition("=")
    node, dot, name = target.rpartition(".")
    if not sep or not dot or not node or not name:
        raise invalid_prompt(f"--set {_brief(text)!r} is not of the form NODE_ID.INPUT=VALUE")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    except (ValueError, RecursionError) as e:  # JSON, but too many digits or too deeply nested
        raise invalid_prompt(f"--set {_brief(text)!r}: the value of {name!r} cannot be read", str(e)[:300]) from None
    return node, name, value


def resolve_node(prompt: dict, node: str, context: str) -> str:
    """A node id from an id or a unique ``_meta.title``."""
    if node in prompt:
        return node
    titled = [k for k, v in prompt.items() if isinstance(v, dict) and isinstance(v.get("_meta"), dict)
              and v["_meta"].get("title") == node]
    if len(titled) != 1:
        raise invalid_prompt(f"{context}: no node with id or unique title {node!r}",
                             _brief(f"node ids: {', '.join(prompt)}", 300))
    return titled[0]


def _sources(prompt: dict, node_id: str) -> list[str]:
    """The nodes ``node_id`` links to that exist (any other link is left to validation)."""
    node = prompt[node_id]
    inputs = node.get("inputs") if isinstance(node, dict) else None
    links = inputs.values() if isinstance(inputs, dict) else ()
    return [str(v[0]) for v in links if isinstance(v, list) and v and isinstance(v[0], (str, int))
            and not isinstance(v[0], bool) and str(v[0]) in prompt]


def _post_order(prompt: dict, roots) -> tuple[list[str], list[str] | None]:
    """The roots and every node upstream of them, sources first, and the first loop met (node
    ids around it) or None. A depth-first walk with an explicit stack: chains of any length."""
    order, state, loop = [], {}, None
    for root in roots:
        if root in state:
            continue
        state[root] = "open"
        stack = [(root, iter(_sources(prompt, root)))]
        while stack:
            node_id, pending = stack[-1]
            source = next(pending, None)
            if source is None:
                stack.pop()
                state[node_id] = "done"
                order.append(node_id)
            elif state.get(source) == "open":
                if loop is None:
                    path = [n for n, _ in stack]
                    loop = path[path.index(source):] + [source]
            elif source not in state:
                state[source] = "open"
                stack.append((source, iter(_sources(prompt, source))))
    return order, loop


def node_depths(prompt: dict) -> dict[str, int]:
    """Longest link distance of each node from a source node (0 = no inputs); a link that closes
    a loop in a malformed graph counts as a source."""
    _check_root(prompt)
    depth: dict[str, int] = {}
    for node_id in _post_order(prompt, prompt)[0]:
        depth[node_id] = 1 + max((depth.get(s, -1) for s in _sources(prompt, node_id)), default=-1)
    return depth


def declared_names(cls) -> list[str]:
    """The inputs a node class declares (required, then optional)."""
    spec = cls.INPUT_TYPES()
    return [*spec.get("required", {}), *spec.get("optional", {})]


def apply_overrides(prompt, overrides: list[str], registry: Registry) -> dict:
    """Return a copy of ``prompt`` with each ``NODE.INPUT=VALUE`` set; NODE is a node id or a
    unique node title, INPUT one the node's class declares (a typo must not pass silently)."""
    prompt = _copy(prompt)
    _check_shape(prompt)
    for text in overrides:
        node, name, value = parse_override(text)
        context = f"--set {_brief(text)!r}"
        node = resolve_node(prompt, node, context)
        cls = registry.get(prompt[node]["class_type"])  # an unknown class is validation's error
        if cls is not None and name not in declared_names(cls):
            label = node_label(node, prompt[node]["class_type"], title_of(prompt, node))
            raise invalid_prompt(f"{context}: {label} has no input {name!r}",
                                 f"its inputs: {', '.join(declared_names(cls))}")
        if isinstance(value, list):
            value = {"__value__": value}  # a bare list would read as a link
        prompt[node]["inputs"][name] = value
    return prompt


def title_of(prompt: dict, node_id: str) -> str | None:
    meta = prompt[node_id].get("_meta")
    title = meta.get("title") if isinstance(meta, dict) else None
    return title if isinstance(title, str) else None


def _error(kind: str, message: str, details: str, **extra) -> dict:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def _types_match(received: str, expected) -> bool:
    if isinstance(expected, (list, tuple)):  # a combo fed by a link takes any matching value
        return True
    if "*" in (received, expected):
        return True
    return bool(set(str(received).split(",")) & set(str(expected).split(",")))


def constant(value):
    """The value of a validated constant input (list constants stay wrapped in ``__value__``)."""
    return value["__value__"] if isinstance(value, dict) and "__value__" in value else value


def _check_value(name: str, value, kind, options: dict, info, ranges: bool) -> tuple[object, dict | None]:
    """A constant converted to the declared type, or the error. ``ranges``: check min, max and the
    combo list (not for inputs the node's VALIDATE_INPUTS checks itself, as in ComfyUI)."""
    value = constant(value)
    shown = _brief(str(value))
    if isinstance(kind, str) and kind in PRIMITIVES:
        try:
            if kind in ("INT", "FLOAT") and isinstance(value, bool):
                raise TypeError("a boolean is not a number")
            if kind == "INT" and isinstance(value, float) and not value.is_integer():
                raise ValueError(f"{value} is not a whole number")
            if kind in ("INT", "FLOAT") and not isinstance(value, (int, float, str)):
                raise TypeError(f"{type(value).__name__} is not a number")
            value = PRIMITIVES[kind](value)
        except (TypeError, ValueError, OverflowError) as e:
            return value, _error("invalid_input_type", f"Failed to convert an input value to a {kind} value",
                                 f"{name}, {shown}, {_brief(str(e))}", input_name=name, input_config=info,
                                 received_value=value, exception_message=str(e))
        if kind == "FLOAT" and not math.isfinite(value) and not options.get("allow_nonfinite"):
            limits = f" from {options.get('min', '-inf')} to {options.get('max', 'inf')}"
            return value, _error("invalid_input_type", f"Value {value} is not a finite number",
                                 f"{name}, {value}, expected a number{limits}", input_name=name,
                                 input_config=info, received_value=value)
        if ranges and "min" in options and value < options["min"]:
            return value, _error("value_smaller_than_min", f"Value {value} smaller than min of {options['min']}",
                                 name, input_name=name, input_config=info, received_value=value)
        if ranges and "max" in options and value > options["max"]:
            return value, _error("value_bigger_than_max", f"Value {value} bigger than max of {options['max']}",
                                 name, input_name=name, input_config=info, received_value=value)
    elif isinstance(kind, (list, tuple)):
        hashable = isinstance(value, (str, int, float, bool))
        if ranges and (not hashable or value not in kind):
            choices = str(list(kind)) if len(kind) <= 20 else f"(list of length {len(kind)})"
            return value, _error("value_not_in_list", "Value not in list", f"{name}: '{shown}' not in {choices}",
                                 input_name=name, input_config=info, received_value=value)
    elif kind not in ("*", "COMBO"):  # IMAGE, LL_PIPELINE...: values only a node's output can be
        return value, _error("invalid_input_type", f"Input of type {kind} must be linked to a node's output",
                             f"{name}, {shown}, a constant cannot be a {kind}", input_name=name,
                             input_config=info, received_value=value)
    return value, None


def _validate_node(prompt: dict, node_id: str, registry: Registry) -> list[dict]:
    node = prompt[node_id]
    cls = registry[node["class_type"]]
    declared = cls.INPUT_TYPES()
    custom = getattr(cls, "VALIDATE_INPUTS", None)
    argspec = inspect.getfullargspec(custom) if custom else None
    custom_names = set(argspec.args) if argspec else set()
    errors = []
    received_types = {}
    # Inputs the node does not declare never reach it (ComfyUI's get_input_data skips them too).
    known = set(declared.get("required", {})) | set(declared.get("optional", {}))
    node["inputs"] = {k: v for k, v in node["inputs"].items() if k in known}
    for category in ("required", "optional"):
        for name, spec in declared.get(category, {}).items():
            kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
            info = [kind, options]
            if name not in node["inputs"]:
                if category == "required":
                    errors.append(_error("required_input_missing", "Required input is missing", name,
                                         input_name=name))
                continue
            value = node["inputs"][name]
            if isinstance(value, list):
                if (len(value) != 2 or not isinstance(value[0], (str, int)) or isinstance(value[1], bool)
                        or not isinstance(value[1], int)):
                    errors.append(_error("bad_linked_input", "Bad linked input, must be a length-2 list "
                                         "of [node_id, slot_index]", name, input_name=name,
                                         input_config=info, received_value=value))
                    continue
                source = str(value[0])
                if source not in prompt:
                    errors.append(_error("bad_linked_input", "Linked node does not exist",
                                         f"{name}: node '{source}' is not in the workflow",
                                         input_name=name, input_config=info, received_value=value))
                    continue
                returns = registry[prompt[source]["class_type"]].RETURN_TYPES
                if not 0 <= value[1] < len(returns):
                    errors.append(_error("bad_linked_input", "Linked output slot does not exist",
                                         f"{name}: node '{source}' has {len(returns)} output(s), "
                                         f"not slot {value[1]}", input_name=name, input_config=info,
                                         received_value=value))
                    continue
                if not _types_match(returns[value[1]], kind):
                    errors.append(_error("return_type_mismatch", "Return type mismatch between linked nodes",
                                         f"{name}, received_type({returns[value[1]]}) mismatch "
                                         f"input_type({kind})", input_name=name, input_config=info,
                                         received_type=returns[value[1]], linked_node=value))
                node["inputs"][name] = [source, value[1]]
                received_types[name] = returns[value[1]]
                continue
            # Inputs that VALIDATE_INPUTS takes skip the min/max/list checks, as in ComfyUI.
            ranges = name not in custom_names and not (argspec and argspec.varkw)
            value, err = _check_value(name, value, kind, options, info, ranges)
            if err:
                errors.append(err)
            else:  # a list constant stays wrapped: bare, it would read as a link
                node["inputs"][name] = {"__value__": value} if isinstance(value, list) else value
    if custom and not errors:
        errors += _custom_validation(custom, argspec, node, received_types)
    return errors


def _custom_validation(custom, spec, node: dict, received_types: dict) -> list[dict]:
    """Call the node's ``VALIDATE_INPUTS`` with the constant inputs it names (ComfyUI's rule)."""
    kwargs = {k: v for k, v in node["inputs"].items()
              if not isinstance(v, list) and (k in spec.args or spec.varkw)}
    if "input_types" in spec.args:
        kwargs["input_types"] = received_types
    try:
        result = custom(**kwargs)
    except Exception as e:  # a node's own check failing is a validation error, not a crash
        result = f"{type(e).__name__}: {e}"
    if result is True:
        return []
    return [_error("custom_validation_failed", "Custom validation failed for node",
                   f"{name}" + ("" if result is False else f" - {result}"), input_name=name)
            for name in (kwargs or {"": None})]


def _check_root(prompt) -> None:
    if not isinstance(prompt, dict):
        raise invalid_prompt("The workflow must be a JSON object of nodes "
                             "({\"id\": {\"class_type\": ..., \"inputs\": {...}}})")


def _check_shape(prompt) -> None:
    _check_root(prompt)
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            raise invalid_prompt("Cannot execute because a node is missing the class_type property.",
                                 f"Node ID '#{node_id}'")
        if not isinstance(node.setdefault("inputs", {}), dict):
            raise invalid_prompt("A node's inputs must be a JSON object", f"Node ID '#{node_id}'")


def needed_nodes(prompt: dict, outputs: list[str]) -> list[str]:
    """The output nodes and everything upstream of them, in topological order (sources first).
    Raises ``dependency_cycle`` when the graph loops."""
    order, loop = _post_order(prompt, outputs)
    if loop:
        raise WorkflowError(_error("dependency_cycle", "Dependency cycle detected", " -> ".join(loop)))
    return order


def _consumers(prompt: dict, nodes: list[str]) -> dict[str, list[str]]:
    """Node id -> the nodes among ``nodes`` that link to it."""
    consumers: dict[str, list[str]] = {}
    for node_id in nodes:
        for source in _sources(prompt, node_id):
            consumers.setdefault(source, []).append(node_id)
    return consumers


def _dependent_outputs(node_id: str, consumers: dict, outputs: list[str]) -> list[str]:
    """The outputs downstream of ``node_id`` (one walk down, not one walk up per output, so a
    graph of many outputs validates in linear time)."""
    seen, frontier = {node_id}, [node_id]
    while frontier:
        for consumer in consumers.get(frontier.pop(), ()):
            if consumer not in seen:
                seen.add(consumer)
                frontier.append(consumer)
    return [o for o in outputs if o in seen]


def validate(prompt, registry: Registry) -> tuple[dict, list[str], list[str]]:
    """Check a workflow against the node declarations. Returns the workflow with constants
    converted to their declared types, the output node ids, and the execution order."""
    prompt = _copy(prompt)
    _check_shape(prompt)
    outputs = []
    for node_id, node in prompt.items():
        cls = registry.get(node["class_type"])
        if cls is None:
            raise invalid_prompt(f"Cannot execute because node {node['class_type']} does not exist.",
                                 f"Node ID '#{node_id}'")
        if getattr(cls, "OUTPUT_NODE", False) is True:
            outputs.append(node_id)
    if not outputs:
        raise WorkflowError(_error("prompt_no_outputs", "Prompt has no outputs", ""))
    needed = _post_order(prompt, outputs)[0]  # loops are reported once the nodes are valid
    consumers = _consumers(prompt, needed)  # the graph as written, before undeclared inputs go
    file_order = {node_id: i for i, node_id in enumerate(prompt)}
    node_errors = {}
    for node_id in sorted(needed, key=file_order.__getitem__):
        errors = _validate_node(prompt, node_id, registry)
        if errors:
            node_errors[node_id] = {"errors": errors,
                                    "dependent_outputs": _dependent_outputs(node_id, consumers, outputs),
                                    "class_type": prompt[node_id]["class_type"]}
    if node_errors:
        details = "\n".join(f"{e['message']}: {e['details']}" for n in node_errors.values() for e in n["errors"])
        raise WorkflowError(_error("prompt_outputs_failed_validation", "Prompt outputs failed validation",
                                   details), node_errors, {n: title_of(prompt, n) for n in node_errors})
    return prompt, outputs, needed_nodes(prompt, outputs)
