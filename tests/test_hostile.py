"""Issue 32's hostile cases outside the page: data-making tools that never touch what they did
not write, text from files kept off the terminal's control channel, numbers and run files
that lie. (The page and the API: test_page_hostile.py.)"""
import os

import numpy as np
import pytest

from roilib import demo as demo_module
from roilib.errors import UserError, one_line


def test_class_names_are_printed_with_control_characters_escaped():
    shown = one_line("boat\x1b]0;pwned\x07\x1b[2J\u202e\nnext")
    assert "\x1b" not in shown and "\x07" not in shown and "\u202e" not in shown
    assert shown == "boat\\x1b]0;pwned\\x07\\x1b[2J\\u202e next"
    assert one_line("Straße 日本") == "Straße 日本"


def test_runprediction_prints_a_checkpoints_class_names_escaped(example_checkpoint, tmp_path, capsys, monkeypatch):
    import torch
    from helpers import EXAMPLE_MASKS, run_in_process
    state = torch.load(example_checkpoint, weights_only=True)
    state["config"]["class_names"] = [f"boat\x1b]0;pwned\x07\x1b[2J{i}" for i in range(len(state["config"]["class_names"]))]
    torch.save(state, tmp_path / "named.pt")
    code, out = run_in_process("RunPrediction.py", [f"--CHECKPOINT={tmp_path / 'named.pt'}", f"--MASKS={EXAMPLE_MASKS[0]}"],
                               capsys, monkeypatch)
    assert code in (0, None) and "boat\\x1b]0;pwned\\x07" in out.out and "\x1b" not in out.out + out.err


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


# ---- numbers and run files that lie ---------------------------------------------------------
@pytest.mark.parametrize("field,value,words", [("step", float("nan"), "stored step nan"),
                                               ("step", -1, "stored step -1"),
                                               ("params", ["DATASET"], "stored parameters are a list")])
def test_checkpoint_fields_of_the_wrong_kind_are_one_line(example_checkpoint, tmp_path, field, value, words):
    import torch
    from roilib.checkpoint import load_model_state
    state = torch.load(example_checkpoint, weights_only=True)
    state[field] = value
    torch.save(state, tmp_path / "edited.pt")
    with pytest.raises(UserError, match=words):
        load_model_state(tmp_path / "edited.pt")


def test_evaluation_refuses_stored_parameters_of_the_wrong_type(example_checkpoint, tmp_path, capsys, monkeypatch):
    import torch
    from helpers import run_in_process
    state = torch.load(example_checkpoint, weights_only=True)
    state["params"] = {"MIN_AREA": "x", "DATASET": "demo"}
    torch.save(state, tmp_path / "edited.pt")
    code, out = run_in_process("EvaluateAccuracy.py", [f"--CHECKPOINT={tmp_path / 'edited.pt'}", f"--OUT={tmp_path}"],
                               capsys, monkeypatch)
    assert code == 2 and "stored MIN_AREA='x' is not a int" in out.err and "--MIN_AREA" in out.err
    assert "Traceback" not in out.err


def test_twenty_thousand_classes_keep_the_confusion_sparse():
    from roilib.metrics import summarize
    labels, preds = np.array([0, 5, 19999, 5]), np.array([0, 7, 19999, 5])
    result = summarize(labels, preds, np.full(4, 100), [f"c{i}" for i in range(20000)])
    assert result["confusion"] is None
    assert sorted(result["confusion_cells"]) == [[0, 0, 1], [5, 5, 1], [5, 7, 1], [19999, 19999, 1]]
    small = summarize(labels % 10, preds % 10, np.full(4, 100), [f"c{i}" for i in range(10)])
    assert np.trace(np.asarray(small["confusion"])) == 3 and "confusion_cells" not in small


@pytest.mark.parametrize("text,words", [('{"per_class": [], "by_size": [], "accuracy": NaN, "mean_class_accuracy": 1}',
                                         "NaN is not JSON"),
                                        ('{"accuracy": 1, "mean_class_accuracy": 1, "by_size": []}',
                                         "not an evaluation of this version")])
