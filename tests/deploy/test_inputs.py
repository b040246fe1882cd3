"""light_rcnn.deploy.inputs: an image, a folder, a glob or a video become BGR frames in order;
bad inputs fail with errors naming the path."""
import os

import cv2
import numpy as np
import pytest

from light_rcnn.deploy.inputs import (
    ImageSource,
    Unreadable,
    UnreadableImageError,
    VideoSource,
    batched,
    open_input,
    read_bgr_image,
)


def _image(seed, h=40, w=56):
    return np.random.RandomState(seed).randint(0, 255, (h, w, 3), dtype=np.uint8)


def _write_png(path, image):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return str(path)


@pytest.fixture
def folder(tmp_path):
    """Three PNGs (written out of name order), a text file and a sub-folder image."""
    d = tmp_path / "imgs"
    for name, seed in (("b.png", 1), ("a.png", 0), ("c.png", 2)):
        _write_png(str(d / name), _image(seed))
    (d / "notes.txt").write_text("not an image")
    _write_png(str(d / "sub" / "d.png"), _image(3))
    return d


def _write_video(path, frames, fps):
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert writer.isOpened()
    for f in frames:
        writer.write(f)
    writer.release()
    return str(path)


def test_folder_gives_its_images_sorted_with_exact_pixels(folder):
    source = open_input(str(folder))
    assert isinstance(source, ImageSource) and source.kind == "images" and len(source) == 3
    frames = list(source)
    assert [os.path.basename(f.path) for f in frames] == ["a.png", "b.png", "c.png"]
    assert [f.index for f in frames] == [0, 1, 2] and [f.name for f in frames] == ["a", "b", "c"]
    for f, seed in zip(frames, (0, 1, 2)):
        assert f.image.dtype == np.uint8 and np.array_equal(f.image, _image(seed))  # BGR, lossless PNG


def test_single_image_file(folder):
    source = open_input(str(folder / "b.png"))
    (frame,) = list(source)
    assert frame.name == "b" and np.array_equal(frame.image, _image(1))


def test_glob_matches_image_files_only_and_recursive_glob_keeps_subfolders(folder):
    source = open_input(str(folder / "[ab].*"))
    assert [os.path.basename(p) for p in source.paths] == ["a.png", "b.png"]
    recursive = open_input(str(folder / "**" / "*.png"))
    assert sorted(recursive.names) == ["a", "b", "c", os.path.join("sub", "d")]
    assert open_input(str(folder / "*")).names == ["a", "b", "c"]  # notes.txt and sub/ skipped


def test_grayscale_image_becomes_three_channels(tmp_path):
    gray = _image(5)[:, :, 0]
    path = _write_png(str(tmp_path / "g.png"), gray)
    image = read_bgr_image(path)
    assert image.shape == gray.shape + (3,) and np.array_equal(image[:, :, 1], gray)


def test_video_frames_with_index_and_fps(tmp_path):
    frames = [np.full((48, 64, 3), 30 * i + 10, dtype=np.uint8) for i in range(5)]
    path = _write_video(tmp_path / "clip.mp4", frames, fps=7.0)
    source = open_input(path)
    assert isinstance(source, VideoSource) and source.kind == "video"
    assert source.fps == pytest.approx(7.0) and (source.width, source.height) == (64, 48)
    got = list(source)
    assert [f.index for f in got] == [0, 1, 2, 3, 4]
    assert all(f.image.shape == (48, 64, 3) and f.path == path for f in got)
    # Lossy codec: each decoded frame is close to the flat colour written, and they differ.
    means = [float(f.image.mean()) for f in got]
    assert means == pytest.approx([30 * i + 10 for i in range(5)], abs=4)
    assert len(list(source)) == 5  # iterating again re-opens the video


def test_batches_of_n_frames(folder):
    sizes = [len(b) for b in batched(open_input(str(folder / "**" / "*.png")), 3)]
    assert sizes == [3, 1]
    with pytest.raises(ValueError, match="batch size must be >= 1, got 0"):
        list(batched([], 0))


def test_missing_path(tmp_path):
    missing = str(tmp_path / "nope.jpg")
    with pytest.raises(FileNotFoundError, match=f"input not found: {missing}"):
        open_input(missing)


def test_glob_matching_nothing(tmp_path, folder):
    pattern = str(folder / "*.jpg")
    with pytest.raises(ValueError, match=r"glob pattern .*\*\.jpg matches no image file \(0 other"):
        open_input(pattern)
    with pytest.raises(ValueError, match=r"matches no image file \(1 other"):
        open_input(str(folder / "*.txt"))


