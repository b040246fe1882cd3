"""Inputs of ``tools/predict.py``: an image, a folder, a glob or a video as a
stream of BGR frames.

Images are read with detectron2's ``read_image`` (PIL: EXIF orientation applied, grayscale and
palette images converted; a truncated file is an error, not a half-grey picture); videos with
OpenCV's ``cv2.VideoCapture``. What counts as an image or a video is decided by the file
extension (:data:`IMAGE_EXTENSIONS`, :data:`VIDEO_EXTENSIONS`); a file with an image extension
that is not a decodable image (truncated, or not an image at all) is *unreadable*.

Iterating a source (``for frame in source``) raises ``ValueError`` at the first unreadable input,
naming it. ``source.frames(skip_unreadable=True)`` instead yields an :class:`Unreadable` record in
its place (file, index, reason) and goes on; ``tools/predict.py`` skips and reports those.
"""
import glob
import os
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np
from detectron2.data.detection_utils import read_image

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "Frame",
    "ImageSource",
    "Unreadable",
    "UnreadableImageError",
    "VideoSource",
    "batched",
    "open_input",
    "read_bgr_image",
]

# File extensions (lower case) read as images (PIL through detectron2's read_image).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# File extensions (lower case) read as videos (cv2.VideoCapture, FFmpeg backend).
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
# Frame rate used when a video does not report one (cv2 gives 0 for some containers).
DEFAULT_FPS = 30.0
# Failed reads in a row after which a video counts as ended, even if its frame count says more.
MAX_CONSECUTIVE_FAILED_READS = 100


@dataclass
class Frame:
    """One input frame.

    Attributes:
        image (np.ndarray): ``H x W x 3`` uint8, BGR.
        index (int): position in the input (0-based; for a video, the frame number).
        path (str): the image file, or the video file the frame comes from.
        name (str): output name without extension, relative to the output folder (the image's
            path relative to the input folder or glob root, without its extension; for a video,
            the video's name plus the frame number).
    """

    image: np.ndarray
    index: int
    path: str
    name: str


@dataclass
class Unreadable:
    """An input frame that could not be read, in place of its :class:`Frame`.

    Attributes:
        index (int): position it has in the input (the ``image_id`` it would have had; for a
            video, the frame number).
        path (str): the image file, or the video file.
        name (str): as :attr:`Frame.name`.
        reason (str): why it could not be read (the decoder's message).
    """

    index: int
    path: str
    name: str
    reason: str


class UnreadableImageError(ValueError):
    """An image file that cannot be decoded; ``path`` and ``reason`` as attributes, both in the
    message (``cannot read image PATH: REASON``)."""

    def __init__(self, path, reason):
        super().__init__(f"cannot read image {path}: {reason}")
        self.path = path
        self.reason = reason


def _ext(path):
    return os.path.splitext(path)[1].lower()


