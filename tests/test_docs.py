"""The README's promises that code can check: the config reference and the quick-start commands."""
from pathlib import Path

from scripts.config_reference import BEGIN, END, render

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_config_reference_matches_code():
    assert BEGIN in README and END in README
    embedded = README.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert embedded == render().strip(), "README config reference is stale: run python scripts/config_reference.py"


def test_ci_runs_the_readme_test_command():
    assert "make test" in README
    ci = (REPO / ".ci" / "run").read_text()
    assert "\nmake test" in ci
