"""The repository's folders, for tests in any sub-folder of tests/."""

from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
"""The repository root (src/, docs/, bench/); ROOT.parent holds shared/ beside the checkout."""
