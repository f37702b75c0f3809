"""A local web page: put a photo in, mark a region, see its class and where the model looked.

    python App.py                                   # serves http://127.0.0.1:7860
    python App.py --CHECKPOINT=logs/coco/best.pt --PORT=8080

Mark the region by painting it on the photo, by uploading a mask PNG, or by clicking a segment
of an uploaded instance or label map. The page shows the top classes as a bar chart, the photo
with the region outlined and the window the net saw (the checkpoint's evaluation rule,
roilib/windows.py) as a box, and two heat maps over that window: what the attention branch
adds at its merge point, and Grad-CAM of the predicted class at layer4 (roilib/explain.py).
Same numbers as RunPrediction.py: both classify through RegionClassifier. Built with Gradio.
"""
import collections
import contextlib
import itertools
import math
import os
import re
import tempfile
import time
import traceback
import uuid

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")   # no calls home; works offline

import cv2  # noqa: E402  (after the environment is set)
import numpy as np  # noqa: E402

from RegionClassifier import RegionClassifier, as_box_mask  # noqa: E402
from roilib import cli  # noqa: E402
from roilib.checkpoint import require  # noqa: E402
from roilib.errors import UserError, one_line  # noqa: E402
from roilib.explain import draw_regions, region_colour  # noqa: E402
from roilib.imageio import bounded_bytes, read_image, read_label_map, read_mask, read_raw, write_png  # noqa: E402
from roilib.paths import find_checkpoint, find_path  # noqa: E402
from roilib.runtime import resolve_device  # noqa: E402
from roilib.writeplan import inside  # noqa: E402

# ---- parameters: edit here, or override as --NAME=value ----
CHECKPOINT = "logs/demo/best.pt"   # [nonempty] trained model, .pt or release folder (relative: to this repository if not found here)
HOST = "127.0.0.1"          # [nonempty] address to serve on (0.0.0.0: anyone who reaches this machine can use the page)
PORT = 7860                 # [1..65535] port to serve on
DEVICE = "auto"             # auto | cpu | cuda | cuda:N
TOPK = 5                    # [1..1e6] classes shown
WINDOW = ""                 # [""|HxW] window HxW around the region ("" = the one the model was trained and validated with)
MAX_PIXELS = 40000000       # [1024..1073741824] photos, masks and maps with more pixels are refused, before decoding (memory)
QUEUE = 16                  # [1..10000] requests waiting while CONCURRENT are answered; more are answered "busy"
EXAMPLES = 3                # [0..1000] example photos from the demo data and from CamVid, each (Test/example.png always)
CAMVID = "data/camvid"      # CamVid folder (the SegNet tutorial's layout, as DATASET=camvid reads it) for examples from its val split, used when it exists ("" = none)
# ---- end of parameters ----


def main():
    params = cli.parse_parameters(globals(), __file__)
    require("gradio", "gradio")   # a missing package: one line, before the model is loaded
    device = resolve_device(params["DEVICE"])
    classifier = RegionClassifier.from_pretrained(find_checkpoint(params["CHECKPOINT"]), device, params["WINDOW"])
    examples = example_rows(params["EXAMPLES"], params["CAMVID"])
    app = build_app(classifier, params["TOPK"], params["MAX_PIXELS"], examples, params["QUEUE"])
    print(f"model {params['CHECKPOINT']} on {classifier.device}, window {classifier.window[0]}x"
          f"{classifier.window[1]}; open http://{params['HOST']}:{params['PORT']} (Ctrl-C stops)")
    serve(app, examples, params["MAX_PIXELS"], server_name=params["HOST"], server_port=params["PORT"])


def serve(app, examples, max_pixels, **launch):
    """Start the page: it serves its example files and nothing beside them (never their
    folders), and takes no upload larger than a photo of `max_pixels` could be stored in."""
    app.launch(quiet=True, allowed_paths=sorted({path for row in examples for path in row[:2]}),
               max_file_size=8 * max_pixels + 2 ** 20, **launch)


# ---- what the page receives: uploads read within the page's limits ------------------------
def upload_bytes(upload, max_pixels):
    """(base name, bytes, (width, height)) of an upload: (name, path or bytes) from the editor,
    or a path (a file box); refused before decoding beyond `max_pixels` (--MAX_PIXELS)."""
    name, source = upload if isinstance(upload, tuple) else (os.path.basename(str(upload)), upload)
    return (name, *bounded_bytes(source, name, max_pixels))


def photo_from_editor(value, max_pixels):
    """The editor's photo as RGB uint8 (16-bit scaled as every script reads it), or a
    UserError saying what is missing or wrong."""
    background = value.get("background") if isinstance(value, dict) else None
    if background is None:
        raise UserError("no photo: upload one or pick an example first")
    return read_image(*upload_bytes(background, max_pixels)[:2])


