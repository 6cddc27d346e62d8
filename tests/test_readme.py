"""The README's commands are the ones CI runs, so the README stays true."""
from conftest import REPO, readme_commands


def test_quick_start_has_two_commands():
    assert len(readme_commands("Quick start")) == 2


def test_ci_runs_the_readme_commands_verbatim():
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    for command in readme_commands("Quick start"):
        assert command in ci, f"README command not run by .ci/run: {command}"
