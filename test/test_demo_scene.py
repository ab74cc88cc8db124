"""Tests of the procedural demo scene generator (concerto_ros.demo.scene)."""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np
import pytest
import transforms3d
import yaml

from concerto_ros.demo import scene as S
from concerto_ros.demo.scene import (
    CLASS_NAMES,
    PALETTE,
    Box,
    Intrinsics,
    Scene,
    camera_trajectory,
    colorize_labels,
    default_intrinsics,
    depth_to_mm,
    generate_sequence,
    look_at,
    make_room,
    render,
    write_sequence,
)

FLOOR, WALL, TABLE, CHAIR = (CLASS_NAMES.index(n) for n in ("floor", "wall", "table", "chair"))
SHELL = {FLOOR, WALL, S.CEILING_CLASS}
K_SMALL = default_intrinsics(160, 120)


def _shell_only(scene: Scene) -> Scene:
    return dataclasses.replace(scene, boxes=tuple(b for b in scene.boxes if b.class_id in SHELL))


def _single_box_scene(box: Box, light_dirs=((0.0, 0.0, 1.0), (1.0, 0.0, 0.0))) -> Scene:
    return Scene(
        seed=0,
        room_size=np.array([10.0, 10.0, 3.0]),
        boxes=(box,),
        objects=((0, "box"),),
        light_dirs=np.array(light_dirs, dtype=np.float64),
    )


def _lift(depth_m: np.ndarray, K: Intrinsics, T: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """World points (N, 3) of the pixels in mask (optical camera, pixel centres at integers)."""
    v, u = np.nonzero(mask)
    z = depth_m[v, u]
    pc = np.stack([(u - K.cx) * z / K.fx, (v - K.cy) * z / K.fy, z], axis=1)
    return pc @ T[:3, :3].T + T[:3, 3]


def _read_poses(path) -> list[np.ndarray]:
    poses = []
    for line in path.read_text().splitlines():
        tx, ty, tz, qx, qy, qz, qw = map(float, line.split())
        T = np.eye(4)
        T[:3, :3] = transforms3d.quaternions.quat2mat([qw, qx, qy, qz])
        T[:3, 3] = (tx, ty, tz)
        poses.append(T)
    return poses


# ---------------------------------------------------------------------------
# classes
# ---------------------------------------------------------------------------


def test_class_names_and_palette():
    assert CLASS_NAMES[0] == "unlabeled"
    assert CLASS_NAMES[1:3] == ("floor", "wall")
    assert len(set(CLASS_NAMES)) == len(CLASS_NAMES) == 9
    assert {"table", "chair", "sofa", "cabinet", "bookshelf", "door"} <= set(CLASS_NAMES)
    assert PALETTE.shape == (len(CLASS_NAMES), 3) and PALETTE.dtype == np.uint8
    assert len({tuple(c) for c in PALETTE}) == len(CLASS_NAMES)  # distinct colours
    lab = np.array([[0, 1], [8, 99]], dtype=np.uint16)
    rgb = colorize_labels(lab)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0, 1], [152, 223, 138])
    np.testing.assert_array_equal(rgb[1, 0], PALETTE[8])
    np.testing.assert_array_equal(rgb[1, 1], [0, 0, 0])


# ---------------------------------------------------------------------------
# room generation
# ---------------------------------------------------------------------------


def test_make_room_deterministic_and_seed_dependent():
    a, b, c = make_room(3), make_room(3), make_room(4)
    for k, v in a.arrays().items():
        np.testing.assert_array_equal(v, b.arrays()[k])
    np.testing.assert_array_equal(a.room_size, b.room_size)
    assert not np.array_equal(a.room_size, c.room_size)
    assert len(a.boxes) != len(c.boxes) or not np.allclose(
        a.arrays()["centers"], c.arrays()["centers"]
    )