def read_bgr_image(path):
    """Read ``path`` as an ``H x W x 3`` uint8 BGR array.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnreadableImageError: (a ``ValueError``) the file is not a decodable image (garbage or
            truncated bytes), naming it and the reason.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        image = read_image(path, format="BGR")
    except (OSError, SyntaxError, ValueError) as e:  # PIL: UnidentifiedImageError is an OSError
        raise UnreadableImageError(path, str(e) or type(e).__name__) from e
    if image.ndim != 3 or image.shape[2] != 3 or image.size == 0:
        raise UnreadableImageError(path, f"decoded to shape {image.shape}, expected H x W x 3")
    return np.ascontiguousarray(image)


class ImageSource:
    """A sorted list of image files, read lazily, one :class:`Frame` each (``kind == "images"``).

    Args:
        paths (list[str]): image files, in the order to predict them.
        root (str): folder the output names are relative to (each name is the file's path under
            ``root`` without its extension).
    """

    kind = "images"

    def __init__(self, paths, root):
        self.paths = list(paths)
        self.root = root
        self.names = [os.path.splitext(os.path.relpath(p, root))[0] for p in self.paths]
        seen = {}
        for p, n in zip(self.paths, self.names):
            if n in seen:
                raise ValueError(
                    f"input images {seen[n]} and {p} would both write the overlay '{n}.png'; "
                    "rename one or predict them separately"
                )
            seen[n] = p

    def __len__(self):
        return len(self.paths)

    def __iter__(self):
        """Yield every image as a :class:`Frame`; raise at the first unreadable one (naming it)."""
        return self.frames()

    def frames(self, skip_unreadable=False):
        """Yield a :class:`Frame` per image, in order (``index`` = position in :attr:`paths`).

        Args:
            skip_unreadable (bool): yield an :class:`Unreadable` in place of an image that cannot
                be read (not decodable, or gone since the folder was listed) and go on; the
                other frames keep their indices. False: raise its error instead.

        Raises:
            UnreadableImageError, FileNotFoundError: an unreadable image, without ``skip_unreadable``.
        """
        for i, (path, name) in enumerate(zip(self.paths, self.names)):
            try:
                image = read_bgr_image(path)
            except UnreadableImageError as e:
                if not skip_unreadable:
                    raise
                yield Unreadable(i, path, name, e.reason)
                continue
            except FileNotFoundError:
                if not skip_unreadable:
                    raise
                yield Unreadable(i, path, name, "file not found")
                continue
            yield Frame(image, i, path, name)


class VideoSource:
    """The frames of a video file, decoded with ``cv2.VideoCapture`` (``kind == "video"``).

    Attributes:
        path (str): the video file.
        name (str): its name without extension (the output ``<name>.mp4``).
        fps (float): frames per second the container reports (:data:`DEFAULT_FPS` if none).
        width, height (int): frame size.
        frame_count (int or None): the container's frame count, a hint (None if unknown).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: OpenCV cannot open ``path`` as a video (naming it).
    """

    kind = "video"

    def __init__(self, path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"video file not found: {path}")
        self.path = path
        self.name = os.path.splitext(os.path.basename(path))[0]
        cap = self._open()
        try:
            fps = cap.get(cv2.CAP_PROP_FPS)
            self.fps = float(fps) if fps and fps > 0 and np.isfinite(fps) else DEFAULT_FPS
            self.width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
            self.height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
            count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            self.frame_count: Optional[int] = count if count > 0 else None
        finally:
            cap.release()

    def _open(self):
        cap = cv2.VideoCapture(self.path)
        if not cap.isOpened():
            cap.release()
            raise ValueError(f"cannot open video {self.path} (OpenCV could not decode it)")
        return cap

    def __len__(self):
        return self.frame_count or 0

    def __iter__(self):
        """Yield every frame in order; raise ``ValueError`` at a frame that cannot be decoded
        mid-stream (naming the video and frame number), or if there is no frame at all."""
        return self.frames()

    def frames(self, skip_unreadable=False):
        """Yield a :class:`Frame` per decoded frame, in order (``index`` = frame number).

        ``cv2.VideoCapture.read`` failing is the end of the stream, unless a later read succeeds
        while the container's frame count (``CAP_PROP_FRAME_COUNT``) says frames remain: the
        failed reads are then unreadable frames in the middle of the video. Their frame numbers
        count each failed read as one frame (OpenCV gives no other position that is reliable for
        every backend). Reads stop after :data:`MAX_CONSECUTIVE_FAILED_READS` failures in a row,
        and at the first failure when the count is unknown (as before: the end). Failed reads at
        the end (a frame count that overstates the stream, which some containers do) are not
        reported.

        Args:
            skip_unreadable (bool): yield an :class:`Unreadable` per frame that failed mid-stream
                and go on. False: raise ``ValueError`` naming the first such frame, once a later
                frame has been decoded (so that the end of the stream is not mistaken for one).

        Raises:
            ValueError: no frame could be decoded; or a frame failed mid-stream, without
                ``skip_unreadable``.
        """
        cap = self._open()
        index = 0
        decoded = 0
        failed = []  # frame numbers of the failed reads since the last decoded frame
        try:
            while True:
                ok, image = cap.read()
                if not ok or image is None:
                    failed.append(index)
                    index += 1
                    if (self.frame_count is None or index >= self.frame_count
                            or len(failed) >= MAX_CONSECUTIVE_FAILED_READS):
                        break
                    continue
                for bad in failed:
                    reason = "cv2.VideoCapture.read failed (frame not decodable)"
                    if not skip_unreadable:
                        raise ValueError(f"cannot read frame {bad} of video {self.path}: {reason}")
                    yield Unreadable(bad, self.path, f"{self.name}_{bad:06d}", reason)
                failed = []
                yield Frame(image, index, self.path, f"{self.name}_{index:06d}")
                index += 1
                decoded += 1
        finally:
            cap.release()
        if decoded == 0:
            raise ValueError(f"video {self.path} has no decodable frame")


def _is_glob(spec):
    return any(c in spec for c in "*?[")


def _glob_root(pattern):
    """The folder before the first path component holding a wildcard."""
    parts = pattern.split(os.sep)
    fixed = []
    for part in parts[:-1]:
        if _is_glob(part):
            break
        fixed.append(part)
    root = os.sep.join(fixed)
    if not root:
        return os.sep if pattern.startswith(os.sep) else "."
    return root


def open_input(spec):
    """Turn ``--input`` into a frame source.

    Args:
        spec (str): an image file, a folder (its image files, not recursive, sorted by name), a
            glob pattern (``*``, ``?``, ``[...]``; ``**`` recurses; image files it matches, sorted)
            or a video file.

    Returns:
        ImageSource or VideoSource: iterable of :class:`Frame`; ``kind`` is ``"images"`` or
        ``"video"``.

    Raises:
        FileNotFoundError: ``spec`` is neither an existing path nor a glob pattern.
        ValueError: a folder without images, a glob matching no image, a file of unknown type,
            a video OpenCV cannot open (each naming the path or pattern).
    """
    spec = os.fspath(spec)
    if os.path.isdir(spec):
        files = sorted(
            os.path.join(spec, f) for f in os.listdir(spec)
            if _ext(f) in IMAGE_EXTENSIONS and os.path.isfile(os.path.join(spec, f))
        )
        if not files:
            raise ValueError(f"folder {spec} holds no image file (extensions {', '.join(IMAGE_EXTENSIONS)})")
        return ImageSource(files, spec)
    if os.path.isfile(spec):
        if _ext(spec) in IMAGE_EXTENSIONS:
            return ImageSource([spec], os.path.dirname(spec) or ".")
        if _ext(spec) in VIDEO_EXTENSIONS:
            return VideoSource(spec)
        raise ValueError(
            f"input {spec}: unknown file type '{_ext(spec)}'; expected an image "
            f"({', '.join(IMAGE_EXTENSIONS)}) or a video ({', '.join(VIDEO_EXTENSIONS)})"
        )
    if _is_glob(spec):
        matches = sorted(glob.glob(spec, recursive=True))
        files = [m for m in matches if os.path.isfile(m) and _ext(m) in IMAGE_EXTENSIONS]
        if not files:
            raise ValueError(
                f"glob pattern {spec} matches no image file ({len(matches)} other paths matched; "
                f"image extensions: {', '.join(IMAGE_EXTENSIONS)})"
            )
        return ImageSource(files, _glob_root(spec))
    raise FileNotFoundError(f"input not found: {spec} (expected an image, a folder, a glob pattern or a video)")


def batched(frames, batch_size):
    """Group an iterable of frames into lists of ``batch_size`` (the last one may be shorter)."""
    if int(batch_size) < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    batch = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch
