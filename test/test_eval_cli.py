"""``concerto eval`` end to end on a generated labelled sequence, the label-image topic of
bags, queries on a toy text space, and one-line errors."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from concerto_ros.cli import main

FRAMES = 3


@pytest.fixture(scope="module")
def sequence(tmp_path_factory):
    from concerto_ros.demo.scene import write_sequence

    return write_sequence(tmp_path_factory.mktemp("eval") / "seq", seed=3, num_frames=FRAMES, width=96, height=72)


@pytest.fixture(scope="module")
def folder_metrics(sequence, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_out")
    assert main(["eval", "--data", str(sequence), "--set", "window.num_frames=2", "-o", str(out), "--no-progress"]) == 0
    return json.loads((out / "metrics.json").read_text()), out


def _hand_confusion(sequence) -> Counter:
    """The same run by hand: the pipeline over the folder's frames, each newest frame's
    points counted by (ground-truth name, predicted name)."""
    from concerto_ros.config import default_config_path, load_config
    from concerto_ros.pipeline import PerceptionPipeline
    from concerto_ros.recordings import open_recording

    pipe = PerceptionPipeline(load_config(default_config_path(), {"window.num_frames": 2}), log=None)
    rec = open_recording({"path": str(sequence), "label_names": "camera"})
    counts: Counter = Counter()
    for frame in rec.frames():
        r = pipe.process_frame(frame)
        gt = pipe.window.frames[-1].labels
        pred = r.frame_labels(-1)[0]
        for g, p in zip(gt[gt >= 0], pred[gt >= 0]):
            counts[rec.label_set.classes[g], r.class_names[p]] += 1
    return counts


def test_metrics_equal_the_hand_computed_confusion_of_the_same_run(sequence, folder_metrics):
    m, out = folder_metrics
    counts = _hand_confusion(sequence)
    names = sorted({n for pair in counts for n in pair})
    tp = {n: counts[n, n] for n in names}
    row = {n: sum(c for (g, _), c in counts.items() if g == n) for n in names}
    col = {n: sum(c for (_, p), c in counts.items() if p == n) for n in names}
    iou = {n: tp[n] / (row[n] + col[n] - tp[n]) for n in names}
    present = [n for n in names if row[n]]
    assert m["num_points"] == sum(counts.values()) and m["frames_scored"] == m["frames_processed"] == FRAMES
    assert m["accuracy"] == pytest.approx(sum(tp.values()) / sum(counts.values()))
    assert m["miou"] == pytest.approx(np.mean([iou[n] for n in present]))
    assert m["miou_all"] == pytest.approx(np.mean(list(iou.values())))
    for n in names:
        assert m["per_class_iou"][n] == pytest.approx(iou[n]), n
    assert set(m["classes_present"]) == set(present)
    assert m["latency_ms"]["encoder"]["count"] == FRAMES and m["latency_ms"]["frame"]["p99_ms"] > 0
    assert m["skipped"] == {} and (out / "confusion.png").is_file() and "| mIoU" in (out / "report.md").read_text()


def test_a_bag_with_a_label_image_topic_scores_like_its_folder(sequence, folder_metrics, tmp_path):
    from concerto_ros.bag.convert_rgbd import convert_rgbd_folder
    from concerto_ros.demo.scene import CLASS_NAMES

    bag = tmp_path / "bag"
    convert_rgbd_folder(sequence, bag, progress=False)
    out = tmp_path / "out"
    src = "{path: %s, label_names: [%s]}" % (bag, ", ".join(CLASS_NAMES))
    assert main(["eval", "--data", src, "--set", "window.num_frames=2", "-o", str(out), "--no-progress"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    ref = folder_metrics[0]
    assert m["frames_scored"] == FRAMES and m["num_points"] == ref["num_points"]  # every label pixel paired
    assert m["latency_ms"]["sync"]["count"] > 0  # through the frame stream
    assert m["accuracy"] == pytest.approx(ref["accuracy"], abs=2e-3)  # poses via TF: float rounding only


def test_frame_stream_pairs_label_images_and_checks_them():
    from sensor_msgs.msg import Image

    from concerto_ros.config import PerceptionConfig
    from concerto_ros.msgs.image import fill_image
    from concerto_ros.sensors.stream import FrameStream
    from concerto_ros.testing.fuzz import H, W, _images

    def labels(stamp, img, enc="16UC1"):
        return fill_image(Image(), img, enc, stamp, "cam")

    cfg = PerceptionConfig()
    cfg.fixed_frame = ""
    stream = FrameStream(cfg, label_topic="/labels")
    lab = np.arange(H * W, dtype=np.uint16).reshape(H, W) % 7
    msgs = []
    for i, lab_msg in enumerate([labels(10**9, lab), labels(2 * 10**9, lab[:-1]),
                                 labels(3 * 10**9, np.zeros((H, W, 3), np.uint8), "rgb8")]):
        c, d, info = _images((i + 1) * 10**9)
        msgs += [("color", c), ("depth", d), ("camera_info", info), ("labels", lab_msg)]
    frames = list(stream.frames(msgs))
    assert len(frames) == 1
    np.testing.assert_array_equal(frames[0].labels, lab.astype(np.int32))
    assert frames[0].rgbd.labels is frames[0].labels
    assert stream.skips.as_dict() == {"/labels:size_mismatch": 1, "/labels:bad_image": 1}


def test_compare_writes_one_table_and_one_plot(sequence, tmp_path):
    out = tmp_path / "cmp"
    rc = main(["eval", "--data", str(sequence), "--compare", "random", "seed1={model.bundle: '', model.seed: 1, window.num_frames: 1}",
               "--max-frames", "1", "-o", str(out), "--no-progress"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert list(m["runs"]) == ["random", "seed1"]
    for label in ("random", "seed1"):
        assert m["runs"][label]["frames_scored"] == 1 and (out / label / "metrics.json").is_file()
    assert m["runs"]["random"]["latency_ms"]["window"]["count"] == 1
    assert m["runs"]["random"]["per_class_iou"] != m["runs"]["seed1"]["per_class_iou"]  # another model
    report = (out / "report.md").read_text()
    assert "| random |" in report and "| seed1 |" in report and (out / "compare.png").is_file()
    assert all("SEEDED RANDOM" in m["specs"][k] for k in ("random", "seed1"))


class _WordEncoder:
    """A toy text space: one axis per known word; unknown words share the last axis."""

    def __init__(self, words):
        from concerto_ros.language.text_encoders import TextEncoder

        self.words = list(words)

        class Enc(TextEncoder):
            def _embed_raw(enc, texts):
                out = np.zeros((len(texts), len(self.words) + 1), np.float32)
                for i, t in enumerate(texts):
                    out[i, self.words.index(t) if t in self.words else -1] = 1.0
                return out

        self.encoder = Enc("toy:words", len(self.words) + 1, templates=())


def test_query_scores_per_name_and_synonym_are_hand_computable():
    from concerto_ros.evaluation.queries import score_window
    from concerto_ros.language.query import TextQueryScorer
    from concerto_ros.recordings.labels import load_label_set

    enc = _WordEncoder(["floor", "wall", "object"]).encoder
    language = SimpleNamespace(text_encoder=enc, scorer=TextQueryScorer(enc, 0.1, negatives=["object"]))
    # 4 floor voxels point at "floor", 6 wall voxels at "wall"; the synonym "ground" is unknown
    e = enc.encode(["floor"] * 4 + ["wall"] * 6)
    gt = np.array([0] * 4 + [1] * 6 + [-1])
    e = np.concatenate([e, enc.encode(["floor"])])  # an ignored voxel, never scored
    names = dataclasses.replace(load_label_set(["floor", "wall"]), synonyms={"floor": ("ground",)})
    rows = {r["text"]: r for r in score_window(language, e, gt, ["floor", "wall"], names, k=5)}
    assert set(rows) == {"floor", "ground", "wall"}
    assert rows["floor"]["precision_at_k"] == pytest.approx(4 / 5) and rows["floor"]["auc"] == 1.0
    assert rows["wall"]["precision_at_k"] == 1.0 and rows["wall"]["auc"] == 1.0
    assert rows["ground"]["synonym"] and rows["ground"]["auc"] == 0.5  # every voxel ties: chance
    assert rows["floor"]["targets"] == 4


@pytest.mark.parametrize("argv, needle", [
    (["eval"], "give at least one labelled source"),
    (["eval", "--data", "/nonexistent/rec"], "no such file or folder"),
    (["eval", "--data", "{path: SEQ, label_names: nope}"], "unknown label_names 'nope'"),
    (["eval", "--data", "{type: points, path: SEQ/x.npy}"], "names no label set"),
    (["eval", "--data", "SEQ", "--set", "window.num_frames=0"], "outside [1, 64]"),
    (["eval", "--data", "SEQ", "--compare", "a=default", "a=random"], "two runs are labelled 'a'"),
    (["eval", "--data", "SEQ", "--bundle", "/nonexistent/b.pt"], "/nonexistent/b.pt"),
    (["eval", "--data", "SEQ", "--yaw", "10", "--up", "w"], "up axis 'w'"),
    (["eval", "probe", "--train", "{path: SEQ, label_names: camera, max_frames: -1}"], "max_frames must be >= 0"),
])
def test_cli_errors_are_one_line(sequence, tmp_path, capsys, argv, needle):
    np.save(sequence / "x.npy", np.zeros((4, 3), np.float32))
    argv = [a.replace("SEQ", str(sequence)) for a in argv] + ["-o", str(tmp_path / "o"), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err


def test_map_output_scores_the_same_points_and_equals_the_window_after_one_keyframe(sequence, tmp_path):
    """``--outputs window map``: the fused map is scored at the same points; after a single
    keyframe the map holds exactly that window's argmax, so both confusions are equal."""
    out = tmp_path / "one"
    assert main(["eval", "--data", str(sequence), "--outputs", "window", "map", "--max-frames", "1",
                 "--set", "window.num_frames=2", "-o", str(out), "--no-progress"]) == 0
    p = json.loads((out / "metrics.json").read_text())["predictions"]
    assert p["map"]["num_points"] == p["window"]["num_points"] > 0
    assert p["map"]["per_class_iou"] == pytest.approx(p["window"]["per_class_iou"])


