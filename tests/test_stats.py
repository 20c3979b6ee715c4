"""Score-table statistics against numpy, statistics and scipy; join semantics; the report nodes."""

import csv
import io
import json
import math
import random
import statistics

import numpy as np
import pytest
from scipy import stats as sps

from loralab.core import score_report, stats
from loralab.core.scores import ScoreTable
from loralab.nodes.report import (
    LoRALabCombineScores,
    LoRALabCompare,
    LoRALabPareto,
    LoRALabSaveScores,
    LoRALabShowScores,
    LoRALabSummarize,
)

KEYS = ("model", "sampler", "steps", "cfg", "category", "prompt", "seed")
CATEGORIES = ("standard", "challenging", "closeup")


def generated(models=("base", "base + lora"), prompts=3, seeds=4, rng_seed=0, effect=0.05):
    """A Generate-like table joined with pixel scores: one row per image, every model sees the same
    prompts and seeds, the LoRA shifts ssim by ``effect`` plus noise."""
    rng = np.random.default_rng(rng_seed)
    base = {(c, p, s): (rng.uniform(0.3, 0.8), rng.uniform(0.01, 0.1))
            for c in CATEGORIES for p in range(prompts) for s in range(seeds)}
    rows = []
    for m, model in enumerate(models):
        for (category, p, seed), (ssim, mse) in base.items():
            rows.append({"model": model, "sampler": "euler", "steps": 20, "cfg": 7.5, "category": category,
                         "prompt": f"a {category} photo {p}", "seed": seed, "image": len(rows),
                         "width": 64, "height": 64, "seconds_per_image": float(rng.uniform(0.5, 1.5)),
                         "ssim": ssim + m * effect + float(rng.normal(0, 0.03)),
                         "mse": mse * (1 - m * 0.2) + float(rng.normal(0, 0.005))})
    return ScoreTable(KEYS, rows)


def shuffled(table, seed=1):
    rows = list(table.rows)
    random.Random(seed).shuffle(rows)
    return ScoreTable(table.keys, rows)


def by_key(table):
    return {tuple(r[k] for k in table.keys): r for r in table.rows}


# --- Summarize ----------------------------------------------------------------------------------------

def test_summary_mean_std_n_equal_numpy_and_statistics_per_group():
    table = generated()
    table.rows[3]["ssim"] = None  # a missing value is skipped and not counted
    summary = by_key(stats.summarize(table, ("model", "category"), resamples=200))
    for model in ("base", "base + lora"):
        for category in CATEGORIES:
            for metric in ("ssim", "mse", "seconds_per_image"):
                values = [r[metric] for r in table.rows if r["model"] == model and r["category"] == category
                          and r[metric] is not None]
                row = summary[model, category, metric]
                assert row["n"] == len(values)
                assert row["mean"] == pytest.approx(statistics.fmean(values), rel=1e-12)
                assert row["std"] == pytest.approx(statistics.stdev(values), rel=1e-12)
                assert row["std"] == pytest.approx(np.std(values, ddof=1), rel=1e-12)
    assert summary["base", "standard", "ssim"]["n"] == 11


def test_auto_grouping_is_one_row_per_configuration_and_category_and_skips_descriptors():
    summary = stats.summarize(generated(), resamples=100)
    assert summary.keys == ("model", "sampler", "steps", "cfg", "category", "metric")
    assert {r["metric"] for r in summary.rows} == {"ssim", "mse", "seconds_per_image"}  # not image/width/height
    assert len(summary) == 2 * len(CATEGORIES) * 3
    assert len(stats.summarize(generated(), (), resamples=100)) == 3  # () = all rows in one group


def test_std_and_interval_need_two_values_and_empty_metrics_give_no_row():
    table = ScoreTable(("g",), [{"g": "a", "x": 1.0}, {"g": "b", "x": 2.0}, {"g": "b", "x": 4.0}, {"g": "b"}])
    rows = by_key(stats.summarize(table, ("g",), resamples=100))
    assert rows["a", "x"] == {"g": "a", "metric": "x", "n": 1, "mean": 1.0, "std": None, "ci_low": None,
                              "ci_high": None}
    assert rows["b", "x"]["n"] == 2 and rows["b", "x"]["std"] == pytest.approx(math.sqrt(2))