def brush_mask(value, shape, max_pixels):
    """The painted region: every pixel that a brush layer covers (alpha > 0)."""
    painted = np.zeros(shape[:2], bool)
    if len(value.get("layers") or []) > MAX_LAYERS:   # the page's editor sends one
        raise UserError(f"{len(value['layers'])} painted layers: the page takes at most {MAX_LAYERS}")
    for upload in value.get("layers") or []:
        name, data, (width, height) = upload_bytes(upload, max_pixels)
        if (height, width) != tuple(shape[:2]):   # before decoding it
            raise UserError(f"painted layer is {width}x{height} but the photo is {shape[1]}x{shape[0]}")
        layer = read_raw(name, data=data)
        has_alpha = layer.ndim == 3 and layer.shape[2] == 4
        painted |= (layer[:, :, 3] if has_alpha else layer.reshape(*layer.shape[:2], -1).max(axis=2)) > 0
    if not painted.any():
        raise UserError("no region painted: paint over the region with the brush, then press the button")
    return painted


def clicked_segment(map_upload, shape, x, y, whole_value, max_pixels):
    """The segment of the instance or label map at pixel (x, y): every pixel of its value
    (`whole_value`: an instance map, where 0 is no segment) or the connected piece of that value
    holding the pixel (a label map, where each piece is a segment and 0 may be a class)."""
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (x, y)):
        raise UserError(f"x = {one_line(x)}, y = {one_line(y)}: give the pixel's column and row as numbers "
                        "(or click the map)")
    if not map_upload:
        raise UserError("no instance or label map: upload one first")
    label_map = read_label_map(*upload_bytes(map_upload, max_pixels)[:2])
    if label_map.shape[:2] != tuple(shape[:2]):
        raise UserError(f"the map is {label_map.shape[1]}x{label_map.shape[0]} but the photo is "
                        f"{shape[1]}x{shape[0]}: a map must have the photo's size")
    x, y = int(round(x)), int(round(y))
    if not (0 <= x < shape[1] and 0 <= y < shape[0]):
        raise UserError(f"point ({x}, {y}) is outside the {shape[1]}x{shape[0]} photo")
    value = label_map[y, x]
    same = label_map == value
    if whole_value:
        if value == 0:
            raise UserError(f"({x}, {y}) has value 0, no segment in an instance map (untick "
                            "'instance map' to take a piece of a label map's value 0)")
        return same
    _, pieces = cv2.connectedComponents(same.astype(np.uint8), connectivity=8)
    return pieces == pieces[y, x]


# region_colour's hues repeat every 180 values: a table of 180 colours, whatever the values.
HUES = np.array([region_colour(i) for i in range(180)], np.uint8)


def map_view(value, map_upload, max_pixels):
    """The photo under the map's segments, each value in its own colour (what one clicks on)."""
    if not map_upload:
        return None
    label_map = read_label_map(*upload_bytes(map_upload, max_pixels)[:2])
    view = np.where((label_map == 0)[..., None], np.uint8(0), HUES[label_map % 180])
    if isinstance(value, dict) and value.get("background") is not None:
        photo = photo_from_editor(value, max_pixels)
        view = cv2.addWeighted(photo, 0.5, view, 0.5, 0) if photo.shape[:2] == label_map.shape else view
    return view


# ---- the answer ------------------------------------------------------------------------------
def analyse(classifier, photo, mask, topk):
    """(scores {class: probability}, photo with the region and its window, attention map,
    Grad-CAM, message) for one region of `photo`."""
    start = time.perf_counter()
    region = as_box_mask(mask, photo.shape[:2], "region")
    result = classifier.classify_box_masks(photo, [region], topk)[0]
    box = classifier.window_box(photo.shape[:2], region)
    outlined = draw_regions(photo, [region], [f"{one_line(result['class'])} {result['probability']:.2f}"], [box])
    scores = {one_line(t["class"]): t["probability"] for t in result["topk"]}
    message = (f"**{markdown_text(result['class'])}** ({result['probability']:.2f}); region of {result['area']} px, "
               f"seen in a {classifier.window[1]}x{classifier.window[0]} window (the box)")
    try:
        panel = classifier.explain(photo, [region])[0]
    except UserError as error:
        return scores, outlined, None, None, f"{message}. No heat maps: {error}"
    return scores, outlined, panel["attention"], panel["grad_cam"], \
        f"{message}; {time.perf_counter() - start:.2f} s"


