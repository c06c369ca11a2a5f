"""The repo documents itself: every equation and section the code cites exists in
docs/method.md, nothing cites a file outside the repo, and CI runs the README's test command.

Run: python -m pytest -q tests/test_docs.py
"""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for p in REPO.rglob("*") if p.suffix in (".py", ".sh", ".md")
                 and not {".cache", ".git", "runs"} & set(p.relative_to(REPO).parts))


def test_docs_method_doc_defines_every_cited_equation_and_section():
    method = (REPO / "docs" / "method.md").read_text()
    defined_eqs = set(re.findall(r"\*\*\((E\d+)\)", method))
    defined_secs = set(re.findall(r"^#{2,3} (\d+b?)\.", method, re.M))
    assert {f"E{i}" for i in range(17)} <= defined_eqs, sorted(defined_eqs)
    cited_eqs, cited_secs = set(), set()
    for p in SOURCES:
        text = p.read_text(errors="replace")
        cited_eqs |= set(re.findall(r"\b(E\d{1,2})\b", text))    # not E402 (a linter code)
        cited_secs |= set(re.findall(r"§(\d+b?)", text))
    assert cited_eqs - defined_eqs == set(), "cited but not in docs/method.md"
    assert cited_secs - defined_secs == set(), "cited but not in docs/method.md"


OUTSIDE = "|".join((r"\.\./" + "shared", "SPEC" + r"\.md", "shared" + " folder"))   # split: not a hit itself


def test_docs_nothing_cites_a_path_outside_the_repo():
    bad = [f"{p.relative_to(REPO)}:{i}" for p in SOURCES for i, line in
           enumerate(p.read_text(errors="replace").splitlines(), 1)
           if re.search(OUTSIDE, line)]
    assert bad == []


def test_docs_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text().splitlines()
    commands = [line.split("#")[0].strip() for line in readme[:12] if line.startswith("pip install")]
    assert len(commands) == 2 and commands[1].endswith("python -m pytest -q tests"), commands
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert commands[1] in [line.strip() for line in ci], "CI must run the README's test command"
    assert any("venv" in line and not line.lstrip().startswith("#") for line in ci), "CI builds a fresh venv"
