"""Every node declaration is well-formed for ComfyUI and our runner."""

import subprocess
import sys

import pytest

from loralab import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

# Built-in ComfyUI v0.8 node ids a careless pack could shadow (ComfyUI drops such pack nodes).
COMFY_BUILTINS = {
    "KSampler", "KSamplerAdvanced", "CheckpointLoaderSimple", "CheckpointLoader", "LoraLoader",
    "LoraLoaderModelOnly", "SaveImage", "PreviewImage", "LoadImage", "VAEDecode", "VAEEncode",
    "CLIPTextEncode", "EmptyLatentImage", "TrainLoraNode", "LoadLoraModel", "SaveLoRANode",
    "LossGraphNode", "SamplerCustom", "KSamplerSelect", "BasicScheduler", "CLIPSetLastLayer",
    "UNETLoader", "VAELoader", "CLIPLoader", "ImageScale", "ImageBatch", "PrimitiveNode", "Reroute",
}
PRIMITIVE_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
NODES = sorted(NODE_CLASS_MAPPINGS.items())


def test_every_node_has_a_prefixed_id_and_display_name():
    assert set(NODE_CLASS_MAPPINGS) == set(NODE_DISPLAY_NAME_MAPPINGS)
    for node_id in NODE_CLASS_MAPPINGS:
        assert node_id.startswith("LoRALab"), node_id
        assert node_id not in COMFY_BUILTINS
        assert NODE_DISPLAY_NAME_MAPPINGS[node_id].startswith("LoRA Lab: ")


@pytest.mark.parametrize("node_id,cls", NODES)
def test_node_declaration_is_well_formed(node_id, cls):
    assert cls.CATEGORY.startswith("LoRA Lab/") and len(cls.CATEGORY) > len("LoRA Lab/")
    assert isinstance(cls.DESCRIPTION, str) and len(cls.DESCRIPTION) > 20
    assert callable(getattr(cls, cls.FUNCTION))
    assert isinstance(cls.RETURN_TYPES, tuple)
    if hasattr(cls, "RETURN_NAMES"):
        assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES)
    if hasattr(cls, "OUTPUT_TOOLTIPS"):
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES)
    assert cls.RETURN_TYPES or getattr(cls, "OUTPUT_NODE", False), "a node without outputs must be an output node"
    declared = cls.INPUT_TYPES()
    assert set(declared) <= {"required", "optional", "hidden"}
    for category in ("required", "optional"):
        for name, spec in declared.get(category, {}).items():
            kind, options = spec[0], spec[1]
            assert options.get("tooltip"), f"{node_id}.{name} has no tooltip"
            if isinstance(kind, list):
                assert kind and all(isinstance(v, str) for v in kind)
                assert options.get("default", kind[0]) in kind
            elif kind in PRIMITIVE_TYPES:
                default = options.get("default")
                assert default is not None, f"{node_id}.{name} has no default"
                if "min" in options:
                    assert options["min"] <= default
                if "max" in options:
                    assert default <= options["max"]
            else:
                assert kind.isupper() and (kind.startswith("LL_") or kind in {"IMAGE", "MASK", "LATENT"}), kind


def test_importing_the_pack_loads_no_heavy_or_comfyui_modules():
    code = ("import sys, loralab; heavy = {'torch', 'diffusers', 'transformers', 'numpy', 'PIL', 'comfy', "
            "'folder_paths'} & set(sys.modules); print(sorted(heavy)); assert not heavy")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_requirements_txt_matches_pyproject_dependencies():
    from pathlib import Path

    import loralab
    from loralab.headless.sweep import tomllib

    root = Path(loralab.__file__).parent
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    lines = [line for line in (root / "requirements.txt").read_text().splitlines()
             if line and not line.startswith("#")]
    assert lines == deps


def test_every_subpackage_is_in_pyproject_packages():
    """A non-editable install (pip install ., ComfyUI-Manager) ships only the listed packages."""
    from pathlib import Path

    import loralab
    from loralab.headless.sweep import tomllib

    root = Path(loralab.__file__).parent
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"loralab"} | {"loralab." + ".".join(p.parent.relative_to(root).parts)
                           for p in root.glob("*/**/__init__.py")
                           if p.parent.relative_to(root).parts[0] in ("nodes", "core", "headless")}
    assert found <= listed, sorted(found - listed)
