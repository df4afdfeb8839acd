"""The results pages cannot drift from the runs: every marked table of README.md, docs/RESULTS.md and
docs/results/*.md is what bfaseg.reporting computes from the results files committed under docs/results/
(`python docs/make_results_tables.py` rewrites them), every run in a table is made by a `bfaseg experiment`
command on its page, and every results entry is the run its variant, seed and command describe."""

import json
import re
import shlex
from pathlib import Path

import pytest

from bfaseg.config import load_yaml
from bfaseg.experiments import VARIANTS, images_per_step, variant_config
from bfaseg.reporting import TABLE_MARK, _pairs, _parse_spec, load_results, refresh_tables

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RESULTS = DOCS / "RESULTS.md"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md")), *sorted((DOCS / "results").glob("*.md"))]
RESULT_FILES = sorted((DOCS / "results").glob("*.json"))


def _marked(page: Path):
    return list(TABLE_MARK.finditer(page.read_text(encoding="utf-8")))


def _experiment_commands(text: str) -> list[dict]:
    """Every `bfaseg experiment` command of a page: in inline code (also across a line break) or on a line
    of a code block (continuation lines joined)."""
    text = text.replace("\\\n", " ")
    found = [m.group(1) for m in re.finditer(r"`(bfaseg experiment [^`]*)`", text)]
    found += [m.group(0) for m in re.finditer(r"^bfaseg experiment .*$", text, re.M)]
    commands = []
    for raw in found:
        words = shlex.split(" ".join(raw.split()).split(" #")[0])
        if not words[2].endswith((".yaml", ".yml")):
            continue  # `bfaseg experiment ... --no-train`: an elided command in the text
        opts = {w: words[i + 1] for i, w in enumerate(words[:-1]) if w.startswith("--")}
        commands.append({"config": words[2], "methods": opts.get("--methods", "").split(","),
                         "seeds": [int(s) for s in opts.get("--seeds", "").split(",") if s],
                         "eval_list": opts.get("--eval-list"), "iterations": opts.get("--iterations"),
                         "text": raw})
    return commands


def _made_by(entry: dict, command: dict) -> bool:
    iterations = command["iterations"] or load_yaml(ROOT / command["config"])["train"]["iterations"]
    return (command["config"] == entry["config"] and entry["variant"] in command["methods"]
            and entry["seed"] in command["seeds"] and command["eval_list"] == entry.get("eval_list")
            and int(iterations) == entry["iterations"])


