"""Print the hardening corpus table (issue 6): every case of tests/test_hardening.py and what it did.

    python tests/corpus_report.py            # runs the corpus, then prints a markdown table and the counts

The table has one row per case: group, case, exit code (or the exception that escaped), the
message on stderr (temporary paths shortened to <tmp>/) and whether the canary stayed untouched.
The exit status is pytest's.
"""
import os
import sys
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def main():
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "corpus.md"
        os.environ["CORPUS_REPORT"] = str(report)  # read by test_hardening's corpus_report fixture
        status = pytest.main(["-q", "-p", "no:cacheprovider", str(HERE / "test_hardening.py")])
        if report.exists():
            print(report.read_text(encoding="utf-8"))
    return int(status)


if __name__ == "__main__":
    sys.exit(main())