def test_bootstrap_interval_is_deterministic_for_a_seed_and_contains_the_mean():
    x = np.random.default_rng(3).lognormal(size=40)
    first = stats.bootstrap_mean_ci(x, 2000, 0.95, seed=7)
    assert first == stats.bootstrap_mean_ci(x, 2000, 0.95, seed=7)
    assert first != stats.bootstrap_mean_ci(x, 2000, 0.95, seed=8)
    assert first[0] < x.mean() < first[1]
    narrower = stats.bootstrap_mean_ci(x, 2000, 0.5, seed=7)
    assert first[0] < narrower[0] < narrower[1] < first[1]


def test_metrics_of_the_same_rows_share_draws_and_get_exactly_their_one_metric_interval():
    x = np.random.default_rng(9).normal(size=(3, 30))
    lows, highs = stats.bootstrap_mean_ci(x, 3000, 0.9, seed=4)
    for row, low, high in zip(x, lows, highs, strict=True):
        assert (low, high) == stats.bootstrap_mean_ci(row, 3000, 0.9, seed=4)
    summary = by_key(stats.summarize(generated(), ("model",), resamples=3000, confidence=0.9, seed=4))
    ssim = [r["ssim"] for r in generated().rows if r["model"] == "base"]
    assert (summary["base", "ssim"]["ci_low"], summary["base", "ssim"]["ci_high"]) == \
        stats.bootstrap_mean_ci(ssim, 3000, 0.9, seed=4)


def test_descriptor_columns_are_summarized_only_when_named():
    summary = stats.summarize(generated(), ("model",), metrics=("width", "ssim"), resamples=100)
    assert [r["metric"] for r in summary.rows] == ["width", "ssim"] * 2


def test_bootstrap_interval_shrinks_like_one_over_root_n():
    rng = np.random.default_rng(0)
    small, large = rng.normal(size=25), rng.normal(size=2500)
    width_small = np.subtract(*stats.bootstrap_mean_ci(small, 4000)[::-1])
    width_large = np.subtract(*stats.bootstrap_mean_ci(large, 4000)[::-1])
    assert width_large < width_small / 5  # sqrt(100) = 10 in expectation


@pytest.mark.parametrize("n,confidence", [(15, 0.95), (60, 0.9), (200, 0.99)])
def test_bootstrap_interval_agrees_with_scipy_percentile_bootstrap(n, confidence):
    x = np.random.default_rng(n).gamma(2.0, size=n)
    ours = stats.bootstrap_mean_ci(x, 20000, confidence, seed=1)
    theirs = sps.bootstrap((x,), np.mean, n_resamples=20000, confidence_level=confidence, method="percentile",
                           random_state=np.random.default_rng(2)).confidence_interval
    # Two independent Monte Carlo estimates of the same quantiles: ~0.03 standard errors apart.
    standard_error = x.std(ddof=1) / math.sqrt(n)
    assert ours[0] == pytest.approx(theirs.low, abs=0.15 * standard_error)
    assert ours[1] == pytest.approx(theirs.high, abs=0.15 * standard_error)


def test_bootstrap_of_a_large_group_runs_in_chunks_with_the_same_distribution():
    x = np.random.default_rng(5).normal(size=5000)  # 5000 x 10000 indices would be 400 MB in one go
    low, high = stats.bootstrap_mean_ci(x, 10000)
    half = 1.959964 * x.std(ddof=1) / math.sqrt(len(x))
    assert low == pytest.approx(x.mean() - half, abs=0.1 * half)
    assert high == pytest.approx(x.mean() + half, abs=0.1 * half)


# --- Compare ------------------------------------------------------------------------------------------

def pairs_by_hand(table, metric, category=None):
    base = {(r["prompt"], r["seed"]): r[metric] for r in table.rows if r["model"] == "base"}
    return [(base[r["prompt"], r["seed"]], r[metric]) for r in table.rows
            if r["model"] != "base" and (category is None or r["category"] == category)]


