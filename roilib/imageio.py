"""Reading images, masks and label maps, and writing PNGs, with one-line errors.

Everything goes through ``np.fromfile`` + ``cv2.imdecode`` so that non-ASCII paths work on
every platform (``cv2.imread`` fails silently on them on Windows). Images are decoded with
``IMREAD_UNCHANGED``: EXIF orientation is NOT applied, so an image and a mask drawn on its
stored pixel grid always line up.
"""
import io
import os
import re
import sys
import tempfile
import threading

import cv2
import numpy as np

from roilib.errors import UserError
from roilib.imageinfo import header_size, image_size, size_problem, too_large
from roilib.outputs import atomic_write

# The largest side OpenCV's encoders write in these formats (it refuses a larger one).
MAX_SIDE = {".jpg": ("JPEG", 65500), ".jpeg": ("JPEG", 65500), ".webp": ("WebP", 16383)}
_JPEG_START = b"\xff\xd8"
_JPEG_END = b"\xff\xd9"
_JPEG_SCAN = b"\xff\xda"


def _read_bytes(path):
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except OSError as error:
        raise UserError(f"{path}: cannot read ({error.strerror or error})") from None
    if data.size == 0:
        raise UserError(f"{path}: file is empty")
    return data


def bounded_bytes(source, name, max_pixels):
    """(bytes as a uint8 array, (width, height)) of an image file `source` (a path, or its
    bytes), refused before any decoding when its header does not tell its size or tells more
    than `max_pixels`; messages call it `name` (an upload's base name, never a server path)."""
    if isinstance(source, (bytes, bytearray)):
        data = np.frombuffer(bytes(source), np.uint8)
    else:
        try:
            data = np.fromfile(str(source), np.uint8)
        except OSError:
            raise UserError(f"{name}: file not found") from None
    if data.size == 0:
        raise UserError(f"{name}: file is empty")
    size = image_size(data.tobytes())
    if size is None:
        raise UserError(f"{name}: not an image (or one whose size its header does not tell)")
    if size[0] * size[1] > max_pixels:
        raise UserError(f"{name} is {size[0]}x{size[1]}: more than the {max_pixels} pixels accepted here")
    return data, size


def _check_jpeg_complete(path, data):
    """cv2 may decode a truncated JPEG and fill the rest with grey. The end-of-image marker
    cannot occur inside entropy-coded data (0xFF is byte-stuffed there), so a file whose last
    end-of-image marker is not after its last start-of-scan marker was cut off."""
    raw = data.tobytes()
    if raw[:2] == _JPEG_START and raw.rfind(_JPEG_END) < raw.rfind(_JPEG_SCAN):
        raise UserError(f"{path}: truncated JPEG (no end-of-image marker)")


class _SilencedNativeStderr:
    """libpng, libjpeg and OpenCV complain about a broken file on file descriptor 2 themselves
    ("libpng error: ...", "Corrupt JPEG data: ..."), past Python and OpenCV's log level; the
    UserError says it in one line instead. So while files are decoded, fd 2 goes to a
    temporary file; afterwards the codecs' own lines are dropped and anything else written
    meanwhile (another thread's warning, a native library's message) is passed on to the real
    stderr. Threads may decode at once (the label-map scan): the first in redirects, the last
    out restores."""

    def __init__(self):
        self._lock = threading.Lock()
        self._users = 0
        self._saved = None
        self._capture = None

    def __enter__(self):
        with self._lock:
            if self._users == 0:
                self._capture = tempfile.TemporaryFile()
                self._saved = _redirect_fd2(self._capture.fileno())
            self._users += 1

    def __exit__(self, *exc_info):
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._saved is not None:
                os.dup2(self._saved, 2)
                os.close(self._saved)
                self._saved = None
                self._pass_on(self._capture)
                self._capture = None

    @staticmethod
    def _pass_on(capture):
        capture.seek(0)
        kept = [line for line in capture.read().decode("utf-8", "replace").splitlines(keepends=True)
                if not _CODEC_NOISE.match(line)]
        capture.close()
        if kept:
            os.write(2, "".join(kept).encode())


