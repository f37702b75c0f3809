"""The parameter-block helper shared by all scripts."""
import pytest

from roilib.cli import convert, parse_parameters, run
from roilib.errors import UserError

SCRIPT = '''"""demo script"""
# ---- parameters: edit here, or override as --NAME=value ----
STEPS = 100          # training steps
LR = 1e-3            # learning rate
AMP = True           # mixed precision
WEIGHTS = "imagenet" # None | imagenet | path
SEED = None          # optional seed
# ---- end of parameters ----
OTHER = 5
'''


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "Script.py"
    path.write_text(SCRIPT)
    namespace = {"STEPS": 100, "LR": 1e-3, "AMP": True, "WEIGHTS": "imagenet", "SEED": None, "OTHER": 5}
    return path, namespace


def test_overrides_are_typed(script):
    path, ns = script
    params = parse_parameters(ns, path, ["--STEPS=7", "--LR=0.5", "--AMP=false", "--WEIGHTS=None", "--SEED=3"])
    assert params == {"STEPS": 7, "LR": 0.5, "AMP": False, "WEIGHTS": None, "SEED": 3}
    assert ns["STEPS"] == 100 and ns["OTHER"] == 5   # the globals keep their defaults


@pytest.mark.parametrize("arg,message", [
    ("--STEPS=1.5", "expected an integer"), ("--LR=fast", "expected a number"),
    ("--AMP=maybe", "expected true or false"), ("--STEP=3", "did you mean --STEPS"),
    ("--OTHER=1", "valid: STEPS, LR, AMP, WEIGHTS, SEED"), ("STEPS=3", "expected --NAME=value")])
def test_bad_arguments_are_one_line_errors(script, arg, message):
    path, ns = script
    with pytest.raises(UserError, match=message):
        parse_parameters(ns, path, [arg])


def test_help_prints_block(script, capsys):
    path, ns = script
    with pytest.raises(SystemExit) as exit_info:
        parse_parameters(ns, path, ["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "STEPS = 100          # training steps" in out and "OTHER" not in out


def test_convert_none_default_guesses_type():
    assert convert("X", "4", None) == 4 and convert("X", "0.5", None) == 0.5 and convert("X", "a", None) == "a"


def test_run_turns_user_error_into_exit_2(capsys):
    def main():
        raise UserError("data/x.png: not an image")
    with pytest.raises(SystemExit) as exit_info:
        run(main)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: data/x.png: not an image\n"


def test_lowercase_none_stays_a_string():
    """MODE=none is a mode: only the literal None means None."""
    assert convert("MODE", "none", "attention") == "none"
    assert convert("WEIGHTS", "None", "imagenet") is None


def test_a_script_names_the_library_s_values_and_adds_what_to_do_once():
    """A library error says what went wrong in its own names; cli.run words it with the
    script's parameter names (--NAME=value) and adds the script's way out for its kind."""
    from roilib.cli import user_message
    from roilib.errors import BadValue, ResumeError
    from roilib.runtime import resolve_device
    from roilib.sampler import check_sizes
    with pytest.raises(BadValue) as caught:
        resolve_device("mps")
    assert str(caught.value) == "device=mps: expected auto, cpu, cuda or cuda:N"   # the API's words
    assert user_message(caught.value, {"device": "DEVICE"}) == "--DEVICE=mps: expected auto, cpu, cuda or cuda:N"
    with pytest.raises(BadValue) as caught:
        check_sizes(200, 100)
    assert user_message(caught.value, {"min_size": "MIN", "max_size": "MAX"}) == (
        "--MIN=200 --MAX=100: expected MIN <= MAX with a multiple of 32 between them")
    advice = {ResumeError: "start afresh"}
    assert user_message(ResumeError("last.pt: damaged"), advice=advice) == "last.pt: damaged; start afresh"
    assert user_message(ResumeError("other settings; resume with them", then=", or "), advice=advice) == (
        "other settings; resume with them, or start afresh")
    assert user_message(UserError("no way out"), advice=advice) == "no way out"   # another kind
