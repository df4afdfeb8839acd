"""Assemble the archived bfaseg 0.1 results page (docs/RESULTS_0.1.md; its text is the archive section of
docs/RESULTS.md, whose headline is written by hand around copied tables) from docs/RESULTS.md.in and the results.md files that
`bfaseg experiment` wrote (tables are copied, never typed):

    python docs/make_results_doc.py runs/acdc10 runs/acdc10_rotate runs/acdc5 runs/la10 runs/acdc_precision_fp32 runs/acdc_precision_bf16
"""

import sys
from pathlib import Path

TITLES = {"acdc10": "ACDC, 10 % labels (136 slices of 7 patients), incl. BFA ablation",
          "acdc5": "ACDC, 5 % labels (68 slices of 3 patients)",
          "acdc10_rotate": "ACDC 10 %, orientation-preserving augmentation (data.rotation=rotate), BFA and full",
          "la10": "LA, 10 % labels (8 of 40 cases), half resolution",
          "acdc_precision_fp32": "bf16 against fp32: supervised ACDC 10 %, 300 iterations, fp32",
          "acdc_precision_bf16": "bf16 against fp32: supervised ACDC 10 %, 300 iterations, bf16 (training and inference)"}


def main() -> None:
    doc = Path("docs/RESULTS.md.in").read_text()
    findings = Path("docs/RESULTS_findings.md").read_text() if Path("docs/RESULTS_findings.md").exists() else ""
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
                parts.append(f"{TITLES.get(name, name)}: {title}\n\n![{name} {title}](figures/{name}_{kind}.png)\n")
    Path("docs/RESULTS_0.1.md").write_text("\n".join(parts))  # never over the current page
    print("wrote docs/RESULTS_0.1.md")


if __name__ == "__main__":
    main()
