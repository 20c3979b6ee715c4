"""The functional core: plain, typed functions that the node declarations in ``nodes/`` call.

Nothing here imports ComfyUI; heavy libraries (torch, diffusers) are imported by the modules that
need them, and ``nodes/`` imports those modules only when a node runs, keeping start-up fast.
"""
