"""Statistics over ``LL_SCORES`` tables: combine, summarize, compare with a baseline, Pareto fronts
(previews and files of a table: ``score_report``).

Conventions shared by every function:

- A *metric* is a non-key column whose values are numbers (int or float, not bool). By default the
  descriptor columns ``DESCRIPTOR_COLUMNS`` (the image index, image size, LoRA rank/alpha, img2img
  strength) are not metrics; name them explicitly to summarize them anyway.
- A missing value (``None``, or a column a row does not have, as an outer join leaves) is skipped
  and the ``n`` beside each statistic counts the values used. Numbers are used as they are, so an
  ``inf`` (``psnr_db`` of identical images) or ``nan`` shows in the result instead of vanishing.
- Groups and metrics come out in order of first appearance; results are deterministic (the
  bootstrap draws from ``numpy.random.default_rng(seed)``, fresh for every group and metric).
"""

from __future__ import annotations

import warnings

import numpy as np

from .scores import ScoreTable

DESCRIPTOR_COLUMNS = ("image", "width", "height", "rank", "alpha", "strength")
PER_SAMPLE_KEYS = ("prompt", "seed", "image")  # what `auto` grouping leaves out: one row per configuration
JOINS = ("outer", "inner", "concat")
TESTS = ("paired", "welch")
BETTER = ("higher", "lower")
BOOTSTRAP_INDEX_BUDGET = 1 << 21  # resample indices drawn per chunk: 16 MB, however large the group


class StatsError(ValueError):
    """A bad argument; ``input`` names it (the node input of the same name)."""

    def __init__(self, input: str, message: str):
        super().__init__(message)
        self.input = input


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require(table: ScoreTable, names, input: str) -> None:
    columns = table.columns
    for name in names:
        if name not in columns:
            raise StatsError(input, f"column {name!r} is not in the table; available: {', '.join(columns) or 'none'}")


def metric_columns(table: ScoreTable, metrics=None, exclude=()) -> list[str]:
    """The named ``metrics`` (checked to exist and be numeric), else every numeric non-key column
    that is neither a descriptor nor in ``exclude``."""
    numeric = [c for c in table.columns if any(is_number(r.get(c)) for r in table.rows)
               and all(r.get(c) is None or is_number(r.get(c)) for r in table.rows)]
    if metrics:
        _require(table, metrics, "metrics")
        for name in metrics:
            if name not in numeric:
                raise StatsError("metrics", f"column {name!r} does not hold numbers; numeric columns: "
                                 f"{', '.join(numeric) or 'none'}")
        return list(metrics)
    return [c for c in numeric if c not in table.keys and c not in DESCRIPTOR_COLUMNS and c not in exclude]


def auto_group(table: ScoreTable) -> tuple[str, ...]:
    """Every key column except the per-sample ones: one group per configuration (and category)."""
    return tuple(k for k in table.keys if k not in PER_SAMPLE_KEYS)


def _ordered_groups(rows, columns) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(c) for c in columns), []).append(row)
    return groups


def _numbers(rows, column) -> np.ndarray:
    return np.array([r[column] for r in rows if is_number(r.get(column))], dtype=np.float64)


# --- Combine ---------------------------------------------------------------------------------------

