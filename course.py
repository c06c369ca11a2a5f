"""course.py: course assignments made from the reference code, graded by its equation tests.

    python course.py make --out DIR [--tasks T3 T4]        # a student tree, the tasks' bodies blank
    python course.py grade [--tasks T3] [--hidden DIR]     # points per task, first failure of each
    python course.py restore DIR [--tasks T1]              # the reference bodies back into a tree

The reference code marks every body a student writes with one comment line at each end,
"# BEGIN SOLUTION T3" and "# END SOLUTION T3". `make` copies the tree (the files git knows,
never its history), replaces each marked body of a chosen task by one `raise
NotImplementedError(...)`, drops the marker lines of the other tasks and leaves out the
instructor's files (LEFT_OUT, the hidden tests among them). `grade` runs the tests marked
t1 .. t6 (registered in tests/conftest.py), plus those of --hidden, in one pytest session and
counts one point per passing test. Handouts: course/T1.md .. T6.md; details: docs/course.md.
"""
import argparse
import ast
import contextlib
import io
import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent

TASKS = {   # id -> title; the order builds: each task reads what the earlier ones made
    "T1": "the model (§2): RMSNorm, RoPE, GQA attention, SwiGLU",
    "T2": "LoRA (E0): forward, merge, masked merge",
    "T3": "calibration and scores (E1, E3, E5-E10)",
    "T4": "Optimal Brain Surgeon: SparseGPT, OBS for a mask (E11, E16)",
    "T5": "Partial Brain Surgeon (E12-E15) and the merge (§7)",
    "T6": "the schedule: pruning inside LoRA training (§8)",
}
# What the NotImplementedError of each marked body says, by its function's qualified name.
WHAT = {
    "RMSNorm.forward": "RMSNorm, method §2",
    "rope_inv_freq": "RoPE frequencies with llama3 scaling, method §2",
    "apply_rope": "rotate-half RoPE, method §2",
    "Attention.forward": "attention with GQA, method §2",
    "MLP.forward": "SwiGLU, method §2",
    "LoRALinear.reset_lora": "Kaiming-uniform A and zero B, E0",
    "LoRALinear.forward": "the adapter's forward, E0",
    "LoRALinear.augmented_weight": "W + s B A, E0",
    "LoRALinear.merge": "merge and masked merge, E0",
    "calibrate_block.hook": "calibration statistics h and H, E1",
    "wanda_score": "Wanda score, E3",
    "consumer_energy": "consumer energies, the E5 table",
    "partner_factor": "partner factors, the E6 table",
    "foresight_score": "ForeSight score, E5/E6",
    "average_score": "score average, E7",
    "select_mask": "masks per row, per layer and N:M, E8-E10",
    "sparsegpt_prune": "SparseGPT and OBS reconstruction for a mask, E11/E16",
    "pbs_update": "Partial Brain Surgeon, E12-E14",
    "merge_error_parts": "the merged error split by the mask, method §7 note",
    "gram_pbs_update": "Gram PBS, E15",
    "prune_points": "intermediate pruning steps, method §8",
    "ramp": "the sparsity ramp, method §8",
    "run": "the pruning calls around the training loop, method §8",
}
# Instructor-only, never in a student tree: the hidden tests and T5's model answer; the checks
# of the reference's markers; the mutation lists (they quote pieces of the reference bodies).
LEFT_OUT = ("course/hidden/", "tests/test_course.py", "scripts/mutation/")
SKIP_DIRS = {".git", ".cache", "runs", "__pycache__", ".pytest_cache"}   # without git: never copied
BEGIN = re.compile(r"(\s*)# BEGIN SOLUTION (T\d+)")
END = re.compile(r"(\s*)# END SOLUTION (T\d+)")
ANSWER = "## Your answer"         # the written part of a handout (T5) starts below this heading


# ----------------------------------------------------------------------------- markers
@dataclass
class Region:
    """One marked body: lines[begin] and lines[end] are its marker lines (0-based)."""
    task: str
    begin: int
    end: int
    indent: str
    where: str                    # the qualified name of the function holding it

    def blank(self):
        what = WHAT[self.where]
        return f'{self.indent}raise NotImplementedError("{self.task}: {what}, see course/{self.task}.md")\n'


