"""Assemble the archived bfaseg 0.1 results page, docs/results/archive_0_1.md, from
docs/results/archive_0_1.md.in, docs/results/archive_0_1_findings.md and the results.md files that
`bfaseg experiment` wrote for those runs (tables are copied, never typed):

    python docs/make_results_doc.py runs/acdc10 runs/acdc10_rotate runs/acdc5 runs/la10 runs/acdc_precision_fp32 runs/acdc_precision_bf16

Today's results page, docs/RESULTS.md, is not written by this script: its tables come from the results
files under docs/results/ (docs/make_results_tables.py).
"""

import sys
from pathlib import Path

TITLES = {"acdc10": "ACDC, 10 % labels (136 slices of 7 patients), incl. BFA ablation",
          "acdc5": "ACDC, 5 % labels (68 slices of 3 patients)",
          "acdc10_rotate": "ACDC 10 %, orientation-preserving augmentation (data.rotation=rotate), BFA and full",
          "la10": "LA, 10 % labels (8 of 40 cases), half resolution",
          "acdc_precision_fp32": "bf16 against fp32: supervised ACDC 10 %, 300 iterations, fp32",
          "acdc_precision_bf16": "bf16 against fp32: supervised ACDC 10 %, 300 iterations, bf16 (training and inference)"}
HERE = Path("docs/results")


def main() -> None:
    doc = (HERE / "archive_0_1.md.in").read_text()
    findings = (HERE / "archive_0_1_findings.md").read_text()
    parts = [doc, findings]
    for folder in sys.argv[1:]:
        name = Path(folder).name
        table = (Path(folder) / "results.md").read_text().replace("### ", "#### ")
        parts.append(f"\n## {TITLES.get(name, name)}\n\n(`{folder}/results.md`)\n\n{table}\n")
    parts.append("\n## Curves and predictions\n")
    for folder in sys.argv[1:]:
        name = Path(folder).name
        for kind, title in (("curves", "validation Dice during training"), ("predictions", "predictions on validation slices")):
            if Path(f"docs/figures/{name}_{kind}.png").exists():
                parts.append(f"{TITLES.get(name, name)}: {title}\n\n![{name} {title}](../figures/{name}_{kind}.png)\n")
    (HERE / "archive_0_1.md").write_text("\n".join(parts))
    print(f"wrote {HERE / 'archive_0_1.md'}")


if __name__ == "__main__":
    main()
