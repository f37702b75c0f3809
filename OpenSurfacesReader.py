"""OpenSurfaces (materials) as a SegmentDataset: the label-map reader (LabelMapReader.py) with
OpenSurfaces' convention (0 unlabelled, value v is material v) and its 45 material names.

    reader = OpenSurfacesReader("TrainVal_Set/Images", "TrainVal_Set/Annotations")
"""
from LabelMapReader import LabelMapReader

# The 45 OpenSurfaces materials, in the order of the original repository
# (sagieppel/Classification-of-the-material-given-region-of-an-image-using-a-convolutional-
# neural-net-with-attent, OpenSurfacesClasses.py): label-map value v is material v.
OPENSURFACES_CLASSES = [
    "Brick", "Cardboard", "Carpet / rug", "Ceramic", "Chalkboard / blackboard", "Concrete",
    "Cork / corkboard", "Dirt", "Fabric / cloth", "Fire", "Foliage", "Food", "Fur", "Glass",
    "Granite", "Granite / marble", "Hair", "Laminate", "Leather", "Linoleum", "Marble",
    "Metal", "Mirror", "Painted", "Paper towel / tissue", "Paper / tissue", "Plaster",
    "Plastic - clear", "Plastic - opaque", "Rubber / latex", "Skin", "Sky", "Sponge",
    "Stone", "Styrofoam", "Tile", "Wallboard - painted", "Wallboard - unpainted",
    "Wallpaper", "Water", "Wax", "Wicker", "Wood", "Wood - natural color", "Wood - painted",
]


class OpenSurfacesReader(LabelMapReader):
    """A LabelMapReader that names the 45 OpenSurfaces materials unless it is told other
    classes (names, a number, or the class values)."""

    def __init__(self, image_dir, label_dir, train=True, class_names=None, num_classes=None, **convention):
        if class_names is None and num_classes is None and convention.get("class_values") is None:
            class_names = OPENSURFACES_CLASSES
        super().__init__(image_dir, label_dir, train=train, class_names=class_names,
                         num_classes=num_classes, **convention)
