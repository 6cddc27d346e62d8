"""The README's commands are the ones CI runs, so the README stays true."""
import re

from conftest import REPO


def readme_commands():
    text = (REPO / "README.md").read_text()
    quick_start = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", quick_start, re.S)]


def test_quick_start_has_two_commands():
    assert len(readme_commands()) == 2


def test_ci_runs_the_readme_commands_verbatim():
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    for command in readme_commands():
        assert command in ci, f"README command not run by .ci/run: {command}"