def _functions(text):
    """[(first line, last line, qualified name)] of every def in text (1-based lines)."""
    out = []

    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if not isinstance(child, ast.ClassDef):
                    out.append((child.lineno, child.end_lineno, prefix + child.name))
                walk(child, prefix + child.name + ".")
            else:
                walk(child, prefix)
    walk(ast.parse(text), "")
    return out


def regions(path, text):
    """The marked bodies of one file, checked: paired, not nested, same indentation at both
    ends, inside a function named in WHAT, of a task in TASKS. Errors name file and line."""
    lines, out, start = text.splitlines(keepends=True), [], None
    for i, line in enumerate(lines):
        b, e = BEGIN.fullmatch(line.rstrip("\n")), END.fullmatch(line.rstrip("\n"))
        if b and start is not None:
            raise ValueError(f"{path}:{i + 1}: BEGIN SOLUTION inside the one opened at line {start[0] + 1}")
        if b:
            start = (i, b)
        elif e:
            if start is None or e[2] != start[1][2] or e[1] != start[1][1]:
                raise ValueError(f"{path}:{i + 1}: END SOLUTION {e[2]} does not close a BEGIN SOLUTION "
                                 f"{e[2]} of the same indentation")
            out.append(Region(e[2], start[0], i, e[1], ""))
            start = None
    if start is not None:
        raise ValueError(f"{path}:{start[0] + 1}: BEGIN SOLUTION {start[1][2]} is never closed")
    for reg in out:
        if reg.task not in TASKS:
            raise ValueError(f"{path}:{reg.begin + 1}: task {reg.task} is not in course.py's TASKS")
        if reg.end == reg.begin + 1:
            raise ValueError(f"{path}:{reg.begin + 1}: an empty marked body")
    try:
        funcs = _functions(text) if out else []
    except SyntaxError as e:
        raise ValueError(f"{path}:{e.lineno}: {e.msg}") from None
    for reg in out:
        # The first body line decides: a def's last line (ast's end_lineno) is its last
        # statement, so the END marker after it lies outside.
        inside = [f for f in funcs if f[0] < reg.begin + 2 <= f[1]]
        reg.where = max(inside)[2] if inside else ""          # the innermost def
        if reg.where not in WHAT:
            raise ValueError(f"{path}:{reg.begin + 1}: the body of {reg.where or 'no function'} is "
                             "marked: add what it computes to course.py's WHAT")
    return out


def transform(path, text, blank):
    """text without marker lines; the bodies of the tasks in `blank` replaced by their raise."""
    lines = text.splitlines(keepends=True)
    out, last = [], 0
    for reg in regions(path, text):
        out += lines[last:reg.begin]
        out += [reg.blank()] if reg.task in blank else lines[reg.begin + 1:reg.end]
        last = reg.end + 1
    return "".join(out + lines[last:])


