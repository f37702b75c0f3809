"""Issue 32's hostile cases outside the page: data-making tools that never touch what they did
not write, text from files kept off the terminal's control channel, numbers and run files
that lie. (The page and the API: test_page_hostile.py.)"""
import os

import numpy as np
import pytest

from roilib import demo as demo_module
from roilib.errors import one_line


def test_class_names_are_printed_with_control_characters_escaped():
    shown = one_line("boat\x1b]0;pwned\x07\x1b[2J\u202e\nnext")
    assert "\x1b" not in shown and "\x07" not in shown and "\u202e" not in shown
    assert shown == "boat\\x1b]0;pwned\\x07\\x1b[2J\\u202e next"
    assert one_line("Straße 日本") == "Straße 日本"


@pytest.mark.parametrize("out", ["photos", "."])
def test_demo_never_replaces_a_folder_it_did_not_write(tmp_path, monkeypatch, capsys, out):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.txt").write_text("mine")
    assert demo_module.main(["--out", out, "--train", "1", "--val", "1"]) == 2
    err = capsys.readouterr().err
    assert "not empty and not a demo dataset" in err and "Traceback" not in err
    assert (tmp_path / "photos" / "holiday.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["photos"]


def test_demo_rebuild_replaces_its_own_dataset_but_not_one_with_a_user_file(tmp_path):
    root = tmp_path / "d"
    (root).mkdir()                               # an empty folder is fine
    demo_module.make_demo(root, n_train=1, n_val=1)
    demo_module.make_demo(root, seed=1, n_train=1, n_val=1)   # its own files: replaced
    (root / "train" / "images" / "mine.jpg").write_bytes(b"x")
    with pytest.raises(Exception, match=r"not a demo dataset \(train/images/mine.jpg\)"):
        demo_module.make_demo(root, seed=2, n_train=1, n_val=1)
    assert (root / "train" / "images" / "mine.jpg").read_bytes() == b"x"


def test_example_never_overwrites_a_users_file(tmp_path, capsys):
    folder = tmp_path / "ex"
    folder.mkdir()
    (folder / "example.png").write_bytes(b"my own picture")
    assert demo_module.main(["--out", str(tmp_path / "d"), "--train", "1", "--val", "1",
                             "--example", str(folder)]) == 2
    assert "example.png: exists and is not the demo's" in capsys.readouterr().err
    assert (folder / "example.png").read_bytes() == b"my own picture"
    assert not (tmp_path / "d").exists()         # refused before the dataset was made
    (folder / "example.png").unlink()
    demo_module.write_example(folder)
    demo_module.write_example(folder)            # its own files again: the same pixels, fine


def test_benchmark_scale_data_never_replaces_a_users_folder(tmp_path, monkeypatch, capsys):
    import Benchmark
    from helpers import run_in_process
    data = tmp_path / "scale"
    (data / "coco" / "train").mkdir(parents=True)
    (data / "coco" / "train" / "mine.jpg").write_bytes(b"mine")
    code, out = run_in_process("Benchmark.py", ["--PARTS=f", f"--SCALE_DATA={data}", f"--OUT={tmp_path}",
                                                "--DEVICE=cpu"], capsys, monkeypatch)
    assert code == 2 and f"--SCALE_DATA={data}: holds no data of tools/make_scale_data.py" in out.err
    assert (data / "coco" / "train" / "mine.jpg").read_bytes() == b"mine"
    sys_path = os.path.join(os.path.dirname(Benchmark.__file__), "tools")
    monkeypatch.syspath_prepend(sys_path)
    import make_scale_data
    with pytest.raises(SystemExit):
        make_scale_data.main(["--out", str(data), "--images", "2", "--maps", "1"])
    assert sorted(p.name for p in data.rglob("*")) == ["coco", "mine.jpg", "train"]


def test_benchmark_scale_rows_from_one_reading():
    """--SCALE_BATCHES=10, the declared minimum: the probe's one reading is first and last."""
    from benchmarks.dataset_scale import coco_rows
    probe = {"images": 2, "segments": 3, "start_s": 1.0, "start_cpu_s": 1.0, "rss_before": 0,
             "rss_after": 2 ** 20, "workers": 1, "uss": {"10": 5 * 2 ** 20}}
    rows = {r["what"]: r["value"] for r in coco_rows(probe, probe)}
    assert rows["  USS growth from batch 10 to 10"] == 0
