"""Mutation score per file and per function of the core, from mutmut's result files.

    python scripts/mutation/mutation_report.py /tmp/efx-mutation/src [/tmp/rerun/src]   # after mutation.sh

Reads mutants/<file>.meta (mutmut 3: exit code per mutant; 1 or 3 killed, 0 survived, 33/5
no test covers it, 24/36/... timeout). Counts only the functions of the core listed in
mutation.sh (FUNCS); survivors named in mutation_equivalent.txt count as equivalent, those in
mutation_unreached_cpu.txt as unreached on CPU (score = killed / (mutants - both)); lists every other survivor."""
import collections
import fnmatch
import json
import re
import sys
from pathlib import Path

srcs = [Path(p) for p in sys.argv[1:]] or [Path("/tmp/efx-mutation/src")]   # later runs win
funcs = re.findall(r'"([^"]+\*)"', (Path(__file__).parent / "mutation.sh").read_text())
STATUS = {0: "survived", 1: "killed", 3: "killed", 5: "no tests", 33: "no tests", None: "not checked"}
def listed(fn):
    """{mutant pattern: reason} of one of the two lists beside this script."""
    return dict(line.split(" | ", 1) for line in (Path(__file__).parent / fn).read_text().splitlines()
                if line.strip() and not line.startswith("#"))


equivalent = listed("mutation_equivalent.txt")          # no test can tell them apart
unreached = listed("mutation_unreached_cpu.txt")        # device mistakes: only a CUDA test can
rows, survivors = collections.defaultdict(collections.Counter), []
codes = {}                                          # (file, mutant) -> exit code of its last check
for src in srcs:
    for meta in sorted((src / "mutants").rglob("*.py.meta")):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            if code is not None or (meta.name, name) not in codes:
                codes[meta.name, name] = code
for (meta_name, name), code in codes.items():
    if any(fnmatch.fnmatch(name, f) for f in funcs):
        status = STATUS.get(code, "timeout" if code in (24, -24, 36, 152, 255) else "other")
        if status == "survived" and any(fnmatch.fnmatch(name, e) for e in equivalent):
            status = "equivalent"
        elif status == "survived" and any(fnmatch.fnmatch(name, e) for e in unreached):
            status = "unreached on CPU"
        rows[meta_name.removesuffix(".meta")][status] += 1
        survivors += [name] if status == "survived" else []
total = sum(rows.values(), collections.Counter())
print(f"{'file':<10}{'mutants':>9}{'killed':>8}{'timeout':>9}{'equivalent':>12}{'unreached':>11}"
      f"{'survived':>10}{'no tests':>10}{'unchecked':>11}{'score':>8}")
for f, c in list(rows.items()) + [("all", total)]:
    n = sum(c.values())
    scored = n - c["equivalent"] - c["unreached on CPU"]    # score = killed / (mutants - both lists)
    print(f"{f:<10}{n:>9}{c['killed']:>8}{c['timeout']:>9}{c['equivalent']:>12}{c['unreached on CPU']:>11}"
          f"{c['survived']:>10}"
          f"{c['no tests']:>10}{c['not checked']:>11}{100 * (c['killed'] + c['timeout']) / max(scored, 1):>7.1f}%")
print("\nsurvivors:", *survivors, sep="\n  ")
