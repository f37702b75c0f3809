"""Issue 32: the page and the API under hostile use. One table drives each class of bad input
through every entry point that takes it (RunPrediction.py, RegionClassifier, the served page):
each answers one line naming the file by its base name, or counts a skip; none decodes an
upload beyond the page's limit, serves a file beside its examples, or mixes two requests."""
import os
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

from helpers import EXAMPLE_IMAGE, EXAMPLE_MASKS, ROOT, png, run_in_process
from RegionClassifier import RegionClassifier
from roilib.crops import BoxMask
from roilib.errors import UserError
from roilib.imageio import read_image, read_label_map, read_mask

pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")
gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")
import App  # noqa: E402

EXAMPLE_MAP = os.path.join(ROOT, "Test", "example_labels.png")


def tiff(array):
    return cv2.imencode(".tiff", array)[1].tobytes()


# Bad files, each with the words of its one line on the page and from the scripts and the API
# (the page refuses by its MAX_PIXELS before decoding; the scripts by OpenCV's or Pillow's limit).
BAD_MASKS = {
    "not an image": (b"hello, not a picture", "not an image", "not an image"),
    "empty file": (b"", "empty", "empty"),
    "header bomb": (png(12000, 12000), "12000x12000: more than", "corrupt/truncated"),
}
BAD_MAPS = {
    "float TIFF": (tiff(np.full((207, 223), 1.5, np.float32)), "float32 pixels", "float32 pixels"),
    "negative values": (tiff(np.full((207, 223), -3, np.int32)), "negative values", "negative values"),
    "palette bomb": (png(20000, 20000, colour_type=3), "20000x20000: more than", "too large to decode"),
    **BAD_MASKS,
}


@pytest.fixture(scope="module")
def classifier(example_checkpoint):
    return RegionClassifier.from_pretrained(example_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def served(classifier, tmp_path_factory):
    """(client, port, camvid folder) of a page whose CamVid listing also names a private file
    outside its folder and which has a private file beside its examples."""
    root = tmp_path_factory.mktemp("page")
    camvid, private = root / "camvid", root / "private"
    for folder in (camvid / "val", camvid / "valannot", private):
        folder.mkdir(parents=True)
    for folder in (camvid / "val", camvid / "valannot", private):
        cv2.imwrite(str(folder / "a.png"), np.zeros((8, 8), np.uint8))
    (camvid / "val" / "notes.txt").write_text("private")
    (private / "secret.txt").write_text("private")
    (camvid / "val.txt").write_text("../private/a.png ../private/a.png\nval/a.png valannot/a.png\n")
    examples = App.example_rows(2, str(camvid))
    app = App.build_app(classifier, 3, 10 ** 6, examples, queue=16)
    port = free_port()
    App.serve(app, examples, 10 ** 6, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True)
    try:
        yield gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False), port, camvid
    finally:
        app.close()


