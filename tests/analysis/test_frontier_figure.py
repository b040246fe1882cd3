"""Label placement of the frontier picture (the picture itself is checked in test_frontier.py)."""
import pytest

from light_rcnn.analysis.frontier_figure import spread_labels


def test_close_labels_are_moved_apart_and_far_ones_stay():
    # y range 20, x range 100: gap 0.045 * 20 = 0.9 AP; a label is 35 ms wide
    points = [(20.0, 48.4), (29.0, 48.5), (29.5, 48.0), (80.0, 48.2), (30.0, 35.0)]
    heights = spread_labels(points, y_range=20.0, x_range=100.0)
    assert heights[1] == 48.5  # the highest stays
    assert heights[0] == pytest.approx(48.5 - 0.9)  # under it
    assert heights[2] == pytest.approx(48.5 - 1.8)  # under both
    assert heights[3] == 48.2 and heights[4] == 35.0  # far in x / far in y: unchanged
