"""Exception types that scripts turn into one line (see roilib.cli.run) instead of a traceback.

A library function says what went wrong in its own words; the script's top level adds what
only the script knows, once (cli.run): its parameter names for the values a BadValue names,
and its way out for each kind of error."""


class UserError(Exception):
    """Bad input from the user (path, file, option, checkpoint). The message names the file
    and the problem; scripts print it without a traceback and exit non-zero. `then`: how a
    script's way out joins the message ("; ", or "; or " where the message offers one)."""

    def __init__(self, message, then="; "):
        super().__init__(message)
        self.then = then

    def advised(self, advice):
        """The same error with the script's way out added."""
        return UserError(f"{self}{self.then}{advice}")


class BadValue(UserError):
    """A refused value, said with the library's names for the values (its arguments':
    `values` {name: value}); `problem` may name them as {name}. A script names them as its
    user knows them (cli.run's `names`): `device=mps: ...` becomes `--DEVICE=mps: ...`."""

    def __init__(self, problem, then="; ", **values):
        self.problem, self.values = problem, values
        super().__init__(self.worded({}), then)

    def worded(self, names):
        """The message with `names` {argument: NAME} shown as --NAME (others as they are)."""
        shown = {name: f"--{names[name]}" if name in names else name for name in self.values}
        head = " ".join(f"{shown[name]}={'' if value is None else value}" for name, value in self.values.items())
        problem = self.problem
        for name in self.values:
            problem = problem.replace("{" + name + "}", names.get(name, name))
        return f"{head}: {problem}" if head else problem

    def __reduce__(self):   # raised in a DataLoader worker: rebuilt with its values
        return _rebuild, (type(self), self.problem, self.then, self.values)


def _rebuild(kind, problem, then, values):
    return kind(problem, then, **values)


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


class ResumeError(UserError):
    """last.pt cannot be resumed from as asked (damaged, another model, other settings or
    classes, an unreadable log); the script adds its way out (start afresh, another run)."""


class FolderClash(BadValue):
    """A run's folder or files would destroy an input or another script's files."""


class ResumeClash(FolderClash, ResumeError):
    """A clash in the folder of a run that resumes: starting afresh may be a way out too."""


class Diverged(UserError):
    """The loss or the weights became NaN or infinite: nothing more is saved."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what it left: the message names the last checkpoint and its step; the
    script adds how to go on from it (`advised`)."""

    def advised(self, advice):
        return Interrupted(f"{self}; {advice}")
