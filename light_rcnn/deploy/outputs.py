"""Outputs of ``tools/predict.py``: overlays and a COCO results JSON.

For an image input (file, folder, glob) one PNG overlay per image, ``<output>/<name>.png`` where
``<name>`` is the image's path relative to the input folder (or glob root) without extension;
for a video input one MP4 (``cv2.VideoWriter``, ``mp4v``) at the input's frame rate,
``<output>/<video name>.mp4``. Overlays are drawn by detectron2's ``Visualizer`` (a video by its
``VideoVisualizer``, which keeps an object's colour from frame to frame), masks included.

``results.json`` is a COCO results list (``image_id``, ``category_id``, ``bbox`` XYWH,
``score``, ``segmentation`` RLE) made by detectron2's ``instances_to_coco_json``. ``image_id`` is
the frame's index in input order (0-based; for a video, the frame number); ``images.json`` maps
each id to its file (``images``: ``id``, ``file_name``, ``height``, ``width``, and ``frame_index``
for a video) and lists the ``categories``. ``category_id`` is the data set's category id when the
metadata carries ``thing_dataset_id_to_contiguous_id`` (detectron2 sets it once a COCO-format set
has been loaded), else the model's contiguous class id; ``images.json["category_ids"]`` says which.

Detections scoring below the confidence threshold are left out of both the overlays and the JSON
(as detectron2's demo does through ``SCORE_THRESH_TEST``); use 0 to keep every detection, e.g.
for COCO AP. No existing file is overwritten: every target path is checked before anything is
written.

Unreadable inputs (:class:`light_rcnn.deploy.inputs.Unreadable`: an image file that does not
decode, a video frame that fails mid-stream) are skipped by :func:`predict_to_folder` with
``skip_unreadable=True``: each is logged as a warning naming the file (and frame) and the reason,
gets no overlay and no results, and is listed in ``images.json["skipped"]`` (``id``, ``file``,
``reason``, and ``frame_index`` for a video). The other inputs keep ``image_id`` = index in input
order, so ids do not depend on which files could be read. ``images.json["skipped"]`` is always
present (empty when nothing was skipped).
"""
import json
import logging
import os

import cv2
from detectron2.data import MetadataCatalog
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import ColorMode, Visualizer
from tqdm import tqdm

from .inputs import Unreadable, batched

__all__ = [
    "IMAGES_FILE",
    "RESULTS_FILE",
    "PredictionOutputs",
    "check_new_files",
    "metadata_from_cfg",
    "output_files",
    "predict_to_folder",
]

# COCO results list written in the output folder.
RESULTS_FILE = "results.json"
# image_id -> file (and categories) written beside RESULTS_FILE.
IMAGES_FILE = "images.json"

logger = logging.getLogger(__name__)


def metadata_from_cfg(cfg):
    """detectron2 ``Metadata`` of ``cfg.DATASETS.TEST[0]`` (class names for the overlays, category
    ids for the JSON); an empty one if the config names no test set."""
    return MetadataCatalog.get(cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else "__unused")


def output_files(source, output_dir):
    """Every file the outputs of ``source`` (an :mod:`light_rcnn.deploy.inputs` source) will write
    in ``output_dir``: ``{"overlays": [paths], "results": path, "images": path}``."""
    if source.kind == "video":
        overlays = [os.path.join(output_dir, source.name + ".mp4")]
    else:
        overlays = [os.path.join(output_dir, name + ".png") for name in source.names]
    return {
        "overlays": overlays,
        "results": os.path.join(output_dir, RESULTS_FILE),
        "images": os.path.join(output_dir, IMAGES_FILE),
    }


def check_new_files(paths):
    """Raise ``FileExistsError`` naming the paths that already exist (up to 5, plus a count)."""
    existing = [p for p in paths if os.path.lexists(p)]
    if existing:
        shown = ", ".join(existing[:5]) + (f" and {len(existing) - 5} more" if len(existing) > 5 else "")
        raise FileExistsError(f"refusing to overwrite existing output file(s): {shown}; choose a new --output folder")


def _categories(metadata):
    names = list(metadata.get("thing_classes", None) or [])
    mapping = metadata.get("thing_dataset_id_to_contiguous_id", None)
    if mapping:
        reverse = {contiguous: dataset_id for dataset_id, contiguous in mapping.items()}
        cats = [{"id": reverse[i], "name": n} for i, n in enumerate(names) if i in reverse]
        return reverse, cats, "dataset"
    return None, [{"id": i, "name": n} for i, n in enumerate(names)], "contiguous"


