"""Rewrite the marked tables of the results pages from the results files committed under docs/results/.

Every table of docs/RESULTS.md, README.md and docs/results/*.md that sits between
``<!-- table ... -->`` and ``<!-- /table -->`` is computed by ``bfaseg.reporting.refresh_tables`` from
the results file its marker names (mean ± sample standard deviation over seeds, seed counts, per-run
rows); nothing in it is typed by hand. tests/test_results_page.py fails when a table differs from what
its results file gives.

    python docs/make_results_tables.py            # rewrite the tables
    python docs/make_results_tables.py --check    # exit 1 if a table is out of date

A new run: add its entry to the results file and rewrite the tables. From a `bfaseg experiment` folder:

    python docs/make_results_tables.py --add runs/acdc10_converged/results.json --runs bfa_s3 \\
        --to docs/results/acdc_converged.json --cpu "Intel Xeon, AMX, 2 cores" \\
        --command "bfaseg experiment configs/acdc/cpu_converged.yaml --seeds 3 --methods bfa --output runs/acdc10_converged"

(a new variant also goes into the ``rows=`` of the marker of the table that should show it).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from bfaseg.errors import BfasegError
from bfaseg.reporting import load_results, plateau, read_run, refresh_tables

ROOT = Path(__file__).resolve().parents[1]


def pages() -> list[Path]:
    """Every page that may hold marked tables, repository-relative order."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "docs" / "results").glob("*.md"))]


def stale_pages() -> dict[Path, str]:
    """page -> its text with fresh tables, for the pages whose tables are out of date."""
    out = {}
    for page in pages():
        text = page.read_text(encoding="utf-8")
        fresh = refresh_tables(text, page.parent)
        if fresh != text:
            out[page] = fresh
    return out


def _option(command: str, name: str) -> str | None:
    words = shlex.split(command)
    return words[words.index(name) + 1] if name in words and words.index(name) + 1 < len(words) else None


def slim_entry(entry: dict, run_dir: Path, cpu: str, command: str, note: str | None,
               results_name: str = "results.json") -> dict:
    """An experiment's results.json entry as committed under docs/results/: the means of every evaluation
    and the count of (case, class) pairs left out of the distance means, not the per-case rows."""
    # side and image_resize: an entry of benchmarks/parity.py score (a reference run or its bfaseg peer)
    out = {k: entry[k] for k in ("variant", "seed", "eval_split", "eval_list", "side", "image_resize") if k in entry}
    config = command.split()[2] if command.startswith("bfaseg experiment ") else None
    out.update(config=config, command=command, cpu=cpu)
    summary = entry.get("train_summary") or {}
    for key in ("iterations", "precision"):
        if key in summary:
            out[key] = summary[key]
    if summary.get("teacher_mode"):  # recorded since the per-method default (None: a method without a teacher)
        out["teacher_mode"] = summary["teacher_mode"]
    if "images_per_step" in entry:
        out["images_per_step"] = entry["images_per_step"]
    for which in ("last", "best", "last_lcc"):
        if which in entry:
            ev = entry[which]
            missed = sum(1 for row in ev.get("per_case", []) for k, v in row.items() if k.startswith("hd95_") and v is None)
            out[which] = {"mean": ev["mean"], "missed": missed, "iteration": ev.get("iteration")}
    if (run_dir / "log.jsonl").exists():
        p = plateau(read_run(run_dir, with_method=False).val)
        if p is not None:
            out["plateau"] = p
    seconds = entry.get("train_seconds") or _logged_seconds(run_dir / "log.jsonl")
    if seconds:
        out["wall_minutes"] = round(seconds / 60)
    if note:
        out["note"] = note
    out["source"] = f"imported with docs/make_results_tables.py --add from {run_dir.parent.name}/{results_name}"
    return out


def _logged_seconds(log: Path) -> float | None:
    """The training wall time a run's log.jsonl recorded (its ``time`` key), if the run folder is here. The
    clock restarts when a run resumes: each segment counts up to its last record."""
    if not log.exists():
        return None
    times = [rec["time"] for rec in map(json.loads, log.read_text().splitlines()) if "time" in rec]
    done = sum(prev for prev, cur in zip(times, times[1:]) if cur < prev)
    return done + times[-1] if times else None


def add_runs(results_json: Path, names: list[str] | None, to: Path, cpu: str, command: str, note: str | None) -> list[str]:
    results = load_results(results_json)
    target = load_results(to) if to.exists() else {}
    names = names or list(results)
    unknown = [n for n in names if n not in results]
    if unknown:
        raise BfasegError(f"--runs: not in {results_json}: {', '.join(unknown)}")
    methods, seeds = _option(command, "--methods"), _option(command, "--seeds")
    for name in names:
        entry = results[name]
        if methods and entry["variant"] not in methods.split(","):
            raise BfasegError(f"--command: its --methods do not include {entry['variant']} ({name})")
        if seeds and str(entry["seed"]) not in seeds.split(","):
            raise BfasegError(f"--command: its --seeds do not include {entry['seed']} ({name})")
        if name in target:
            raise BfasegError(f"{to}: already holds a run {name}; name the new one otherwise or remove the old entry")
        target[name] = slim_entry(entry, results_json.parent / name, cpu, command, note, results_json.name)
    to.write_text(json.dumps(target, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return names


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table is out of date")
    p.add_argument("--add", type=Path, metavar="RESULTS_JSON", help="an experiment's results.json to import runs from")
    p.add_argument("--runs", help="with --add: the run names to import (default: all)")
    p.add_argument("--to", type=Path, help="with --add: the results file under docs/results/")
    p.add_argument("--cpu", help="with --add: the CPU the runs were made on, e.g. 'Intel Xeon, AMX, 2 cores'")
    p.add_argument("--command", help="with --add: the `bfaseg experiment` command that makes the runs")
    p.add_argument("--note", help="with --add: how the runs were made (threads, what ran beside them)")
    args = p.parse_args(argv)
    try:
        if args.add:
            if not (args.to and args.cpu and args.command):
                p.error("--add needs --to, --cpu and --command")
            added = add_runs(args.add, args.runs.split(",") if args.runs else None, args.to, args.cpu, args.command,
                             args.note)
            print(f"added {', '.join(added)} to {args.to}")
        stale = stale_pages()
    except BfasegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for page, text in stale.items():
        rel = page.relative_to(ROOT)
        if args.check:
            print(f"out of date: {rel}")
        else:
            page.write_text(text, encoding="utf-8")
            print(f"rewrote the tables of {rel}")
    if not stale:
        print("every table is up to date")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    raise SystemExit(main())
