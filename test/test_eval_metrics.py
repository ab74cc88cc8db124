"""The evaluation's confusion matrix and scores against hand-computed confusion matrices."""

from __future__ import annotations

import numpy as np
import pytest

from concerto_ros.evaluation.confusion import ClassConfusion, segmentation_report


def _example() -> ClassConfusion:
    # ground truth: wall wall wall floor floor table table table (ignored)
    # prediction:   wall wall floor floor chair chair chair floor (wall)
    c = ClassConfusion(["floor", "wall", "chair"])  # the model's labels first
    n = c.add(np.array([0, 0, 0, 1, 1, 2, 2, 2, -1]), ["wall", "floor", "table"],
              np.array([1, 1, 0, 0, 2, 2, 2, 0, 1]), ["floor", "wall", "chair"])
    assert n == 8
    return c


def test_confusion_matches_the_hand_computed_matrix():
    c = _example()
    assert c.names == ["floor", "wall", "chair", "table"]  # a ground-truth class the model lacks is appended
    #                          floor wall chair table   (predicted)
    np.testing.assert_array_equal(c.matrix, [[1, 0, 1, 0],    # floor
                                             [1, 2, 0, 0],    # wall
                                             [0, 0, 0, 0],    # chair (no ground truth)
                                             [1, 0, 2, 0]])   # table (never predictable)


def test_scores_of_the_hand_computed_matrix():
    m = _example().report()
    iou = {"floor": 1 / 4, "wall": 2 / 3, "chair": 0.0, "table": 0.0}
    assert m["per_class_iou"] == pytest.approx(iou)
    assert m["miou"] == pytest.approx((1 / 4 + 2 / 3 + 0) / 3)          # classes in the ground truth
    assert m["miou_all"] == pytest.approx((1 / 4 + 2 / 3 + 0 + 0) / 4)  # + chair, predicted but absent
    assert m["accuracy"] == pytest.approx(3 / 8)
    assert m["per_class_accuracy"] == {"floor": pytest.approx(0.5), "wall": pytest.approx(2 / 3), "chair": None,
                                       "table": 0.0}
    assert m["macc"] == pytest.approx((0.5 + 2 / 3 + 0) / 3)
    assert m["classes_present"] == ["floor", "wall", "table"]
    assert m["gt_points"] == {"floor": 2, "wall": 3, "chair": 0, "table": 3} and m["num_points"] == 8


def test_unpredicted_points_and_absent_classes():
    c = ClassConfusion(["a", "b", "c"])
    c.add(np.array([0, 0, 1]), ["a", "b"], np.array([0, -1, 7]), ["a", "b", "c"])
    m = c.report()
    # -1 and 7 are no class of the model: a column of their own, never correct
    assert c.names == ["a", "b", "c", "(no label)"]
    assert m["per_class_iou"] == {"a": 0.5, "b": 0.0, "c": None, "(no label)": 0.0}
    assert m["miou"] == pytest.approx(0.25) and m["accuracy"] == pytest.approx(1 / 3)


def test_synonyms_match_a_ground_truth_class_to_the_model_class():
    c = ClassConfusion(["couch", "wall"])
    c.add(np.array([0, 0, 1]), ["sofa", "wall"], np.array([0, 1, 1]), ["couch", "wall"],
          gt_synonyms={"sofa": ("couch",)})
    assert c.names == ["couch", "wall"]
    assert c.report()["per_class_iou"] == {"couch": 0.5, "wall": 0.5}


def test_merge_adds_counts_by_class_name():
    a, b = _example(), ClassConfusion(["table", "floor"])
    b.add(np.array([0, 1]), ["table", "floor"], np.array([0, 0]), ["table", "floor"])
    a.merge(b)
    assert a.matrix[a.names.index("table"), a.names.index("table")] == 1
    assert a.matrix[a.names.index("floor"), a.names.index("table")] == 1
    assert a.matrix.sum() == 10


def test_empty_and_bad_input():
    m = ClassConfusion(["a"]).report()
    assert m["miou"] is None and m["accuracy"] is None and m["num_points"] == 0
    with pytest.raises(ValueError, match="3 ground-truth labels but 2 predictions"):
        ClassConfusion().add(np.zeros(3), ["a"], np.zeros(2), ["a"])
    with pytest.raises(ValueError, match="does not fit 3 class names"):
        segmentation_report(np.zeros((2, 2)), ["a", "b", "c"])
