"""Reader for labelled PCD files (PCL's Point Cloud Data format, v0.7), e.g. the mOSD scenes.

Supports the three ``DATA`` encodings PCL writes: ``ascii``, ``binary`` (points
interleaved, little-endian) and ``binary_compressed`` (LZF-compressed, fields stored one
after another: all values of field 0, then all of field 1, ...). The LZF decoder is pure
Python (:func:`lzf_decompress`, ~0.3 s for a 640x480 Kinect cloud) so no compiled
dependency is needed.

Colour fields: ``rgba`` (``U`` 4 bytes, packed ``0xAARRGGBB``) or ``rgb`` (PCL's packed
colour, usually ``F`` 4 bytes holding the same bit pattern ``0x00RRGGBB``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["PCDCloud", "read_pcd", "lzf_decompress"]

_TYPES = {("F", 4): "<f4", ("F", 8): "<f8", ("U", 1): "<u1", ("U", 2): "<u2", ("U", 4): "<u4",
          ("U", 8): "<u8", ("I", 1): "<i1", ("I", 2): "<i2", ("I", 4): "<i4", ("I", 8): "<i8"}


@dataclass
class PCDCloud:
    """Points of one PCD file (NaN points dropped unless asked otherwise).

    Attributes:
        xyz: ``(N, 3) float32`` metres, in the file's frame (mOSD: camera optical frame).
        rgb: ``(N, 3) uint8`` or None when the file has no ``rgb``/``rgba`` field.
        label: ``(N,) int64`` or None when the file has no ``label`` field.
        index: ``(N,) int64`` row-major index of each kept point in the file
            (``row * width + col`` for organized clouds).
        width, height: the header's ``WIDTH`` and ``HEIGHT`` (``height > 1``: organized).
    """

    xyz: np.ndarray
    rgb: np.ndarray | None
    label: np.ndarray | None
    index: np.ndarray
    width: int
    height: int


def lzf_decompress(data: bytes, out_size: int) -> bytes:
    """Decompress an LZF block (liblzf format, as PCL writes it).

    Args:
        data: the compressed bytes.
        out_size: the exact decompressed size in bytes (stored in the PCD file).

    Returns:
        ``out_size`` bytes.

    Raises:
        ValueError: corrupt input (a back-reference before the start, a run past the end,
            or a decompressed size different from ``out_size``).
    """
    out = bytearray(out_size)
    ip, op, n = 0, 0, len(data)
    try:
        while ip < n:
            ctrl = data[ip]
            ip += 1
            if ctrl < 32:  # literal run of ctrl + 1 bytes
                ln = ctrl + 1
                out[op:op + ln] = data[ip:ip + ln]
                ip += ln
                op += ln
            else:  # back-reference
                ln = ctrl >> 5
                if ln == 7:
                    ln += data[ip]
                    ip += 1
                ref = op - ((ctrl & 0x1F) << 8) - data[ip] - 1
                ip += 1
                ln += 2
                if ref < 0:
                    raise ValueError("LZF: back-reference before the start of the output")
                dist = op - ref
                if dist >= ln:
                    out[op:op + ln] = out[ref:ref + ln]
                else:  # overlapping copy: repeat the last `dist` bytes
                    chunk = bytes(out[ref:op])
                    rep = (chunk * (ln // dist + 1))[:ln]
                    out[op:op + ln] = rep
                op += ln
    except IndexError as exc:
        raise ValueError("LZF: truncated input") from exc
    if op != out_size or len(out) != out_size:
        raise ValueError(f"LZF: decompressed {op} bytes, header says {out_size}")
    return bytes(out)


def _parse_header(fh) -> dict:
    hdr: dict = {}
    while True:
        raw = fh.readline()
        if not raw:
            raise ValueError("PCD: end of file inside the header (no DATA line)")
        line = raw.decode("ascii", errors="replace").strip()
        if not line or line.startswith("#"):
            continue
        key, *vals = line.split()
        hdr[key.upper()] = vals
        if key.upper() == "DATA":
            return hdr


def read_pcd(path: str | Path, drop_nan: bool = True) -> PCDCloud:
    """Read a PCD file with ``x y z`` and optionally ``rgb``/``rgba`` and ``label`` fields.

    Args:
        path: the ``.pcd`` file.
        drop_nan: drop points with a non-finite coordinate (organized clouds mark invalid
            pixels with NaN); ``False`` keeps all ``WIDTH * HEIGHT`` points.

    Returns:
        :class:`PCDCloud`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: malformed header, missing ``x``/``y``/``z``, an unsupported field type or
            ``DATA`` encoding, multi-count fields, or a data section of the wrong size.
    """
    path = Path(path)
    with path.open("rb") as fh:
        hdr = _parse_header(fh)
        body = fh.read()
    try:
        fields = hdr["FIELDS"]
        sizes = [int(s) for s in hdr["SIZE"]]
        types = [t.upper() for t in hdr["TYPE"]]
        counts = [int(c) for c in hdr.get("COUNT", ["1"] * len(fields))]
        width, height = int(hdr["WIDTH"][0]), int(hdr.get("HEIGHT", ["1"])[0])
        npts = int(hdr.get("POINTS", [str(width * height)])[0])
        data = hdr["DATA"][0].lower()
    except (KeyError, IndexError) as exc:
        raise ValueError(f"{path}: PCD header misses {exc}") from exc
    if not (len(fields) == len(sizes) == len(types) == len(counts)):
        raise ValueError(f"{path}: FIELDS/SIZE/TYPE/COUNT lengths differ")
    if any(c != 1 for c in counts):
        raise ValueError(f"{path}: fields with COUNT != 1 are not supported ({dict(zip(fields, counts))})")
    try:
        dtypes = [np.dtype(_TYPES[(t, s)]) for t, s in zip(types, sizes)]
    except KeyError as exc:
        raise ValueError(f"{path}: unsupported field type/size {exc}") from exc
    missing = {"x", "y", "z"} - set(fields)
    if missing:
        raise ValueError(f"{path}: PCD has no {sorted(missing)} field(s) (fields: {fields})")

    cols: dict[str, np.ndarray] = {}
    if data == "ascii":
        text = body.decode("ascii").split()
        if len(text) != npts * len(fields):
            raise ValueError(f"{path}: ascii data has {len(text)} values, expected {npts * len(fields)}")
        table = np.array(text, dtype=object).reshape(npts, len(fields)) if npts else np.zeros((0, len(fields)), object)
        for j, (name, dt) in enumerate(zip(fields, dtypes)):
            if dt.kind == "f":
                cols[name] = table[:, j].astype(np.float64).astype(dt)
            else:  # PCL writes packed colours of F fields as floats and ints as ints
                cols[name] = np.array([int(float(v)) for v in table[:, j]], dtype=np.int64).astype(dt)
    elif data == "binary":
        rec = np.dtype({"names": fields, "formats": dtypes})
        if len(body) < rec.itemsize * npts:
            raise ValueError(f"{path}: binary data has {len(body)} bytes, expected {rec.itemsize * npts}")
        arr = np.frombuffer(body, dtype=rec, count=npts)
        cols = {name: np.ascontiguousarray(arr[name]) for name in fields}
    elif data == "binary_compressed":
        if len(body) < 8:
            raise ValueError(f"{path}: binary_compressed data shorter than its 8-byte size header")
        csize, usize = struct.unpack("<II", body[:8])
        raw = lzf_decompress(body[8:8 + csize], usize)
        expected = sum(sizes) * npts
        if usize != expected:
            raise ValueError(f"{path}: decompressed {usize} bytes, expected {expected}")
        off = 0
        for name, dt in zip(fields, dtypes):
            cols[name] = np.frombuffer(raw, dtype=dt, count=npts, offset=off).copy()
            off += dt.itemsize * npts
    else:
        raise ValueError(f"{path}: unsupported PCD DATA encoding {data!r}")

    xyz = np.stack([cols["x"], cols["y"], cols["z"]], axis=1).astype(np.float32)
    rgb = None
    cname = "rgba" if "rgba" in cols else ("rgb" if "rgb" in cols else None)
    if cname is not None:
        c = cols[cname]
        packed = c.view(np.uint32) if c.dtype.itemsize == 4 else c.astype(np.uint32)
        rgb = np.stack([(packed >> 16) & 0xFF, (packed >> 8) & 0xFF, packed & 0xFF], axis=1).astype(np.uint8)
    label = cols["label"].astype(np.int64) if "label" in cols else None
    index = np.arange(npts, dtype=np.int64)
    if drop_nan:
        keep = np.isfinite(xyz).all(axis=1)
        xyz, index = xyz[keep], index[keep]
        rgb = rgb[keep] if rgb is not None else None
        label = label[keep] if label is not None else None
    return PCDCloud(xyz=xyz, rgb=rgb, label=label, index=index, width=width, height=height)
