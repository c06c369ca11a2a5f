"""course.py (docs/course.md): the markers, the student tree, the round trip back to the
reference, and the grades: a tree with every task blank scores 0 with each test failing on its
own task's NotImplementedError; a tree with all tasks but one blank gives that one full marks
(a task is graded apart from the others); the reference gives full marks, hidden tests
included. Each grade runs in its own process (a tree's modules cannot share one), two at once.

Run: python -m pytest -q tests/test_course.py
"""
import concurrent.futures
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import course

REPO = Path(__file__).resolve().parents[1]
HIDDEN = REPO / "course" / "hidden"


def regions():
    return [reg for regs in course.marked_files(REPO).values() for reg in regs]


def test_course_every_task_has_bodies_tests_and_a_handout():
    """Every task has marked bodies, tests marked with its id and a handout that names each
    function it blanks; every entry of course.WHAT marks a body."""
    regs = regions()
    assert {reg.task for reg in regs} == set(course.TASKS)
    assert {reg.where for reg in regs} == set(course.WHAT)
    tests = "".join(p.read_text() for p in sorted((REPO / "tests").glob("test_*.py")))
    hidden = (HIDDEN / "test_hidden.py").read_text()
    for task in course.TASKS:
        handout = (REPO / "course" / f"{task}.md").read_text()
        # a method by Class.method, a nested function (calibrate_block's hook) by its outer one
        named = {reg.where if reg.where[0].isupper() else reg.where.split(".")[0]
                 for reg in regs if reg.task == task}
        assert all(f"`{f}" in handout for f in named), (task, named)
        assert f"@pytest.mark.{task.lower()}\n" in tests and f"@pytest.mark.{task.lower()}\n" in hidden, task


def test_course_marker_errors_name_the_file_and_line():
    begin, end = "    # BEGIN SOLUTION T3\n", "    # END SOLUTION T3\n"
    f = "def wanda_score(W, h):\n"
    cases = [(f + begin + "    return W\n", r"x\.py:2: BEGIN SOLUTION T3 is never closed"),
             (f + begin + begin + "    return W\n" + end, r"x\.py:3: BEGIN SOLUTION inside"),
             (f + begin + "    return W\n" + end.replace("T3", "T4"), r"x\.py:4: END SOLUTION T4 does not"),
             (f + begin.replace("T3", "T9") + "    return W\n" + end.replace("T3", "T9"), r"task T9 is not"),
             ("def nowhere():\n" + begin + "    return 1\n" + end, r"nowhere is marked: add"),
             (f + begin + end, r"x\.py:2: an empty marked body")]
    for text, words in cases:
        with pytest.raises(ValueError, match=words):
            course.regions("x.py", text)
    text = f + "    h = h.sqrt()\n" + begin + "    return W.abs() * h\n" + end
    assert course.transform("x.py", text, ["T3"]) == (f + "    h = h.sqrt()\n    raise NotImplementedError("
                                                     '"T3: Wanda score, E3, see course/T3.md")\n')
    assert course.transform("x.py", text, []) == f + "    h = h.sqrt()\n    return W.abs() * h\n"


def test_course_make_then_restore_gives_the_reference_back(tmp_path):
    """The student tree: no marker left, every blanked body one raise, the instructor's files and
    the git history left out; restore writes the bodies back, byte for byte the reference without
    its marker lines; every other file is the reference's. make refuses a non-empty folder."""
    blanked = course.make(tmp_path / "s", list(course.TASKS), log=lambda *a: None)
    marked = course.marked_files(REPO)
    assert sum(n for n, _ in blanked.values()) == len(regions())
    for rel in course.source_files(REPO):
        text = (tmp_path / "s" / rel).read_text(errors="replace")
        assert not re.search(r"^\s*# (BEGIN|END) SOLUTION", text, re.M), rel
    assert not (tmp_path / "s" / "course" / "hidden").exists() and not (tmp_path / "s" / ".git").exists()
    raises = sum((tmp_path / "s" / rel).read_text().count("raise NotImplementedError(\"T") for rel in marked)
    assert raises == len(regions())
    done = course.restore(tmp_path / "s", log=lambda *a: None)
    assert done == {t: n for t, (n, _) in blanked.items() if n}
    for rel in course.source_files(REPO):
        ref = (REPO / rel).read_bytes()
        want = course.transform(rel, ref.decode(), []).encode() if rel in marked else ref
        assert (tmp_path / "s" / rel).read_bytes() == want, rel
    with pytest.raises(SystemExit, match="is not empty"):
        course.make(tmp_path / "s", ["T3"], log=lambda *a: None)