def combine(tables, how: str = "outer", labels=None) -> ScoreTable:
    """Put several tables into one.

    ``concat``: the tables must have the same key columns (in any order); their rows follow one
    another (e.g. the scores of two models to compare).

    ``outer`` / ``inner``: an SQL join, left to right, each table on the key columns it shares with
    the tables before it (every pair of matching rows makes one row, so a one-row LoRA cost table
    attaches to every image row of that model). Inner keeps matched rows only; outer also keeps the
    unmatched rows of both sides (left ones in order, then right ones), with ``None`` for what the
    other side would have given. The result's keys are the union of all keys.

    A value column in several tables is kept once when they agree wherever they meet (``None``
    agrees with anything: the per-image ``image`` index of every metric table). When they disagree
    anywhere (``ssim`` against two different references), each copy is named ``<column>_<label>``
    with its table's label (default ``1``, ``2``, ... in order).

    Every output row has every column (``None`` where missing)."""
    tables = list(tables)
    labels = [str(i + 1) for i in range(len(tables))] if labels is None else [str(x) for x in labels]
    if not tables:
        raise StatsError("scores", "no table to combine")
    if how not in JOINS:
        raise StatsError("how", f"{how!r} is not one of {', '.join(JOINS)}")
    if how == "concat":
        return _concat(tables, labels)
    keys, matches = list(tables[0].keys), [(i,) for i in range(len(tables[0]))]
    for t, table in enumerate(tables[1:], start=1):
        on = [k for k in keys if k in table.keys]
        if not on:
            raise StatsError(f"scores_{labels[t]}", f"table {labels[t]} (keys {', '.join(table.keys) or 'none'}) "
                             f"shares no key column with the tables before it (keys {', '.join(keys)}); "
                             "give metric nodes the 'image_scores' table, or use concat for tables of the same keys")
        index: dict[tuple, list[int]] = {}
        for j, row in enumerate(table.rows):
            index.setdefault(tuple(row.get(k) for k in on), []).append(j)
        joined, used = [], set()
        for match in matches:
            found = index.get(tuple(_key_value(tables, match, k) for k in on), [])
            joined += [(*match, j) for j in found]
            used.update(found)
            if not found and how == "outer":
                joined.append((*match, None))
        if how == "outer":
            joined += [(None,) * t + (j,) for j in range(len(table)) if j not in used]
        keys += [k for k in table.keys if k not in keys]
        matches = joined
    return ScoreTable(tuple(keys), _join_rows(tables, labels, keys, matches))


def _key_value(tables, match, key):
    return next((tables[t].rows[j].get(key) for t, j in enumerate(match)
                 if j is not None and key in tables[t].keys and tables[t].rows[j].get(key) is not None), None)


def _join_rows(tables, labels, keys, matches) -> list[dict]:
    owners: dict[str, list[int]] = {}
    for t, table in enumerate(tables):
        for column in table.columns:
            if column not in table.keys:
                if column in keys:
                    raise StatsError(f"scores_{labels[t]}", f"column {column!r} is a value in table {labels[t]} "
                                     "but a key in another; rename it before combining")
                owners.setdefault(column, []).append(t)

    def given(match, t, column):
        return None if match[t] is None else tables[t].rows[match[t]].get(column)

    names: dict[tuple[int, str], str] = {}
    for column, ts in owners.items():
        agree = all(len({repr(v) for t in ts if (v := given(m, t, column)) is not None}) <= 1 for m in matches)
        for t in ts:
            names[t, column] = column if agree else f"{column}_{labels[t]}"
            if not agree and names[t, column] in {*keys, *owners}:
                raise StatsError(f"scores_{labels[t]}", f"column {column!r} differs between tables and its "
                                 f"labelled name {names[t, column]!r} is taken; rename one of them")
    rows = []
    for match in matches:
        row = {k: _key_value(tables, match, k) for k in keys}
        row.update({name: None for name in names.values()})
        for t, j in enumerate(match):
            if j is not None:
                for column, value in tables[t].rows[j].items():
                    if column not in tables[t].keys and value is not None:
                        row[names[t, column]] = value
        rows.append(row)
    return rows


def _concat(tables, labels) -> ScoreTable:
    keys = tables[0].keys
    for label, table in zip(labels, tables, strict=True):
        if set(table.keys) != set(keys):
            raise StatsError(f"scores_{label}", f"concat needs tables with the same keys: table {labels[0]} has "
                             f"{', '.join(keys)}, table {label} has {', '.join(table.keys) or 'none'}; "
                             "use an outer or inner join instead")
    columns = ScoreTable(keys, [r for t in tables for r in t.rows]).columns
    return ScoreTable(tuple(keys), [{c: r.get(c) for c in columns} for t in tables for r in t.rows])


# --- Summarize -------------------------------------------------------------------------------------

