"""Seed aggregation (bfaseg.reporting): mean ± sample standard deviation over seeds, the tables built on it,
and the marked tables of the results pages."""

import json
import math

import pytest

from bfaseg.errors import BfasegError
from bfaseg.reporting import (benchmark_table, format_mean_sd, load_results, mean_sd, refresh_tables, run_table, seed_groups,
                              seed_table)


def _entry(variant, seed, dice, hd95=2.0, cpu="Intel Xeon, AMX, 2 cores", **extra):
    return {"variant": variant, "seed": seed, "cpu": cpu, "images_per_step": {"student": 8, "teacher": 0},
            "last": {"mean": {"dice": dice, "jaccard": dice - 0.1, "hd95": hd95, "asd": hd95 / 4,
                              "dice_1": dice, "dice_2": dice}, "missed": 1},
            "last_lcc": {"mean": {"dice": dice + 0.01, "hd95": hd95 - 1, "asd": 0.1}}, **extra}


def test_mean_sd_two_and_three_seeds_by_hand():
    mean, sd, n = mean_sd([0.7352, 0.7176])
    assert n == 2 and mean == pytest.approx(0.7264)
    assert sd == pytest.approx(abs(0.7352 - 0.7176) / math.sqrt(2))  # two values: |a - b| / sqrt 2
    mean, sd, n = mean_sd([1.0, 2.0, 4.0])
    assert n == 3 and mean == pytest.approx(7 / 3)
    # sum of squared deviations (16/9 + 1/9 + 25/9 = 42/9) over n - 1 = 2
    assert sd == pytest.approx(math.sqrt(42 / 9 / 2))


def test_one_seed_has_no_sd_and_missing_values_are_skipped():
    assert mean_sd([0.5]) == (0.5, None, 1)
    assert mean_sd([]) == (None, None, 0)
    assert mean_sd([None, float("nan"), 3.0]) == (3.0, None, 1)
    assert format_mean_sd([0.7352], 100) == "73.52"
    assert format_mean_sd([0.7352, 0.7176], 100) == "72.64 ± 1.24"
    assert format_mean_sd([None]) == "n/a"
    # a metric some seeds' records lack: the cell says how many seeds it averages
    assert format_mean_sd([0.7941, None], 100) == "79.41 (1 of 2 seeds)"
    assert format_mean_sd([0.70, float("nan"), 0.72], 100) == "71.00 ± 1.41 (2 of 3 seeds)"


def test_seed_table_groups_by_variant_in_the_order_asked():
    results = {"bfa_s2": _entry("bfa", 2, 0.7678, 6.64), "supervised_s1": _entry("supervised", 1, 0.7352, 6.54),
               "bfa_s1": _entry("bfa", 1, 0.7838, 4.84, cpu="AMD EPYC, AVX512-BF16, 2 cores")}
    table = seed_table(results, ["supervised", "bfa"], ["seeds", "cpu", "dice", "hd95", "lcc_dice", "missed"])
    lines = table.splitlines()
    assert lines[0] == "| method | seeds | CPU | Dice % | 95HD (vox) | + LCC: Dice % | missed |"
    assert lines[2] == "| supervised | 1 | Xeon | 73.52 | 6.54 | 74.52 | 1 |"
    assert lines[3] == "| bfa | 2 | s1 EPYC, s2 Xeon | 77.58 ± 1.13 | 5.74 ± 1.27 | 78.58 ± 1.13 | 2 |"
    assert [v for v, _ in seed_groups(results)] == ["bfa", "supervised"]  # default: first appearance
    runs = run_table(results, ["bfa"], ["dice", "per_class"])
    assert runs.splitlines()[2:] == ["| bfa_s1 | 78.38 | 78.4 / 78.4 |", "| bfa_s2 | 76.78 | 76.8 / 76.8 |"]


def test_seed_table_refuses_what_it_cannot_show():
    results = {"a_s1": _entry("a", 1, 0.5), "b_s1": _entry("a", 1, 0.6)}
    with pytest.raises(BfasegError, match="seed given twice"):
        seed_table(results)
    with pytest.raises(BfasegError, match="no run .* for missing"):
        seed_table({"a_s1": _entry("a", 1, 0.5)}, ["missing"])
    with pytest.raises(BfasegError, match="unknown table column"):
        seed_table({"a_s1": _entry("a", 1, 0.5)}, None, ["dice", "typo"])


def test_a_missing_text_stands_in_for_a_variant_not_yet_run():
    results = {"a_s1": _entry("a", 1, 0.7), "a_s2": _entry("a", 2, 0.8)}
    with pytest.raises(BfasegError, match="no run with a 'last' evaluation for b"):
        seed_table(results, ["a", "b"], ("seeds", "dice"))
    rows = seed_table(results, ["b", "a"], ("seeds", "dice"), missing="not yet run").splitlines()[2:]
    assert rows == ["| b | not yet run | - |", "| a | 2 | 75.00 ± 7.07 |"]
    la = {"a_s1": _entry("a", 1, 0.6)}
    table = benchmark_table([("ACDC", results), ("LA", la)], ["a", "b"], missing="not yet run")
    assert table.splitlines()[2:] == ["| a | 75.00 ± 7.07 (2 seeds) | 60.00 (1 seed) |",
                                      "| b | not yet run | not yet run |"]
    with pytest.raises(BfasegError, match="for b"):
        benchmark_table([("ACDC", results)], ["a", "b"])


def test_experiment_per_case_rows_count_the_missed_pairs():
    """An experiment's own results.json has per-case rows instead of a stored count."""
    entry = _entry("a", 1, 0.5)
    entry["last"] = {"mean": entry["last"]["mean"],
                     "per_case": [{"hd95_1": None, "hd95_2": 3.0}, {"hd95_1": None, "hd95_2": None}]}
    assert seed_table({"a_s1": entry}, None, ["missed"]).splitlines()[2] == "| a | 3 |"


def test_refresh_rewrites_marked_tables_only(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"x_s1": _entry("x", 1, 0.5), "x_s2": _entry("x", 2, 0.7),
                                                 "y_s1": _entry("y", 1, 0.9)}))
    page = ("intro\n| not | marked |\n\n"
            "<!-- table source=r.json rows=x columns=seeds,dice -->\nstale\n<!-- /table -->\n"
            "<!-- table kind=benchmarks source=\"Set A:r.json\" rows=y,x labels=\"y:why not\" corner=c "
            "extra=\"later|needs a GPU\" -->\n<!-- /table -->\nend\n")
    fresh = refresh_tables(page, tmp_path)
    assert fresh.startswith("intro\n| not | marked |\n\n")
    assert ("<!-- table source=r.json rows=x columns=seeds,dice -->\n| method | seeds | Dice % |\n|---|---|---|\n"
            "| x | 2 | 60.00 ± 14.14 |\n<!-- /table -->") in fresh
    assert "| c | Set A Dice % |\n|---|---|\n| why not | 90.00 (1 seed) |\n| x | 60.00 ± 14.14 (2 seeds) |\n" \
           "| later | needs a GPU |\n<!-- /table -->\nend\n" in fresh
    assert refresh_tables(fresh, tmp_path) == fresh  # idempotent
    with pytest.raises(BfasegError, match="unknown key"):
        refresh_tables("<!-- table source=r.json colums=dice -->\n<!-- /table -->", tmp_path)


def test_load_results_wants_variant_and_seed(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"x_s1": {"variant": "x", "seed": "1"}}))
    with pytest.raises(BfasegError, match="integer seed"):
        load_results(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(BfasegError, match="expected an object"):
        load_results(bad)
