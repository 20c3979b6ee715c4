"""Executing a validated workflow with ComfyUI's semantics.

Every input travels as a list; unless a node sets ``INPUT_IS_LIST`` its function is called once
per index up to the longest list (shorter lists repeat their last item), and outputs flagged in
``OUTPUT_IS_LIST`` are concatenated (ComfyUI's ``_map_node_over_list``/``merge_result_data``).
Node functions run inside ``torch.inference_mode()``, as in ComfyUI.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .errors import NodeExecutionError
from .graph import Registry


@dataclass
class NodeRun:
    node_id: str
    class_type: str
    seconds: float
    ui: list = field(default_factory=list)


@dataclass
class RunResult:
    outputs: dict[str, list]  # node id -> one list of values per output slot
    nodes: list[NodeRun]

    @property
    def ui(self) -> dict[str, list]:
        return {n.node_id: n.ui for n in self.nodes if n.ui}


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


class Executor:
    def __init__(self, registry: Registry, show_progress: bool = True):
        self.registry = registry
        self.show_progress = show_progress

    def _inputs(self, prompt: dict, node_id: str, outputs: dict, extra_data: dict) -> dict[str, list]:
        cls = self.registry[prompt[node_id]["class_type"]]
        values = {}
        for name, value in prompt[node_id]["inputs"].items():
            values[name] = outputs[value[0]][value[1]] if isinstance(value, list) else [value]
        hidden_values = {"PROMPT": prompt, "EXTRA_PNGINFO": extra_data.get("extra_pnginfo"),
                         "UNIQUE_ID": node_id}
        for name, kind in cls.INPUT_TYPES().get("hidden", {}).items():
            if kind in hidden_values:
                values[name] = [hidden_values[kind]]
        return values

    def _run_node(self, prompt: dict, node_id: str, outputs: dict, extra_data: dict) -> NodeRun:
        import torch

        class_type = prompt[node_id]["class_type"]
        cls = self.registry[class_type]
        func = getattr(cls(), cls.FUNCTION)
        inputs = self._inputs(prompt, node_id, outputs, extra_data)
        start = time.perf_counter()
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
        outputs[node_id] = merge_results(results, output_is_list) if n_out else []
        return NodeRun(node_id, class_type, time.perf_counter() - start, ui)

    def run(self, prompt: dict, order: list[str], extra_data: dict | None = None) -> RunResult:
        """Run the nodes of ``order`` (a validated workflow's execution order)."""
        from tqdm.auto import tqdm

        extra_data = extra_data or {}
        outputs: dict[str, list] = {}
        runs = []
        with tqdm(order, desc="workflow", unit="node", disable=not self.show_progress) as bar:
            for node_id in bar:
                bar.set_postfix_str(f"{node_id}:{prompt[node_id]['class_type']}")
                runs.append(self._run_node(prompt, node_id, outputs, extra_data))
        return RunResult(outputs, runs)