def source_files(root):
    """The files of the tree at root (relative paths): those git knows (tracked, or new and
    not ignored) and that exist; without git, every file outside SKIP_DIRS."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                cwd=root, capture_output=True, check=True).stdout.decode()
        files = sorted({p for p in listed.split("\0") if p and (root / p).is_file()})
    except (OSError, subprocess.CalledProcessError):
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*")
                       if p.is_file() and not SKIP_DIRS & set(p.relative_to(root).parts))
    return [p for p in files if not p.startswith(LEFT_OUT)]


def marked_files(root):
    """{relative path: its regions} of every Python file with markers (tests hold none)."""
    out = {}
    for rel in source_files(root):
        if rel.endswith(".py") and not rel.startswith("tests/"):
            text = (root / rel).read_text()
            if "SOLUTION T" in text and (regs := regions(rel, text)):
                out[rel] = regs
    return out


# ----------------------------------------------------------------------------- make, restore
def make(out, tasks, root=HERE, log=print):
    """Write the student tree of `tasks` to out (new or empty); returns {task: (bodies, lines)}."""
    t0, out = time.time(), Path(out).resolve()
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"course.py make: {out} is not empty; choose a new folder")
    if out == root or root in out.parents:
        raise SystemExit(f"course.py make: {out} is inside the reference tree {root}")
    marked, blanked = marked_files(root), {t: [0, 0] for t in tasks}
    files = source_files(root)
    for rel in files:
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if rel in marked:
            text = (root / rel).read_text()
            dst.write_text(transform(rel, text, tasks))
            for reg in marked[rel]:
                if reg.task in tasks:
                    blanked[reg.task][0] += 1
                    blanked[reg.task][1] += reg.end - reg.begin - 1
        else:
            shutil.copy2(root / rel, dst)
    _write_index(out, marked, tasks)
    log(f"course.py make: {len(files)} files -> {out} in {time.time() - t0:.1f}s; left out: "
        f"{', '.join(LEFT_OUT)} and the git history")
    for t, (n, k) in blanked.items():
        log(f"  {t}: bodies blank {n}, reference lines {k}; handout course/{t}.md")
    return {t: tuple(v) for t, v in blanked.items()}


def _write_index(out, marked, tasks):
    """course/this-tree.md: which tasks this tree blanks, each blank body by file and line."""
    rows = []
    for rel, regs in marked.items():
        shift = 0                # line numbers in the student file: markers gone, bodies shrunk
        for reg in regs:
            if reg.task in tasks:
                rows.append(f"* {reg.task} `{rel}:{reg.begin + 1 - shift}` `{reg.where}`: {WHAT[reg.where]}")
                shift += reg.end - reg.begin
            else:
                shift += 2
    rows = [f"# This tree\n\nMade by `python course.py make --tasks {' '.join(tasks)}`. Blank bodies, "
            "each a `raise NotImplementedError` to replace:\n"] + sorted(rows, key=lambda row: row[2:4])
    rows.append("\nCheck one task: `python course.py grade --tasks T3`; all: `python course.py grade`.\n")
    (out / "course").mkdir(exist_ok=True)
    (out / "course" / "this-tree.md").write_text("\n".join(rows))


def restore(tree, tasks=None, root=HERE, log=print):
    """Write the reference bodies back where a tree made by make still raises; returns the
    number restored per task. A body the student has written is left alone."""
    done = {}
    for rel, regs in marked_files(root).items():
        text = (Path(tree) / rel).read_text()
        ref = (root / rel).read_text().splitlines(keepends=True)
        todo = [(reg.blank(), ref[reg.begin + 1:reg.end], reg.task) for reg in regs
                if tasks is None or reg.task in tasks]
        out = []
        for line in text.splitlines(keepends=True):
            hit = next((i for i, t in enumerate(todo) if t[0] == line), None)
            if hit is None:
                out.append(line)
            else:             # the first open body with this message: bodies keep their order
                _, body, task = todo.pop(hit)
                out += body
                done[task] = done.get(task, 0) + 1
        (Path(tree) / rel).write_text("".join(out))
    log(f"course.py restore: {', '.join(f'{t}: {n}' for t, n in sorted(done.items())) or 'nothing'} "
        f"bodies written back into {tree}")
    return done


# ----------------------------------------------------------------------------- grade
class _Collect:
    """pytest plugin: the task and outcome of every collected test, the collection errors."""

    def __init__(self, tasks):
        self.tasks, self.items, self.errors = tasks, {}, []

    def pytest_collection_modifyitems(self, items):
        for item in items:
            marks = sorted({m.name.upper() for m in item.iter_markers() if m.name.upper() in TASKS})
            if len(marks) > 1:          # it could not be graded apart from the other task
                self.errors.append(f"{item.nodeid}: marked for {marks}; a test belongs to one task")
            elif marks and marks[0] in self.tasks:
                self.items[item.nodeid] = {"task": marks[0], "outcome": "passed", "message": ""}

    def pytest_collectreport(self, report):
        if report.failed:
            self.errors.append(f"{report.nodeid}: {str(report.longrepr).strip().splitlines()[-1]}")

    def pytest_runtest_logreport(self, report):
        rec = self.items.get(report.nodeid)
        if rec is None or rec["outcome"] != "passed":
            return
        if report.skipped and report.when != "teardown":
            rec["outcome"] = "skipped"
        elif report.failed:
            crash = getattr(report.longrepr, "reprcrash", None)
            msg = crash.message if crash is not None else str(report.longrepr)
            rec.update(outcome="failed", message=msg.strip().splitlines()[0] if msg.strip() else "failed")


def grade(tasks, hidden=None, root=HERE, log=print):
    """Run the tests of `tasks` (and of the folder `hidden`) in one pytest session; returns
    {"tasks": {task: {"points", "of", "first_failure"}}, "tests": {...}, "errors": [...]}."""
    import pytest
    if hidden is not None and not Path(hidden).is_dir():
        raise SystemExit(f"course.py grade: --hidden {hidden} is not a folder")
    t0 = time.time()
    sys.path.insert(0, str(root))
    paths = [str(root / "tests")] + ([str(Path(hidden).resolve())] if hidden else [])
    plugin, buf = _Collect(tasks), io.StringIO()
    # Native tracebacks: a tree of blank bodies grades in 2.5 s instead of 7.5 s (pytest's
    # own tracebacks read and format the source of every failure; only its first line is shown).
    args = ["-q", "--tb=native", "-p", "no:cacheprovider", "--continue-on-collection-errors",
            "--rootdir", str(root), "-m", " or ".join(t.lower() for t in tasks), *paths]
    with contextlib.redirect_stdout(buf):
        pytest.main(args, plugins=[plugin])
    # A test module that does not import (a syntax error in the code it imports) leaves its
    # tests uncollected: they are neither points nor counted, so the total is then incomplete.
    res = {"tasks": {}, "tests": plugin.items, "errors": plugin.errors, "complete": not plugin.errors,
           "time_s": time.time() - t0}
    for t in tasks:
        mine = [(k, v) for k, v in plugin.items.items() if v["task"] == t and v["outcome"] != "skipped"]
        failed = [(k, v) for k, v in mine if v["outcome"] == "failed"]
        first = f"{failed[0][0].split('::')[-1]}: {failed[0][1]['message']}" if failed else ""
        res["tasks"][t] = {"points": len(mine) - len(failed), "of": len(mine), "first_failure": first}
    _report(res, root, hidden, log)
    return res


def _report(res, root, hidden, log):
    log(f"course.py grade: tests marked {', '.join(t.lower() for t in res['tasks'])} in "
        f"{root / 'tests'}{' and ' + str(hidden) if hidden else ''}, one point per test "
        f"({res['time_s']:.1f}s)")
    for err in res["errors"]:
        log(f"  not collected, its tests are not counted: {err[:200]}")
    for t, r in res["tasks"].items():
        log(f"{t}  {TASKS[t]:<60} {r['points']:>3}/{r['of']}")
        if r["first_failure"]:
            log(f"      first failure: {r['first_failure'][:150]}")
        answer = _written_answer(root, t)
        if answer is not None:
            log(f"      written answer in course/{t}.md: {answer} words (graded by the instructor)")
    points, of = (sum(r[k] for r in res["tasks"].values()) for k in ("points", "of"))
    log(f"total {points}/{of}" + ("" if res["complete"] else
                                   f"; incomplete: {len(res['errors'])} test module(s) did not import"))


def _written_answer(root, task):
    """Words below the handout's answer heading, None if the task has no written part."""
    path = root / "course" / f"{task}.md"
    text = path.read_text() if path.exists() else ""
    if ANSWER not in text:
        return None
    return len(re.sub(r"<!--.*?-->", "", text.split(ANSWER, 1)[1], flags=re.S).split())


