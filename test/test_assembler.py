"""RGBDFrameAssembler: the pairing shared by node and replay (unpaired drops, time jumps)."""

from types import SimpleNamespace

from concerto_ros.config import PerceptionConfig
from concerto_ros.pipeline import RGBDFrameAssembler, SkipCounter


def _msg(t_s: float):
    sec = int(t_s)
    return SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=int(round((t_s - sec) * 1e9))),
                                                  frame_id="cam"))


def _frame(asm, t):
    out = []
    for stream in ("color", "depth", "camera_info"):
        out += asm.add(stream, _msg(t))
    return [s.stamp_ns for s in out]


def test_pairs_reports_unpaired_and_restarts_after_a_jump_back_in_time():
    skips = SkipCounter()
    notes = []
    asm = RGBDFrameAssembler(PerceptionConfig(), note=notes.append, skips=skips)
    assert _frame(asm, 10.0) == [10_000_000_000]
    asm.add("color", _msg(10.2))                  # colour and depth without camera info ...
    asm.add("depth", _msg(10.2))
    assert _frame(asm, 10.4) == [10_400_000_000]  # ... are dropped once a later set completes
    assert skips.as_dict() == {"/camera/color/image_raw:unpaired": 1, "/camera/depth/image_raw:unpaired": 1}
    # 0.1 s older than the newest: out of order, dropped (counted), no reset
    assert _frame(asm, 10.3) == []
    assert not notes
    # a bag that loops: 9 s back -> pairing restarts and the frame is used
    assert _frame(asm, 1.0) == [1_000_000_000]
    assert len(notes) == 1 and "time jumped back" in notes[0]