def test_paired_comparison_equals_scipy_ttest_rel_and_the_closed_form():
    table = generated()
    result = by_key(stats.compare(table, "model", "base", group_by=("category",)))
    for category in CATEGORIES:
        for metric in ("ssim", "mse"):
            base, variant = np.array(pairs_by_hand(table, metric, category)).T
            d = variant - base
            t_by_hand = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
            row = result["base + lora", category, metric]
            assert row["n_pairs"] == len(d) == 12 and row["unpaired"] == 0 and row["baseline"] == "base"
            assert row["t"] == pytest.approx(t_by_hand, rel=1e-10)
            assert row["p_value"] == pytest.approx(sps.ttest_rel(variant, base).pvalue, rel=1e-10)
            assert row["p_value"] == pytest.approx(2 * sps.t.sf(abs(t_by_hand), len(d) - 1), rel=1e-8)
            assert row["mean_diff"] == pytest.approx(d.mean(), rel=1e-12)
            assert row["pct_change"] == pytest.approx(100 * (variant.mean() - base.mean()) / abs(base.mean()),
                                                      rel=1e-12)


def test_pairing_is_by_key_not_by_row_order():
    table = generated()
    ordered = stats.compare(table, "model", "base")
    mixed = by_key(stats.compare(shuffled(table), "model", "base"))
    assert mixed.keys() == by_key(ordered).keys()
    for key, row in by_key(ordered).items():  # equal up to the order of summation
        assert mixed[key] == {c: pytest.approx(v, rel=1e-12) if isinstance(v, float) else v for c, v in row.items()}
    # Pairing by position instead would give a different (wrong) t: prove the test can tell.
    rows = shuffled(table).rows
    base = [r["ssim"] for r in rows if r["model"] == "base"]
    variant = [r["ssim"] for r in rows if r["model"] != "base"]
    assert sps.ttest_rel(variant, base).statistic != pytest.approx(by_key(ordered)["base + lora", "ssim"]["t"])


def test_percent_change_by_hand_matches_seed_000s_increase_table():
    table = ScoreTable(("model", "prompt"), [
        {"model": "sd15", "prompt": "a", "ssim": 0.50, "mse": 0.040},
        {"model": "sd15", "prompt": "b", "ssim": 0.60, "mse": 0.060},
        {"model": "sd15 + lora", "prompt": "a", "ssim": 0.55, "mse": 0.041},
        {"model": "sd15 + lora", "prompt": "b", "ssim": 0.62, "mse": 0.060},
    ])
    rows = by_key(stats.compare(table, "model", "sd15"))
    assert rows["sd15 + lora", "ssim"]["pct_change"] == pytest.approx(100 * (0.585 - 0.55) / 0.55)
    assert rows["sd15 + lora", "mse"]["pct_change"] == pytest.approx(100 * (0.0505 - 0.05) / 0.05)
    assert rows["sd15 + lora", "mse"]["mean_baseline"] == pytest.approx(0.05)


def test_missing_pairs_are_dropped_and_counted():
    table = generated()
    table.rows = [r for r in table.rows if not (r["model"] == "base" and r["seed"] == 0 and r["category"] == "closeup")]
    table.rows = [r for r in table.rows if not (r["model"] != "base" and r["seed"] == 1 and r["category"] == "closeup")]
    table.rows[0]["ssim"] = None  # a base standard row without ssim: its pair is left out of ssim only
    rows = by_key(stats.compare(table, "model", "base", group_by=("category",)))
    closeup = rows["base + lora", "closeup", "ssim"]
    assert closeup["n_pairs"] == 12 - 3 - 3 and closeup["unpaired"] == 6
    base, variant = np.array([(b, v) for b, v in pairs_by_hand_safe(table, "ssim", "closeup")]).T
    assert closeup["p_value"] == pytest.approx(sps.ttest_rel(variant, base).pvalue, rel=1e-10)
    assert rows["base + lora", "standard", "ssim"]["n_pairs"] == 11
    assert rows["base + lora", "standard", "mse"]["n_pairs"] == 12


def pairs_by_hand_safe(table, metric, category):
    base = {(r["prompt"], r["seed"]): r[metric] for r in table.rows if r["model"] == "base"}
    return [(base[r["prompt"], r["seed"]], r[metric]) for r in table.rows if r["model"] != "base"
            and r["category"] == category and (r["prompt"], r["seed"]) in base]


def test_welch_comparison_equals_scipy_ttest_ind_unequal_variances():
    table = generated()
    table.rows = [r for r in table.rows if not (r["model"] != "base" and r["seed"] == 3)]  # unequal sizes
    row = by_key(stats.compare(table, "model", "base", test="welch"))["base + lora", "ssim"]
    base = [r["ssim"] for r in table.rows if r["model"] == "base"]
    variant = [r["ssim"] for r in table.rows if r["model"] != "base"]
    expected = sps.ttest_ind(variant, base, equal_var=False)
    assert (row["n_baseline"], row["n_variant"]) == (36, 27)
    assert row["t"] == pytest.approx(expected.statistic, rel=1e-10)
    assert row["p_value"] == pytest.approx(expected.pvalue, rel=1e-10)
    assert row["mean_diff"] == pytest.approx(np.mean(variant) - np.mean(base), rel=1e-12)