def _rects_overlap(a: Box, b: Box) -> bool:
    """Independent 2D separating-axis test of two yawed box footprints."""

    def corners(x: Box):
        c, s = math.cos(x.yaw), math.sin(x.yaw)
        R = np.array([[c, -s], [s, c]])
        loc = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * x.half_size[:2]
        return loc @ R.T + x.center[:2]

    ca, cb = corners(a), corners(b)
    for yaw in (a.yaw, b.yaw):
        for ax in ((math.cos(yaw), math.sin(yaw)), (-math.sin(yaw), math.cos(yaw))):
            pa, pb = ca @ np.array(ax), cb @ np.array(ax)
            if pa.max() <= pb.min() + 1e-9 or pb.max() <= pa.min() + 1e-9:
                return False
    return True


@pytest.mark.parametrize("seed", [0, 1, 2, 7, 11])
def test_room_layout_is_valid(seed):
    scene = make_room(seed)
    lx, ly, h = scene.room_size
    assert 4.0 <= lx <= 6.0 and 4.0 <= ly <= 6.0 and 2.5 <= h <= 2.8
    A = scene.arrays()
    assert np.all(A["class_ids"] < len(CLASS_NAMES))
    assert np.all(A["half_sizes"] > 0)
    assert np.all((A["colors"] >= 0) & (A["colors"] <= 1))
    floor = [b for b in scene.boxes if b.class_id == FLOOR]
    assert len(floor) == 1 and floor[0].center[2] + floor[0].half_size[2] == pytest.approx(
        0.0, abs=1e-12
    )
    assert sum(b.class_id == WALL for b in scene.boxes) == 4
    names = [n for _, n in scene.objects]
    assert "table" in names and names.count("door") == 1
    furniture = [b for b in scene.boxes if b.class_id not in SHELL]
    for b in furniture:
        # all corners inside the room interior (door panel may sink 1 cm into its wall)
        c, s = math.cos(b.yaw), math.sin(b.yaw)
        loc = np.array([[sx, sy] for sx in (-1, 1) for sy in (-1, 1)]) * b.half_size[:2]
        xy = loc @ np.array([[c, -s], [s, c]]).T + b.center[:2]
        tol = 0.011 if CLASS_NAMES[b.class_id] == "door" else 1e-9
        assert np.all(np.abs(xy[:, 0]) <= lx / 2 + tol) and np.all(
            np.abs(xy[:, 1]) <= ly / 2 + tol
        )
        assert b.center[2] - b.half_size[2] >= -1e-9 and b.center[2] + b.half_size[2] <= h
    # boxes of different objects never interpenetrate
    # (footprints may overlap only if z-ranges are disjoint)
    for i, a in enumerate(furniture):
        for b in furniture[i + 1 :]:
            if a.object_id == b.object_id:
                continue
            z_overlap = (
                a.center[2] - a.half_size[2] < b.center[2] + b.half_size[2] - 1e-9
                and b.center[2] - b.half_size[2] < a.center[2] + a.half_size[2] - 1e-9
            )
            assert not (z_overlap and _rects_overlap(a, b)), (a, b)


# ---------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------


def test_render_shapes_dtypes_classes_and_determinism():
    scene = make_room(0)
    T = camera_trajectory(scene, 12, 0)[0]
    color, depth, labels = render(scene, T, K_SMALL)
    assert color.shape == (120, 160, 3) and color.dtype == np.uint8
    assert depth.shape == (120, 160) and depth.dtype == np.float32
    assert labels.shape == (120, 160) and labels.dtype == np.uint16
    assert labels.max() < len(CLASS_NAMES)
    present = set(np.unique(labels).tolist())
    assert {FLOOR, WALL, TABLE} <= present and len(present - {0}) >= 4
    # closed room: every ray hits something, at a plausible range
    assert np.all(depth > 0.1) and np.all(depth < 9.0)
    assert color.std() > 10  # shaded, textured image, not flat
    again = render(scene, T, K_SMALL)
    for x, y in zip((color, depth, labels), again):
        np.testing.assert_array_equal(x, y)
    other = make_room(1)
    _, d1, l1 = render(other, camera_trajectory(other, 12, 1)[0], K_SMALL)
    assert not np.array_equal(l1, labels) and not np.array_equal(d1, depth)


