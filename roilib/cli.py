"""The scripts' parameter blocks: `--NAME=value` overrides, `--help`, and one-line errors.

Each script opens with a block of UPPER_CASE parameters between two marker comments:

    # ---- parameters: edit here, or override as --NAME=value ----
    STEPS = 1000        # training steps
    # ---- end of parameters ----

A comment may open with the parameter's valid values in brackets, declared once, next to
the default; every value (the default edited in the block too) is checked against it before
the script does any work, and `--help` shows it. Every number is finite (inf and nan are
refused whatever the spec), and every numeric parameter declares a range bounded on both
sides that the machine can meet (tests/test_numbers.py checks both):

    MODE = "attention"   # [attention|blackout|none] choices ("" or None may be among them)
    ATTENTION = "stem"   # [list of stem|layer1|all] comma-separated choices
    STEPS = 1000         # [1..1e9]  also >=N, >N, <=N, <N (N..M: inclusive)
    MARGIN = None        # [None|>=0] None, or a number in the range
    WINDOW = ""          # [""|HxW] a window geometry (roilib.windows.parse_window)
    RUN = "demo"         # [nonempty]
    CLASS_NAMES = None   # [None|names] comma-separated names, none empty, none twice

`parse_parameters(globals(), __file__)` reads the block's names and comments from the source,
applies the command line (types checked against the defaults), checks every value and returns
the parameters as a dict (saved with the run). The script's globals keep their defaults: a
script builds one `cfg` from the dict and passes values on, so no function can read a
parameter global that the command line changed (tests/test_parameters.py checks that none does). A recipe file on the
command line (`python Train.py configs/coco_r50.py --STEPS=1000`) holds `NAME = value` lines;
arguments apply in order, so a --NAME after the file overrides it. `run(main)` turns a UserError
into one line on stderr and exit code 2 instead of a traceback (StopRun: exit code 1).
"""
import ast
import difflib
import math
import re
import sys
import time
from types import SimpleNamespace

from roilib.errors import BadValue, StopRun, UserError

BLOCK_START = re.compile(r"^# -+ parameters")
BLOCK_END = re.compile(r"^# -+ end of parameters")
ASSIGNMENT = re.compile(r"^([A-Z][A-Z0-9_]*)\s*=\s*(.*?)\s*(?:#\s*(.*))?$")
SPEC = re.compile(r"^\[([^\]]*)\]")
# A numeric range in a spec: >=N, >N, <=N, <N, or N..M.
BOUND = re.compile(r"(>=|>|<=|<)\s*(-?[\d.e+-]+)|(-?[\d.e+-]+)\.\.(-?[\d.e+-]+)")
STOP_GRACE_S = 3
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


def read_specs(script_path, block=None):
    """{name: spec text} of the parameters whose comment opens with '[spec]' (`block`: the
    already read block of `script_path`)."""
    specs = {}
    for name, line in block if block is not None else read_block(script_path):
        comment = ASSIGNMENT.match(line).group(3) or ""
        match = SPEC.match(comment)
        if match:
            specs[name] = match.group(1).strip()
    return specs


def check_value(name, value, spec):
    """Raise a one-line UserError unless `value` is valid under `spec` (see the module doc)."""
    problem = _spec_problem(value, spec)
    if problem:
        shown = "" if value is None else value
        raise UserError(f"--{name}={shown}: expected {problem}")