def test_every_other_value_is_compared_and_typed_baselines_match_numbers():
    table = ScoreTable(("steps", "seed"), [{"steps": s, "seed": k, "x": s + k * k * 0.1} for s in (10, 20, 50)
                                           for k in range(3)])
    rows = stats.compare(table, "steps", "20").rows  # the node passes the typed text
    assert [r["steps"] for r in rows] == [10, 50] and {r["baseline"] for r in rows} == {20}
    assert rows[0]["mean_diff"] == pytest.approx(-10)


def test_ambiguous_pairs_are_an_error_that_says_which_columns_to_add():
    table = generated()
    with pytest.raises(stats.StatsError, match="two baseline rows share prompt='a standard photo 0'.*seed") as e:
        stats.compare(table, "model", "base", pair_on=("prompt",))
    assert e.value.input == "pair_on"


@pytest.mark.parametrize("call,input,text", [
    (lambda t: stats.compare(t, "modle", "base"), "column", "column 'modle' is not in the table; available: model"),
    (lambda t: stats.compare(t, "model", "sdxl"), "baseline", "no row has model = 'sdxl'; values in 'model': "
                                                              "'base', 'base \\+ lora'"),
    (lambda t: stats.compare(t, "model", "base", metrics=("prompt",)), "metrics", "does not hold numbers"),
    (lambda t: stats.summarize(t, ("categroy",)), "group_by", "'categroy' is not in the table; available: "),
    (lambda t: stats.pareto(t, "ssim", "lpips"), "y", "'lpips' is not in the table"),
])
def test_errors_name_the_missing_column_and_list_the_available_ones(call, input, text):
    with pytest.raises(stats.StatsError, match=text) as e:
        call(generated())
    assert e.value.input == input


# --- Combine ------------------------------------------------------------------------------------------

LEFT = ScoreTable(("model", "seed"), [{"model": "a", "seed": 0, "ssim": 0.5, "image": 0},
                                      {"model": "a", "seed": 1, "ssim": 0.6, "image": 1},
                                      {"model": "b", "seed": 0, "ssim": 0.7, "image": 2}])
RIGHT = ScoreTable(("seed", "model"), [{"model": "a", "seed": 1, "lpips": 0.2, "image": 1},
                                       {"model": "b", "seed": 0, "lpips": 0.3, "image": 2},
                                       {"model": "c", "seed": 0, "lpips": 0.4, "image": None}])


def test_inner_join_keeps_matched_rows_and_merges_agreeing_columns():
    joined = stats.combine([LEFT, RIGHT], "inner")
    assert joined.keys == ("model", "seed")
    assert joined.rows == [{"model": "a", "seed": 1, "ssim": 0.6, "image": 1, "lpips": 0.2},
                           {"model": "b", "seed": 0, "ssim": 0.7, "image": 2, "lpips": 0.3}]


def test_outer_join_keeps_unmatched_rows_of_both_sides_with_empty_cells():
    joined = stats.combine([LEFT, RIGHT], "outer")
    assert [(r["model"], r["seed"], r["ssim"], r["lpips"], r["image"]) for r in joined.rows] == [
        ("a", 0, 0.5, None, 0), ("a", 1, 0.6, 0.2, 1), ("b", 0, 0.7, 0.3, 2), ("c", 0, None, 0.4, None)]
    assert all(list(r) == ["model", "seed", "ssim", "image", "lpips"] for r in joined.rows)


def test_disagreeing_value_columns_are_suffixed_with_their_table_label():
    other = ScoreTable(("model", "seed"), [{**r, "ssim": r["ssim"] + 0.1} for r in LEFT.rows])
    joined = stats.combine([LEFT, other], "inner", labels=[1, 3])
    assert [(r["ssim_1"], r["ssim_3"]) for r in joined.rows] == [(0.5, 0.6), (0.6, 0.7), (0.7, pytest.approx(0.8))]
    assert "ssim" not in joined.columns and [r["image"] for r in joined.rows] == [0, 1, 2]