def test_look_down_sees_floor_at_camera_height():
    scene = _shell_only(make_room(5))
    eye = np.array([0.3, -0.2, 1.37])
    T = look_at(eye, eye - np.array([0.0, 0.0, 1.0]))
    np.testing.assert_allclose(T[:3, 2], [0, 0, -1], atol=1e-12)  # optical z points down
    color, depth, labels = render(scene, T, K_SMALL)
    assert np.all(labels == FLOOR)
    np.testing.assert_allclose(depth, 1.37, atol=1e-4)
    # same in the furnished room for the floor pixels; the floor is seen where nothing is above it
    full = make_room(5)
    _, d2, l2 = render(full, T, K_SMALL)
    assert (l2 == FLOOR).mean() > 0.1
    np.testing.assert_allclose(d2[l2 == FLOOR], 1.37, atol=1e-4)
    assert np.all(d2[l2 != FLOOR] < 1.37)  # anything else is in front of the floor
    # the table below the camera: most table pixels are its top, at 1.37 m - table height
    table_top = max(b.center[2] + b.half_size[2] for b in full.boxes if b.class_id == TABLE)
    on_table = l2 == TABLE
    assert on_table.mean() > 0.1
    assert (np.abs(d2[on_table] - (1.37 - table_top)) < 1e-4).mean() > 0.9


def test_axis_aligned_box_face_depth_exact_and_lambertian():
    base = np.array([0.8, 0.4, 0.2])
    box = Box(
        center=np.array([3.0, 0.0, 1.0]),
        half_size=np.array([0.5, 1.0, 0.6]),
        yaw=0.0,
        class_id=TABLE,
        object_id=0,
        color=base,
        texture=S.TEX_PLAIN,
        texture_seed=1,
    )
    scene = _single_box_scene(box)
    K = Intrinsics(100.0, 120.0, 39.5, 29.5, 80, 60)
    T = look_at([0.0, 0.0, 1.0], [1.0, 0.0, 1.0])
    color, depth, labels = render(scene, T, K)
    # near face x = 2.5 spans y in [-1, 1], z in [0.4, 1.6];
    # camera x_opt = -y_world, y_opt = -(z - 1)
    u, v = np.meshgrid(np.arange(80), np.arange(60))
    x_off = np.abs((u - K.cx) / K.fx * 2.5)
    y_off = np.abs((v - K.cy) / K.fy * 2.5)
    inside = (x_off < 1.0 - 1e-6) & (y_off < 0.6 - 1e-6)
    outside = (x_off > 1.0 + 1e-6) | (y_off > 0.6 + 1e-6)
    assert inside.sum() > 1000
    np.testing.assert_allclose(depth[inside], 2.5, atol=1e-9)
    assert np.all(labels[inside] == TABLE)
    assert np.all(depth[outside] == 0) and np.all(labels[outside] == 0)
    # face normal -x: key light (0,0,1) and fill (1,0,0) contribute nothing -> ambient 0.38 only
    expected = 255 * base * 0.38
    assert np.all(np.abs(color[inside].astype(float) - expected) <= 0.05 * expected + 1)

    # a camera above the box sees its top face lit by the key light: shade 0.38 + 0.5
    T_top = look_at([3.0, 0.0, 2.6], [3.0, 0.0, 0.0])
    c2, d2, l2 = render(scene, T_top, K)
    np.testing.assert_allclose(d2[30, 40], 1.0, atol=1e-9)
    expected_top = 255 * base * 0.88
    assert np.all(np.abs(c2[30, 40].astype(float) - expected_top) <= 0.05 * expected_top + 1)


def test_yawed_box_face_depth_exact():
    yaw = math.radians(30.0)
    c = np.array([1.0, -2.0, 0.7])
    h = np.array([0.4, 0.8, 0.7])
    box = Box(
        center=c,
        half_size=h,
        yaw=yaw,
        class_id=CHAIR,
        object_id=0,
        color=np.array([0.5, 0.5, 0.5]),
    )
    n = np.array([math.cos(yaw), math.sin(yaw), 0.0])  # normal of the local +x face
    eye = c + n * (h[0] + 2.0)
    T = look_at(eye, c)
    K = Intrinsics(80.0, 80.0, 31.5, 23.5, 64, 48)
    _, depth, labels = render(_single_box_scene(box), T, K)
    hit = labels == CHAIR
    # face half-width 0.8 at 2 m -> |u - cx| < 32 px, half-height 0.7 -> |v - cy| < 28 px:
    # the face fills the whole image
    assert hit.all()
    np.testing.assert_allclose(depth, 2.0, atol=1e-9)


