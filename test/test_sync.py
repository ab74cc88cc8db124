"""ApproximateTimeSync: pairing within slop, minimal spread, drops and their counters."""

import threading

import pytest

from concerto_ros.sensors.sync import SYNC_COUNTERS, ApproximateTimeSync

MS = 1_000_000


def stamps(sets):
    return [tuple(s.stamps_ns.values()) for s in sets]


def test_pairs_within_slop_in_time_order_and_waits_for_proof():
    sync = ApproximateTimeSync(["color", "depth"], slop_s=0.010)
    assert sync.add("color", 0, "c0") == []
    # depth 2 ms later: a later colour could still be closer, so nothing yet
    assert sync.add("depth", 2 * MS, "d2") == []
    out = sync.add("color", 33 * MS, "c33")  # colour moved past the pivot: (c0, d2) is optimal
    assert stamps(out) == [(0, 2 * MS)]
    assert out[0].items == {"color": "c0", "depth": "d2"}
    assert out[0]["depth"] == "d2" and out[0].stamp_ns == 0 and out[0].spread_ns == 2 * MS
    assert sync.add("depth", 35 * MS, "d35") == []
    assert stamps(sync.add("color", 66 * MS, "c66")) == [(33 * MS, 35 * MS)]
    assert sync.add("depth", 68 * MS, "d68") == []
    assert stamps(sync.flush()) == [(66 * MS, 68 * MS)]  # end of replay: no more data will come
    assert sync.stats["emitted"] == 3 and sync.pending() == {"color": 0, "depth": 0}


def test_exact_stamps_are_emitted_immediately():
    sync = ApproximateTimeSync(["a", "b"], slop_s=0.0)
    assert sync.add("a", 5 * MS, 1) == []
    out = sync.add("b", 5 * MS, 2)
    assert len(out) == 1 and out[0].items == {"a": 1, "b": 2} and out[0].spread_ns == 0


def test_drops_items_outside_slop():
    sync = ApproximateTimeSync(["a", "b"], slop_s=0.010)
    sync.add("a", 0, "a0")
    assert sync.add("b", 50 * MS, "b50") == []  # 50 ms apart: a0 can never be matched
    assert sync.stats["dropped_stale"] == 1 and sync.pending() == {"a": 0, "b": 1}
    sync.add("a", 100 * MS, "a100")  # b50 can never be matched either
    assert sync.stats["dropped_stale"] == 2
    sync.add("b", 105 * MS, "b105")
    out = sync.add("a", 133 * MS, "a133")
    assert stamps(out) == [(100 * MS, 105 * MS)]
    assert sync.stream_stats["a"]["dropped_stale"] == 1 and sync.stream_stats["b"]["dropped_stale"] == 1


def test_chooses_the_set_with_minimal_spread():
    sync = ApproximateTimeSync(["a", "b"], slop_s=0.020)
    sync.add("a", 0, "a0")
    sync.add("a", 10 * MS, "a10")
    out = sync.add("b", 9 * MS, "b9")  # (a0, b9) spans 9 ms, (a10, b9) only 1 ms
    assert stamps(out) == [(10 * MS, 9 * MS)]
    assert sync.stats["dropped_stale"] == 1  # a0 is older than the emitted set


def test_three_streams_minimal_spread_not_nearest_to_reference():
    sync = ApproximateTimeSync(["rgb", "depth", "odom"], slop_s=0.020)
    sync.add("rgb", 100 * MS, "r100")
    sync.add("depth", 95 * MS, "d95")  # nearest to the reference (5 ms)
    sync.add("depth", 106 * MS, "d106")  # 6 ms from the reference but gives the smaller spread
    assert sync.add("odom", 110 * MS, "o110") == []
    assert sync.add("rgb", 140 * MS, "r140") == []  # depth has nothing after the pivot (110) yet
    out = sync.add("depth", 141 * MS, "d141")
    assert len(out) == 1
    assert out[0].items == {"rgb": "r100", "depth": "d106", "odom": "o110"}
    assert out[0].stamp_ns == 100 * MS and out[0].spread_ns == 10 * MS
    # d95 is older than the emitted set: counted as stale
    assert sync.stats["dropped_stale"] == 1
    for s in out:
        assert set(s.items) == {"rgb", "depth", "odom"}
        assert s.spread_ns <= 20 * MS