def test_yaw_average_matches_voxels_across_right_angle_rotations_and_averages_unit_embeddings():
    """Rotation test-time augmentation: a voxel of a copy rotated by 90 degrees is matched to
    the same voxel of the unrotated encoding, and the average is the renormalised mean."""
    from concerto_ros.augment import yaw_transform
    from concerto_ros.evaluation.queries import YawAverage

    vs = 0.05
    rng = np.random.default_rng(0)
    ijk = np.unique(rng.integers(-40, 40, (500, 3)), axis=0)
    coord = ((ijk + rng.uniform(0.1, 0.9, ijk.shape)) * vs).astype(np.float32)  # one point per voxel
    labels = np.arange(len(coord)) % 3
    e0 = rng.normal(size=(len(coord), 4)).astype(np.float32)
    e0 /= np.linalg.norm(e0, axis=1, keepdims=True)
    avg = YawAverage(coord, labels, e0, vs)
    R = yaw_transform(90.0, "z")
    perm = rng.permutation(len(coord))  # another encoding lists its voxels in its own order
    rotated = (coord[perm].astype(np.float64) @ R[:3, :3].T).astype(np.float32)
    e1 = np.roll(e0, 1, axis=1)[perm]  # its embeddings of the same voxels
    assert avg.add(rotated, e1, np.linalg.inv(R)) == len(coord)
    assert avg.add(coord[:10] + 10.0, e0[:10], np.eye(4)) == 0  # voxels the first encoding lacks: ignored
    want = e0 + np.roll(e0, 1, axis=1)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(avg.embeddings(), want, atol=1e-6)
    assert avg.labels is labels