def _grade(tree, out, tasks=()):
    cmd = [sys.executable, "course.py", "grade", "--hidden", str(HIDDEN), "--json", str(out)]
    proc = subprocess.run(cmd + (["--tasks", *tasks] if tasks else []), cwd=tree, capture_output=True,
                          text=True, timeout=300)
    assert out.exists(), proc.stdout + proc.stderr
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """{"blank": every task blank, "alone": {task: that task alone restored}, "reference"}."""
    tmp = tmp_path_factory.mktemp("course")
    quiet = lambda *a: None
    course.make(tmp / "blank", list(course.TASKS), log=quiet)
    jobs = {"blank": (tmp / "blank", ()), "reference": (REPO, ())}
    for task in course.TASKS:
        course.make(tmp / task, [t for t in course.TASKS if t != task], log=quiet)
        jobs[task] = (tmp / task, (task,))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = {k: pool.submit(_grade, tree, tmp / f"{k}.json", tasks)
                   for k, (tree, tasks) in jobs.items()}
        res = {k: f.result() for k, f in futures.items()}
    return {"blank": res["blank"], "reference": res["reference"], "alone": {t: res[t] for t in course.TASKS}}


def test_course_student_tree_fails_only_with_its_tasks_not_implemented(graded):
    """The tree imports (no collection error in any test module), and every graded test, hidden
    ones included, fails with the NotImplementedError of its own task: 0 points everywhere."""
    res = graded["blank"]
    assert res["errors"] == []
    for task, r in res["tasks"].items():
        assert r["points"] == 0 and r["of"] > 0, (task, r)
    wrong = {k: v["message"] for k, v in res["tests"].items()
             if not v["message"].startswith(f"NotImplementedError: {v['task']}: ")}
    assert wrong == {}


def test_course_each_task_alone_gets_full_marks(graded):
    """All other tasks blank: the task's own tests and hidden tests all pass, so no test of a
    task needs another task's student code."""
    for task, res in graded["alone"].items():
        r = res["tasks"][task]
        assert res["errors"] == [] and r["points"] == r["of"] > 0, (task, r)


def test_course_reference_grades_full_marks_with_hidden_tests(graded):
    ref = graded["reference"]
    assert ref["errors"] == []
    for task, r in ref["tasks"].items():
        assert r["points"] == r["of"] == graded["blank"]["tasks"][task]["of"], (task, r)
        assert any(k.startswith("course/hidden") or "test_hidden" in k for k, v in ref["tests"].items()
                   if v["task"] == task), task


def test_course_grade_points_first_failure_and_a_module_that_does_not_import(tmp_path):
    """grade on a tree of three tests: a pass, a failure (its message in one line), and a test
    in a module that does not import (named; the total is then incomplete)."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_a.py").write_text(
        "import pytest\n\n@pytest.mark.t3\ndef test_ok():\n    assert True\n\n"
        "@pytest.mark.t3\ndef test_off():\n    assert 1 == 2, 'E3: off by one'\n")
    (tmp_path / "tests" / "test_b.py").write_text(
        "import pytest\nimport no_such_module_xyz\n\n@pytest.mark.t4\ndef test_x():\n    pass\n")
    res = course.grade(["T3", "T4"], root=tmp_path, log=lambda *a: None)
    first = "test_off: AssertionError: E3: off by one"
    assert res["tasks"]["T3"] == {"points": 1, "of": 2, "first_failure": first}
    assert res["tasks"]["T4"]["of"] == 0 and not res["complete"]
    [err] = res["errors"]
    assert "test_b.py" in err and "no_such_module_xyz" in err


def test_course_cli_refuses_unknown_tasks_and_a_missing_hidden_folder(tmp_path):
    with pytest.raises(SystemExit, match=r"unknown task\(s\) \['T9'\]"):
        course.main(["make", "--out", str(tmp_path / "x"), "--tasks", "T9"])
    with pytest.raises(SystemExit, match="is not a folder"):
        course.main(["grade", "--hidden", str(tmp_path / "nowhere")])