def test_noise_is_seeded_and_sensor_like():
    scene = make_room(2)
    T = camera_trajectory(scene, 12, 2)[3]
    c0, d0, l0 = render(scene, T, K_SMALL, noise=False)
    c1, d1, l1 = render(scene, T, K_SMALL, noise=True, noise_seed=7)
    c2, d2, l2 = render(scene, T, K_SMALL, noise=True, noise_seed=7)
    _, d3, _ = render(scene, T, K_SMALL, noise=True, noise_seed=8)
    np.testing.assert_array_equal(d1, d2)
    np.testing.assert_array_equal(c1, c2)
    assert not np.array_equal(d1, d3)
    np.testing.assert_array_equal(l0, l1)  # labels are exact ground truth
    dropped = d1 == 0
    assert 0.001 < dropped.mean() < 0.05
    ok = ~dropped
    err = d1[ok] - d0[ok]
    sigma = 1.2e-3 * d0[ok].astype(np.float64) ** 2
    assert abs(np.mean(err / sigma)) < 0.1 and 0.9 < np.std(err / sigma) < 1.1
    assert 0.5 < np.abs(c1.astype(int) - c0.astype(int)).mean() < 3.0


# ---------------------------------------------------------------------------
# trajectory
# ---------------------------------------------------------------------------


def test_camera_trajectory_smooth_inside_room_looking_down():
    scene = make_room(6)
    lx, ly, _ = scene.room_size
    poses = camera_trajectory(scene, 12, 6)
    assert len(poses) == 12
    np.testing.assert_array_equal(np.stack(poses), np.stack(camera_trajectory(scene, 12, 6)))
    for T in poses:
        R = T[:3, :3]
        np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) == pytest.approx(1.0, abs=1e-12)
        x, y, z = T[:3, 3]
        assert abs(x) < lx / 2 - 0.5 and abs(y) < ly / 2 - 0.5 and 1.2 <= z <= 1.7
        for b in scene.boxes:  # camera centre keeps >= 0.3 m from every box
            p_local = b.rotation.T @ (T[:3, 3] - b.center)
            assert np.linalg.norm(np.maximum(np.abs(p_local) - b.half_size, 0.0)) >= 0.3
        pitch_down = -R[2, 2]  # sine of the downward pitch of the optical axis
        assert 0.1 < pitch_down < 0.6
        assert abs(R[2, 0]) < 1e-12  # no roll: image x axis stays horizontal
    for A, B in zip(poses[:-1], poses[1:]):
        assert np.linalg.norm(B[:3, 3] - A[:3, 3]) < 0.35
        cos_angle = (np.trace(A[:3, :3].T @ B[:3, :3]) - 1) / 2
        assert math.degrees(math.acos(min(1.0, cos_angle))) < 15.0


# ---------------------------------------------------------------------------
# sequence files
# ---------------------------------------------------------------------------