def bootstrap_mean_ci(values, resamples: int = 10000, confidence: float = 0.95, seed: int = 0):
    """Percentile bootstrap confidence interval of the mean (Efron & Tibshirani 1993, ch. 13): the
    ``(1-confidence)/2`` and ``(1+confidence)/2`` quantiles (linear interpolation, as
    ``scipy.stats.bootstrap(method='percentile')``) of the means of ``resamples`` samples drawn with
    replacement. Vectorised, in chunks so memory stays bounded for large groups.

    1-D ``values`` give ``(low, high)``. 2-D values (several metrics of the same rows) are resampled
    with the same draws — each row's interval is exactly what a 1-D call with the same seed gives —
    and give arrays ``(lows, highs)``; the draws, most of the cost, are made once."""
    x = np.asarray(values, dtype=np.float64)
    samples = np.atleast_2d(x)
    n = samples.shape[1]
    rng = np.random.default_rng(seed)
    means = np.empty((len(samples), resamples))
    chunk = max(1, BOOTSTRAP_INDEX_BUDGET // n)  # depends on n only, so the draws do too
    for start in range(0, resamples, chunk):
        stop = min(start + chunk, resamples)
        index = rng.integers(0, n, size=(stop - start, n))
        for row, sample in zip(means, samples, strict=True):
            row[start:stop] = sample[index].mean(axis=1)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2], axis=1)
    return (float(low[0]), float(high[0])) if x.ndim == 1 else (low, high)


def _intervals(samples: dict, resamples: int, confidence: float, seed: int) -> dict:
    """Each metric's interval; metrics with the same number of values share the draws."""
    by_size: dict[int, list[str]] = {}
    for metric, x in samples.items():
        by_size.setdefault(len(x), []).append(metric)
    intervals = {}
    for n, metrics in by_size.items():
        if n > 1:
            low, high = bootstrap_mean_ci(np.stack([samples[m] for m in metrics]), resamples, confidence, seed)
            intervals.update({m: (float(a), float(b)) for m, a, b in zip(metrics, low, high, strict=True)})
    return intervals


def summarize(table: ScoreTable, group_by=None, metrics=None, resamples: int = 10000,
              confidence: float = 0.95, seed: int = 0) -> ScoreTable:
    """One row per group and metric: ``n``, ``mean``, ``std`` (sample, ddof 1) and the percentile
    bootstrap CI of the mean (``ci_low``, ``ci_high``). ``group_by=None`` groups by
    :func:`auto_group`; ``()`` puts all rows in one group. ``std`` and the CI need n >= 2 (else
    ``None``); a metric without values in a group gives no row. Keys: ``(*group_by, "metric")``."""
    group_by = auto_group(table) if group_by is None else tuple(group_by)
    _require(table, group_by, "group_by")
    if "metric" in group_by:
        raise StatsError("group_by", "a column named 'metric' cannot be grouped by: the output names its metrics so")
    if not 0 < confidence < 1:
        raise StatsError("confidence", f"got {confidence}; give a level between 0 and 1, e.g. 0.95")
    if resamples < 1:
        raise StatsError("resamples", f"got {resamples}; give at least 1 (thousands for a stable interval)")
    columns = metric_columns(table, metrics, exclude=group_by)
    rows = []
    for group, members in _ordered_groups(table.rows, group_by).items():
        samples = {m: x for m in columns if len(x := _numbers(members, m))}
        intervals = _intervals(samples, resamples, confidence, seed)
        for metric, x in samples.items():
            low, high = intervals.get(metric, (None, None))
            rows.append({**dict(zip(group_by, group, strict=True)), "metric": metric, "n": len(x),
                         "mean": float(x.mean()), "std": float(x.std(ddof=1)) if len(x) > 1 else None,
                         "ci_low": low, "ci_high": high})
    return ScoreTable((*group_by, "metric"), rows)


# --- Compare ---------------------------------------------------------------------------------------

def same_value(value, wanted) -> bool:
    """``value`` equals ``wanted``, also when ``wanted`` is the text a user typed ("20" for 20, "7.5")."""
    if value == wanted:
        return True
    if isinstance(wanted, str) and is_number(value):
        try:
            return float(wanted) == float(value)
        except ValueError:
            return False
    return str(value) == str(wanted)