def test_queries_with_four_yaws_score_the_same_at_90_degrees(sequence, tmp_path):
    """``concerto eval queries --tta-yaws 4`` with the embedded bundle: the data rotated by 90
    degrees give the precision and AUC of the unrotated data (the same four encodings)."""
    out = {}
    for yaw in (0, 90):
        o = tmp_path / f"yaw{yaw}"
        assert main(["eval", "queries", "--bundle", "default", "--data", str(sequence), "--yaw", str(yaw),
                     "--tta-yaws", "4", "--set", "window.num_frames=2", "--min-voxels", "5", "-o", str(o),
                     "--no-progress"]) == 0
        out[yaw] = json.loads((o / "queries.json").read_text())
    assert out[0]["tta_yaws"] == 4 and out[90]["yaw_deg"] == 90.0
    a = {q["text"]: q for q in out[0]["queries"]}
    b = {q["text"]: q for q in out[90]["queries"]}
    assert set(a) == set(b) and len(a) >= 3
    for text in a:
        assert abs(a[text]["precision_at_k"] - b[text]["precision_at_k"]) <= 0.02, text
        assert abs(a[text]["auc"] - b[text]["auc"]) <= 0.005, text
    assert main(["eval", "queries", "--bundle", "default", "--data", str(sequence), "--tta-yaws", "0",
                 "-o", str(tmp_path / "bad"), "--no-progress"]) == 2
