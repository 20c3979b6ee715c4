"""Figures for papers: training curves (seed 002's smoothed loss curves, seed 004's loss and
learning-rate curves), a scatter with its Pareto front (seed 004's content vs style), bars with
confidence intervals and radar charts of Summarize's tables, and a metric against an axis (steps,
CFG, rank). Drawn with matplotlib's object API on an Agg canvas so that the global pyplot state of
a host process (ComfyUI) is never touched; every figure is exactly ``width`` x ``height`` pixels."""

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


def training_curves(runs: list[tuple], smoothing: float = 0.9, log_loss: bool = False, width: int = 1000,
                    height: int = 420) -> np.ndarray:
    """``runs``: (name, losses, learning rates[, validation losses, grad norms]) per LoRA; the
    validation losses are (step, loss, EMA weights' loss or nan) rows. Left panel: raw loss (faint),
    its EMA, and the validation loss as markers (hollow: the EMA weights'); then the learning rate
    per step, and the grad norm per step (before clipping) when any run has one. Returns an RGB
    image ``[height, width, 3]`` in 0..1."""
    runs = [tuple(run) + ([], [])[: 5 - len(run)] for run in runs]
    norms = any(run[4] for run in runs)
    figure = _figure(width, height)
    axes = figure.subplots(1, 3 if norms else 2, gridspec_kw={"width_ratios": [3, 2, 2] if norms else [3, 2]})
    loss_ax, lr_ax = axes[0], axes[1]
    for index, (name, losses, lrs, val_losses, grad_norms) in enumerate(runs):
        colour = f"C{index % 10}"
        steps = np.arange(1, len(losses) + 1)
        loss_ax.plot(steps, losses, color=colour, alpha=0.25, linewidth=0.8)
        loss_ax.plot(steps, ema(losses, smoothing), color=colour, linewidth=1.8, label=name)
        if val_losses:
            rows = np.asarray(val_losses, dtype=float).reshape(-1, 3)
            loss_ax.plot(rows[:, 0], rows[:, 1], "o--", color=colour, markersize=4, linewidth=1,
                         label=f"{name} (validation)")
            if not np.isnan(rows[:, 2]).all():
                loss_ax.plot(rows[:, 0], rows[:, 2], "o:", color=colour, markerfacecolor="none", markersize=5,
                             linewidth=1, label=f"{name} (validation, EMA)")
        lr_ax.plot(np.arange(1, len(lrs) + 1), lrs, color=colour, linewidth=1.5, label=name)
        if norms and grad_norms:
            axes[2].plot(np.arange(1, len(grad_norms) + 1), grad_norms, color=colour, linewidth=1.2, label=name)
    loss_ax.set(xlabel="step", ylabel="loss", title=f"training loss (EMA {smoothing:g})")
    if log_loss:
        loss_ax.set_yscale("log")
    lr_ax.set(xlabel="step", ylabel="learning rate", title="learning rate")
    if norms:
        axes[2].set(xlabel="step", ylabel="gradient norm", title="grad norm (before clipping)")
    for ax in axes:
        ax.grid(alpha=0.3)
    loss_ax.legend(fontsize=8)
    return _pixels(figure)


# --- Shared ----------------------------------------------------------------------------------------

DPI = 100