class PredictionOutputs:
    """Writes overlays and the COCO results of one input source; a context manager.

    Args:
        source (ImageSource or VideoSource): the input (:func:`light_rcnn.deploy.inputs.open_input`).
        output_dir (str): folder to write into (created; may exist, but none of its target files).
        metadata (Metadata): class names and category ids (:func:`metadata_from_cfg`).
        confidence_threshold (float): detections with a lower score are dropped.

    Raises:
        FileExistsError: one of the target files exists (nothing is written then).
    """

    def __init__(self, source, output_dir, metadata, confidence_threshold=0.5):
        self.source = source
        self.output_dir = output_dir
        self.metadata = metadata
        self.confidence_threshold = float(confidence_threshold)
        self.paths = output_files(source, output_dir)
        check_new_files(self.paths["overlays"] + [self.paths["results"], self.paths["images"]])
        self._reverse_ids, self._categories, self._id_kind = _categories(metadata)
        self._results, self._images, self._skipped = [], [], []
        self._video_writer = None
        self._video_visualizer = VideoVisualizer(metadata, ColorMode.IMAGE) if source.kind == "video" else None
        os.makedirs(output_dir, exist_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(write_json=exc_type is None)

    def write(self, frame, instances):
        """Add one frame's predictions.

        Args:
            frame (Frame): the input frame (BGR ``H x W x 3`` uint8, index, path, name).
            instances (Instances): its predictions at the frame's size (``pred_boxes``,
                ``scores``, ``pred_classes``, ``pred_masks`` bool ``N x H x W``).
        """
        instances = instances.to("cpu")
        instances = instances[instances.scores >= self.confidence_threshold]
        rgb = frame.image[:, :, ::-1]
        if self._video_visualizer is not None:
            overlay = self._video_visualizer.draw_instance_predictions(rgb, instances).get_image()
            self._write_video_frame(overlay[:, :, ::-1])
        else:
            vis = Visualizer(rgb, self.metadata, instance_mode=ColorMode.IMAGE)
            overlay = vis.draw_instance_predictions(instances).get_image()
            self._write_png(self.paths["overlays"][frame.index], overlay[:, :, ::-1])

        results = instances_to_coco_json(instances, frame.index)
        if self._reverse_ids is not None:
            for r in results:
                r["category_id"] = self._reverse_ids[r["category_id"]]
        self._results.extend(results)
        h, w = frame.image.shape[:2]
        entry = {"id": frame.index, "file_name": frame.path, "height": h, "width": w}
        if self.source.kind == "video":
            entry["frame_index"] = frame.index
        self._images.append(entry)

    def skip(self, item):
        """Record an input that could not be read (an :class:`~light_rcnn.deploy.inputs.Unreadable`):
        no overlay, no results, an entry in ``images.json["skipped"]``.

        Returns:
            dict: the entry (``id``, ``file``, ``reason``; ``frame_index`` for a video).
        """
        entry = {"id": item.index, "file": item.path, "reason": item.reason}
        if self.source.kind == "video":
            entry["frame_index"] = item.index
        self._skipped.append(entry)
        return entry

    @property
    def skipped(self):
        """The entries of :meth:`skip` so far (a copy)."""
        return list(self._skipped)

    def _write_png(self, path, image):
        check_new_files([path])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not cv2.imwrite(path, image):
            raise OSError(f"could not write overlay {path}")

    def _write_video_frame(self, image):
        if self._video_writer is None:
            path = self.paths["overlays"][0]
            check_new_files([path])
            h, w = image.shape[:2]
            fourcc = cv2.VideoWriter_fourcc(*"mp4v")
            self._video_writer = cv2.VideoWriter(path, fourcc, self.source.fps, (w, h))
            if not self._video_writer.isOpened():
                raise OSError(f"could not open {path} for writing (cv2.VideoWriter, mp4v)")
        self._video_writer.write(image)

    def close(self, write_json=True):
        """Finish the video and write ``results.json`` and ``images.json`` (not with
        ``write_json=False``, e.g. after an error)."""
        if self._video_writer is not None:
            self._video_writer.release()
            self._video_writer = None
        if not write_json:
            return
        with open(self.paths["results"], "x") as f:
            json.dump(self._results, f)
        with open(self.paths["images"], "x") as f:
            json.dump(
                {
                    "images": self._images,
                    "categories": self._categories,
                    "category_ids": self._id_kind,
                    "confidence_threshold": self.confidence_threshold,
                    "skipped": self._skipped,
                },
                f,
                indent=1,
            )


def predict_to_folder(predictor, source, output_dir, metadata, batch_size=1, confidence_threshold=0.5,
                      progress=True, skip_unreadable=False):
    """Run ``predictor`` over ``source`` in batches and write its outputs (:class:`PredictionOutputs`).

    Args:
        predictor (callable): ``list[BGR H x W x 3 uint8] -> list[Instances]`` (e.g.
            :func:`light_rcnn.deploy.load_predictor`'s result).
        source: :func:`light_rcnn.deploy.inputs.open_input`'s result.
        output_dir (str), metadata, confidence_threshold: as :class:`PredictionOutputs`.
        batch_size (int): frames per predictor call.
        progress (bool): show a tqdm progress bar (frames).
        skip_unreadable (bool): skip an image that cannot be read (or a video frame that fails
            mid-stream) with a logged warning, listing it in ``images.json["skipped"]``, and write
            everything else, JSON files included. False: the source's error propagates at the first
            one (the overlays written until then stay; no JSON is written).

    Returns:
        dict: the written paths (:func:`output_files`) plus ``"frames"``, the number of frames
        predicted, and ``"skipped"``, the ``images.json["skipped"]`` entries (``id``, ``file``,
        ``reason``).
    """
    count = 0
    with PredictionOutputs(source, output_dir, metadata, confidence_threshold) as outputs:
        with tqdm(total=len(source) or None, unit="frame", disable=not progress) as bar:

            def readable(items):
                for item in items:
                    if isinstance(item, Unreadable):
                        entry = outputs.skip(item)
                        where = f" frame {entry['frame_index']}" if "frame_index" in entry else ""
                        logger.warning(f"skipping unreadable input {item.path}{where}: {item.reason}")
                        bar.update(1)
                    else:
                        yield item

            items = source.frames(skip_unreadable=skip_unreadable) if hasattr(source, "frames") else source
            for batch in batched(readable(items), batch_size):
                predictions = predictor([f.image for f in batch])
                if len(predictions) != len(batch):
                    raise RuntimeError(f"predictor returned {len(predictions)} results for {len(batch)} images")
                for frame, instances in zip(batch, predictions):
                    outputs.write(frame, instances)
                count += len(batch)
                bar.update(len(batch))
    return dict(outputs.paths, frames=count, skipped=outputs.skipped)
