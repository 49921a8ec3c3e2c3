"""The report's name for harness.reported (paper-reported numbers), kept for tests/test_leaderboard.py."""

from harness.reported import ReportedValue, load_reported, reported_for  # noqa: F401