def test_out_of_order_arrivals():
    sync = ApproximateTimeSync(["a", "b"], slop_s=0.005)
    sync.add("a", 10 * MS, "a10")
    sync.add("b", 10 * MS, "b10")  # emitted at once (spread 0)
    assert sync.add("a", 8 * MS, "late") == []  # older than the emitted set
    assert sync.stats["dropped_out_of_order"] == 1
    assert sync.add("b", 10 * MS, "again") == []  # equal to the emitted set: also too late
    assert sync.stats["dropped_out_of_order"] == 2
    # newer than the last set but out of order within the stream: inserted in stamp order
    sync.add("b", 40 * MS, "b40")
    sync.add("b", 20 * MS, "b20")
    assert sync.stats["reordered"] == 1
    out = sync.add("a", 21 * MS, "a21")
    assert stamps(out) == [(21 * MS, 20 * MS)]
    # duplicate stamp on one stream: the newest item replaces the queued one
    sync.add("a", 60 * MS, "first")
    sync.add("a", 60 * MS, "second")
    assert sync.stats["dropped_duplicate"] == 1
    out = sync.add("b", 60 * MS, "b60")  # equal stamps: emitted at once
    assert [s.items["a"] for s in out] == ["second"]
    assert sync.stats["dropped_stale"] == 1  # b40 never had a partner within 5 ms


def test_queue_overflow_drops_oldest():
    sync = ApproximateTimeSync(["a", "b"], slop_s=0.001, queue_size=3)
    for i in range(5):
        sync.add("a", i * 100 * MS, f"a{i}")
    assert sync.stats["dropped_queue_full"] == 2 and sync.pending()["a"] == 3
    # a0 and a1 are gone: b at a1's stamp cannot match, a2 can
    sync.add("b", 100 * MS, "b1")
    out = sync.add("b", 200 * MS, "b2")
    assert [s.items for s in out] == [{"a": "a2", "b": "b2"}]


def test_counters_add_up():
    sync = ApproximateTimeSync(["a", "b"], slop_s=0.002, queue_size=2)
    events = [("a", 0), ("b", 0), ("a", 10), ("a", 20), ("a", 30), ("b", 29), ("b", 31), ("a", 1)]
    for name, t in events:
        sync.add(name, t * MS, t)
    sync.flush()
    st = sync.stats
    assert set(SYNC_COUNTERS) <= set(st)
    assert st["received"] == 8
    assert st["emitted"] == 2  # (0, 0) and (30, 29)
    assert st["dropped_queue_full"] == 1  # a10 pushed out by a30 (queue of 2)
    assert st["dropped_stale"] == 1  # a20 can never match b29
    assert st["dropped_out_of_order"] == 1  # a1 arrives after the (30, 29) set
    assert sync.pending() == {"a": 0, "b": 1}  # b31 still waits for a partner
    # every received item is accounted for
    consumed = 2 * st["emitted"]
    dropped = sum(v for k, v in st.items() if k.startswith("dropped_"))
    assert consumed + dropped + sum(sync.pending().values()) == st["received"]


def test_errors():
    with pytest.raises(ValueError, match="slop"):
        ApproximateTimeSync(["a", "b"], slop_s=-0.1)
    with pytest.raises(ValueError, match="duplicate"):
        ApproximateTimeSync(["a", "a"], slop_s=0.1)
    sync = ApproximateTimeSync(["a", "b"], slop_s=0.1)
    with pytest.raises(KeyError, match="unknown stream 'c'"):
        sync.add("c", 0, None)
    with pytest.raises(ValueError, match="integer"):
        sync.add("a", 0.5, None)


def test_thread_safe_concurrent_producers():
    n = 400
    sync = ApproximateTimeSync(["a", "b"], slop_s=0.0, queue_size=2 * n)
    results = []
    lock = threading.Lock()

    def producer(name):
        for i in range(1, n + 1):
            out = sync.add(name, i * MS, (name, i))
            with lock:
                results.extend(out)

    threads = [threading.Thread(target=producer, args=(s,)) for s in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.extend(sync.flush())
    assert len(results) == n
    assert sorted(s.stamp_ns for s in results) == [i * MS for i in range(1, n + 1)]
    assert all(s.items["a"][1] == s.items["b"][1] for s in results)
    assert sync.stats["emitted"] == n and sync.stats["dropped_stale"] == 0
