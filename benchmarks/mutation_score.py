"""Per-module mutation score from ``mutmut results --all true`` on stdin (see benchmarks/mutation.sh)."""

import fnmatch
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

equivalent_file = Path(sys.argv[1])
patterns = sys.argv[2:] or ["*"]
equivalent = set()
if equivalent_file.is_file():
    equivalent = {line.split("#")[0].strip() for line in equivalent_file.read_text().splitlines()} - {""}

counts: dict[str, Counter] = defaultdict(Counter)
survivors = []
for line in sys.stdin:
    m = re.match(r"\s*(\S+): (.+)$", line)
    if not m:
        continue
    name, status = m.group(1), m.group(2).strip()
    if not any(fnmatch.fnmatch(name, p) for p in patterns) or status == "not checked":
        continue
    module = re.split(r"\.x[_ǁ]", name, maxsplit=1)[0]
    if name in equivalent:
        status = "equivalent"
    counts[module][status] += 1
    if status in ("survived", "no tests", "timeout", "suspicious"):
        survivors.append(f"{name}: {status}")

total = Counter()
print(f"{'module':40s} {'killed':>7s} {'surv.':>6s} {'equiv.':>6s} {'other':>6s} {'score':>7s}")
for module in sorted(counts):
    c = counts[module]
    total.update(c)
    other = sum(v for k, v in c.items() if k not in ("killed", "survived", "equivalent"))
    scored = sum(c.values()) - c["equivalent"]
    score = 100.0 * c["killed"] / scored if scored else float("nan")
    print(f"{module:40s} {c['killed']:7d} {c['survived']:6d} {c['equivalent']:6d} {other:6d} {score:6.1f}%")
scored = sum(total.values()) - total["equivalent"]
other = sum(v for k, v in total.items() if k not in ("killed", "survived", "equivalent"))
print(f"{'TOTAL':40s} {total['killed']:7d} {total['survived']:6d} {total['equivalent']:6d} {other:6d} "
      f"{(100.0 * total['killed'] / scored if scored else float('nan')):6.1f}%")
if survivors:
    print("\nnot killed (inspect with `mutmut show NAME`):")
    print("\n".join(f"  {s}" for s in survivors))