def test_write_sequence_roundtrip_and_byte_identical(tmp_path):
    kw = dict(seed=4, num_frames=3, width=160, height=120, noise=True)
    out = write_sequence(tmp_path / "a", **kw)
    assert out == tmp_path / "a"
    frames = list(generate_sequence(4, 3, 160, 120, noise=True))
    poses = _read_poses(out / "poses.txt")
    assert len(poses) == 3
    for i, fr in enumerate(frames):
        name = f"{i:06d}.png"
        bgr = cv2.imread(str(out / "color" / name), cv2.IMREAD_UNCHANGED)
        dmm = cv2.imread(str(out / "depth" / name), cv2.IMREAD_UNCHANGED)
        lab = cv2.imread(str(out / "labels" / name), cv2.IMREAD_UNCHANGED)
        assert bgr.dtype == np.uint8 and dmm.dtype == np.uint16 and lab.dtype == np.uint16
        np.testing.assert_array_equal(bgr[..., ::-1], fr.color)
        np.testing.assert_array_equal(dmm, depth_to_mm(fr.depth))
        np.testing.assert_array_equal(
            dmm, np.rint(fr.depth.astype(np.float64) * 1000).astype(np.uint16)
        )
        np.testing.assert_array_equal(lab, fr.labels)
        assert (dmm == 0).any() and (dmm > 0).mean() > 0.9  # noise drops a few pixels
        np.testing.assert_allclose(poses[i], fr.T_world_camera, atol=1e-8)
    cam = yaml.safe_load((out / "camera.yaml").read_text())
    assert cam["fx"] == cam["fy"] == pytest.approx(525.0 * 160 / 640)
    assert (cam["cx"], cam["cy"], cam["width"], cam["height"]) == (79.5, 59.5, 160, 120)
    assert cam["depth_scale"] == 1000 and cam["rate_hz"] > 0
    assert cam["class_names"] == list(CLASS_NAMES)
    assert cam["palette"] == PALETTE.tolist()
    # byte-identical for the same arguments
    out_b = write_sequence(tmp_path / "b", **kw)
    files_a = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(out_b) for p in out_b.rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 11
    for rel in files_a:
        assert (out / rel).read_bytes() == (out_b / rel).read_bytes(), rel
    # rewriting with fewer frames removes stale frames
    write_sequence(tmp_path / "a", seed=4, num_frames=2, width=160, height=120, noise=False)
    assert sorted(p.name for p in (out / "depth").iterdir()) == ["000000.png", "000001.png"]
    assert len((out / "poses.txt").read_text().splitlines()) == 2


def test_lifted_frames_agree_in_world(tmp_path):
    out = write_sequence(
        tmp_path / "seq", seed=1, num_frames=2, width=160, height=120, noise=False
    )
    cam = yaml.safe_load((out / "camera.yaml").read_text())
    K = Intrinsics(cam["fx"], cam["fy"], cam["cx"], cam["cy"], cam["width"], cam["height"])
    poses = _read_poses(out / "poses.txt")
    depth = [
        cv2.imread(str(out / "depth" / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED) / cam["depth_scale"]
        for i in range(2)
    ]
    labels = [
        cv2.imread(str(out / "labels" / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED) for i in range(2)
    ]
    for d, lab, T in zip(depth, labels, poses):
        floor = (lab == FLOOR) & (d > 0)
        assert floor.sum() > 1000
        pts = _lift(d, K, T, floor)
        assert np.abs(pts[:, 2]).max() < 0.01
    # frame 1 points reprojected into frame 0 land on the same surfaces (strong overlap)
    pts1 = _lift(depth[1], K, poses[1], depth[1] > 0)
    lab1 = labels[1][depth[1] > 0]
    T0_inv = np.linalg.inv(poses[0])
    pc = pts1 @ T0_inv[:3, :3].T + T0_inv[:3, 3]
    u = np.rint(pc[:, 0] / pc[:, 2] * K.fx + K.cx).astype(int)
    v = np.rint(pc[:, 1] / pc[:, 2] * K.fy + K.cy).astype(int)
    vis = (pc[:, 2] > 0) & (u >= 0) & (u < K.width) & (v >= 0) & (v < K.height)
    assert vis.mean() > 0.6
    z0 = depth[0][v[vis], u[vis]]
    agree = np.abs(z0 - pc[vis, 2]) < 0.02
    assert agree.mean() > 0.85  # the rest are occlusion boundaries / newly visible surfaces
    assert (labels[0][v[vis], u[vis]][agree] == lab1[vis][agree]).mean() > 0.98


def test_depth_to_mm():
    d = np.array([[0.0, 1.2344, 1.2346, -1.0], [np.nan, np.inf, 65.535, 70.0]], dtype=np.float32)
    mm = depth_to_mm(d)
    assert mm.dtype == np.uint16
    np.testing.assert_array_equal(mm, [[0, 1234, 1235, 0], [0, 0, 65535, 0]])