def _unique_by(rows, columns, what: str) -> dict[tuple, dict]:
    index = {}
    for row in rows:
        key = tuple(row.get(c) for c in columns)
        if key in index:
            shown = ", ".join(f"{c}={v!r}" for c, v in zip(columns, key, strict=True)) or "(no pair_on columns)"
            raise StatsError("pair_on", f"two {what} rows share {shown}, so a pair is ambiguous; add a column that "
                             "tells them apart (e.g. seed or image) to pair_on, or use the Welch test")
        index[key] = row
    return index


def _ttest(a, b, paired: bool):
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return None, None
    with warnings.catch_warnings():  # constant differences: scipy warns and returns nan/inf, which we report
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_rel(a, b) if paired else stats.ttest_ind(a, b, equal_var=False)
    return float(result.statistic), float(result.pvalue)


def _effect(base: np.ndarray, variant: np.ndarray, paired: bool) -> dict:
    mean_base, mean_variant = float(base.mean()), float(variant.mean())
    t, p = _ttest(variant, base, paired)
    return {"mean_baseline": mean_base, "mean_variant": mean_variant,
            "mean_diff": float((variant - base).mean()) if paired else mean_variant - mean_base,
            "pct_change": 100 * (mean_variant - mean_base) / abs(mean_base) if mean_base else None,
            "t": t, "p_value": p}


def _paired_samples(members, base_index, base_members, pair_on, what, metrics) -> dict:
    """Per metric: counts, baseline values, variant values of the complete pairs."""
    mine = _unique_by(members, pair_on, what)
    pairs = [(base_index[k], row) for k, row in mine.items() if k in base_index]
    unpaired = len(mine) - len(pairs) + sum(tuple(b.get(c) for c in pair_on) not in mine for b in base_members)
    samples = {}
    for metric in metrics:
        used = [(b[metric], v[metric]) for b, v in pairs if is_number(b.get(metric)) and is_number(v.get(metric))]
        if used:
            base, var = np.array(used, dtype=np.float64).T
            samples[metric] = ({"n_pairs": len(used), "unpaired": unpaired}, base, var)
    return samples


def _group_samples(members, base_members, metrics) -> dict:
    samples = {}
    for metric in metrics:
        base, var = _numbers(base_members, metric), _numbers(members, metric)
        if len(base) and len(var):
            samples[metric] = ({"n_baseline": len(base), "n_variant": len(var)}, base, var)
    return samples