def answer_or_message(work):
    """Run `work()` -> analyse's 5 outputs; a failure becomes a message on the page (no
    traceback there; an unexpected one is logged on the server's stderr)."""
    try:
        return work()
    except UserError as error:
        return None, None, None, None, f"**Could not classify:** {public(error)}"
    except Exception as error:   # the page must answer whatever happened
        traceback.print_exc()
        return None, None, None, None, f"**Internal error** ({type(error).__name__}: {public(error)})"


def public(error):
    """An error's text for the page: one line, control characters escaped, and any path
    shortened to its base name (the server's folders are none of a visitor's business)."""
    return markdown_text(re.sub(r"(?:[A-Za-z]:)?[\\/](?:[^\\/\s'\"]+[\\/])+([^\\/\s'\"]+)", r"\1", str(error)))


def markdown_text(text):
    """Text from a file or an upload (a class name, a file name) shown as itself in the page's
    Markdown: one line, control characters escaped, and the characters of links, images,
    code and HTML escaped (never an image fetched from elsewhere, or HTML)."""
    return re.sub(r"([\\`\[\]<>])", r"\\\1", one_line(text))


def example_rows(count, camvid):
    """[photo, map, whole_value] rows: the example, `count` demo and `count` CamVid val photos
    (those present) with their maps."""
    rows = [[find_path("Test/example.png"), find_path("Test/example_labels.png"), True]]
    demo = find_path("Test/demo/val")
    names = sorted(os.listdir(os.path.join(demo, "images")))[:count] if os.path.isdir(demo) else []
    rows += [[os.path.join(demo, "images", n), os.path.join(demo, "labels", n), False] for n in names]
    listing = os.path.join(find_path(camvid), "val.txt") if camvid else ""
    if os.path.isfile(listing):   # lines "val/photo.png valannot/map.png", relative to the folder
        with open(listing, encoding="utf-8", errors="replace") as file:   # read no further than needed
            pairs = list(itertools.islice((line.split() for line in file if len(line.split()) == 2), count))
        root = os.path.realpath(os.path.dirname(listing))
        rows += [[os.path.join(root, photo), os.path.join(root, labels), False] for photo, labels in pairs
                 if all(inside(os.path.join(root, path), root) for path in (photo, labels))]
    return [[os.path.abspath(row[0]), os.path.abspath(row[1]), row[2]] for row in rows
            if os.path.isfile(row[0]) and os.path.isfile(row[1])]


# ---- the page --------------------------------------------------------------------------------
MAX_LAYERS = 4   # brush layers read per request (the editor sends one)
CONCURRENT = 2   # requests answered at once: one at the model (its lock), one decoding
MAX_PENDING = 64   # editor uploads held in memory until their request comes (the oldest dropped)


