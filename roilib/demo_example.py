"""The example input of RunPrediction.py: Test/example.png, its masks and instance map, drawn
by the demo's scene generator."""
import os

import numpy as np

from roilib.demo_scenes import CLASS_NAMES, SPLIT_CODES, make_scene
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
    write_png(os.path.join(folder, "example.png"), image)
    for number, (_, mask) in enumerate(objects, start=1):
        write_png(os.path.join(folder, f"example_mask{number}.png"), mask.astype(np.uint8) * 255)
        instances[mask] = number
    write_png(os.path.join(folder, "example_labels.png"), instances)
    return list(EXAMPLE_CLASSES)
