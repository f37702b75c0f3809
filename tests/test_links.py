"""Broken symbolic links in a dataset's folders (issue 24): a dangling link or a link loop
in a label-map folder or an image folder is skipped and counted, never a traceback. Label
maps: counted with the images without a label map, and named in a notice. Images: skipped
and counted like a corrupt image where a sample is read (COCO: a missing image file)."""
import os
import shutil

import pytest

from CocoReader import CocoReader
from OpenSurfacesReader import OpenSurfacesReader
from roilib.errors import UserError


def break_link(path, kind):
    os.remove(path)
    os.symlink("/no/such/target.png" if kind == "dangling" else os.path.basename(path), path)


@pytest.fixture
def split(data, tmp_path, monkeypatch):
    monkeypatch.setenv("ROI_ATTENTION_CACHE", "off")
    shutil.copytree(data / "val", tmp_path / "val")
    return tmp_path / "val"


@pytest.mark.parametrize("kind", ["dangling", "loop"])
def test_a_broken_label_map_link_is_skipped_and_counted(split, kind, capsys):
    whole = OpenSurfacesReader(split / "images", split / "labels", class_names=None)
    break_link(split / "labels" / "00002.png", kind)
    reader = OpenSurfacesReader(split / "images", split / "labels", class_names=None)
    assert len(reader.images) == len(whole.images) - 1 and reader.missing_labels == 1
    assert "skipped 1 label maps that are broken symbolic links" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["dangling", "loop"])
@pytest.mark.parametrize("reader", ["labelmap", "coco"])
def test_a_broken_image_link_is_skipped_and_counted(split, kind, reader):
    if reader == "coco":
        full = CocoReader(split / "images", split / "instances.json").summary()
        break_link(split / "images" / "00002.png", kind)
        summary = CocoReader(split / "images", split / "instances.json").summary()
        assert "missing image files: 1" in summary and "missing image files: 0" in full
        return
    break_link(split / "images" / "00002.png", kind)
    dataset = OpenSurfacesReader(split / "images", split / "labels", train=False, class_names=None)
    broken = next(i for i in range(len(dataset))
                  if dataset.images[int(dataset.image_of_segment[i])]["path"].endswith("00002.png"))
    sample, skipped = dataset.readable_sample(broken)
    assert sample["mask"].any() and [path for path, _ in skipped] == [str(split / "images" / "00002.png")]


def test_only_broken_images_left_is_one_line(split):
    for name in os.listdir(split / "images"):
        break_link(split / "images" / name, "loop")
    dataset = OpenSurfacesReader(split / "images", split / "labels", train=False, class_names=None)
    with pytest.raises(UserError, match="could not be read"):
        dataset.readable_sample(0)


def test_subfolders_are_walked_once_and_hidden_ones_not(tmp_path):
    """A link back up the tree is read once (no endless walk), a linked subfolder is followed,
    and a hidden folder (the index's .cache) is never taken for data."""
    from roilib.indexcache import walk_files
    (tmp_path / "city" / "deeper").mkdir(parents=True)
    (tmp_path / ".cache").mkdir()
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    elsewhere.mkdir()
    for path in (tmp_path / "a.png", tmp_path / "city" / "b.png", tmp_path / "city" / "deeper" / "c.png",
                 tmp_path / ".cache" / "d.png", tmp_path / "city" / "notes.txt", elsewhere / "e.png"):
        path.write_bytes(b"x")
    os.symlink(tmp_path, tmp_path / "city" / "up")           # a loop back to the top
    os.symlink(elsewhere, tmp_path / "linked")               # a linked city
    names = [name for name, _ in walk_files(str(tmp_path), lambda n: n.endswith(".png"))]
    assert names == ["a.png", "city/b.png", "city/deeper/c.png", "linked/e.png"]
