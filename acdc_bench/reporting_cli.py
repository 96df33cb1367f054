"""Reporting commands of ``acdc-bench``: reproduce, compare, leaderboard, plot (filled in with the reporting layer)."""


def add_commands(parser, commands) -> None:
    """Register the reporting subcommands on ``parser`` and their handlers in ``commands``."""