def free_port():
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def status(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/gradio_api/file={path}") as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


def page_editor(path=EXAMPLE_IMAGE):
    return {"background": gradio_client.handle_file(str(path)), "layers": [], "composite": None}


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


# ---- security: what the page serves and says -------------------------------------------------
def test_page_serves_exactly_its_example_files(served):
    _, port, camvid = served
    assert status(port, camvid / "val" / "a.png") == 200
    assert status(port, camvid / "val" / "notes.txt") == 403          # beside an example
    assert status(port, camvid.parent / "private" / "secret.txt") == 403
    assert status(port, camvid.parent / "private" / "a.png") == 403   # named by ../ in val.txt
    assert not any("private" in path for row in App.example_rows(2, str(camvid)) for path in row[:2])


@pytest.mark.parametrize("kind", sorted(BAD_MASKS))
def test_bad_mask_is_one_line_at_every_entry_point(served, classifier, example_checkpoint, tmp_path, capsys, monkeypatch, kind):
    data, page_words, words = BAD_MASKS[kind]
    path = write(tmp_path, "bad_mask.png", data)
    out = served[0].predict(page_editor(), gradio_client.handle_file(path), api_name="/classify_mask")
    assert out[1] is None and out[4].startswith("**Could not classify:** bad_mask.png") and page_words in out[4]
    assert "gradio" not in out[4] and str(tmp_path) not in out[4]
    with pytest.raises(UserError, match=words):
        classifier.classify(EXAMPLE_IMAGE, [path])
    code, printed = run_in_process("RunPrediction.py", [f"--CHECKPOINT={example_checkpoint}",
                                                        f"--MASKS={path}"], capsys, monkeypatch)
    assert code == 2 and words in printed.err and "Traceback" not in printed.err


@pytest.mark.parametrize("kind", sorted(BAD_MAPS))
def test_bad_map_is_one_line_at_every_entry_point(served, example_checkpoint, tmp_path, capsys, monkeypatch, kind):
    data, page_words, words = BAD_MAPS[kind]
    path = write(tmp_path, "bad_map.tiff" if data[:2] in (b"II", b"MM") else "bad_map.png", data)
    out = served[0].predict(page_editor(), gradio_client.handle_file(path), True, 5, 5, api_name="/classify_click")
    assert out[1] is None and "**Could not classify:** bad_map" in out[4] and page_words in out[4]
    code, printed = run_in_process("RunPrediction.py", [f"--CHECKPOINT={example_checkpoint}",
                                                        f"--INSTANCE_MAP={path}"], capsys, monkeypatch)
    assert code == 2 and words in printed.err and "Traceback" not in printed.err


@pytest.mark.parametrize("x", [None, "left"])   # a cleared box, a word
def test_bad_point_is_one_line_on_the_page(served, x):
    out = served[0].predict(page_editor(), gradio_client.handle_file(EXAMPLE_MAP), True, x, 5,
                            api_name="/classify_click")
    assert out[1] is None and "Could not classify:** x = " in out[4] and "Internal" not in out[4]
    with pytest.raises(UserError, match="x = nan"):   # JSON carries no NaN: the function itself
        App.clicked_segment(EXAMPLE_MAP, (207, 223), float("nan"), 5, True, 10 ** 6)


@pytest.mark.parametrize("kind", sorted(BAD_MASKS))
def test_bad_photo_is_one_line_at_every_entry_point(served, classifier, example_checkpoint, tmp_path, capsys,
                                                    monkeypatch, kind):
    data, page_words, words = BAD_MASKS[kind]
    path = write(tmp_path, "photo.png", data)
    out = served[0].predict(page_editor(path), gradio_client.handle_file(EXAMPLE_MASKS[0]), api_name="/classify_mask")
    assert out[1] is None and out[4].startswith("**Could not classify:** photo.png") and page_words in out[4]
    with pytest.raises(UserError, match=words):
        classifier.classify(path, EXAMPLE_MASKS[0])
    code, printed = run_in_process("RunPrediction.py", [f"--CHECKPOINT={example_checkpoint}", f"--IMAGE={path}"],
                                   capsys, monkeypatch)
    assert code == 2 and words in printed.err and "Traceback" not in printed.err


# ---- wrong answers --------------------------------------------------------------------------
def test_page_reads_a_16_bit_grey_photo_as_the_api_does(served, classifier, tmp_path):
    grey = cv2.cvtColor(read_image(EXAMPLE_IMAGE), cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257
    path = str(tmp_path / "grey16.png")
    cv2.imwrite(path, grey)
    api = classifier.classify(path, EXAMPLE_MASKS[0], topk=3)[0]
    out = served[0].predict(page_editor(path), gradio_client.handle_file(EXAMPLE_MASKS[0]), api_name="/classify_mask")
    assert {c["label"]: round(c["confidence"], 4) for c in out[0]["confidences"]} == \
        {t["class"]: t["probability"] for t in api["topk"]}


def test_concurrent_requests_get_their_own_heat_maps(classifier):
    photo = read_image(EXAMPLE_IMAGE)
    masks = [read_mask(path) for path in EXAMPLE_MASKS]
    alone = [App.analyse(classifier, photo, mask, 3) for mask in masks]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda i: App.analyse(classifier, photo, masks[i % 4], 3), range(8)))
    for i, answer in enumerate(together):
        assert answer[0] == alone[i % 4][0]
        assert np.array_equal(answer[2], alone[i % 4][2]) and np.array_equal(answer[3], alone[i % 4][3])


