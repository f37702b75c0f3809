"""App.py: its functions directly, then the served page through gradio_client (no browser)."""
import os
import socket

import cv2
import numpy as np
import pytest

from helpers import EXAMPLE_IMAGE, EXAMPLE_MASKS, ROOT, run_in_process
from RegionClassifier import RegionClassifier
from roilib.crops import box_mask
from roilib.errors import UserError
from roilib.imageio import read_image, read_label_map, read_mask

pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")   # pandas 3 vs gradio
gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")
import App  # noqa: E402  (needs gradio only when the page is built)

EXAMPLE_MAP = os.path.join(ROOT, "Test", "example_labels.png")


@pytest.fixture(scope="module")
def classifier(example_checkpoint):
    return RegionClassifier.from_pretrained(example_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def expected(classifier):
    """The API's classes for the four example masks (test_classifier: equal to RunPrediction's)."""
    return [r["class"] for r in classifier.classify(EXAMPLE_IMAGE, EXAMPLE_MASKS)]


def painted_layer(mask):
    """An RGBA brush layer as the editor sends it: colour and alpha where painted."""
    layer = np.zeros(mask.shape + (4,), np.uint8)
    layer[mask > 0] = (255, 32, 96, 255)
    return layer


def inside_point(mask):
    ys, xs = np.nonzero(mask)
    return int(xs[len(xs) // 2]), int(ys[len(ys) // 2])


# ---- the app's functions ---------------------------------------------------------------------
def png_bytes(array):
    """An upload as the editor's browser sends it: (name, the PNG's bytes)."""
    ok, data = cv2.imencode(".png", array)
    return "layer.png", data.tobytes()


def test_brush_mask_is_the_painted_pixels():
    mask = read_mask(EXAMPLE_MASKS[2])
    value = {"background": EXAMPLE_IMAGE, "layers": [png_bytes(cv2.cvtColor(painted_layer(mask), cv2.COLOR_RGBA2BGRA))]}
    assert np.array_equal(App.brush_mask(value, mask.shape, 10 ** 6), mask > 0)
    with pytest.raises(UserError, match="no region painted"):
        App.brush_mask({"layers": [png_bytes(np.zeros(mask.shape + (4,), np.uint8))]}, mask.shape, 10 ** 6)


def test_photo_checks():
    with pytest.raises(UserError, match="no photo"):
        App.photo_from_editor({"background": None, "layers": []}, 10 ** 6)
    rgba = png_bytes(np.zeros((40, 50, 4), np.uint8))
    assert App.photo_from_editor({"background": rgba}, 2000).shape == (40, 50, 3)
    with pytest.raises(UserError, match=r"layer.png is 50x40: more than the 1999 pixels"):
        App.photo_from_editor({"background": rgba}, 1999)


def test_clicked_segment_instance_and_label_map(tmp_path):
    label_map = np.zeros((30, 40), np.uint8)
    label_map[2:8, 2:8] = 5          # value 5 in two pieces
    label_map[20:25, 30:38] = 5
    path = str(tmp_path / "map.png")
    cv2.imwrite(path, label_map)
    whole = App.clicked_segment(path, (30, 40), 3, 3, True, 10 ** 4)
    assert whole.sum() == 36 + 40
    piece = App.clicked_segment(path, (30, 40), 3, 3, False, 10 ** 4)
    assert piece.sum() == 36 and piece[3, 3] and not piece[21, 31]
    background = App.clicked_segment(path, (30, 40), 15, 15, False, 10 ** 4)
    assert background.sum() == 30 * 40 - 76     # a label map's value 0 may be a class
    with pytest.raises(UserError, match="value 0, no segment"):
        App.clicked_segment(path, (30, 40), 15, 15, True, 10 ** 4)
    with pytest.raises(UserError, match="outside the 40x30 photo"):
        App.clicked_segment(path, (30, 40), 40, 3, True, 10 ** 4)
    with pytest.raises(UserError, match="the map is 40x30 but the photo is 41x30"):
        App.clicked_segment(path, (30, 41), 3, 3, True, 10 ** 4)


def test_analyse_gives_the_api_classes_window_and_heat_maps(classifier, expected):
    photo = read_image(EXAMPLE_IMAGE)
    for mask_path, wanted in zip(EXAMPLE_MASKS, expected):
        scores, outlined, attention, cam, message = App.analyse(classifier, photo, read_mask(mask_path), 3)
        assert max(scores, key=scores.get) == wanted and len(scores) == 3
        assert message.startswith(f"**{wanted}**")
        assert outlined.shape == photo.shape and (outlined != photo).any(axis=2).sum() > 100
        assert attention.shape == cam.shape == classifier.window + (3,)


def test_failures_become_messages(classifier):
    photo = read_image(EXAMPLE_IMAGE)
    out = App.answer_or_message(lambda: App.analyse(classifier, photo, np.ones((5, 5)), 3))
    assert out[:4] == (None, None, None, None)
    assert "Could not classify" in out[4] and "mask must have the photo's size" in out[4]
    out = App.answer_or_message(lambda: 1 / 0)
    assert out[4].startswith("**Internal error** (ZeroDivisionError") and "Traceback" not in out[4]


def test_example_rows(tmp_path):
    assert App.example_rows(2, "")[0] == [EXAMPLE_IMAGE, EXAMPLE_MAP, True]
    camvid = tmp_path / "camvid"
    for folder in ("val", "valannot"):
        (camvid / folder).mkdir(parents=True)
        for name in ("a.png", "b.png"):
            cv2.imwrite(str(camvid / folder / name), np.zeros((8, 8), np.uint8))
    (camvid / "val.txt").write_text("val/a.png valannot/a.png\nval/b.png valannot/b.png\n")
    rows = App.example_rows(1, str(camvid))
    assert [str(camvid / "val" / "a.png"), str(camvid / "valannot" / "a.png"), False] in rows
    assert not any("b.png" in row[0] for row in rows)
    assert App.example_rows(1, str(tmp_path / "absent")) == App.example_rows(1, "")


def test_bad_parameters_are_one_line(capsys, monkeypatch, tmp_path):
    code, out = run_in_process("App.py", ["--PORT=0"], capsys, monkeypatch)
    assert code == 2 and "--PORT=0: expected" in out.err and "Traceback" not in out.err
    code, out = run_in_process("App.py", [f"--CHECKPOINT={tmp_path / 'none.pt'}"], capsys, monkeypatch)
    assert code == 2 and "no trained model there" in out.err


# ---- the served page -------------------------------------------------------------------------
def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def client(classifier):
    examples = App.example_rows(1, "")
    app = App.build_app(classifier, 3, 10 ** 7, examples)
    port = free_port()
    App.serve(app, examples, 10 ** 7, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True)
    try:
        yield gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        app.close()


def editor_value(layer_path=None):
    handle = gradio_client.handle_file
    return {"background": handle(EXAMPLE_IMAGE), "layers": [handle(layer_path)] if layer_path else [],
            "composite": None}


def top_class(output):
    scores, outlined, attention, cam, message = output
    assert outlined and attention and cam, message
    return scores["label"]


def test_served_mask_upload(client, expected):
    handle = gradio_client.handle_file
    for mask_path, wanted in zip(EXAMPLE_MASKS, expected):
        assert top_class(client.predict(editor_value(), handle(mask_path), api_name="/classify_mask")) == wanted


def test_served_brush(client, expected, tmp_path):
    layer = painted_layer(read_mask(EXAMPLE_MASKS[0]))
    path = str(tmp_path / "layer.png")
    cv2.imwrite(path, cv2.cvtColor(layer, cv2.COLOR_RGBA2BGRA))
    assert top_class(client.predict(editor_value(path), api_name="/classify_brush")) == expected[0]
    out = client.predict(editor_value(), api_name="/classify_brush")
    assert out[1] is None and "no region painted" in out[4]


def test_served_instance_map_click(client, expected):
    handle = gradio_client.handle_file
    label_map = read_label_map(EXAMPLE_MAP)
    for mask_path, wanted in zip(EXAMPLE_MASKS, expected):
        x, y = inside_point(read_mask(mask_path))
        assert label_map[y, x] != 0
        out = client.predict(editor_value(), handle(EXAMPLE_MAP), True, x, y, api_name="/classify_click")
        assert top_class(out) == wanted


def test_served_mismatched_mask_refused(client, tmp_path):
    path = str(tmp_path / "small.png")
    cv2.imwrite(path, np.full((20, 30), 255, np.uint8))
    out = client.predict(editor_value(), gradio_client.handle_file(path), api_name="/classify_mask")
    assert out[1] is None and "small.png: mask is 30x20 (WxH) but the image is 223x207" in out[4]
    assert str(tmp_path) not in out[4] and "gradio" not in out[4]   # the base name only


def test_box_of_the_window_is_drawn(classifier):
    photo = read_image(EXAMPLE_IMAGE)
    region = box_mask(read_mask(EXAMPLE_MASKS[0]))
    x0, y0, x1, y1 = (int(round(v)) for v in classifier.window_box(photo.shape[:2], region))
    _, outlined, _, _, _ = App.analyse(classifier, photo, read_mask(EXAMPLE_MASKS[0]), 3)
    column = min(max(x0, 0), photo.shape[1] - 1)
    rows = slice(max(y0, 0) + 4, min(y1, photo.shape[0]) - 4)
    assert (outlined[rows, column] != photo[rows, column]).any(axis=1).mean() > 0.9