def test_a_one_row_cost_table_attaches_to_every_row_sharing_its_key():
    train = ScoreTable(("model", "lora"), [{"model": "b", "lora": "style", "train_seconds": 12.5}])
    joined = stats.combine([LEFT, train], "outer")
    assert joined.keys == ("model", "seed", "lora")
    assert [(r["model"], r["lora"], r["train_seconds"]) for r in joined.rows] == [
        ("a", None, None), ("a", None, None), ("b", "style", 12.5)]


def test_concat_stacks_tables_of_the_same_keys_and_refuses_others():
    stacked = stats.combine([LEFT, ScoreTable(("seed", "model"), [{"model": "z", "seed": 9, "lpips": 0.1}])],
                            "concat")
    assert [r["model"] for r in stacked.rows] == ["a", "a", "b", "z"]
    assert stacked.rows[-1] == {"model": "z", "seed": 9, "ssim": None, "image": None, "lpips": 0.1}
    with pytest.raises(stats.StatsError, match="same keys.*table 2 has model, lora"):
        stats.combine([LEFT, ScoreTable(("model", "lora"), [])], "concat")


def test_tables_without_a_shared_key_are_refused():
    with pytest.raises(stats.StatsError, match="shares no key column.*image_scores") as e:
        stats.combine([LEFT, ScoreTable(("image",), [{"image": 0, "x": 1.0}])], "outer", labels=[1, 4])
    assert e.value.input == "scores_4"


def test_combined_generate_and_metric_tables_pair_per_image():
    table = generated()
    cost = ScoreTable(KEYS, [{k: r[k] for k in (*KEYS, "seconds_per_image")} for r in table.rows])
    pixel = ScoreTable(KEYS, [{k: r[k] for k in (*KEYS, "image", "ssim")} for r in shuffled(table).rows])
    joined = stats.combine([cost, pixel], "inner")
    assert len(joined) == len(table)
    assert by_key(joined) == {k: {c: r[c] for c in (*KEYS, "seconds_per_image", "image", "ssim")}
                              for k, r in by_key(table).items()}


# --- Pareto ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("x_better,y_better", [("higher", "higher"), ("higher", "lower"), ("lower", "lower")])
def test_pareto_front_equals_a_brute_force_dominance_check(x_better, y_better):
    rng = np.random.default_rng(4)
    points = np.round(rng.uniform(size=(60, 2)), 1)  # ties on a coarse grid
    table = ScoreTable(("i",), [{"i": i, "q": float(a), "s": float(b)} for i, (a, b) in enumerate(points)])
    marked = stats.pareto(table, "q", "s", x_better, y_better).rows
    sign = np.array([1 if x_better == "higher" else -1, 1 if y_better == "higher" else -1])
    good = points * sign
    for i, row in enumerate(marked):
        beaten = any((good[j] >= good[i]).all() and (good[j] > good[i]).any() for j in range(len(good)))
        assert row["pareto"] is (not beaten)
    assert any(r["pareto"] for r in marked)


def test_pareto_of_group_means_and_missing_points():
    table = generated()
    table.rows.append({"model": "broken", "ssim": None, "seconds_per_image": 1.0})
    front = stats.pareto(table, "ssim", "seconds_per_image", "higher", "lower", group_by=("model",))
    assert [r["model"] for r in front.rows] == ["base", "base + lora", "broken"]
    lora = [r["ssim"] for r in table.rows if r["model"] == "base + lora"]
    assert front.rows[1]["ssim"] == pytest.approx(np.mean(lora)) and front.rows[1]["n"] == len(lora)
    assert front.rows[2]["pareto"] is None


# --- Presenting and files -------------------------------------------------------------------------------

@pytest.mark.parametrize("value,text", [(0.123456, "0.1235"), (1234.567, "1235"), (0.00123456, "0.001235"),
                                        (1.5e-12, "1.500e-12"), (2.5e7, "2.500e+07"), (-4.2891, "-4.289"),
                                        (0.0, "0"), (float("inf"), "inf"), (None, ""), (12, "12"), (True, "True")])
def test_preview_cells_round_floats_to_significant_digits(value, text):
    assert score_report.format_value(value, 4) == text


