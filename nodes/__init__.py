"""Node declarations, one module per capability. Importing this package is cheap: node modules
import torch/diffusers only inside their functions, so ComfyUI starts fast."""

from . import data, io, lora, models, report, sample, score, score_model, train, world

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
for _module in (models, data, world, sample, train, lora, score, score_model, report, io):
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)


def _register_runner_hooks() -> None:
    """Tell the headless runner (headless/hooks.py) what it needs about our values and nodes."""
    from ..core.runtime import is_main_process
    from ..core.scores import ScoreTable
    from ..headless.hooks import register

    register(tables=lambda v: (list(v.keys), v.rows) if isinstance(v, ScoreTable) else None,
             encode=lambda v: {"keys": list(v.keys), "rows": v.rows} if isinstance(v, ScoreTable) else None,
             decode=lambda e: ScoreTable(tuple(e["keys"]), e["rows"]),
             disk_cacheable=lambda cls: getattr(cls, "DISK_CACHE", False) is True,
             is_main_process=is_main_process)


_register_runner_hooks()
