"""Errors the command line turns into one line and an exit code, never a traceback."""


class UsageError(ValueError):
    """Bad input: a name, a path, an option. The message says what was wrong and what to do.

    The command line prints it as one line and exits with code 2.
    """

    exit_code = 2


class Diverged(RuntimeError):
    """The loss became non-finite; the run stopped and kept its last good checkpoint (exit 3)."""

    exit_code = 3
