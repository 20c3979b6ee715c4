"""Training-curve figures: the EMA against its closed forms, the node's figure and its errors."""

import numpy as np
import pytest
import torch

from loralab.core.lab_lora import LabLoRA
from loralab.core.plots import ema, training_curves
from loralab.nodes.report import LoRALabPlotTrainingCurves


def test_ema_follows_its_closed_forms():
    assert np.allclose(ema([2.0] * 10, 0.9), 2.0)  # a constant stays constant
    a = 0.8
    step = ema([0.0] + [1.0] * 20, a)  # a unit step: m_t = 1 − a^t, shown as m_t / (1 − a^{t+1})
    assert np.allclose(step, [0.0] + [(1 - a ** t) / (1 - a ** (t + 1)) for t in range(1, 21)])
    assert ema([5.0, 1.0], a)[0] == 5.0  # debiased: the first point is the first value
    x = np.random.default_rng(0).normal(size=50)
    assert np.allclose(ema(x, 0.0), x)
    with pytest.raises(ValueError, match="smoothing"):
        ema(x, 1.0)


def test_the_figure_has_one_curve_colour_per_lora_and_the_node_checks_its_inputs(output_dir):
    losses = list(np.linspace(1.0, 0.1, 40))
    one = training_curves([("a", losses, [1e-4] * 40)], width=600, height=300)
    assert one.shape == (300, 600, 3) and 0 <= one.min() and one.max() <= 1
    two = training_curves([("a", losses, [1e-4] * 40), ("b", losses[::-1], [2e-4] * 40)], width=600, height=300)
    orange = np.array([1.0, 127 / 255, 14 / 255])  # matplotlib's C1, the second run
    assert not np.isclose(one, orange, atol=0.02).all(-1).any() and np.isclose(two, orange, atol=0.02).all(-1).any()

    trained = LabLoRA({}, 4, 4.0, "sd1", name="x", losses=losses, lrs=[1e-4] * 40)
    out = LoRALabPlotTrainingCurves().plot(trained, 0.9, True)
    (image,) = out["result"]
    assert image.shape[0] == 1 and image.shape[-1] == 3 and image.dtype == torch.float32
    assert out["ui"]["images"]
    with pytest.raises(ValueError, match="input 'lora_2': LoRA 'y' has no training record"):
        LoRALabPlotTrainingCurves().plot(trained, 0.9, False, lora_2=LabLoRA({}, 4, 4.0, "sd1", name="y"))


def test_validation_losses_and_grad_norms_are_drawn():
    losses = list(np.linspace(1.0, 0.1, 40))
    plain = training_curves([("a", losses, [1e-4] * 40)], width=600, height=300)
    validated = training_curves([("a", losses, [1e-4] * 40, [(0, 1.2, float("nan")), (40, 0.3, 0.25)], [])],
                                width=600, height=300)
    changed = ~np.isclose(plain, validated, atol=0.02).all(-1)
    assert changed[:, :300].any(), "the validation markers are on the loss panel"
    normed = training_curves([("a", losses, [1e-4] * 40, [], list(np.linspace(3, 1, 40)))], width=600, height=300)
    # a third panel at the right: the layout changes there, and its title is drawn
    assert (~np.isclose(plain[:, 450:], normed[:, 450:], atol=0.02).all(-1)).sum() > 1000
