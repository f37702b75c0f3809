"""Exception types that scripts turn into one line (see roilib.cli.run) instead of a traceback."""


class UserError(Exception):
    """Bad input from the user (path, file, option, checkpoint). The message names the file
    and the problem; scripts print it without a traceback and exit non-zero."""


def one_line(text):
    """A name from a data file (class, category) shown on one line of a table or report."""
    return " ".join(str(text).split())


class StopRun(Exception):
    """This process stops because another process of the same run failed and printed why.
    `show`: print the message (one process does, so that a run of N processes prints one
    such line, not N)."""

    def __init__(self, message, show=True):
        super().__init__(message)
        self.show = show
