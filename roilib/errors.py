"""One exception type for mistakes a user can fix: scripts print its message as one line."""


class UserError(Exception):
    """Bad input from the user (path, file, option, checkpoint). The message names the file
    and the problem; scripts print it without a traceback and exit non-zero."""


def one_line(text):
    """A name from a data file (class, category) shown on one line of a table or report."""
    return " ".join(str(text).split())
