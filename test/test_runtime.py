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


def _play(rt: StreamingRuntime, frames: int, period_s: float, done=lambda: True, timeout_s: float = 20.0) -> None:
    """Start ``rt``, offer ``frames`` frames ``period_s`` apart, wait until every frame is
    integrated, the encoder is idle and ``done()`` holds (or ``timeout_s``), stop it."""
    rt.start()
    try:
        for i in range(frames):
            rt.offer(_frame(i), tag=i)
            time.sleep(period_s)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and (rt.frames_integrated < frames or rt._encoder_busy.is_set()
                                               or not done()):
            time.sleep(0.05)
    finally:
        rt.stop()


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
    _play(rt, 12, 0.03, done=lambda: bool(results) and results[-1][1] == 11)
    assert rt.frames_integrated == 12 and rt.frames_dropped == 0
    assert rt.keyframes_made == 12  # every frame moved 0.05 m > keyframe.min_translation
    assert all(isinstance(r, tuple) for r in results), results  # no skips, no internal errors
    assert rt.keyframes_encoded == len(results) < 12
    assert rt.keyframes_encoded + rt.keyframes_replaced == 12
    # only the keyframes the encoder took were voxelized (the replaced ones cost nothing)
    assert len(builds) <= rt.keyframes_encoded + 1
    assert "concerto_encode" in builds  # deferred keyframes are voxelized on the encoder thread
    assert results[-1] == (_frame(11).stamp_ns, 11)  # the newest frame's keyframe is the last encoded


def _backlog_at_encoder_start(yield_backlog: int, max_yield_s: float = 5.0, frames: int = 10) -> tuple[list, object]:
    """Offer ``frames`` frames at once to a runtime whose integration takes 0.1 s per frame;
    the intake backlog each time the encoder thread starts a keyframe, and the runtime."""
    p = _pipeline()
    integrate, build_keyframe = p.integrate, p.build_keyframe
    starts = []

    def slow_integrate(frame, **kw):
        time.sleep(0.1)
        return integrate(frame, **kw)

    rt = StreamingRuntime(p, _Identity(), on_result=lambda *a: None, on_skip=lambda s: starts.append(s),
                          queue_depth=frames, yield_backlog=yield_backlog, max_yield_s=max_yield_s)

    def recorded_build(kf):
        starts.append(len(rt.intake))
        return build_keyframe(kf)

    p.integrate, p.build_keyframe = slow_integrate, recorded_build
    _play(rt, frames, 0.0, timeout_s=30.0)
    return starts, rt


def test_encoder_waits_while_frames_wait_for_integration():
    starts, rt = _backlog_at_encoder_start(yield_backlog=2)
    assert rt.frames_integrated == 10 and rt.frames_dropped == 0
    assert starts and all(isinstance(s, int) and s <= 2 for s in starts), starts
    assert rt.yield_s > 0.3  # it waited for most of the ten 0.1-s integrations
    assert rt.keyframes_encoded + rt.keyframes_replaced == rt.keyframes_made == 10
    # without the policy the encoder starts the first keyframe with the queue still full
    starts, rt = _backlog_at_encoder_start(yield_backlog=0)
    assert starts[0] >= 5 and rt.yield_s == 0.0, starts
    # the wait is bounded: with max_yield 0.15 s the first keyframe starts long before the backlog clears
    starts, rt = _backlog_at_encoder_start(yield_backlog=1, max_yield_s=0.15)
    assert starts[0] >= 4, starts


def test_runtime_rejects_negative_yield_settings():
    import pytest

    with pytest.raises(ValueError, match="yield_backlog"):
        StreamingRuntime(_pipeline(), _Identity(), on_result=lambda *a: None, on_skip=lambda s: None, yield_backlog=-1)


def test_freed_memory_is_returned_between_keyframes_every_trim_period():
    from concerto_ros.models.allocator import release_freed_memory

    assert release_freed_memory() is True  # glibc on Linux (CI); the runtime counts the trims that ran
    p = _pipeline()
    rt = StreamingRuntime(p, _Identity(), on_result=lambda *a: None, on_skip=lambda s: None, trim_period_s=0.05)
    _play(rt, 6, 0.15)
    # at most one trim per keyframe and per period; at least one after the first period
    assert 1 <= rt.trims <= rt.keyframes_encoded and rt.trim_s >= 0.0
    never = StreamingRuntime(p, _Identity(), on_result=lambda *a: None, on_skip=lambda s: None)
    assert never.trim_period_s == 0.0 and never.trims == 0


def test_warm_up_runs_the_encoders_on_a_window_of_the_live_size_and_keeps_nothing():
    p = _pipeline(**{"window.max_voxels": 2000})
    calls = []
    features = p._features

    def recorded(win, t):
        calls.append((win.coord.shape[0], len(win.stamps_ns)))
        return features(win, t)

    p._features = recorded
    map_before = len(p.map)
    assert p.warm_up() > 0.0
    assert calls == [(2000, 5)]  # the budget's voxels, window.num_frames frames
    assert p.frames_processed == 0 and p.latest is None and len(p.window) == 0 and len(p.map) == map_before
    rt = StreamingRuntime(p, _Identity(), on_result=lambda *a: None, on_skip=lambda s: None, warm_up=True)
    rt.start()
    rt.stop()
    assert rt.warm_up_s > 0.0 and len(calls) == 2
    assert StreamingRuntime.from_config(p, _Identity(), lambda *a: None, lambda s: None).warm_up is True


def test_warm_up_maps_the_pages_the_map_reserved():
    p = _pipeline(**{"window.max_voxels": 2000, "map.max_voxels": 10000})
    cols = p.map._cols
    assert cols.capacity >= 10000 and cols.n == 0
    touched = p.map.touch_reserved()
    row_bytes = sum(c.data[0].nbytes for c in cols._cols.values())
    assert touched == cols.capacity * row_bytes  # every reserved row of every column, once
    assert all(not np.any(c.data) for c in cols._cols.values())  # written with each column's fill (0)
    assert len(p.map) == 0