def test_uploads_are_bounded_before_decoding(monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("decoded")
    monkeypatch.setattr(App, "read_image", never)
    monkeypatch.setattr(App, "read_raw", never)
    bomb = ("huge.png", png(12000, 12000))
    with pytest.raises(UserError, match="huge.png is 12000x12000: more than the 40000000 pixels"):
        App.photo_from_editor({"background": bomb}, 40_000_000)
    with pytest.raises(UserError, match="huge.png is 12000x12000"):
        App.brush_mask({"layers": [bomb]}, (207, 223), 40_000_000)
    with pytest.raises(UserError, match="huge.png is 12000x12000"):
        App.map_view({}, bomb, 40_000_000)


def test_a_map_of_huge_values_is_coloured_without_a_colour_per_value(tmp_path):
    label_map = np.zeros((30, 40), np.int32)
    label_map[5:10, 5:10] = 2 ** 31 - 1
    path = write(tmp_path, "wide.tiff", tiff(label_map))
    view = App.map_view({}, path, 10 ** 4)
    assert view.shape == (30, 40, 3) and view[7, 7].any() and not view[0, 0].any()
    assert App.clicked_segment(path, (30, 40), 7, 7, True, 10 ** 4).sum() == 25


def test_editor_upload_store_is_bounded(classifier):
    app = App.build_app(classifier, 3, 10 ** 6)
    editor = next(block for block in app.blocks.values() if isinstance(block, gr.ImageEditor))

    class Blob:
        def __init__(self, index, id_):
            self.data, self.files = {"type": "layer", "index": index, "id": id_}, [("file", b"x")]
    with pytest.raises(gr.Error, match="one layer"):
        editor.accept_blobs(Blob("1000000000", "a"))
    assert not os.path.exists(os.path.join(ROOT, "App.pyi"))   # Gradio writes one for a subclass
    for k in range(App.MAX_PENDING + 10):
        editor.accept_blobs(Blob("0", str(k)))
    assert len(editor.blob_storage) == App.MAX_PENDING
    # The browser's way: its pictures sent ahead as blobs, then a request naming them by id.
    from gradio.components.image_editor import EditorData
    photo = cv2.imencode(".png", cv2.imread(EXAMPLE_IMAGE, cv2.IMREAD_UNCHANGED))[1].tobytes()
    blob = Blob(None, "visit")
    blob.data["type"], blob.files = "background", [("file", photo)]
    editor.accept_blobs(blob)
    value = editor.preprocess(EditorData(id="visit"))
    assert value == {"background": ("background.png", photo), "layers": []} and "visit" not in editor.blob_storage
    assert np.array_equal(App.photo_from_editor(value, 10 ** 6), read_image(EXAMPLE_IMAGE))


# ---- the API --------------------------------------------------------------------------------
@pytest.mark.parametrize("call,words", [
    (lambda c, image: c.classify(image, EXAMPLE_MASKS, topk=0), "topk=0"),
    (lambda c, image: c.classify(image, np.full(image.shape[:2], np.nan)), "NaN"),
    (lambda c, image: c.classify(image, np.full(image.shape[:2], "x")), "expected numbers"),
    (lambda c, image: c.classify(image, BoxMask(np.ones((10, 10), np.uint8), 500, 500)), "not inside"),
    (lambda c, image: c.classify(image, BoxMask(np.ones((10, 10), np.uint8), -5, 0)), "not inside"),
    (lambda c, image: RegionClassifier(c.model, c.window, max_batch=-1), "max_batch=-1"),
    (lambda c, image: RegionClassifier(c.model, c.window, max_batch=0), "max_batch=0"),
])
def test_api_refuses_what_it_cannot_answer(classifier, call, words):
    with pytest.raises(UserError, match=words):
        call(classifier, read_image(EXAMPLE_IMAGE))


def test_float_instance_map_is_refused(tmp_path):
    with pytest.raises(UserError, match="float32 pixels"):
        read_label_map(write(tmp_path, "f.tiff", tiff(np.full((5, 5), 0.5, np.float32))))


def test_requests_beyond_the_queue_are_answered_busy(classifier):
    """The model held (its lock taken here): CONCURRENT requests wait at it, `queue` more in
    Gradio's queue, and the rest are answered "queue is full" at once; once the model is free
    every accepted request gets the API's answer."""
    import threading
    import time
    app = App.build_app(classifier, 3, 10 ** 6, queue=1)
    port = free_port()
    App.serve(app, [], 10 ** 6, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True)
    expected = classifier.classify(EXAMPLE_IMAGE, EXAMPLE_MASKS[0], topk=3)[0]["class"]
    outcomes = []

    def one():
        client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
        try:
            out = client.predict(page_editor(), gradio_client.handle_file(EXAMPLE_MASKS[0]), api_name="/classify_mask")
            outcomes.append(out[0]["label"] if out[0] else out[4])
        except Exception as error:
            outcomes.append(f"busy: {error}")
    try:
        with classifier.lock:
            threads = [threading.Thread(target=one) for _ in range(6)]
            for thread in threads:
                thread.start()
            for _ in range(1500):   # until the ones beyond the limit have been answered
                if sum(o.startswith("busy") for o in outcomes) >= 6 - App.CONCURRENT - 1:
                    break
                time.sleep(0.02)
        for thread in threads:
            thread.join(60)
    finally:
        app.close()
    busy = [o for o in outcomes if o.startswith("busy")]
    assert len(outcomes) == 6 and busy and all("Queue is full" in o for o in busy)
    assert set(outcomes) - set(busy) == {expected}


def test_a_label_map_of_wide_values_is_read_without_a_count_per_value(example_checkpoint, tmp_path, capsys, monkeypatch):
    """RunPrediction --LABEL_MAP: an int32 map with one value of 2**31 - 1 allocated a count per
    value up to it (16 GiB); its values are counted as they are instead."""
    label_map = np.zeros((207, 223), np.int32)
    label_map[read_mask(EXAMPLE_MASKS[0]) > 0] = 1
    label_map[:5, :5] = 2 ** 31 - 1
    path = write(tmp_path, "wide.tiff", tiff(label_map))
    code, out = run_in_process("RunPrediction.py", [f"--CHECKPOINT={example_checkpoint}", f"--LABEL_MAP={path}"],
                               capsys, monkeypatch)
    assert code in (0, None) and "2147483647 (25 px)" in out.err and "#1" in out.out


def test_a_camvid_listing_that_is_not_text_costs_no_start(tmp_path):
    camvid = tmp_path / "camvid"
    camvid.mkdir()
    (camvid / "val.txt").write_bytes(b"\xff\xfe\x00 not text \x80\n" * 1000)
    assert App.example_rows(3, str(camvid)) == App.example_rows(3, "")
