#!/usr/bin/env python
"""Convert KITTI object-detection labels (``training/label_2/*.txt``) to COCO JSON (boxes only).

    python datasets/prepare_kitti.py --root datasets/kitti [--classes Car Van] [--val-fraction 0.5]
    python datasets/prepare_kitti.py --root datasets/kitti --split-dir splits/  # train.txt, val.txt

Writes ``<root>/annotations/kitti_train.json`` and ``kitti_val.json`` (``--out-dir`` to change),
which ``tools/train_net.py`` registers as ``kitti_train`` / ``kitti_val``. The layout, the label
format, the checks and the split are described in :mod:`light_rcnn.data.kitti_labels`, where the
converter lives (the generated KITTI-layout shapes set goes through it too); this script is its
command line.
"""
from light_rcnn.data.kitti_labels import *  # noqa: F401,F403  (convert, parse_label_file, ...)
from light_rcnn.data.kitti_labels import main

if __name__ == "__main__":
    main()
