"""Exception types that scripts turn into one line (see roilib.cli.run) instead of a traceback."""


class UserError(Exception):
    """Bad input from the user (path, file, option, checkpoint). The message names the file
    and the problem; scripts print it without a traceback and exit non-zero."""


def one_line(text):
    """A name from a data file (class, category) shown on one line of a table or report, its
    control and format characters escaped (a terminal never obeys an escape sequence, a bell
    or a right-to-left override that a checkpoint or dataset carries)."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in " ".join(str(text).split()))


class StopRun(Exception):
    """This process stops because another process of the same run failed and printed why.
    `show`: print the message (one process does, so that a run of N processes prints one
    such line, not N)."""

    def __init__(self, message, show=True):
        super().__init__(message)
        self.show = show
