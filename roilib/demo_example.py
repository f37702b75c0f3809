"""The example input of RunPrediction.py: Test/example.png, its masks and instance map, drawn
by the demo's scene generator."""
import os

import cv2
import numpy as np

from roilib.demo_scenes import CLASS_NAMES, SPLIT_CODES, make_scene
from roilib.errors import UserError
from roilib.imageio import write_png

EXAMPLE_CLASSES = ["boat", "car", "apple", "ring"]  # classes of example_mask1..4.png


def write_example(folder, seed=7):
    """Test/example.png, example_mask1..4.png (0/255) and example_labels.png (instance map:
    value k = mask k) for the prediction script; the masks are EXAMPLE_CLASSES in order.
    Returns the class name of each mask."""
    targets = [(CLASS_NAMES.index(name), area)
               for name, area in zip(EXAMPLE_CLASSES, (900, 700, 1500, 400))]
    for attempt in range(100):  # deterministic: the first seed where all four fit
        rng = np.random.default_rng([seed, SPLIT_CODES["example"], attempt])
        image, objects = make_scene(rng, targets, len(targets))
        if [label for label, _ in objects] == [label for label, _ in targets]:
            break
    else:
        raise RuntimeError("could not place the example objects")
    instances = np.zeros(image.shape[:2], np.uint8)
    files = {"example.png": image}
    for number, (_, mask) in enumerate(objects, start=1):
        files[f"example_mask{number}.png"] = mask.astype(np.uint8) * 255
        instances[mask] = number
    files["example_labels.png"] = instances
    check_example_folder(folder, files)
    for name, array in files.items():
        write_png(os.path.join(folder, name), array)
    return list(EXAMPLE_CLASSES)


def check_example_folder(folder, files=None):
    """Refuse to write the example over a file of that name that is not the example's own
    (`files`: {name: pixels} to compare with; None: any existing file is the user's unless it
    is a PNG, compared later)."""
    names = files or ["example.png", "example_labels.png"] + [f"example_mask{i}.png" for i in range(1, 5)]
    for name in names:
        path = os.path.join(folder, name)
        if not os.path.lexists(path):
            continue
        found = cv2.imread(path, cv2.IMREAD_UNCHANGED) if os.path.isfile(path) else None
        ours = files[name] if files else found
        if found is not None and found.ndim == 3:
            found = cv2.cvtColor(found, cv2.COLOR_BGR2RGB)
        if found is None or not np.array_equal(found, ours):
            raise UserError(f"{path}: exists and is not the demo's {name}: not replaced (write the "
                            "example into an empty folder)")