def test_markdown_preview_aligns_columns_and_counts_rows_left_out():
    table = ScoreTable(("model", "cfg"), [{"model": f"m|{i}", "cfg": 7.5, "ssim": 1 / (i + 1)} for i in range(5)])
    text = score_report.to_markdown(table, digits=3, max_rows=3)
    lines = text.splitlines()
    assert lines[0] == "| model | cfg |  ssim |"
    assert lines[1] == "|-------|----:|------:|"
    assert lines[2] == "| m\\|0  | 7.5 |  1.00 |" and lines[4].endswith("| 0.333 |")  # keys as typed
    assert len({len(line) for line in lines[:5]}) == 1 and lines[-1].startswith("… 2 more row(s)")


def test_csv_and_json_keep_full_precision_and_read_back(output_dir):
    table = ScoreTable(("model", "seed"), [{"model": "a, b", "seed": 1, "x": 1 / 3, "y": None},
                                           {"model": "c", "seed": 2, "x": math.pi * 1e-9, "y": float("inf")}])
    paths = score_report.save_scores(table, output_dir, "run/scores")
    assert [p.name for p in paths] == ["scores_00001_.csv", "scores_00001_.json"]
    rows = list(csv.DictReader(io.StringIO(paths[0].read_text())))
    assert [float(r["x"]) for r in rows] == [1 / 3, math.pi * 1e-9]
    assert rows[0]["y"] == "" and rows[0]["model"] == "a, b" and rows[1]["y"] == "inf"
    data = json.loads(paths[1].read_text())
    assert ScoreTable(tuple(data["keys"]), data["rows"]) == table
    assert sorted(p.name for p in (output_dir / "run").iterdir()) == ["scores_00001_.csv", "scores_00001_.json"]


# --- Nodes ----------------------------------------------------------------------------------------------

def test_node_choice_lists_match_the_core_ones():
    from loralab.nodes import report

    assert (report.JOINS, report.TESTS, report.BETTER) == (stats.JOINS, stats.TESTS, stats.BETTER)


def test_combine_node_joins_the_connected_slots_and_labels_clashes_by_slot():
    other = ScoreTable(("model", "seed"), [{**r, "ssim": 0.0} for r in LEFT.rows])
    (joined,) = LoRALabCombineScores().combine(LEFT, "inner", scores_3=other)
    assert {"ssim_1", "ssim_3"} <= set(joined.columns)
    (stacked,) = LoRALabCombineScores().combine(LEFT, "concat", scores_2=LEFT, scores_4=LEFT)
    assert len(stacked) == 9


def test_combine_node_errors_name_the_node_and_the_slot():
    with pytest.raises(ValueError, match="LoRA Lab: Combine Scores: input 'scores_2': .*shares no key column"):
        LoRALabCombineScores().combine(LEFT, "outer", scores_2=ScoreTable(("image",), [{"image": 0}]))


def test_summarize_node_parses_columns_and_returns_markdown():
    summary, text = LoRALabSummarize().summarize(generated(), "model, category", "ssim", 500, 0.95, 0)
    assert summary.keys == ("model", "category", "metric") and len(summary) == 6
    assert text.splitlines()[0].split("|")[1].strip() == "model" and "ci_high" in text.splitlines()[0]
    with pytest.raises(ValueError, match="LoRA Lab: Summarize: input 'metrics': column 'lpips' is not in the table"):
        LoRALabSummarize().summarize(generated(), "auto", "lpips", 500, 0.95, 0)


def test_compare_node_defaults_to_the_first_rows_value_as_baseline():
    table = shuffled(generated())
    comparison, text = LoRALabCompare().compare(table, "model", "", "category", "", "paired", "auto")
    first = table.rows[0]["model"]
    assert {r["baseline"] for r in comparison.rows} == {first}
    explicit, _ = LoRALabCompare().compare(table, "model", first, "category", "", "paired", "prompt, seed")
    assert by_key(explicit) == by_key(comparison) and "p_value" in text
    with pytest.raises(ValueError, match="LoRA Lab: Compare: input 'baseline': no row has model = 'sdxl'"):
        LoRALabCompare().compare(generated(), "model", "sdxl", "", "", "paired", "auto")


def test_pareto_node_groups_by_configuration():
    front, text = LoRALabPareto().front(generated(), "ssim", "higher", "seconds_per_image", "lower", "auto")
    assert front.keys == ("model", "sampler", "steps", "cfg", "category") and len(front) == 6
    assert "pareto" in text


