"""Exit codes of every ``studyin-analytics`` command (one place; commands of other layers import them)."""

EXIT_OK = 0
"""The command did what was asked."""
EXIT_FAILURE = 1
"""A failure at run time (a server unreachable, a check that did not hold)."""
EXIT_USAGE = 2
"""Bad usage or configuration."""