def _shown(spec: dict, base: Path) -> list[dict]:
    """The results entries a marked table shows."""
    if spec.get("kind") == "benchmarks":
        sources = [path for _, path in _pairs(spec["source"])]
    else:
        sources = [spec["source"]]
    rows = spec["rows"].split(",") if spec.get("rows") else None
    seeds = {int(s) for s in spec["seeds"].split(",")} if spec.get("seeds") else None
    return [e for path in sources for e in load_results(base / path).values()
            if (rows is None or e["variant"] in rows) and (seeds is None or e["seed"] in seeds)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_marked_tables_are_computed_from_the_results_files(page):
    text = page.read_text(encoding="utf-8")
    assert refresh_tables(text, page.parent) == text, (
        f"{page.relative_to(ROOT)}: a marked table differs from its results file; run python docs/make_results_tables.py")


@pytest.mark.parametrize("page", [p for p in PAGES if _marked(p)], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_table_names_the_commands_that_make_its_runs(page):
    text = page.read_text(encoding="utf-8")
    commands = _experiment_commands(text)
    for mark in _marked(page):
        after = text[mark.end():].split("\n")[1:4]
        assert any("bfaseg experiment" in line or "commands above" in line or "benchmarks/parity.py" in line
                   for line in after), (
            f"{page.name}: table {mark['spec'][:60]}... is not followed by its command (Reproduce: `bfaseg experiment ...`)")
        for entry in _shown(_parse_spec(mark["spec"]), page.parent):
            if entry.get("side") == "reference":  # made by benchmarks/parity.py (its entry test checks the command)
                continue
            assert any(_made_by(entry, c) for c in commands), (
                f"{page.name}: no `bfaseg experiment` command on the page makes {entry['variant']} seed {entry['seed']} "
                f"of {entry['config']} (table {mark['spec'][:60]}...)")


def test_the_headline_shows_the_comparison_and_its_anchors():
    specs = [_parse_spec(m["spec"]) for m in _marked(RESULTS)]
    tables = [(s["source"], set(s["rows"].split(","))) for s in specs if s.get("kind", "seeds") == "seeds"]
    headline = {"supervised", "mean_teacher", "bcp", "bfa", "full", "supervised_matched", "full_matched"}
    acdc = [rows for src, rows in tables if src == "results/acdc_converged.json"]
    la = [rows for src, rows in tables if src == "results/la_converged.json"]
    assert any(headline | {"ua_mt"} <= rows for rows in acdc), "ACDC headline table: a method or anchor is missing"
    assert any({"bfa", "bfa_no_mixing", "bfa_no_align", "bfa_no_head", "bfa_all_off"} <= rows for rows in acdc), \
        "the BFA ablation table is missing"
    assert any(headline <= rows for rows in la), "LA headline table: a method or anchor is missing"
    readme = [_parse_spec(m["spec"]) for m in _marked(ROOT / "README.md")]
    assert any(s.get("kind") == "benchmarks" and "not yet run" in s.get("extra", "") for s in readme), \
        "README: the 'What to expect' table (with the paper-protocol row) is missing"


def test_results_page_is_short_and_answers_first():
    lines = RESULTS.read_text(encoding="utf-8").splitlines()
    assert len(lines) < 200, f"docs/RESULTS.md has {len(lines)} lines; move detail to docs/results/"
    first = "\n".join(lines[:60])
    for what in ("Protocol", "comparison", "How sure", "<!-- table source=results/acdc_converged.json", "Reproduce: `"):
        assert what in first, f"docs/RESULTS.md: {what!r} is not on its first screen"


def test_numbers_with_a_spread_in_the_text_come_from_a_table():
    """A mean ± sd quoted in the prose of a page is one its tables print (no hand-computed means)."""
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        tables = "".join(m.group(0) for m in TABLE_MARK.finditer(text))
        prose = TABLE_MARK.sub("", text)
        if "archive_0_1" in page.name:
            continue  # the archived bfaseg 0.1 page quotes its own copied tables
        for number in re.findall(r"\d+\.\d+ (?:±|\+-) \d+\.\d+", prose):
            assert number.replace("+-", "±") in tables, f"{page.name}: {number!r} is in the text but in no table"


@pytest.mark.parametrize("path", RESULT_FILES, ids=lambda p: p.name)
def test_every_result_entry_is_the_run_its_command_makes(path):
    for name, entry in load_results(path).items():
        if entry.get("side") == "reference":  # a reference run of benchmarks/parity.py, not a bfaseg variant
            # ssl4mis_<method>[_published_ramp] or <method>_reference (benchmarks/parity_references.py)
            method = entry["variant"].removeprefix("ssl4mis_").removesuffix("_published_ramp").removesuffix("_reference")
            assert name == f"{entry['variant']}_s{entry['seed']}" and entry.get("source") and entry.get("cpu")
            assert re.search(rf"benchmarks/parity\.py train .*--method {method} ", entry["command"]), \
                f"{path.name}: {name}: its command does not make it"
            continue
        assert entry["variant"] in VARIANTS, f"{path.name}: {name}: variant {entry['variant']} no longer exists"
        assert name == f"{entry['variant']}_s{entry['seed']}", f"{path.name}: {name} is not <variant>_s<seed>"
        assert entry.get("source") and entry.get("cpu") and entry.get("command"), f"{path.name}: {name}: source, cpu, command"
        assert _made_by(entry, _experiment_commands(f"`{entry['command']}`")[0]), \
            f"{path.name}: {name}: its command does not make it"
        if "images_per_step" in entry:  # the images today's code forwards for that variant and config
            cfg = variant_config(load_yaml(ROOT / entry["config"]), entry["variant"], entry["seed"], [])
            assert images_per_step(cfg) == entry["images_per_step"], f"{path.name}: {name}: images per step"
        for which in ("last", "best", "last_lcc"):
            for metric, value in entry.get(which, {}).get("mean", {}).items():
                if metric.startswith(("dice", "jaccard")):
                    assert value is None or 0 <= value <= 1, f"{path.name}: {name}: {metric} is a fraction"


def test_no_work_period_wording_in_the_docs():
    """Runs are named by their CPU and command, never by the work period they were made in."""
    for page in [ROOT / "README.md", *DOCS.rglob("*.md"), *DOCS.rglob("*.md.in")]:
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            assert not re.search(r"\bsessions?\b", line, re.I), f"{page.relative_to(ROOT)}:{number}: {line.strip()}"


def test_relative_links_of_the_results_pages_resolve():
    for page in [ROOT / "README.md", RESULTS, *sorted((DOCS / "results").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)", page.read_text(encoding="utf-8")):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.relative_to(ROOT)}: broken link {target}"


def test_adding_a_parity_score_keeps_its_side_and_names_its_file(tmp_path):
    """`make_results_tables.py --add` on the output of `benchmarks/parity.py score`: the entry keeps which
    side made it and its image resize (the parity table's test relies on them) and names the file read."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_results_tables", ROOT / "docs" / "make_results_tables.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    scores = tmp_path / "parity" / "scores_mt.json"
    scores.parent.mkdir()
    scores.write_text(json.dumps({"ssl4mis_mean_teacher_s1337": {
        "variant": "ssl4mis_mean_teacher", "seed": 1337, "eval_split": "val.list", "eval_list": "val.list",
        "side": "reference", "image_resize": "zoom_nearest", "train_summary": {"iterations": 4000, "precision": "bf16"},
        "last": {"mean": {"dice": 0.7}, "per_case": [], "iteration": 4000}}}))
    to = tmp_path / "parity.json"
    tool.add_runs(scores, None, to, "Intel Xeon, AMX, 2 cores",
                  "python benchmarks/parity.py train --reference ../SSL4MIS --method mean_teacher --seed 1337", None)
    entry = json.loads(to.read_text())["ssl4mis_mean_teacher_s1337"]
    assert (entry["side"], entry["image_resize"]) == ("reference", "zoom_nearest")
    assert entry["source"].endswith("parity/scores_mt.json") and entry["iterations"] == 4000
    assert "wall_minutes" not in entry  # no train_seconds and no run folder: the minutes are unknown


def test_added_runs_carry_their_training_minutes_across_a_resume(tmp_path):
    """A run imported with --add records its training wall time: the log's clock restarts when a run
    resumes, so each segment counts up to its last record (here 600 s + 1200 s = 30 minutes)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_results_tables", ROOT / "docs" / "make_results_tables.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    run = tmp_path / "exp" / "bfa_s1"
    run.mkdir(parents=True)
    records = [{"iteration": 50, "time": 300.0}, {"iteration": 100, "time": 600.0}, {"iteration": 100, "val_dice": 0.5},
               {"iteration": 150, "time": 400.0}, {"iteration": 200, "time": 1200.0}]
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    results = tmp_path / "exp" / "results.json"
    results.write_text(json.dumps({"bfa_s1": {"variant": "bfa", "seed": 1, "eval_split": "val.list",
                                              "last": {"mean": {"dice": 0.7}, "per_case": [], "iteration": 200}}}))
    to = tmp_path / "acdc.json"
    tool.add_runs(results, None, to, "Intel Xeon, AMX, 2 cores", "bfaseg experiment c.yaml --seeds 1 --methods bfa", None)
    assert json.loads(to.read_text())["bfa_s1"]["wall_minutes"] == 30