def test_save_scores_node_writes_atomically_inside_the_output_folder(output_dir):
    table = generated()
    ui = LoRALabSaveScores().save(table, "study/summary", "csv+json")["ui"]
    assert ui["text"] == ["study/summary_00001_.csv", "study/summary_00001_.json"]  # relative to the output folder
    assert LoRALabSaveScores().save(table, "study/summary", "json")["ui"]["text"] == ["study/summary_00002_.json"]
    files = sorted(p.name for p in (output_dir / "study").iterdir())
    assert files == ["summary_00001_.csv", "summary_00001_.json", "summary_00002_.json"]  # no temp files left
    assert len(list(csv.DictReader(io.StringIO((output_dir / "study" / files[0]).read_text())))) == len(table)


def test_an_interrupted_save_leaves_no_partial_file(output_dir, monkeypatch):
    import loralab.core.files

    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(loralab.core.files.os, "replace", crash)  # the rename that publishes the file
    with pytest.raises(KeyboardInterrupt):
        LoRALabSaveScores().save(generated(), "study/summary", "csv")
    assert list((output_dir / "study").iterdir()) == []


@pytest.mark.parametrize("prefix", ["../x", "a/../../x", "/abs/x", "", "C:/x"])
def test_save_scores_refuses_prefixes_that_leave_the_output_folder(output_dir, prefix):
    with pytest.raises(ValueError, match="LoRA Lab: Save Scores: input 'filename_prefix'"):
        LoRALabSaveScores().save(generated(), prefix, "csv")
    assert not list(output_dir.parent.glob("x_*"))


def test_show_scores_node_previews_the_table_as_an_image_and_returns_text(output_dir):
    comparison = stats.compare(generated(), "model", "base", group_by=("category",))
    result = LoRALabShowScores().show(comparison, 3, 4)
    text, image = result["result"]
    assert text == score_report.to_markdown(comparison, 3, 4) and result["ui"]["text"] == [text]
    assert image.shape[0] == 1 and image.shape[-1] == 3 and image.dtype.is_floating_point
    assert float(image.min()) == 0.0 and float(image.max()) == 1.0  # black text on white
    entry = result["ui"]["images"][0]
    assert entry["type"] == "temp" and (output_dir / "temp" / entry["subfolder"] / entry["filename"]).is_file()
    assert image.shape[2] > image.shape[1] > 50  # a wide table: 5 lines of cells


class TableSource:
    """A test node that emits a fixed table, standing for Generate or a metric node."""
    RETURN_TYPES = ("LL_SCORES",)
    FUNCTION = "make"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("STRING", {"default": "base"})}}

    def make(self, model):
        table = generated()
        return (ScoreTable(KEYS, [r for r in table.rows if r["model"] == model]),)


def test_report_nodes_run_in_the_headless_executor_and_produce_json_rows(output_dir):
    from loralab.headless.execute import Executor
    from loralab.headless.graph import validate
    from loralab.nodes.report import NODE_CLASS_MAPPINGS

    registry = {"TableSource": TableSource, **NODE_CLASS_MAPPINGS}
    wf = {"1": {"class_type": "TableSource", "inputs": {"model": "base"}},
          "2": {"class_type": "TableSource", "inputs": {"model": "base + lora"}},
          "3": {"class_type": "LoRALabCombineScores", "inputs": {"scores_1": ["1", 0], "scores_2": ["2", 0],
                                                                "how": "concat"}},
          "4": {"class_type": "LoRALabCompare", "inputs": {"scores": ["3", 0], "column": "model", "baseline": "",
                                                          "group_by": "category", "metrics": "", "test": "paired",
                                                          "pair_on": "auto"}},
          "5": {"class_type": "LoRALabShowScores", "inputs": {"scores": ["4", 0], "digits": 4, "max_rows": 50}},
          "6": {"class_type": "LoRALabSaveScores", "inputs": {"scores": ["4", 0], "filename_prefix": "cmp",
                                                             "format": "csv"}}}
    prompt, _, order = validate(wf, registry)
    result = Executor(registry, show_progress=False).run(prompt, order)
    comparison = result.outputs["4"][0][0]
    assert by_key(comparison) == by_key(stats.compare(generated(), "model", "base", group_by=("category",)))
    json.dumps(comparison.rows)  # rows are flat and JSON-able, as the sweep results need
    assert result.ui["5"][0]["images"] and (output_dir / "cmp_00001_.csv").is_file()
