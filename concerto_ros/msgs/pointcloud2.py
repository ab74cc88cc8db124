"""``sensor_msgs/PointCloud2`` <-> numpy, vectorised, without ``sensor_msgs_py``.

Reading (:func:`pointcloud2_to_array`, :func:`xyz_from_pointcloud2`) handles any field
layout: offsets, the eight ``PointField`` datatypes (INT8 .. FLOAT64), ``count > 1``,
padding inside ``point_step`` and at row ends (``row_step``), and big-endian data.

Writing (:func:`fill_pointcloud2`) produces the project's output layout (see
``docs/architecture.md``): ``x y z`` FLOAT32, ``rgb`` FLOAT32 carrying the packed
``0x00RRGGBB`` bits (what RViz and PCL expect), ``label`` UINT32, ``confidence``
FLOAT32, then one field per extra array (``count = D`` for ``(N, D)`` features);
``height = 1``, ``is_dense = True``, little endian, non-finite points dropped.

Messages are duck-typed: rclpy (``msg.data`` an ``array.array('B')``, ``fields`` a list
of ``sensor_msgs.msg.PointField``) or rosbags dataclasses (``msg.data`` a ``uint8``
``np.ndarray``). ``PointField`` objects are created by the caller-provided
``field_factory`` (either class), so nothing here imports ROS.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from concerto_ros.msgs.image import set_uint8_data, uint8_bytes
from concerto_ros.msgs.transforms import set_stamp

__all__ = [
    "INT8",
    "UINT8",
    "INT16",
    "UINT16",
    "INT32",
    "UINT32",
    "FLOAT32",
    "FLOAT64",
    "DATATYPE_TO_DTYPE",
    "FieldSpec",
    "FieldError",
    "cloud_field_problem",
    "cloud_layout_problem",
    "pack_rgb",
    "unpack_rgb",
    "pointcloud2_dtype",
    "pointcloud2_to_array",
    "xyz_from_pointcloud2",
    "build_pointcloud2_fields",
    "array_to_pointcloud2_data",
    "fill_pointcloud2",
]

# sensor_msgs/PointField datatype constants
INT8, UINT8, INT16, UINT16, INT32, UINT32, FLOAT32, FLOAT64 = 1, 2, 3, 4, 5, 6, 7, 8

#: PointField datatype -> numpy dtype (native order; byte order applied per message)
DATATYPE_TO_DTYPE: dict[int, np.dtype] = {
    INT8: np.dtype(np.int8),
    UINT8: np.dtype(np.uint8),
    INT16: np.dtype(np.int16),
    UINT16: np.dtype(np.uint16),
    INT32: np.dtype(np.int32),
    UINT32: np.dtype(np.uint32),
    FLOAT32: np.dtype(np.float32),
    FLOAT64: np.dtype(np.float64),
}
_DTYPE_TO_DATATYPE = {(dt.kind, dt.itemsize): code for code, dt in DATATYPE_TO_DTYPE.items()}


class FieldSpec(NamedTuple):
    """One PointField as plain values: ``name``, byte ``offset``, ``datatype`` code, ``count``."""

    name: str
    offset: int
    datatype: int
    count: int


class FieldError(ValueError):
    """A PointCloud2 field the decoder cannot use (wrong datatype or count for its name)."""


#: fields whose meaning fixes their layout: name -> (allowed datatypes, description)
_FIELD_RULES = {
    "x": (set(DATATYPE_TO_DTYPE), "a number"),
    "y": (set(DATATYPE_TO_DTYPE), "a number"),
    "z": (set(DATATYPE_TO_DTYPE), "a number"),
    "rgb": ({FLOAT32, UINT32, INT32}, "4 packed bytes (FLOAT32 or UINT32)"),
    "rgba": ({FLOAT32, UINT32, INT32}, "4 packed bytes (FLOAT32 or UINT32)"),
    "intensity": (set(DATATYPE_TO_DTYPE), "a number"),
    "label": ({INT8, UINT8, INT16, UINT16, INT32, UINT32}, "an integer"),
}


def cloud_field_problem(fields: Sequence[Any]) -> str | None:
    """Why a PointField list cannot be decoded as a point cloud, or ``None``.

    Checks every datatype code (1..8), the presence of ``x y z``, and for the fields whose
    name fixes their meaning (``x y z rgb rgba intensity label``) a count of 1 (0 is read
    as 1) and a datatype that fits (``rgb`` must be 4 packed bytes, ``label`` an integer).
    Other fields may have any layout.
    """
    specs = [_field_values(f) for f in fields]
    for spec in specs:
        if spec.datatype not in DATATYPE_TO_DTYPE:
            return f"field {spec.name!r} has unknown datatype {spec.datatype} (expected 1..8)"
        if spec.count < 0 or spec.offset < 0:
            return f"field {spec.name!r} has offset {spec.offset} and count {spec.count}"
        rule = _FIELD_RULES.get(spec.name)
        if rule is None:
            continue
        allowed, what = rule
        if spec.count > 1:
            return f"field {spec.name!r} has count {spec.count}; expected 1 ({what})"
        if spec.datatype not in allowed:
            return (f"field {spec.name!r} has datatype {spec.datatype} "
                    f"({DATATYPE_TO_DTYPE[spec.datatype]}); expected {what}")
    missing = [c for c in "xyz" if c not in {s.name for s in specs}]
    if missing:
        return f"no field(s) {missing}; fields are {[s.name for s in specs]}"
    return None


# --------------------------------------------------------------------------- rgb packing
def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """Pack ``(N, 3) uint8`` RGB into ``(N,) float32`` whose bits are ``0x00RRGGBB``.

    This is the PCL/RViz ``rgb`` field. The floats are bit patterns, not numbers (they
    are tiny/denormal); never do arithmetic on them.

    Raises:
        ValueError: shape is not ``(N, 3)`` or dtype is not ``uint8``.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 2 or rgb.shape[1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be (N, 3) uint8, got {rgb.shape} {rgb.dtype}")
    c = rgb.astype(np.uint32)
    packed = (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]
    return packed.astype("<u4").view("<f4").astype(np.float32, copy=False)


def unpack_rgb(packed: np.ndarray) -> np.ndarray:
    """Unpack ``(N,) float32`` (bits ``0x??RRGGBB``) or ``uint32`` to ``(N, 3) uint8`` RGB.

    The top byte (alpha in ``rgba`` fields) is ignored. Either byte order is accepted.

    Raises:
        ValueError: the dtype is not 4 bytes wide.
    """
    bits = _as_uint32_bits(np.asarray(packed).reshape(-1))
    out = np.empty((bits.shape[0], 3), dtype=np.uint8)
    out[:, 0] = (bits >> 16) & 0xFF
    out[:, 1] = (bits >> 8) & 0xFF
    out[:, 2] = bits & 0xFF
    return out


def _as_uint32_bits(values: np.ndarray) -> np.ndarray:
    """Reinterpret 4-byte values (any kind, any byte order) as native ``uint32`` bits."""
    if values.dtype.itemsize != 4:
        raise ValueError(f"packed rgb must be 4-byte float32/uint32, got {values.dtype}")
    order = ">" if values.dtype.byteorder == ">" else "<" if values.dtype.byteorder == "<" else "="
    return np.ascontiguousarray(values).view(np.dtype("u4").newbyteorder(order)).astype(np.uint32)


# --------------------------------------------------------------------------- reading
def _field_values(field: Any) -> FieldSpec:
    if isinstance(field, (tuple, list)):
        name, offset, datatype, count = field
    else:
        name, offset, datatype, count = field.name, field.offset, field.datatype, field.count
    return FieldSpec(str(name), int(offset), int(datatype), int(count))


def pointcloud2_dtype(
    fields: Sequence[Any], point_step: int, is_bigendian: bool = False
) -> np.dtype:
    """Structured numpy dtype of one point for a PointField list.

    Args:
        fields: ``PointField`` objects (rclpy or rosbags) or ``(name, offset, datatype,
            count)`` tuples.
        point_step: bytes per point (``itemsize`` of the dtype; covers padding).
        is_bigendian: byte order of the data.

    Returns:
        A dtype with one entry per field name at its offset; ``count > 1`` becomes a
        sub-array ``(count,)``; ``count == 0`` is read as 1. A repeated name (PCL's
        ``_`` padding fields) keeps its first occurrence; unnamed fields are skipped.

    Raises:
        ValueError: unknown datatype, or a field extending past ``point_step``.
    """
    order = ">" if is_bigendian else "<"
    names, formats, offsets = [], [], []
    for f in fields:
        spec = _field_values(f)
        if spec.datatype not in DATATYPE_TO_DTYPE:
            raise ValueError(
                f"PointField {spec.name!r} has unknown datatype {spec.datatype} "
                "(expected 1..8: INT8 UINT8 INT16 UINT16 INT32 UINT32 FLOAT32 FLOAT64)"
            )
        if not spec.name or spec.name in names:
            continue
        count = max(spec.count, 1)
        base = DATATYPE_TO_DTYPE[spec.datatype].newbyteorder(order)
        end = spec.offset + base.itemsize * count
        if end > point_step:
            raise ValueError(
                f"PointField {spec.name!r} (offset {spec.offset}, {count} x {base.itemsize} "
                f"bytes) extends past point_step {point_step}"
            )
        names.append(spec.name)
        formats.append(base if count == 1 else (base, (count,)))
        offsets.append(spec.offset)
    return np.dtype(
        {"names": names, "formats": formats, "offsets": offsets, "itemsize": point_step}
    )


def _size_problem(msg: Any) -> str | None:
    height, width = int(msg.height), int(msg.width)
    point_step, row_step = int(msg.point_step), int(msg.row_step)
    if height < 0 or width < 0 or point_step < 0:
        return f"PointCloud2 has height {height}, width {width}, point_step {point_step}"
    if row_step < width * point_step:
        return f"PointCloud2 row_step {row_step} < width*point_step = {width}*{point_step}"
    if len(msg.data) < height * row_step:
        return (f"PointCloud2 data has {len(msg.data)} bytes, expected height*row_step = "
                f"{height}*{row_step} = {height * row_step}")
    return None


def cloud_layout_problem(msg: Any) -> tuple[str, str] | None:
    """Why a ``PointCloud2`` cannot be decoded, as ``(kind, description)``, or ``None``.

    ``kind`` is ``"field"`` for a field that cannot mean what its name says (see
    :func:`cloud_field_problem`) and ``"layout"`` for offsets past ``point_step``,
    ``row_step`` or a data size that disagree. Reads the header fields only (cheap enough
    for a subscription callback).
    """
    problem = cloud_field_problem(msg.fields)
    if problem is not None:
        return "field", f"PointCloud2 {problem}"
    try:
        pointcloud2_dtype(msg.fields, int(msg.point_step), bool(msg.is_bigendian))
    except ValueError as exc:
        return "layout", str(exc)
    problem = _size_problem(msg)
    return None if problem is None else ("layout", problem)


def pointcloud2_to_array(msg: Any, organized: bool = False) -> np.ndarray:
    """Decode a ``PointCloud2`` to a structured array (a copy, native byte order).

    Args:
        msg: rclpy or rosbags ``PointCloud2``.
        organized: return ``(height, width)`` instead of flat ``(height * width,)``.

    Returns:
        Structured array with one named entry per field (see :func:`pointcloud2_dtype`),
        values in native byte order; padding bytes are dropped.

    Raises:
        ValueError: unknown datatype, a field past ``point_step``, ``row_step <
            width * point_step``, or ``data`` shorter than ``height * row_step``.
    """
    height, width = int(msg.height), int(msg.width)
    point_step, row_step = int(msg.point_step), int(msg.row_step)
    big = bool(msg.is_bigendian)
    dtype = pointcloud2_dtype(msg.fields, point_step, big)
    problem = _size_problem(msg)
    if problem is not None:
        raise ValueError(problem)
    buf = uint8_bytes(msg.data)
    n = height * width
    if n == 0:
        flat = np.zeros(0, dtype=dtype)
    elif row_step == width * point_step:
        flat = np.ascontiguousarray(buf[: n * point_step]).view(dtype)
    else:
        rows = buf[: height * row_step].reshape(height, row_step)[:, : width * point_step]
        rows = np.ascontiguousarray(rows)
        flat = rows.reshape(-1).view(dtype)
    # drop padding and convert to native order in one copy
    native = np.dtype(
        {
            "names": list(dtype.names),
            "formats": [_native(dtype.fields[name][0]) for name in dtype.names],
        }
    )
    out = np.empty(flat.shape, dtype=native)
    for name in dtype.names:
        out[name] = flat[name]
    return out.reshape(height, width) if organized else out


def _native(dt: np.dtype) -> np.dtype:
    if dt.subdtype is not None:
        base, shape = dt.subdtype
        return np.dtype((base.newbyteorder("="), shape))
    return dt.newbyteorder("=")


def xyz_from_pointcloud2(
    msg: Any, drop_nonfinite: bool = True
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Points and per-point attributes of a ``PointCloud2``.

    Args:
        msg: rclpy or rosbags ``PointCloud2`` with ``x``, ``y``, ``z`` fields (any
            numeric datatype), in the frame ``msg.header.frame_id``.
        drop_nonfinite: drop points whose x, y or z is NaN/inf (the attributes are
            filtered alike). With False, ``N = height * width`` in row-major order.

    Returns:
        ``(points, extras)``: ``points`` ``(N, 3) float32`` metres; ``extras`` maps
        field names to ``(N,)`` or ``(N, count)`` arrays:

        * ``rgb`` -> ``(N, 3) uint8`` decoded from a packed ``rgb`` or ``rgba`` field
          (FLOAT32 or UINT32 bits ``0x??RRGGBB``);
        * ``intensity`` and ``confidence`` -> ``float32``;
        * ``label`` -> ``int32``;
        * every other field keeps its own dtype (native byte order).

    Raises:
        FieldError: a field that cannot mean what its name says (see
            :func:`cloud_field_problem`), or no ``x``/``y``/``z`` field.
        ValueError: a malformed layout (see :func:`pointcloud2_to_array`).
    """
    problem = cloud_field_problem(msg.fields)
    if problem is not None:
        raise FieldError(f"PointCloud2 {problem}")
    arr = pointcloud2_to_array(msg)
    names = arr.dtype.names or ()
    missing = [c for c in "xyz" if c not in names]
    if missing:
        raise ValueError(f"PointCloud2 has no field(s) {missing}; fields are {list(names)}")
    points = np.empty((arr.shape[0], 3), dtype=np.float32)
    for i, c in enumerate("xyz"):
        points[:, i] = arr[c]
    keep = None
    if drop_nonfinite:
        finite = np.isfinite(points).all(axis=1)
        if not finite.all():
            keep = finite
            points = points[keep]
    extras: dict[str, np.ndarray] = {}
    for name in names:
        if name in ("x", "y", "z"):
            continue
        values = arr[name] if keep is None else arr[name][keep]
        if name in ("rgb", "rgba") and values.ndim == 1 and values.dtype.itemsize == 4:
            if "rgb" not in extras:
                extras["rgb"] = unpack_rgb(values)
            continue
        if name in ("intensity", "confidence"):
            values = values.astype(np.float32, copy=False)
        elif name == "label":
            values = values.astype(np.int32, copy=False)
        extras[name] = np.ascontiguousarray(values)
    return points, extras


# --------------------------------------------------------------------------- writing
def _dtype_to_datatype(dt: np.dtype, name: str) -> int:
    key = (np.dtype(dt).kind, np.dtype(dt).itemsize)
    if key not in _DTYPE_TO_DATATYPE:
        raise ValueError(
            f"field {name!r}: dtype {np.dtype(dt)} has no PointField datatype "
            "(use int8/uint8/int16/uint16/int32/uint32/float32/float64)"
        )
    return _DTYPE_TO_DATATYPE[key]


def build_pointcloud2_fields(
    fields_spec: Sequence[tuple[str, Any, int]],
) -> tuple[list[FieldSpec], int]:
    """Lay out fields one after another, each aligned to its item size.

    Args:
        fields_spec: ``(name, dtype_or_datatype_code, count)`` per field, in order;
            the type is a numpy dtype (``np.float32``) or a PointField code (``7``).

    Returns:
        ``(fields, point_step)``: :class:`FieldSpec` per field with its byte offset,
        and the bytes per point (rounded up to the largest item size).

    Raises:
        ValueError: duplicate name, unsupported dtype, or ``count < 1``.
    """
    out: list[FieldSpec] = []
    offset, align = 0, 1
    seen = set()
    for name, typ, count in fields_spec:
        if name in seen:
            raise ValueError(f"duplicate PointField name {name!r}")
        seen.add(name)
        if int(count) < 1:
            raise ValueError(f"field {name!r}: count must be >= 1, got {count}")
        code = int(typ) if isinstance(typ, (int, np.integer)) else _dtype_to_datatype(typ, name)
        if code not in DATATYPE_TO_DTYPE:
            raise ValueError(f"field {name!r}: unknown PointField datatype {code}")
        size = DATATYPE_TO_DTYPE[code].itemsize
        offset = -(-offset // size) * size
        out.append(FieldSpec(str(name), offset, code, int(count)))
        offset += size * int(count)
        align = max(align, size)
    point_step = -(-offset // align) * align
    return out, point_step


def array_to_pointcloud2_data(
    points: np.ndarray, **fields: np.ndarray
) -> tuple[list[FieldSpec], int, bytes]:
    """Serialise points and per-point fields into PointCloud2 little-endian bytes.

    Args:
        points: ``(N, 3)`` float, written as ``x y z`` FLOAT32 metres.
        **fields: ``name -> (N,)`` or ``(N, D)`` array, written in keyword order with
            the array's dtype (``(N, D)`` gives ``count = D``). A ``rgb`` given as
            ``(N, 3) uint8`` is packed to the FLOAT32 ``0x00RRGGBB`` field.

    Returns:
        ``(fields, point_step, data)``: :class:`FieldSpec` list, bytes per point, and
        ``N * point_step`` bytes. No point is dropped here.

    Raises:
        ValueError: wrong shapes, length mismatch, unsupported dtype.
    """
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must be (N, 3), got {pts.shape}")
    n = pts.shape[0]
    columns: list[tuple[str, np.ndarray]] = [
        ("x", pts[:, 0].astype(np.float32)),
        ("y", pts[:, 1].astype(np.float32)),
        ("z", pts[:, 2].astype(np.float32)),
    ]
    for name, values in fields.items():
        v = np.asarray(values)
        if name == "rgb" and v.ndim == 2 and v.shape[1] == 3 and v.dtype == np.uint8:
            v = pack_rgb(v)
        if v.ndim not in (1, 2) or v.shape[0] != n:
            raise ValueError(f"field {name!r} must be (N,) or (N, D) with N={n}, got {v.shape}")
        if v.dtype == np.bool_:
            v = v.astype(np.uint8)
        columns.append((name, v))
    specs, point_step = build_pointcloud2_fields(
        [(name, v.dtype, 1 if v.ndim == 1 else v.shape[1]) for name, v in columns]
    )
    dtype = pointcloud2_dtype(specs, point_step, is_bigendian=False)
    out = np.zeros(n, dtype=dtype)
    for (name, v), spec in zip(columns, specs, strict=True):
        out[name] = v.astype(DATATYPE_TO_DTYPE[spec.datatype].newbyteorder("<"), copy=False)
    return specs, point_step, out.tobytes()


def _uint32_labels(label: Any) -> np.ndarray:
    """``(N,)`` integer labels as ``uint32`` (signed ones reinterpreted bitwise from int32).

    Raises:
        ValueError: not ``(N,)`` integers, or out of the int32/uint32 range.
    """
    lab = np.asarray(label)
    if lab.ndim != 1 or lab.dtype.kind not in "iub":
        raise ValueError(f"label must be (N,) integers, got {lab.shape} {lab.dtype}")
    if lab.dtype.kind == "i":
        if lab.size and (lab.min() < -(2**31) or lab.max() >= 2**31):
            raise ValueError("signed labels must fit in int32")
        return lab.astype(np.int32).view(np.uint32)
    if lab.size and lab.max() >= 2**32:
        raise ValueError("labels must fit in uint32")
    return lab.astype(np.uint32)


def _output_columns(n: int, keep: np.ndarray | None, rgb, label, confidence,
                    extra: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """The per-point columns of :func:`fill_pointcloud2` in field order, each checked to have
    ``n`` rows and reduced to the rows ``keep`` (None: all rows kept).

    Raises:
        ValueError: a wrong shape or row count, a bad label, or a name clash.
    """

    def select(name: str, v: np.ndarray) -> np.ndarray:
        if v.shape[0] != n:
            raise ValueError(f"{name} has {v.shape[0]} rows, points has {n}")
        return v if keep is None else v[keep]

    columns: dict[str, np.ndarray] = {}
    if rgb is not None:
        columns["rgb"] = select("rgb", np.asarray(rgb))
    if label is not None:
        columns["label"] = select("label", _uint32_labels(label))
    if confidence is not None:
        conf = np.asarray(confidence, dtype=np.float32)
        if conf.ndim != 1:
            raise ValueError(f"confidence must be (N,), got {conf.shape}")
        columns["confidence"] = select("confidence", conf)
    for name, values in (extra or {}).items():
        if name in columns or name in ("x", "y", "z"):
            raise ValueError(f"extra field {name!r} clashes with a standard field")
        v = np.asarray(values)
        if not (v.dtype.kind in "iu" and v.dtype.itemsize <= 4):
            v = v.astype(np.float32)
        if v.ndim not in (1, 2):
            raise ValueError(f"extra field {name!r} must be (N,) or (N, D), got {v.shape}")
        columns[name] = select(name, v)
    return columns


def fill_pointcloud2(
    msg: Any,
    field_factory: Callable[..., Any],
    stamp_ns: int,
    frame_id: str,
    points: np.ndarray,
    rgb: np.ndarray | None = None,
    label: np.ndarray | None = None,
    confidence: np.ndarray | None = None,
    extra: Mapping[str, np.ndarray] | None = None,
) -> Any:
    """Fill a ``PointCloud2`` (rclpy or rosbags) in the project's output layout, in place.

    Args:
        msg: the message to fill (header, layout and data are overwritten).
        field_factory: the ``PointField`` class to instantiate (rclpy
            ``sensor_msgs.msg.PointField`` or the rosbags typestore class); called
            as ``field_factory(name=, offset=, datatype=, count=)``.
        stamp_ns: header stamp, int nanoseconds.
        frame_id: frame of ``points`` (e.g. the fixed frame ``odom``).
        points: ``(N, 3)`` float metres; rows with a non-finite coordinate are dropped
            (together with their attributes) so that ``is_dense = True`` holds.
        rgb: ``(N, 3) uint8`` -> ``rgb`` FLOAT32 with bits ``0x00RRGGBB``.
        label: ``(N,)`` integer class ids -> ``label`` UINT32; signed input is
            reinterpreted bitwise (``-1`` becomes ``0xFFFFFFFF``, which reads back as
            ``-1`` as int32).
        confidence: ``(N,)`` -> ``confidence`` FLOAT32 in [0, 1].
        extra: ``name -> (N,) or (N, D)`` -> FLOAT32 field with ``count = 1`` or ``D``
            (e.g. ``{"feature": (N, 64)}``), in the mapping's order; integer arrays of at
            most 4 bytes keep their type (e.g. ``uint32`` observation counts -> UINT32).

    Returns:
        ``msg``, with ``height = 1``, ``width = kept points``, ``is_bigendian = False``,
        ``is_dense = True``, ``row_step = width * point_step``.

    Raises:
        ValueError: bad shapes or lengths, a name clash, or an out-of-range label.
    """
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must be (N, 3), got {pts.shape}")
    keep = np.isfinite(pts).all(axis=1)
    all_valid = bool(keep.all())
    columns = _output_columns(pts.shape[0], None if all_valid else keep, rgb, label, confidence, extra)
    kept = pts if all_valid else pts[keep]
    specs, point_step, data = array_to_pointcloud2_data(kept, **columns)
    set_stamp(msg.header, stamp_ns, frame_id)
    msg.height = 1
    msg.width = int(kept.shape[0])
    msg.fields = [
        field_factory(name=s.name, offset=s.offset, datatype=s.datatype, count=s.count)
        for s in specs
    ]
    msg.is_bigendian = False
    msg.point_step = int(point_step)
    msg.row_step = int(point_step * kept.shape[0])
    set_uint8_data(msg, data)
    msg.is_dense = True
    return msg