# Lines the image codecs write about a damaged or unusual file.
_CODEC_NOISE = re.compile(r"^\s*(libpng|libjpeg|libtiff|libwebp|Corrupt JPEG|Premature end of JPEG|"
                          r"Invalid SOS|Bogus|Not a JPEG|JPEG|\[ WARN:|\[ERROR:|.*imgcodecs)", re.I)


def _redirect_fd2(target_fd):
    """Point fd 2 at ``target_fd``; returns a duplicate of the old fd 2 (None if there is none)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        return None
    os.dup2(target_fd, 2)
    return saved


_quiet_decoding = _SilencedNativeStderr()


def _decode(path, flags=cv2.IMREAD_UNCHANGED, data=None):
    data = _read_bytes(path) if data is None else data
    _check_jpeg_complete(path, data)
    problem = too_large(data[:1 << 16].tobytes())
    if problem:
        raise UserError(f"{path}: {problem}")
    try:
        with _quiet_decoding:
            array = cv2.imdecode(data, flags)
    except cv2.error:
        array = None
    if array is None:
        raise UserError(f"{path}: not an image or corrupt/truncated file")
    return array


def read_raw(path, data=None):
    """An image's pixels as stored (BGR or BGRA channel order, 8 or 16 bit), checked and
    refused in one line like every read here. `data`: as read_image's."""
    return _decode(path, data=data)


def _to_uint8(path, array):
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        # 65535 / 257 = 255 exactly: a linear map, where clipping would saturate.
        return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    raise UserError(f"{path}: unsupported pixel type {array.dtype} (expected 8 or 16 bit)")


