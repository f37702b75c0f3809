"""The scripts' parameter blocks: `--NAME=value` overrides, `--help`, and one-line errors.

Each script opens with a block of UPPER_CASE parameters between two marker comments:

    # ---- parameters: edit here, or override as --NAME=value ----
    STEPS = 1000        # training steps
    # ---- end of parameters ----

`parse_parameters(globals(), __file__)` reads the block's names and comments from the source,
applies the command line (types checked against the defaults), updates the script's globals
and returns the parameters as a dict (saved with the run). `run(main)` turns a UserError into
one line on stderr and exit code 2 instead of a traceback.
"""
import difflib
import re
import sys

from roilib.errors import UserError

BLOCK_START = re.compile(r"^# -+ parameters")
BLOCK_END = re.compile(r"^# -+ end of parameters")
ASSIGNMENT = re.compile(r"^([A-Z][A-Z0-9_]*)\s*=\s*(.*?)\s*(?:#\s*(.*))?$")
TRUE = ("true", "1", "yes", "on")
FALSE = ("false", "0", "no", "off")


def read_block(script_path):
    """[(name, source line)] of the parameter block, in order."""
    with open(script_path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    start = next((i for i, line in enumerate(lines) if BLOCK_START.match(line)), None)
    if start is None:
        raise RuntimeError(f"{script_path}: no '# ---- parameters' block")
    block = []
    for line in lines[start + 1:]:
        if BLOCK_END.match(line):
            return block
        match = ASSIGNMENT.match(line)
        if match:
            block.append((match.group(1), line))
    raise RuntimeError(f"{script_path}: parameter block has no end marker")


def convert(name, text, default):
    """Parse `text` as the type of `default` (bool, int, float, str; None defaults take
    None/int/float/str). The literal None is accepted for str parameters (e.g. WEIGHTS=None);
    lower-case 'none' stays a string (MODE=none is a mode)."""
    if isinstance(default, bool):
        if text.lower() in TRUE:
            return True
        if text.lower() in FALSE:
            return False
        raise UserError(f"--{name}={text}: expected true or false")
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            raise UserError(f"--{name}={text}: expected an integer") from None
    if isinstance(default, float):
        try:
            return float(text)
        except ValueError:
            raise UserError(f"--{name}={text}: expected a number") from None
    if text == "None" and (default is None or isinstance(default, str)):
        return None
    if default is None:
        for cast in (int, float):
            try:
                return cast(text)
            except ValueError:
                pass
    return text


def parse_parameters(namespace, script_path, argv=None):
    """Apply `--NAME=value` arguments to the parameter block's globals; `--help` prints it."""
    argv = sys.argv[1:] if argv is None else argv
    block = read_block(script_path)
    names = [name for name, _ in block]
    if any(a in ("-h", "--help") for a in argv):
        print(f"Parameters of {script_path} (override as --NAME=value):")
        print("\n".join(line for _, line in block))
        raise SystemExit(0)
    for arg in argv:
        match = re.match(r"^--([A-Za-z0-9_]+)=(.*)$", arg, re.S)
        if not match:
            raise UserError(f"argument {arg!r}: expected --NAME=value (see --help)")
        name, text = match.group(1), match.group(2)
        if name not in names:
            close = difflib.get_close_matches(name.upper(), names, n=1)
            hint = f" (did you mean --{close[0]}?)" if close else ""
            raise UserError(f"unknown parameter --{name}{hint}; valid: {', '.join(names)}")
        namespace[name] = convert(name, text, namespace[name])
    return {name: namespace[name] for name in names}


def run(main):
    """Call main(); a UserError becomes 'error: ...' on stderr and exit code 2, Ctrl-C exit 130."""
    try:
        main()
    except UserError as e:
        print(f"error: {user_message(e)}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None


# The last line of a formatted traceback: "roilib.errors.UserError: <message>".
_WRAPPED_USER_ERROR = re.compile(r"^[\w.]*UserError: ")


def user_message(error):
    """A UserError's message. One raised in a DataLoader worker is re-raised by torch with
    the worker's whole traceback as its message: only the original message is kept."""
    lines = str(error).strip().splitlines()
    if len(lines) > 1 and lines[0].startswith("Caught UserError"):
        starts = [i for i, line in enumerate(lines) if _WRAPPED_USER_ERROR.match(line)]
        if starts:
            return _WRAPPED_USER_ERROR.sub("", "\n".join(lines[starts[-1]:]))
    return str(error)
