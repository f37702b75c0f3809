"""What an image file's header says, read before (or instead of) decoding it: its size, so
that a file too large to decode is called so instead of "corrupt", and its EXIF orientation,
which this project does not apply (see roilib/imageio.py)."""
import os
import struct

# OpenCV's decoders refuse images of more pixels than this (its CV_IO_MAX_IMAGE_PIXELS,
# which the environment variable OPENCV_IO_MAX_IMAGE_PIXELS changes).
OPENCV_MAX_PIXELS_ENV = "OPENCV_IO_MAX_IMAGE_PIXELS"
OPENCV_DEFAULT_MAX_PIXELS = 1 << 30
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic): they carry the size.
_JPEG_FRAMES = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
# Markers without a length field.
_JPEG_BARE = {0x01, *range(0xD0, 0xDA)}
EXIF_ORIENTATION_TAG = 0x0112


def header_size(raw):
    """(width, height) from a PNG's or JPEG's header bytes, or None (other formats, or a
    header that cannot be parsed: the decoder then says what is wrong)."""
    if raw[:8] == _PNG_SIGNATURE and raw[12:16] == b"IHDR" and len(raw) >= 24:
        return struct.unpack(">II", raw[16:24])
    if raw[:2] == b"\xff\xd8":
        return _jpeg_size(raw)
    return None


def _jpeg_size(raw):
    i = 2
    while i + 4 <= len(raw):
        if raw[i] != 0xFF:
            return None
        marker = raw[i + 1]
        if marker == 0xFF:   # fill byte
            i += 1
            continue
        if marker in _JPEG_BARE:
            i += 2
            continue
        if marker in _JPEG_FRAMES:
            if i + 9 > len(raw):
                return None
            height, width = struct.unpack(">HH", raw[i + 5:i + 9])
            return width, height
        i += 2 + struct.unpack(">H", raw[i + 2:i + 4])[0]
    return None


def image_size(raw):
    """(width, height) of an image from its bytes, its header only read (PNG and JPEG here,
    other formats by Pillow's lazy open), or None when they do not tell it."""
    size = header_size(raw[:1 << 16])
    if size:
        return size
    try:
        import io
        from PIL import Image
        with Image.open(io.BytesIO(raw)) as image:
            return image.size
    except Exception:   # not an image, no Pillow, or one Pillow calls a bomb: size unknown
        return None


def opencv_max_pixels():
    """The most pixels OpenCV decodes here."""
    try:
        return int(os.environ.get(OPENCV_MAX_PIXELS_ENV, OPENCV_DEFAULT_MAX_PIXELS))
    except ValueError:
        return OPENCV_DEFAULT_MAX_PIXELS


def too_large(raw):
    """Why an image cannot be decoded for its size alone ("" when it can, or is unknown)."""
    size = header_size(raw)
    return size_problem(*size) if size else ""


def size_problem(width, height):
    """Why an image of width x height cannot be decoded here ("" when it can)."""
    limit = opencv_max_pixels()
    if width * height <= limit:
        return ""
    return (f"image too large to decode: {width}x{height} (WxH, {width * height / 1e6:.0f} "
            f"megapixels; OpenCV reads at most {limit / 1e6:.0f}, set {OPENCV_MAX_PIXELS_ENV} "
            "to raise it, or scale the image down)")


def exif_notice(path):
    """A one-line notice for an image whose EXIF tag says to rotate or flip it ("" if none):
    it is read on its stored pixel grid, where viewers show it turned."""
    orientation = exif_orientation(path)
    if orientation in (None, 1):
        return ""
    return (f"notice: {path}: EXIF orientation {orientation}: viewers show this photo rotated or "
            "flipped, but it is classified on its stored pixel grid (as the project reads every "
            "image); masks must be drawn on that grid")


def exif_orientation(path):
    """The EXIF orientation tag of an image (1 = as stored), or None when it has none or it
    cannot be read (Pillow reads only the header here)."""
    try:
        from PIL import Image
        with Image.open(path) as image:
            value = image.getexif().get(EXIF_ORIENTATION_TAG)
    except Exception:   # no Pillow, or a header Pillow cannot parse: nothing to say
        return None
    return value if isinstance(value, int) else None
