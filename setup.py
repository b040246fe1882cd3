from setuptools import find_packages, setup

setup(
    name="light_rcnn",
    version="0.1.0",
    description="Fast two-stage object detection and instance segmentation on detectron2",
    packages=find_packages(exclude=("tests", "tests.*", "tools", "configs")),
    python_requires=">=3.8",
    # detectron2 and torch are deliberately NOT listed: a cluster user's source build of
    # detectron2 must not be replaced by a second distribution. `make setup` installs them.
    install_requires=["fvcore", "iopath", "pycocotools", "opencv-python", "matplotlib"],
)
