from setuptools import find_packages, setup

setup(
    name="light_rcnn",
    version="0.1.0",
    description="Fast two-stage object detection and instance segmentation on detectron2",
    packages=find_packages(exclude=("tests", "tests.*", "tools", "configs", "datasets")),
    # The configs ship inside the package (light_rcnn/configs is a symlink to the top-level
    # configs/ in a checkout; a wheel holds a copy), addressed as light_rcnn://<path>.
    package_data={"light_rcnn": ["configs/*.yaml", "configs/**/*.yaml"]},
    python_requires=">=3.8",
    # detectron2 and torch are deliberately NOT listed: a cluster user's source build of
    # detectron2 must not be replaced by a second distribution. `make setup` installs them.
    # onnx/onnxruntime: light_rcnn.deploy (export, ONNX Runtime, int8); ml-dtypes < 0.6 keeps onnx on
    # numpy 1.x (0.6 requires numpy >= 2, which detectron2 0.7.2 does not support).
    install_requires=["fvcore", "iopath", "pycocotools", "opencv-python", "matplotlib", "tqdm",
                      "onnx", "onnxruntime", "ml-dtypes<0.6"],
)
