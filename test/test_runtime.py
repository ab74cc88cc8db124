"""Live scheduling (:class:`concerto_ros.runtime.StreamingRuntime`): every frame integrated,
keyframes deferred while the encoder is busy and voxelized when it takes them."""

from __future__ import annotations

import threading
import time

import numpy as np

from concerto_ros.config import default_config_path, load_config
from concerto_ros.pipeline import PerceptionPipeline
from concerto_ros.runtime import StreamingRuntime
from concerto_ros.sensors.types import PointFrame


def _pipeline(**overrides) -> PerceptionPipeline:
    cfg = load_config(default_config_path(), {"model.bundle": "", "model.preset": "tiny", "fixed_frame": "world",
                                              "keyframe.min_translation": 0.01, **overrides})
    return PerceptionPipeline(cfg, log=None)


def _frame(i: int, n: int = 3000) -> PointFrame:
    """A 1 m plane patch seen from a camera that moves 0.05 m along x per frame (10 Hz)."""
    rng = np.random.default_rng(i)
    pts = np.c_[rng.uniform(0, 1, n) + 0.05 * i, rng.uniform(0, 1, n), np.zeros(n)].astype(np.float32)
    T = np.eye(4)
    T[0, 3] = 0.05 * i
    return PointFrame(stamp_ns=(i + 1) * 100_000_000, points=pts,
                      colors=rng.integers(0, 255, (n, 3), dtype=np.uint8), frame_id="world",
                      sensor_frame_id="camera", T_fixed_sensor=T)


def test_deferred_keyframe_is_voxelized_as_the_window_is_when_built():
    p = _pipeline()
    for i in range(3):
        assert p.integrate(_frame(i), force_keyframe=True).window is not None
    kf = p.integrate(_frame(3), defer_build=True)
    assert kf is not None and kf.window is None and kf.reason == "translation"
    p.integrate(_frame(4), keyframe_policy=False)  # a newer frame arrives before the encoder is free
    built = p.build_keyframe(kf)
    assert built.reason == "translation" and built.integrated_at == kf.integrated_at
    expect = p.window.build()
    assert built.window.stamps_ns[-1] == _frame(4).stamp_ns  # the newest keyframe wins
    np.testing.assert_array_equal(built.window.grid_coord, expect.grid_coord)
    np.testing.assert_array_equal(built.window.coord, expect.coord)
    assert p.build_keyframe(built) is built  # a built keyframe is returned as it is
    assert p.encode(built).labels.shape == (expect.coord.shape[0],)
    p.reset()
    assert p.build_keyframe(kf) is None  # the window was emptied meanwhile


class _Identity:
    """The frame stream's decode step for frames that are already lifted."""

    @staticmethod
    def decode(frame):
        return frame


def test_runtime_integrates_every_frame_and_builds_only_the_keyframes_it_encodes():
    p = _pipeline()
    builds = []
    build = p.window.build

    def counted_build():
        builds.append(threading.current_thread().name)
        return build()

    p.window.build = counted_build
    encode = p.encode

    def slow_encode(kf):  # an encoder that takes 0.25 s, as a real one on a busy CPU
        time.sleep(0.25)
        return encode(kf)

    p.encode = slow_encode
    results = []
    rt = StreamingRuntime(p, _Identity(), on_result=lambda r, kf, tag: results.append((r.stamp_ns, tag)),
                          on_skip=lambda skip: results.append(skip))
    rt.start()
    try:
        for i in range(12):
            rt.offer(_frame(i), tag=i)
            time.sleep(0.03)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (rt.frames_integrated < 12 or rt._encoder_busy.is_set()
                                               or (results and results[-1][1] != 11)):
            time.sleep(0.05)
    finally:
        rt.stop()
    assert rt.frames_integrated == 12 and rt.frames_dropped == 0
    assert rt.keyframes_made == 12  # every frame moved 0.05 m > keyframe.min_translation
    assert all(isinstance(r, tuple) for r in results), results  # no skips, no internal errors
    assert rt.keyframes_encoded == len(results) < 12
    assert rt.keyframes_encoded + rt.keyframes_replaced == 12
    # only the keyframes the encoder took were voxelized (the replaced ones cost nothing)
    assert len(builds) <= rt.keyframes_encoded + 1
    assert "concerto_encode" in builds  # deferred keyframes are voxelized on the encoder thread
    assert results[-1] == (_frame(11).stamp_ns, 11)  # the newest frame's keyframe is the last encoded