def _figure(width: int, height: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not (64 <= width <= 8192 and 64 <= height <= 8192):
        raise ValueError(f"a figure of {width} x {height} pixels; each side must be 64 to 8192")
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _pixels(figure) -> np.ndarray:
    """RGB ``[height, width, 3]`` in 0..1; tight_layout never resizes the canvas, only the axes."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "tight_layout not applied" on crowded figures: still drawn
        figure.tight_layout()
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba(), dtype=np.float32)[..., :3] / 255.0


def label_of(row: dict, columns) -> str:
    from .grid import label_text

    return " · ".join(label_text(row.get(c)) for c in columns)


def _colours(values) -> dict:
    from .grid import ordered_values

    return {v: f"C{i % 10}" for i, v in enumerate(ordered_values(values))}


# --- Scatter with Pareto front ---------------------------------------------------------------------

def scatter(points: list[dict], x: str, y: str, front: list[bool | None], colour_by: str = "",
            labels: list[str] | None = None, title: str = "", width: int = 800, height: int = 550) -> np.ndarray:
    """One marker per point (``points``: rows with ``x`` and ``y``), coloured by the categories of
    ``colour_by``; the points with ``front[i]`` True ringed, joined in x order and labelled."""
    figure = _figure(width, height)
    ax = figure.subplots()
    colours = _colours([p.get(colour_by) for p in points]) if colour_by else {}
    for value, colour in colours.items() or [(None, "C0")]:
        chosen = [p for p in points if not colours or p.get(colour_by) == value]
        ax.scatter([p[x] for p in chosen], [p[y] for p in chosen], color=colour, s=36, alpha=0.85,
                   label=None if value is None else label_of({colour_by: value}, [colour_by]), zorder=2)
    on = sorted((i for i, f in enumerate(front) if f), key=lambda i: (points[i][x], points[i][y]))
    if on:
        ax.plot([points[i][x] for i in on], [points[i][y] for i in on], color="black", linewidth=1.2,
                linestyle="--", zorder=1, label="Pareto front")
        ax.scatter([points[i][x] for i in on], [points[i][y] for i in on], s=140, facecolors="none",
                   edgecolors="black", linewidths=1.4, zorder=3)
        if labels:
            _annotate_once(ax, [(points[i][x], points[i][y]) for i in on], [labels[i] for i in on])
    ax.set(xlabel=x, ylabel=y, title=title or f"{y} vs {x}")
    ax.grid(alpha=0.3)
    if colours or on:
        ax.legend(fontsize=8, loc="best")
    return _pixels(figure)


def _annotate_once(ax, xy: list[tuple], labels: list[str], radius_px: float = 10.0) -> list[str]:
    """Label points so that labels do not overlap where points (nearly) coincide: points within
    ``radius_px`` pixels of a group's first point share one label, their names joined. Returns
    the texts written."""
    ax.autoscale_view()
    pixels = ax.transData.transform(np.asarray(xy, dtype=float))
    groups: list[list[int]] = []
    for i, p in enumerate(pixels):
        home = next((g for g in groups if np.hypot(*(pixels[g[0]] - p)) <= radius_px), None)
        if home is None:
            groups.append([i])
        else:
            home.append(i)
    texts = [", ".join(dict.fromkeys(labels[i] for i in g)) for g in groups]
    for g, text in zip(groups, texts, strict=True):
        ax.annotate(text, xy[g[0]], textcoords="offset points", xytext=(6, 6), fontsize=8)
    return texts


# --- Summaries: bars and radar ---------------------------------------------------------------------

def bars(summary: list[dict], group_columns, metrics, title: str = "", width: int = 800,
         height: int = 450) -> np.ndarray:
    """One panel per metric: a bar per group at its ``mean``, the error bar from ``ci_low`` to
    ``ci_high`` (Summarize's rows: group columns, ``metric``, ``mean``, ``ci_low``, ``ci_high``)."""
    figure = _figure(width, height)
    axes = np.atleast_1d(figure.subplots(1, len(metrics), squeeze=False)[0])
    groups = list(dict.fromkeys(tuple(r.get(c) for c in group_columns) for r in summary))
    names = [label_of(dict(zip(group_columns, g, strict=True)), group_columns) or "all" for g in groups]
    for ax, metric in zip(axes, metrics, strict=True):
        rows = {tuple(r.get(c) for c in group_columns): r for r in summary if r["metric"] == metric}
        means = [rows[g]["mean"] if g in rows else np.nan for g in groups]
        low = [m - rows[g]["ci_low"] if g in rows and rows[g].get("ci_low") is not None else 0
               for g, m in zip(groups, means, strict=True)]
        high = [rows[g]["ci_high"] - m if g in rows and rows[g].get("ci_high") is not None else 0
                for g, m in zip(groups, means, strict=True)]
        ax.bar(range(len(groups)), means, yerr=[low, high], capsize=4,
               color=[f"C{i % 10}" for i in range(len(groups))], alpha=0.85)
        ax.set_xticks(range(len(groups)), names, rotation=30 if len(groups) > 3 else 0, ha="right"
                      if len(groups) > 3 else "center", fontsize=8)
        ax.set_title(metric, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    if title:
        figure.suptitle(title)
    return _pixels(figure)


def radar(summary: list[dict], group_columns, metrics, title: str = "", width: int = 600,
          height: int = 600) -> np.ndarray:
    """One polygon per group over the metrics' means, each metric scaled min-max across the groups
    (0 = the lowest group, 1 = the highest; a metric equal in every group sits at 0.5)."""
    figure = _figure(width, height)
    ax = figure.add_subplot(projection="polar")
    groups = list(dict.fromkeys(tuple(r.get(c) for c in group_columns) for r in summary))
    means = np.full((len(groups), len(metrics)), np.nan)
    for r in summary:
        if r["metric"] in metrics:
            means[groups.index(tuple(r.get(c) for c in group_columns)), list(metrics).index(r["metric"])] = r["mean"]
    low, high = np.nanmin(means, 0), np.nanmax(means, 0)
    span = np.where(high > low, high - low, 1.0)
    scaled = np.where(high > low, (means - low) / span, 0.5)
    angles = np.linspace(0, 2 * np.pi, len(metrics), endpoint=False)
    for i, g in enumerate(groups):
        values = np.nan_to_num(scaled[i])
        ax.plot(np.r_[angles, angles[:1]], np.r_[values, values[:1]], color=f"C{i % 10}", linewidth=1.5,
                label=label_of(dict(zip(group_columns, g, strict=True)), group_columns) or "all")
        ax.fill(np.r_[angles, angles[:1]], np.r_[values, values[:1]], color=f"C{i % 10}", alpha=0.08)
    ax.set_xticks(angles, list(metrics), fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_yticks([0.25, 0.5, 0.75], ["", "", ""])
    ax.set_title(title or "metrics scaled min-max across groups", fontsize=10, pad=16)
    ax.legend(fontsize=8, loc="upper right", bbox_to_anchor=(1.25, 1.1))
    return _pixels(figure)


# --- A metric against an axis ----------------------------------------------------------------------

def line(rows: list[dict], axis: str, metric: str, group_columns=(), title: str = "", width: int = 800,
         height: int = 450) -> np.ndarray:
    """Per group, the mean of ``metric`` at each value of ``axis`` (sorted), with a band of ± one
    sample standard deviation where a point has several rows."""
    figure = _figure(width, height)
    ax = figure.subplots()
    groups: dict[tuple, dict] = {}
    for r in rows:
        value, x = r.get(metric), r.get(axis)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and x is not None:
            groups.setdefault(tuple(r.get(c) for c in group_columns), {}).setdefault(x, []).append(float(value))
    for i, (g, by_x) in enumerate(groups.items()):
        xs = sorted(by_x)
        mean = np.array([np.mean(by_x[v]) for v in xs])
        std = np.array([np.std(by_x[v], ddof=1) if len(by_x[v]) > 1 else 0.0 for v in xs])
        positions = xs if all(isinstance(v, (int, float)) for v in xs) else range(len(xs))
        name = label_of(dict(zip(group_columns, g, strict=True)), group_columns) or metric
        ax.plot(positions, mean, marker="o", color=f"C{i % 10}", label=name)
        ax.fill_between(positions, mean - std, mean + std, color=f"C{i % 10}", alpha=0.15)
        if positions is not xs:
            ax.set_xticks(list(positions), [str(v) for v in xs])
    ax.set(xlabel=axis, ylabel=metric, title=title or f"{metric} vs {axis}")
    ax.grid(alpha=0.3)
    if group_columns:
        ax.legend(fontsize=8)
    return _pixels(figure)