def test_folder_without_images(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    (d / "x.txt").write_text("text")
    with pytest.raises(ValueError, match=f"folder {d} holds no image file"):
        open_input(str(d))


def test_unknown_file_type(tmp_path):
    path = tmp_path / "model.pth"
    path.write_bytes(b"\0")
    with pytest.raises(ValueError, match=r"model\.pth: unknown file type '\.pth'"):
        open_input(str(path))


def test_garbage_and_truncated_images_are_errors_naming_them(tmp_path, folder):
    garbage = tmp_path / "bad" / "garbage.png"
    garbage.parent.mkdir()
    garbage.write_bytes(b"this is not a png" * 10)
    with pytest.raises(ValueError, match=r"cannot read image .*garbage\.png"):
        list(open_input(str(garbage)))
    jpg = str(tmp_path / "bad" / "full.jpg")
    assert cv2.imwrite(jpg, _image(7, 64, 64))
    data = open(jpg, "rb").read()
    truncated = tmp_path / "bad" / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cannot read image .*truncated\.jpg: image file is truncated"):
        read_bgr_image(str(truncated))
    # In a folder, the good images before it are read, then the bad one is named.
    source = open_input(str(tmp_path / "bad"))
    assert source.names == ["full", "garbage", "truncated"]
    it = iter(source)
    assert next(it).name == "full"
    with pytest.raises(ValueError, match="garbage.png"):
        next(it)


def test_video_that_cannot_be_opened(tmp_path):
    path = tmp_path / "broken.mp4"
    path.write_bytes(b"garbage" * 20)
    with pytest.raises(ValueError, match=r"cannot open video .*broken\.mp4"):
        open_input(str(path))


def test_two_images_with_one_overlay_name_are_refused(tmp_path):
    _write_png(str(tmp_path / "x.png"), _image(0))
    assert cv2.imwrite(str(tmp_path / "x.jpg"), _image(1))
    with pytest.raises(ValueError, match=r"x\.jpg and .*x\.png would both write the overlay 'x\.png'"):
        open_input(str(tmp_path))


def test_frames_can_skip_unreadable_images_keeping_the_indices(tmp_path, folder):
    d = tmp_path / "mixed"
    _write_png(str(d / "a.png"), _image(0))
    assert cv2.imwrite(str(d / "full.jpg"), _image(7, 64, 64))
    (d / "b_truncated.jpg").write_bytes((d / "full.jpg").read_bytes()[:200])
    (d / "c_text.jpg").write_text("a text file, renamed")
    (d / "notes.txt").write_text("no image extension: not an input")
    source = open_input(str(d))
    assert source.names == ["a", "b_truncated", "c_text", "full"]
    items = list(source.frames(skip_unreadable=True))
    assert [(type(it).__name__, it.index, it.name) for it in items] == [
        ("Frame", 0, "a"), ("Unreadable", 1, "b_truncated"), ("Unreadable", 2, "c_text"), ("Frame", 3, "full")]
    assert items[1].path == str(d / "b_truncated.jpg") and items[1].reason
    assert "cannot identify image file" in items[2].reason
    # Without skipping (also plain iteration), the first unreadable one is an error naming it.
    with pytest.raises(UnreadableImageError, match=r"cannot read image .*b_truncated\.jpg: ") as e:
        list(source)
    assert e.value.path == str(d / "b_truncated.jpg") and isinstance(e.value, ValueError)
    # A file gone since the folder was listed is unreadable too.
    os.remove(d / "full.jpg")
    last = list(source.frames(skip_unreadable=True))[-1]
    assert isinstance(last, Unreadable) and (last.index, last.reason) == (3, "file not found")


class _FailingReads:
    """A cv2.VideoCapture whose reads number ``bad`` (0-based) fail: the frame is consumed
    (``grab``) but ``read`` returns ``(False, None)``, as for a frame that does not decode."""

    def __init__(self, cap, bad):
        self.cap, self.bad, self.reads = cap, set(bad), 0

    def read(self):
        n, self.reads = self.reads, self.reads + 1
        if n in self.bad:
            self.cap.grab()
            return False, None
        return self.cap.read()

    def __getattr__(self, name):  # get, release, ...
        return getattr(self.cap, name)


def _video_with_failing_reads(tmp_path, monkeypatch, bad, n=5, frame_count=None):
    path = _write_video(tmp_path / "clip.mp4", [_image(i, 48, 64) for i in range(n)], 5.0)
    source = open_input(path)
    assert source.frame_count == n
    if frame_count is not None:
        source.frame_count = frame_count
    real_open = source._open
    monkeypatch.setattr(source, "_open", lambda: _FailingReads(real_open(), bad))
    return source


def test_video_frame_failing_mid_stream_is_skipped_or_an_error(tmp_path, monkeypatch):
    source = _video_with_failing_reads(tmp_path, monkeypatch, bad=[2])
    items = list(source.frames(skip_unreadable=True))
    assert [(type(it).__name__, it.index) for it in items] == [
        ("Frame", 0), ("Frame", 1), ("Unreadable", 2), ("Frame", 3), ("Frame", 4)]
    assert items[2].path == source.path and items[2].name == "clip_000002" and "read failed" in items[2].reason
    with pytest.raises(ValueError, match=r"cannot read frame 2 of video .*clip\.mp4"):
        list(source)


def test_failed_reads_at_the_end_of_a_video_are_its_end(tmp_path, monkeypatch):
    # A frame count that overstates the stream (as some containers do): no frame is reported.
    source = _video_with_failing_reads(tmp_path, monkeypatch, bad=[], frame_count=9)
    assert [f.index for f in source.frames(skip_unreadable=True)] == [0, 1, 2, 3, 4]
    assert [f.index for f in source] == [0, 1, 2, 3, 4]
    # The last frame failing is the end too, and a video without any decodable frame an error.
    source = _video_with_failing_reads(tmp_path, monkeypatch, bad=[4])
    assert [f.index for f in source] == [0, 1, 2, 3]
    source = _video_with_failing_reads(tmp_path, monkeypatch, bad=range(5))
    with pytest.raises(ValueError, match=r"video .*clip\.mp4 has no decodable frame"):
        list(source.frames(skip_unreadable=True))