def check_finite(name, value):
    """Every number a script takes is finite: inf and nan are refused whatever the spec."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"--{name}={value}: expected a finite number")


def _spec_problem(value, spec):
    """What `value` should have been under `spec`, or None when it is valid."""
    if _none_or_range(spec):
        if value is None:
            return None
        problem = _spec_problem(value, spec[5:])
        return problem and f"None or {problem}"
    if spec == "nonempty":
        return None if value not in ("", None) else "a non-empty value"
    if spec in ("names", "None|names"):
        if value is None and spec.startswith("None"):
            return None
        items = [item.strip() for item in str(value).split(",")]
        ok = isinstance(value, str) and all(items) and len(set(items)) == len(items)
        return None if ok else "comma-separated names, none empty, none twice"
    if spec.startswith("list of "):
        choices = spec[len("list of "):].split("|")
        items = [item.strip() for item in str(value).split(",") if item.strip()]
        ok = items and all(item in choices for item in items)
        return None if ok else f"a comma-separated list of {', '.join(choices)}"
    if spec in ("HxW", '""|HxW'):
        if value in ("", None) and spec.startswith('""'):
            return None
        from roilib.windows import parse_window
        try:
            parse_window(value)
            return None
        except UserError:
            return "HxW with both sides multiples of 32 (e.g. 160x160)"
    bound = BOUND.fullmatch(spec)
    if bound:
        return None if _in_range(value, bound) else _describe_range(bound)
    choices = [_choice(c.strip()) for c in spec.split("|")]
    return None if value in choices else "one of " + ", ".join(
        '""' if c == "" else str(c) for c in choices)


def _none_or_range(spec):
    """'None|>=0': None or a number in the range (not a list of choices that includes None)."""
    return spec.startswith("None|") and BOUND.fullmatch(spec[5:]) is not None


def _in_range(value, bound):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    op, limit, low, high = bound.groups()
    if op is None:
        return float(low) <= value <= float(high)
    limit = float(limit)
    return {">=": value >= limit, ">": value > limit, "<=": value <= limit, "<": value < limit}[op]


def _describe_range(bound):
    op, limit, low, high = bound.groups()
    return f"a number in [{low}, {high}]" if op is None else f"a number {op} {limit}"


def _choice(text):
    return {'""': "", "None": None}.get(text, text)


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


def parse_parameters(defaults, script_path, argv=None, help_more=""):
    """{name: value} of the parameter block: `defaults` (the script's globals, not changed)
    with the arguments applied in order: `--NAME=value`, or a recipe file (a .py file of
    `NAME = value` lines, see read_recipe). `--help` prints the block, then `help_more`."""
    argv = sys.argv[1:] if argv is None else argv
    block = read_block(script_path)
    names = [name for name, _ in block]
    namespace = {name: defaults[name] for name in names}
    if any(a in ("-h", "--help") for a in argv):
        print(f"Parameters of {script_path} (override as --NAME=value, or in a recipe file):")
        print("\n".join(line for _, line in block))
        if help_more:
            print(help_more)
        raise SystemExit(0)
    for arg in argv:
        if not arg.startswith("-") and arg.endswith(".py"):
            for name, value in read_recipe(arg):
                check_name(name, names, arg)
                namespace[name] = literal(name, value, namespace[name], arg)
            continue
        match = re.match(r"^--([A-Za-z0-9_]+)=(.*)$", arg, re.S)
        if not match:
            raise UserError(f"argument {arg!r}: expected --NAME=value or a recipe file.py (see --help)")
        name, text = match.group(1), match.group(2)
        check_name(name, names)
        namespace[name] = convert(name, text, namespace[name])
    for name in names:
        check_finite(name, namespace[name])
    for name, spec in read_specs(script_path, block).items():
        check_value(name, namespace[name], spec)
    return {name: namespace[name] for name in names}


def parse_config(defaults, script_path, argv=None, help_more=""):
    """parse_parameters as a namespace: the one `cfg` a script passes its values on from."""
    return SimpleNamespace(**parse_parameters(defaults, script_path, argv, help_more))


def check_name(name, names, recipe=None):
    """Refuse an unknown name (a typo would otherwise be ignored silently)."""
    if name not in names:
        dash = "" if recipe else "--"
        close = difflib.get_close_matches(name.upper(), names, n=1)
        hint = f" (did you mean {dash}{close[0]}?)" if close else ""
        where = f"{recipe}: " if recipe else ""
        raise UserError(f"{where}unknown parameter {dash}{name}{hint}; valid: {', '.join(names)}")


def read_recipe(path):
    """[(NAME, value)] of a recipe file, in order. Only `NAME = literal` lines (and a docstring,
    comments) are allowed: values are read with ast.literal_eval, never run."""
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
    except OSError as error:
        raise UserError(f"{path}: cannot read the recipe file ({error.strerror or error})") from None
    except SyntaxError as error:
        raise UserError(f"{path}:{error.lineno}: not Python ({error.msg})") from None
    pairs = []
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue   # a docstring
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None
        try:
            if not isinstance(target, ast.Name):
                raise ValueError
            pairs.append((target.id, ast.literal_eval(node.value)))
        except ValueError:
            raise UserError(f"{path}:{node.lineno}: expected NAME = value with a literal value "
                            "(number, string, True/False/None)") from None
    return pairs


def literal(name, value, default, recipe):
    """A recipe's `value` checked against the type of `default` (ints pass for floats)."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, str):
        ok = value is None or isinstance(value, str)
    else:   # None: any scalar
        ok = value is None or isinstance(value, (int, float, str))
    if not ok:
        expected = type(default).__name__ if default is not None else "a number or a string"
        raise UserError(f"{recipe}: {name} = {value!r}: expected {expected}")
    return value


def run(main, names=None, advice=None):
    """Call main(); a UserError becomes 'error: ...' on stderr and exit code 2, Ctrl-C exit 130.
    The script's own words are added here, once: `names` {argument: NAME} names the values of a
    BadValue as its parameters (--NAME=value), and `advice` {error type: way out} adds the way
    out of each kind of error (the first type that matches)."""
    try:
        main()
    except UserError as e:
        print(f"error: {user_message(e, names, advice)}", file=sys.stderr)
        raise SystemExit(2) from None
    except StopRun as e:   # another process of the run failed and said why
        if e.show:
            print(str(e), file=sys.stderr)
        time.sleep(STOP_GRACE_S)   # let the failing process exit first: torchrun names it the cause
        raise SystemExit(1) from None
    except KeyboardInterrupt as e:   # a script may say what the interrupt left (its message)
        print(f"interrupted: {e}" if str(e) else "interrupted", file=sys.stderr)
        raise SystemExit(130) from None


# The last line of a formatted traceback: "roilib.errors.UserError: <message>".
_WRAPPED_USER_ERROR = re.compile(r"^[\w.]*UserError: ")


def user_message(error, names=None, advice=None):
    """A UserError's message in the script's words (see run). One raised in a DataLoader
    worker is re-raised by torch with the worker's whole traceback as its message: only the
    original message is kept."""
    text = error.worded(names or {}) if isinstance(error, BadValue) else str(error)
    for kind, way in (advice or {}).items():
        if isinstance(error, kind):
            return f"{text}{error.then}{way}"
    lines = text.strip().splitlines()
    if len(lines) > 1 and lines[0].startswith("Caught UserError"):
        starts = [i for i, line in enumerate(lines) if _WRAPPED_USER_ERROR.match(line)]
        if starts:
            return _WRAPPED_USER_ERROR.sub("", "\n".join(lines[starts[-1]:]))
    return text
