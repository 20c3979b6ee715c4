"""Figures for papers: training curves of one or more LoRAs (seed 002's smoothed loss curves, seed
004's loss and learning-rate curves), drawn with matplotlib's object API on an Agg canvas so that
the global pyplot state of a host process (ComfyUI) is never touched."""

from __future__ import annotations

import numpy as np


def ema(values, smoothing: float) -> np.ndarray:
    """Debiased exponential moving average, as TensorBoard smooths scalars: m_t = a·m_{t−1} + (1 − a)·x_t
    with m_{−1} = 0, shown as m_t / (1 − a^{t+1}) so the start is not pulled towards 0 (a =
    ``smoothing``; 0 = raw)."""
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing {smoothing} must be in [0, 1)")
    out, m = np.empty(len(values)), 0.0
    for i, x in enumerate(values):
        m = smoothing * m + (1 - smoothing) * x
        out[i] = m / (1 - smoothing ** (i + 1))
    return out


def training_curves(runs: list[tuple[str, list[float], list[float]]], smoothing: float = 0.9,
                    log_loss: bool = False, width: int = 1000, height: int = 420) -> np.ndarray:
    """``runs``: (name, losses, learning rates) per LoRA. Left panel: raw loss (faint) and its EMA
    per run; right panel: the learning rate per step. Returns an RGB image ``[height, width, 3]`` in
    0..1."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = 100
    figure = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(figure)
    loss_ax, lr_ax = figure.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    for index, (name, losses, lrs) in enumerate(runs):
        colour = f"C{index % 10}"
        steps = np.arange(1, len(losses) + 1)
        loss_ax.plot(steps, losses, color=colour, alpha=0.25, linewidth=0.8)
        loss_ax.plot(steps, ema(losses, smoothing), color=colour, linewidth=1.8, label=name)
        lr_ax.plot(np.arange(1, len(lrs) + 1), lrs, color=colour, linewidth=1.5, label=name)
    loss_ax.set(xlabel="step", ylabel="loss", title=f"training loss (EMA {smoothing:g})")
    if log_loss:
        loss_ax.set_yscale("log")
    lr_ax.set(xlabel="step", ylabel="learning rate", title="learning rate")
    for ax in (loss_ax, lr_ax):
        ax.grid(alpha=0.3)
    loss_ax.legend(fontsize=8)
    figure.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba(), dtype=np.float32)[..., :3] / 255.0