def compare(table: ScoreTable, column: str, baseline, pair_on=None, group_by=(), metrics=None,
            test: str = "paired") -> ScoreTable:
    """Each value of ``column`` against the baseline rows (``column == baseline``), per metric and
    per ``group_by`` group.

    ``paired``: every row is paired with the baseline row that has the same ``pair_on`` values
    (default: every key column but ``column``; by value, not by row order). Rows without a partner
    are dropped and counted in ``unpaired`` (variant rows of the group without a baseline row plus
    baseline rows of the group without a variant row); a pair missing a metric value is left out of
    that metric's ``n_pairs``. Two rows with the same pairing values on one side are an error.
    Columns: ``n_pairs``, ``unpaired``, ``mean_baseline``, ``mean_variant`` (over the pairs),
    ``mean_diff`` (mean of variant − baseline), ``pct_change`` = 100·(mean_variant −
    mean_baseline)/|mean_baseline| (``None`` for a zero baseline), ``t`` and ``p_value`` of
    ``scipy.stats.ttest_rel(variant, baseline)`` (two-sided; needs 2 pairs).

    ``welch``: unpaired, all rows of the group on each side; ``n_baseline``, ``n_variant`` and
    Welch's t-test (``ttest_ind(variant, baseline, equal_var=False)``) instead.

    Keys: ``(column, *group_by, "metric")``; ``baseline`` names the baseline value in every row."""
    _require(table, [column], "column")
    group_by = tuple(group_by)
    _require(table, group_by, "group_by")
    if column in group_by or "metric" in group_by:
        raise StatsError("group_by", f"group_by cannot hold {column!r} (the compared column) or 'metric'")
    if test not in TESTS:
        raise StatsError("test", f"{test!r} is not one of {', '.join(TESTS)}")
    pair_on = tuple(k for k in table.keys if k != column) if pair_on is None else tuple(pair_on)
    _require(table, pair_on, "pair_on")
    if column in pair_on:
        raise StatsError("pair_on", f"pair_on cannot hold {column!r}, the column whose values are compared")
    base_rows = [r for r in table.rows if same_value(r.get(column), baseline)]
    values = list(dict.fromkeys(r.get(column) for r in table.rows))
    if not base_rows:
        raise StatsError("baseline", f"no row has {column} = {baseline!r}; values in {column!r}: "
                         f"{', '.join(map(repr, values[:20]))}")
    base_value = base_rows[0][column]
    variants = [v for v in values if not same_value(v, baseline)]
    if not variants:
        raise StatsError("column", f"every row has {column} = {baseline!r}; there is nothing to compare with it")
    paired = test == "paired"
    columns = metric_columns(table, metrics, exclude={column, *group_by, *(pair_on if paired else ())})
    base_groups = _ordered_groups(base_rows, group_by)
    base_index = _unique_by(base_rows, pair_on, "baseline") if paired else {}
    rows = []
    for variant in variants:
        for group, members in _ordered_groups([r for r in table.rows if r.get(column) == variant], group_by).items():
            head = {column: variant, **dict(zip(group_by, group, strict=True))}
            if paired:
                samples = _paired_samples(members, base_index, base_groups.get(group, []), pair_on,
                                          f"{column}={variant!r}", columns)
            else:
                samples = _group_samples(members, base_groups.get(group, []), columns)
            rows += [{**head, "metric": metric, "baseline": base_value, **counts, **_effect(base, var, paired)}
                     for metric, (counts, base, var) in samples.items()]
    if not rows:
        how = f"by {', '.join(pair_on)}" if paired else "in the same group"
        raise StatsError("pair_on" if paired else "group_by",
                         f"no {column} value has rows that meet a baseline row {how} with numeric metrics")
    return ScoreTable((column, *group_by, "metric"), rows)


# --- Pareto ----------------------------------------------------------------------------------------

def pareto(table: ScoreTable, x: str, y: str, x_better: str = "higher", y_better: str = "higher",
           group_by=None) -> ScoreTable:
    """Mark the Pareto front of two metrics (seed 004: content vs style similarity, quality vs
    seconds per image). A point is on the front (``pareto`` = True) when no other point is at least
    as good in both and better in one. With ``group_by`` each group's mean ``x`` and ``y`` is one
    point (one row per configuration, with ``n`` rows averaged); with ``group_by=None`` every row
    is a point and keeps its columns. A point missing ``x`` or ``y`` gets ``pareto`` = None."""
    _require(table, [x, y], "x" if x not in table.columns else "y")
    for name, better in (("x_better", x_better), ("y_better", y_better)):
        if better not in BETTER:
            raise StatsError(name, f"{better!r} is not one of {', '.join(BETTER)}")
    if group_by is None:
        keys, points = table.keys, [dict(r) for r in table.rows]
    else:
        keys = tuple(group_by)
        _require(table, keys, "group_by")
        points = []
        for group, members in _ordered_groups(table.rows, keys).items():
            xs, ys = _numbers(members, x), _numbers(members, y)
            points.append({**dict(zip(keys, group, strict=True)), x: float(xs.mean()) if len(xs) else None,
                           y: float(ys.mean()) if len(ys) else None, "n": len(members)})
    complete = [i for i, p in enumerate(points) if is_number(p.get(x)) and is_number(p.get(y))]
    sign = np.array([1.0 if x_better == "higher" else -1.0, 1.0 if y_better == "higher" else -1.0])
    score = np.array([[points[i][x], points[i][y]] for i in complete], dtype=np.float64).reshape(-1, 2) * sign
    # dominated[i]: some j with score[j] >= score[i] everywhere and > somewhere.
    dominated = ((score[None] >= score[:, None]).all(-1) & (score[None] > score[:, None]).any(-1)).any(1)
    for p in points:
        p["pareto"] = None
    for i, d in zip(complete, dominated, strict=True):
        points[i]["pareto"] = not bool(d)
    return ScoreTable(tuple(keys), points)


# --- Presenting ------------------------------------------------------------------------------------
