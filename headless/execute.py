"""Executing a validated workflow with ComfyUI's semantics.

Every input travels as a list; unless a node sets ``INPUT_IS_LIST`` its function is called once
per index up to the longest list (shorter lists repeat their last item), and outputs flagged in
``OUTPUT_IS_LIST`` are concatenated (ComfyUI's ``_map_node_over_list``/``merge_result_data``).
Node functions run inside ``torch.inference_mode()``, as in ComfyUI.

Caching is ComfyUI's classic key: class, ``IS_CHANGED`` result, constant inputs and the keys of
the linked ancestors. A node whose key is unchanged is not run again, within a run and across the
runs of a sweep (the cache keeps what the previous run used, as ComfyUI keeps the last prompt).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field

from .errors import NodeExecutionError, printable
from .graph import Registry, constant, declared_names
from .hooks import hooks


@dataclass
class NodeRun:
    node_id: str
    class_type: str
    seconds: float
    cached: bool = False
    ui: list = field(default_factory=list)


@dataclass
class RunResult:
    outputs: dict[str, list]  # node id -> one list of values per output slot
    nodes: list[NodeRun]

    @property
    def ui(self) -> dict[str, list]:
        return {n.node_id: n.ui for n in self.nodes if n.ui}

    @property
    def executed(self) -> list[str]:
        return [n.node_id for n in self.nodes if not n.cached]


class OutputCache:
    """Two generations: entries used by the current run, and by the previous one."""

    def __init__(self):
        self.current: dict[str, tuple] = {}
        self.previous: dict[str, tuple] = {}

    def begin_run(self) -> None:
        self.previous, self.current = self.current, {}

    def get(self, key: str):
        if key in self.current:
            return self.current[key]
        if key in self.previous:
            self.current[key] = self.previous[key]
            return self.current[key]
        return None

    def put(self, key: str, value: tuple) -> None:
        self.current[key] = value


def map_over_lists(func, inputs: dict[str, list], input_is_list: bool) -> list:
    if input_is_list:
        return [func(**inputs)]
    length = max((len(v) for v in inputs.values()), default=1)
    if any(len(v) == 0 for v in inputs.values()):
        return []
    return [func(**{k: v[min(i, len(v) - 1)] for k, v in inputs.items()}) for i in range(length)]


def merge_results(results: list, output_is_list: tuple[bool, ...]) -> list[list]:
    merged = []
    for slot, is_list in enumerate(output_is_list):
        merged.append([x for r in results for x in r[slot]] if is_list else [r[slot] for r in results])
    return merged


def _constants(node: dict) -> dict:
    return {k: constant(v) for k, v in node["inputs"].items() if not isinstance(v, list)}


class Executor:
    def __init__(self, registry: Registry, show_progress: bool = True, cache: OutputCache | None = None,
                 disk_cache=None):
        self.registry = registry
        self.show_progress = show_progress
        self.cache = cache if cache is not None else OutputCache()
        self.disk_cache = disk_cache  # a DiskCache for the nodes the pack marks (hooks.disk_cacheable)

    def _lookup(self, key: str | None, cls):
        if not key:
            return None
        hit = self.cache.get(key)
        if hit is None and self.disk_cache is not None and hooks().disk_cacheable(cls):
            hit = self.disk_cache.get(key)
            if hit is not None:
                self.cache.put(key, hit)
        return hit

    def _store(self, key: str | None, cls, value: tuple) -> None:
        if key:
            self.cache.put(key, value)
            if self.disk_cache is not None and hooks().disk_cacheable(cls):
                self.disk_cache.put(key, *value)

    def cache_key(self, prompt: dict, node_id: str, keys: dict[str, str]) -> str | None:
        """ComfyUI's classic cache key, or None when ``IS_CHANGED`` says "always run" (NaN).
        Output nodes are cached as in ComfyUI: one whose inputs did not change since the previous
        run does not write its files again (a sweep saves an un-swept branch's images once); their
        node id is part of the key so that two identical output nodes both write."""
        node = prompt[node_id]
        cls = self.registry[node["class_type"]]
        changed = None
        if hasattr(cls, "IS_CHANGED"):
            # ComfyUI passes IS_CHANGED the constant inputs only (linked ones are not known yet).
            wanted = declared_names(cls)
            changed = map_over_lists(cls.IS_CHANGED, {k: [v] for k, v in _constants(node).items() if k in wanted},
                                     getattr(cls, "INPUT_IS_LIST", False))
            if any(isinstance(c, float) and math.isnan(c) for c in changed):
                return None
        links = {name: [keys.get(v[0]), v[1]] for name, v in node["inputs"].items() if isinstance(v, list)}
        if any(k is None for k, _ in links.values()):
            return None
        own = [node_id] if getattr(cls, "OUTPUT_NODE", False) is True else []
        text = json.dumps([node["class_type"], repr(changed), _constants(node), links, *own], sort_keys=True,
                          default=repr)
        return hashlib.sha256(text.encode()).hexdigest()

    def _inputs(self, prompt: dict, node_id: str, outputs: dict, extra_data: dict) -> dict[str, list]:
        cls = self.registry[prompt[node_id]["class_type"]]
        values = {}
        for name, value in prompt[node_id]["inputs"].items():
            values[name] = outputs[value[0]][value[1]] if isinstance(value, list) else [constant(value)]
        hidden_values = {"PROMPT": prompt, "EXTRA_PNGINFO": extra_data.get("extra_pnginfo"),
                         "UNIQUE_ID": node_id}
        for name, kind in cls.INPUT_TYPES().get("hidden", {}).items():
            if kind in hidden_values:
                values[name] = [hidden_values[kind]]
        return values

    def _run_node(self, prompt: dict, node_id: str, outputs: dict, extra_data: dict) -> tuple[list, list]:
        import torch

        class_type = prompt[node_id]["class_type"]
        cls = self.registry[class_type]
        func = getattr(cls(), cls.FUNCTION)
        inputs = self._inputs(prompt, node_id, outputs, extra_data)
        try:
            with torch.inference_mode():
                returned = map_over_lists(func, inputs, getattr(cls, "INPUT_IS_LIST", False))
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:
            raise NodeExecutionError(node_id, class_type, prompt[node_id].get("_meta", {}).get("title"), e) from e
        results, ui = [], []
        for r in returned:
            if isinstance(r, dict):
                if "ui" in r:
                    ui.append(r["ui"])
                r = r.get("result", ())
            results.append(tuple(r))
        n_out = len(cls.RETURN_TYPES)
        output_is_list = tuple(getattr(cls, "OUTPUT_IS_LIST", (False,) * n_out))
        return (merge_results(results, output_is_list) if n_out else []), ui

    def run(self, prompt: dict, order: list[str], extra_data: dict | None = None) -> RunResult:
        """Run the nodes of ``order`` (a validated workflow's execution order)."""
        from tqdm.auto import tqdm

        extra_data = extra_data or {}
        outputs: dict[str, list] = {}
        keys: dict[str, str] = {}
        runs = []
        self.cache.begin_run()
        with tqdm(order, desc="workflow", unit="node", disable=not self.show_progress) as bar:
            for node_id in bar:
                bar.set_postfix_str(printable(f"{node_id}:{prompt[node_id]['class_type']}"))
                start = time.perf_counter()
                key = self.cache_key(prompt, node_id, keys)
                cls = self.registry[prompt[node_id]["class_type"]]
                hit = self._lookup(key, cls)
                cached = hit is not None
                if not cached:
                    hit = self._run_node(prompt, node_id, outputs, extra_data)
                    self._store(key, cls, hit)
                if key:
                    keys[node_id] = key
                outputs[node_id] = hit[0]
                runs.append(NodeRun(node_id, prompt[node_id]["class_type"], time.perf_counter() - start,
                                    cached=cached, ui=hit[1]))
        return RunResult(outputs, runs)