def build_app(classifier, topk, max_pixels, examples=(), queue=16):
    """The Gradio page around a classifier shared by every request (its lock: one forward at a
    time). CONCURRENT requests are answered at once, `queue` more wait, any beyond are answered
    "queue is full". API names: classify_brush, classify_mask, classify_click."""
    import gradio as gr
    folder, written = tempfile.mkdtemp(prefix="region-page-"), collections.deque()

    def as_files(outputs):
        """The pictures of an answer as PNG files of its own: Gradio copies a file into its cache
        atomically, but rewrites an array's file in place, so a client fetching the same
        picture of another request meanwhile could get it cut short."""
        def as_file(picture):
            if picture is None:
                return None
            path = os.path.join(folder, f"{uuid.uuid4().hex}.png")
            write_png(path, picture)
            written.append(path)
            while len(written) > 4 * MAX_PENDING:   # long copied by then
                with contextlib.suppress(OSError, IndexError):
                    os.remove(written.popleft())
            return path
        return tuple(as_file(o) if isinstance(o, np.ndarray) else o for o in outputs)

    # Gradio's components with methods of their own set on the instances (a subclass would have
    # Gradio write a .pyi stub beside this file at every start).
    def undecoded(payload):
        """{"background", "layers"}: (base name, path or bytes) of each upload, undecoded
        (Gradio's own would decode each one, and the composite, whatever its size)."""
        if payload is None:
            return None
        source = editor.blob_storage.pop(payload.id, None) if payload.id is not None else None
        source = source or payload

        def named(item, name):
            if item is None or isinstance(item, (bytes, bytearray)):
                return item and (name, item)
            return os.path.basename(item.path), item.path
        return {"background": named(source.background, "background.png"),
                "layers": [named(layer, f"layer_{i}.png") for i, layer in enumerate(source.layers)
                           if layer is not None]}

    def accept_blobs(data):
        """The editor's pictures from the browser: one layer, MAX_PENDING held at most."""
        if str(data.data.get("index")) not in ("None", "null", "0"):
            raise gr.Error("the editor has one layer")
        gr.ImageEditor.accept_blobs(editor, data)
        while len(editor.blob_storage) > MAX_PENDING:
            editor.blob_storage.pop(next(iter(editor.blob_storage)), None)
    accept_blobs._is_server_fn = True

    def by_brush(value):
        def work():
            photo = photo_from_editor(value, max_pixels)
            return analyse(classifier, photo, brush_mask(value, photo.shape, max_pixels), topk)
        return as_files(answer_or_message(work))

    def by_mask(value, mask_path):
        def work():
            photo = photo_from_editor(value, max_pixels)
            if not mask_path:
                raise UserError("no mask file: upload a PNG with 0 outside the region")
            name, data, _ = upload_bytes(mask_path, max_pixels)
            return analyse(classifier, photo, read_mask(name, photo.shape, data), topk)
        return as_files(answer_or_message(work))

    def by_click(value, map_path, whole_value, x, y):
        def work():
            photo = photo_from_editor(value, max_pixels)
            mask = clicked_segment(map_path, photo.shape, x, y, whole_value, max_pixels)
            return analyse(classifier, photo, mask, topk)
        return as_files(answer_or_message(work))

    def show_map(value, map_path):
        try:
            return as_files((map_view(value, map_path, max_pixels), ""))
        except UserError as error:
            return None, f"**Could not read the map:** {public(error)}"

    # Uploads and answers are deleted an hour after they were made (a visitor's disk use bounded).
    with gr.Blocks(title="Region classifier", delete_cache=(600, 3600)) as app:
        gr.Markdown("## Which class is this region?\nPut a photo in, mark a region one of three "
                    "ways, and see the classes, the window the model saw, and where it looked.")
        with gr.Row():
            with gr.Column():
                editor = gr.ImageEditor(label="Photo: upload, then paint the region", type="filepath",
                                        image_mode="RGBA", layers=False, transforms=(), format="png",
                                        brush=gr.Brush(colors=["#ff2060"], color_mode="fixed", default_size=12))
                editor.preprocess, editor.accept_blobs = undecoded, accept_blobs
                brush_button = gr.Button("Classify the painted region", variant="primary")
                with gr.Accordion("... or upload a mask", open=False):
                    mask_file = gr.File(label="Mask PNG (0 outside, the photo's size)", type="filepath")
                    mask_button = gr.Button("Classify the mask")
                with gr.Accordion("... or click a segment of an instance or label map", open=True):
                    map_file = gr.File(label="Instance or label map PNG", type="filepath")
                    whole_value = gr.Checkbox(True, label="instance map (a value is one segment; "
                                              "untick for a label map: the clicked piece)")
                    view = gr.Image(label="Click a segment", interactive=False, elem_id="map-view")
                    with gr.Row():
                        x = gr.Number(0, label="x", precision=0)
                        y = gr.Number(0, label="y", precision=0)
                        for number in (x, y):   # checked by clicked_segment: one line, not Gradio's "Error"
                            number.preprocess = lambda payload: payload
                        click_button = gr.Button("Classify the segment at x, y")
            with gr.Column():
                message = gr.Markdown(elem_id="message")
                scores = gr.Label(num_top_classes=topk, label="Classes", elem_id="scores")
                outlined = gr.Image(label="Region (outline) and the window the model saw (box)", format="png")
                with gr.Row():
                    attention = gr.Image(label="Attention branch at its merge point", format="png")
                    cam = gr.Image(label="Grad-CAM of the class at layer4", format="png")
        outputs = [scores, outlined, attention, cam, message]
        if examples:
            gr.Examples([list(row) for row in examples], inputs=[editor, map_file, whole_value], elem_id="examples",
                        example_labels=[os.path.basename(row[0]) for row in examples])
        # Every event that decodes or runs the model shares one limit: memory holds CONCURRENT.
        limit = {"concurrency_id": "page", "concurrency_limit": CONCURRENT}
        brush_button.click(by_brush, [editor], outputs, api_name="classify_brush", **limit)
        mask_button.click(by_mask, [editor, mask_file], outputs, api_name="classify_mask", **limit)
        click_button.click(by_click, [editor, map_file, whole_value, x, y], outputs, api_name="classify_click",
                           **limit)
        for trigger in (map_file.change, editor.upload):
            trigger(show_map, [editor, map_file], [view, message], api_name=False, **limit)

        def pick(event: gr.SelectData):
            return event.index[0], event.index[1]
        view.select(pick, None, [x, y], api_name=False).then(
            by_click, [editor, map_file, whole_value, x, y], outputs, api_name=False, **limit)
    app.queue(max_size=queue)
    return app


if __name__ == "__main__":
    cli.run(main, names={"device": "DEVICE"})
