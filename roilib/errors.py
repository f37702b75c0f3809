"""One exception type for mistakes a user can fix: scripts print its message as one line."""


class UserError(Exception):
    """Bad input from the user (path, file, option, checkpoint). The message names the file
    and the problem; scripts print it without a traceback and exit non-zero."""
