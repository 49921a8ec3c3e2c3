"""Leaderboards generated from the result store: a query (leaderboard) and its views."""

from harness.report.leaderboard import Leaderboard, LeaderboardRow, MetricSummary, build_leaderboard

__all__ = ["Leaderboard", "LeaderboardRow", "MetricSummary", "build_leaderboard"]
