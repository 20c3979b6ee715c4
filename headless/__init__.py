"""The headless runner: read a workflow, validate it as ComfyUI does, execute it, report.

It knows nodes only through their ComfyUI declarations (``INPUT_TYPES``, ``RETURN_TYPES``,
``FUNCTION``, ``OUTPUT_NODE``...), never what they compute.
"""