def read_image(path, data=None):
    """Image file -> uint8 H×W×3 RGB (grayscale expanded, alpha dropped, 16 bit scaled).
    `data`: the file's bytes (a uint8 array) already read; `path` then only names it."""
    array = _to_uint8(path, _decode(path, data=data))
    if array.ndim == 2:
        return cv2.cvtColor(array, cv2.COLOR_GRAY2RGB)
    channels = array.shape[2]
    if channels == 1:
        return cv2.cvtColor(array[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(array, cv2.COLOR_BGRA2RGB)
    raise UserError(f"{path}: unsupported image with {channels} channels")


def _single_channel(array):
    """Colour mask -> one channel. An alpha channel that is not fully opaque is the mask;
    otherwise a pixel is on when any colour channel is (a red mask has B = G = 0)."""
    if array.ndim == 2:
        return array
    if array.shape[2] == 4 and array[:, :, 3].min() < array[:, :, 3].max():
        return array[:, :, 3]
    return array[:, :, :3].max(axis=2)


def read_mask(path, shape=None, data=None):
    """Mask file -> uint8 H×W in {0, 1}. Two values (0/1, 0/255, 0/65535): nonzero is inside.
    An 8-bit mask with more than two values is a lossy save (JPEG blurs the edge and sprinkles
    low values around it): pixels above half its maximum are inside, with a one-line notice.
    ``shape`` (H, W): the image's size, which the mask must match. `data`: as read_image's."""
    values = _single_channel(_decode(path, data=data))
    mask = values > 0
    if values.dtype == np.uint8 and np.unique(values).size > 2:
        threshold = int(values.max()) / 2
        mask = values > threshold
        print(f"notice: {path}: mask has {np.unique(values).size} grey levels (a lossy JPEG?); "
              f"pixels above {threshold:g} count as inside", file=sys.stderr)
    mask = mask.astype(np.uint8)
    if shape is not None and tuple(mask.shape) != tuple(shape[:2]):
        raise UserError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but the image is "
                        f"{shape[1]}x{shape[0]}{orientation_hint(mask.shape, shape)}")
    if not mask.any():
        raise UserError(f"{path}: mask is empty (no nonzero pixel)")
    return mask


def orientation_hint(found_hw, expected_hw):
    """Where the sizes are swapped, the usual cause: a photo rotated by its EXIF tag."""
    if tuple(found_hw[:2]) == tuple(expected_hw[:2])[::-1]:
        return (" (width and height swapped: the photo probably carries an EXIF rotation, which "
                "this project does not apply; save the image and mask with the same orientation)")
    return ""


def read_label_map(path, data=None):
    """Label-map file -> 2D integer array of class/instance values, 8 or 16 bit kept as is.
    A palette PNG gives its indices (PASCAL VOC's format; cv2 would expand them to colours).
    A 3-channel file whose channels are all equal is a gray map saved as colour and accepted.
    Values are whole numbers >= 0: a float or a negative value is refused (a TIFF may hold
    them). `data`: as read_image's."""
    data = _read_bytes(path) if data is None else data
    if _is_palette_png(data):
        return _palette_indices(path, data)
    array = _decode(path, data=data)
    if not np.issubdtype(array.dtype, np.integer):
        raise UserError(f"{path}: label map of {array.dtype} pixels; labels are whole numbers "
                        "(an 8 or 16 bit PNG)")
    if np.issubdtype(array.dtype, np.signedinteger) and array.min() < 0:
        raise UserError(f"{path}: label map with negative values (down to {array.min()}); labels are >= 0")
    if array.ndim == 3:
        colour = array[:, :, :3] if array.shape[2] >= 3 else array[:, :, :1]
        if not (colour == colour[:, :, :1]).all():
            raise UserError(
                f"{path}: colour label map; expected a single-channel PNG whose pixel "
                f"values are the labels")
        array = colour[:, :, 0]
    return np.ascontiguousarray(array)


def _is_palette_png(data):
    """PNG signature, then the IHDR chunk whose colour type (byte 25) is 3 = palette."""
    raw = data[:26].tobytes()
    return len(raw) == 26 and raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR" \
        and raw[25] == 3


def _palette_indices(path, data):
    """A palette PNG's pixel indices, with Pillow (cv2 has no way to get them)."""
    try:
        from PIL import Image
    except ImportError:
        raise UserError(f"{path}: palette PNG; reading its indices needs Pillow "
                        f"(python3 -m pip install Pillow)") from None
    problem = too_large(data[:1 << 16].tobytes())
    if problem:
        raise UserError(f"{path}: {problem}")
    try:
        with Image.open(io.BytesIO(data.tobytes())) as image:
            return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
    except Image.DecompressionBombError:   # Pillow's own limit, below OpenCV's
        width, height = header_size(data[:32].tobytes())
        raise UserError(f"{path}: image too large to decode: palette PNG of {width}x{height} (WxH); "
                        f"Pillow, which reads palette PNGs, takes at most "
                        f"{2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels") from None
    except (OSError, ValueError, SyntaxError):
        raise UserError(f"{path}: not an image or corrupt/truncated file") from None


# The formats write_image writes, by extension (cv2 picks the encoder from it).
IMAGE_WRITE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def check_image_extension(path):
    """The extension of an image to write (see write_image); one line for an unknown one."""
    extension = os.path.splitext(str(path))[1].lower()
    if extension not in IMAGE_WRITE_EXTENSIONS:
        raise UserError(f"{path}: unknown image extension {extension or '(none)'}; "
                        f"use one of {', '.join(IMAGE_WRITE_EXTENSIONS)}")
    return extension


def check_image_size(path, height, width):
    """Refuse, before the work that makes it, an image that write_image could not encode in
    `path`'s format or that OpenCV (so this project) could not read back (the caller adds how
    to make it smaller: UserError.advised)."""
    extension = check_image_extension(path)
    name, limit = MAX_SIDE.get(extension, (None, None))
    if limit and max(height, width) > limit:
        raise UserError(f"{path}: the image would be {width}x{height} px, beyond what {name} holds "
                        f"({limit} px a side); write a .png", then=", or ")
    problem = size_problem(width, height)
    if problem:
        raise UserError(f"{path}: it could not be read back, {problem}")


def write_image(path, array):
    """Write a 2D (gray) or H×W×3 RGB array in the format its extension names, atomically (a
    killed run never leaves half a file). An unknown extension is refused."""
    extension = check_image_extension(path)
    array = np.asarray(array)
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(extension, array)
    if not ok:
        raise UserError(f"{path}: cannot encode {array.dtype} {array.shape} array as {extension}")
    with atomic_write(path, "wb") as file:
        file.write(encoded.tobytes())


def write_png(path, array):
    """Write a 2D (gray, 8/16 bit) or H×W×3 RGB array as PNG, atomically."""
    if os.path.splitext(str(path))[1].lower() != ".png":
        raise UserError(f"{path}: expected a .png file name")
    write_image(path, array)
