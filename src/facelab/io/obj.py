"""Wavefront OBJ meshes with UVs: polygons (quads, n-gons) are fan-triangulated, UV seams kept per corner."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facelab.errors import AssetFormatError


@dataclass
class ObjMesh:
    """A triangulated OBJ mesh.

    Attributes:
        verts: (V, 3) float64 positions.
        faces: (F, 3) int64 triangles (0-based), fan-triangulated from the file's polygons, winding kept.
        uv: (T, 2) float64 texture coordinates; (0, 2) when the file has none.
        faces_uv: (F, 3) int64 per-corner indices into ``uv``; (0, 3) when the file has none.
        polygon_ids: (F,) int64 index of the file polygon each triangle came from.
    """

    verts: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    faces_uv: np.ndarray
    polygon_ids: np.ndarray


def _parse_index(token: str, count: int, path: Path) -> tuple[int, int]:
    parts = token.split("/")
    try:
        v = int(parts[0])
        t = int(parts[1]) if len(parts) > 1 and parts[1] else 0
    except ValueError as err:
        raise AssetFormatError(f"{path}: bad face corner '{token}'") from err
    # OBJ indices are 1-based; negative ones count from the end.
    return (v - 1 if v > 0 else count + v), (t - 1 if t > 0 else (-1 if t == 0 else t))


def read_obj(path: str | os.PathLike) -> ObjMesh:
    """Read an OBJ file (``v``, ``vt`` and ``f`` records; others ignored)."""
    path = Path(path)
    verts, uvs, faces, faces_uv, poly_ids = [], [], [], [], []
    n_poly = 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith("v "):
                verts.append(line.split()[1:4])
            elif line.startswith("vt "):
                uvs.append(line.split()[1:3])
            elif line.startswith("f "):
                corners = [_parse_index(tok, len(verts), path) for tok in line.split()[1:]]
                if len(corners) < 3:
                    raise AssetFormatError(f"{path}: a face with fewer than 3 corners")
                for k in range(1, len(corners) - 1):
                    tri = (corners[0], corners[k], corners[k + 1])
                    faces.append([c[0] for c in tri])
                    faces_uv.append([c[1] for c in tri])
                    poly_ids.append(n_poly)
                n_poly += 1
    try:
        v = np.asarray(verts, dtype=np.float64).reshape(-1, 3)
        uv = np.asarray(uvs, dtype=np.float64).reshape(-1, 2)
    except ValueError as err:
        raise AssetFormatError(f"{path}: unreadable vertex or uv record ({err})") from err
    f = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    fuv = np.asarray(faces_uv, dtype=np.int64).reshape(-1, 3)
    if len(v) == 0 or len(f) == 0:
        raise AssetFormatError(f"{path}: no vertices or faces; not a mesh OBJ")
    if f.min() < 0 or f.max() >= len(v):
        raise AssetFormatError(f"{path}: face indices out of range for {len(v)} vertices")
    if len(uv) == 0 or (fuv < 0).any():
        uv, fuv = np.zeros((0, 2)), np.zeros((0, 3), dtype=np.int64)
    elif fuv.max() >= len(uv):
        raise AssetFormatError(f"{path}: uv indices out of range for {len(uv)} uv coordinates")
    return ObjMesh(v, f, uv, fuv, np.asarray(poly_ids, dtype=np.int64))


def read_obj_vertices(path: str | os.PathLike) -> np.ndarray:
    """(V, 3) float64: only the ``v`` records of an OBJ (fast path for blendshape folders of full meshes)."""
    path = Path(path)
    with open(path, "rb") as fh:
        lines = [ln[2:] for ln in fh if ln.startswith(b"v ")]
    try:
        return np.array(b" ".join(b" ".join(ln.split()[:3]) for ln in lines).split(), dtype=np.float64).reshape(-1, 3)
    except ValueError as err:
        raise AssetFormatError(f"{path}: unreadable vertex record ({err})") from err


def write_obj(
    path: str | os.PathLike,
    verts: np.ndarray,
    faces: np.ndarray,
    uv: np.ndarray | None = None,
    faces_uv: np.ndarray | None = None,
    mtl: str | None = None,
    material: str | None = None,
) -> None:
    """Write a triangle mesh as OBJ, with ``vt`` and ``f v/vt`` corners when UVs are given.

    Args:
        verts: (V, 3). faces: (F, 3) 0-based. uv: (T, 2). faces_uv: (F, 3) 0-based into ``uv``.
        mtl: optional material library file name to reference; material: the material to use.
    """
    verts = np.asarray(verts, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64) + 1
    lines = []
    if mtl:
        lines.append(f"mtllib {mtl}")
    lines.append("\n".join("v {:.8g} {:.8g} {:.8g}".format(*p) for p in verts))
    if uv is not None and faces_uv is not None and len(uv):
        lines.append("\n".join("vt {:.8g} {:.8g}".format(*t) for t in np.asarray(uv, dtype=np.float64)))
        if material:
            lines.append(f"usemtl {material}")
        fuv = np.asarray(faces_uv, dtype=np.int64) + 1
        lines.append("\n".join(f"f {a}/{ta} {b}/{tb} {c}/{tc}" for (a, b, c), (ta, tb, tc) in zip(faces, fuv)))
    else:
        lines.append("\n".join("f {} {} {}".format(*f) for f in faces))
    Path(path).write_text("\n".join(lines) + "\n")