def test_ablation_refuses_an_eval_json_it_cannot_report(tmp_path, text, words):
    import Ablation
    (tmp_path / "eval.json").write_text(text)
    with pytest.raises(UserError, match=words):
        Ablation.read_eval(tmp_path / "eval.json")


def test_older_run_files_are_compared_not_a_key_error(tmp_path):
    import json
    import Ablation
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"params": {"STEPS": 10, "ARCH": "resnet18"}}))
    overrides = {name: getattr(Ablation, name) for name in Ablation.SHARED}
    changed = Ablation.settings_changed(str(run), overrides)
    assert any(line.startswith("DATASET: None -> ") for line in changed)


def test_sigterm_stops_the_ablations_running_script(tmp_path, monkeypatch):
    import signal
    import threading
    import time
    import Ablation
    monkeypatch.setattr(Ablation, "STOPPING", threading.Event())
    previous = signal.getsignal(signal.SIGTERM)
    pid_file = tmp_path / "pid"
    script = tmp_path / "sleeper.py"
    script.write_text(f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(60)\n")
    failures = []
    thread = threading.Thread(target=lambda: failures.append(pytest.raises(UserError, Ablation.call, str(script), {"RUN": "r"})))
    try:
        Ablation.stop_children_on_signals()
        thread.start()
        for _ in range(3000):   # the script has started (a minute at most)
            if pid_file.exists() and pid_file.read_text():
                break
            time.sleep(0.02)
        with pytest.raises(SystemExit):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)   # the handler raises in this (the main) thread long before
        thread.join(30)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not thread.is_alive() and failures   # the script was ended, and call() said so
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


def test_a_full_disk_in_tensorboards_writer_thread_prints_no_traceback(monkeypatch):
    import errno
    import threading
    from roilib.runlog import quiet_event_writer_failures
    shown = []   # what the hook before it (the one that prints tracebacks) is handed
    monkeypatch.setattr(threading, "excepthook", lambda args: shown.append(args.exc_type))

    class _AsyncWriterThread(threading.Thread):   # TensorBoard's, by name
        def run(self):
            raise OSError(errno.ENOSPC, "No space left on device")
    quiet_event_writer_failures()
    for thread in (_AsyncWriterThread(), threading.Thread(target=lambda: 1 / 0)):
        thread.start()
        thread.join()
    assert shown == [ZeroDivisionError]   # any other thread's error still shows


def test_palette_bomb_in_a_dataset_scan_is_a_counted_skip(data, tmp_path, capfd):
    import shutil
    from helpers import png
    from OpenSurfacesReader import OpenSurfacesReader
    from roilib.demo import CLASS_NAMES
    folder = tmp_path / "split"
    shutil.copytree(data / "val", folder)
    (folder / "labels" / "00003.png").write_bytes(png(20000, 20000, colour_type=3))
    reader = OpenSurfacesReader(folder / "images", folder / "labels", class_names=CLASS_NAMES)
    assert "00003.png: image too large to decode" in capfd.readouterr().err
    assert "unreadable label maps skipped: 1 (first: " in reader.summary()


def test_scanning_a_label_map_takes_no_int64_copy_of_it():
    """np.bincount copies its input as int64 (8 bytes a pixel): a 20000x20000 map peaked at
    4.1 GB. Counted a slice at a time, what numpy and OpenCV allocate stays near twice the map."""
    import tracemalloc
    from LabelMapReader import components_of
    from roilib.labelconvention import LabelConvention
    label_map = np.zeros((4000, 4000), np.uint8)
    label_map[:2000] = 1
    label_map[2000:, :1000] = 2
    tracemalloc.start()
    try:
        components, _ = components_of(label_map, LabelConvention(3), 1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [c.area for c in components] == [8_000_000, 2_000_000] and peak < 3 * label_map.nbytes


def test_ablation_class_table_escapes_class_names():
    from roilib.ablation_report import format_class_table
    table = {"stem": {"class boat\x1b[2J": (0.5, 0.0, [0.5])}}
    assert "\x1b" not in format_class_table(table) and "boat\\x1b[2J" in format_class_table(table)