# ----------------------------------------------------------------------------- command line
def _tasks(names):
    tasks = [n.upper() for n in names] if names else list(TASKS)
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise SystemExit(f"course.py: unknown task(s) {bad}; tasks are {', '.join(TASKS)}")
    return tasks


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make", help="write a student tree with the tasks' bodies blank")
    mk.add_argument("--out", required=True, help="a new or empty folder")
    mk.add_argument("--tasks", nargs="*", help="tasks to blank (default: all)")
    gr = sub.add_parser("grade", help="run the tasks' tests, points per task")
    gr.add_argument("--tasks", nargs="*", help="tasks to grade (default: all)")
    gr.add_argument("--hidden", help="folder of the instructor's hidden tests (course/hidden/)")
    gr.add_argument("--json", help="also write the result, per test, to this file")
    rs = sub.add_parser("restore", help="write the reference bodies back into a student tree")
    rs.add_argument("tree")
    rs.add_argument("--tasks", nargs="*", help="tasks to restore (default: all)")
    a = p.parse_args(argv)
    try:
        if a.cmd == "make":
            make(a.out, _tasks(a.tasks))
        elif a.cmd == "restore":
            restore(a.tree, _tasks(a.tasks))
        else:
            res = grade(_tasks(a.tasks), a.hidden)
            if a.json:
                Path(a.json).write_text(json.dumps(res, indent=1))
            full = res["complete"] and all(r["points"] == r["of"] for r in res["tasks"].values())
            return 0 if full else 1
    except ValueError as e:                       # a marker error, named by file and line
        raise SystemExit(f"course.py: {e}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
