"""The synthetic stand-in for Deep3DFaceRecon's ``BFM_model_front.mat``, cut from the procedural head.

What makes it BFM-like:
- **the front of the face only**: the head's ``face`` region (no eyeballs, ears, neck or scalp), cropped like BFM's
  front model to ~3 cm above the brows and to the cheeks in front of the jaw contour, then refined by Loop
  subdivision (the positions *and* every basis column go through the same linear subdivision operator, so the
  bases stay smooth) to ~22k vertices for ``size="full"`` (BFM front: 35,709; the file stays under ~60 MB) or
  ~100 for ``"tiny"``;
- **Deep3DFaceRecon's units**: decimetres (BFM 2009's micrometres / 1e5), bases scaled to one standard deviation;
- **80 identity components** (the head's identity basis), **64 expression components** (a jaw-opening mode first,
  since BFM has no jaw joint, then the head's localized expression basis), **80 albedo components** around a
  smooth procedural skin albedo (0..255), ``keypoints`` = the mesh vertices nearest to the head's 68 iBUG landmarks,
  and the ``skinmask`` / ``frontmask2_idx`` / ``tri_mask2`` extras;
- **UVs** as 3DMMasSTN ships them for BFM: a ``BFM_UV.mat`` beside the model (key ``UV``, one row per vertex, v
  up). The layout is the procedural head's own (seam-free over the face: its cylindrical grid parametrisation,
  the one the FLAME and FaceScape stand-ins use), carried through the crop and through the subdivision by
  midpoint interpolation (each UV triangle splits into four similar ones, so no triangle flips or overlaps), then
  scaled uniformly into the unit square.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import scipy.sparse
import scipy.spatial

from facelab.morphable.bfm import BFM_MAT_NAME, BFM_UV_NAME, SYNTHETIC_JAW_OPEN_RAD, write_bfm_mat, write_bfm_uv
from facelab.morphable.synthetic.head import HeadGeometry, build_head

NUM_ID, NUM_EXP, NUM_TEX = 80, 64, 80
M_TO_DM = 10.0
#: Smallest vertex count each size subdivides to (and the largest the full size may reach).
_MIN_VERTS = {"full": 20000, "tiny": 50}
_UV_MARGIN = 0.02  # border left around the UV layout in the unit square


def write_synthetic_bfm(out_dir: str | os.PathLike, seed: int = 0, size: str = "full") -> Path:
    """Write ``BFM_model_front.mat`` of the procedural head, and its ``BFM_UV.mat``, into ``out_dir``.

    Args:
        out_dir: destination folder (created if needed).
        seed: generator seed (head proportions, random basis parts, albedo); equal seeds give equal files.
        size: ``"full"`` (~22k vertices, ~58 MB) or ``"tiny"`` (~100 vertices).

    Returns:
        The path of the written ``.mat``.
    """
    if size not in _MIN_VERTS:
        raise ValueError(f"unknown size {size!r}; choose 'full' or 'tiny'")
    head = build_head(size, seed, n_identity=NUM_ID, n_expression=NUM_EXP - 1)
    fields = _head_fields(head)
    verts, faces, fields, uv = _face_patch(head, fields, crop=size == "full")
    while len(verts) < _MIN_VERTS[size]:
        sub, new_faces = loop_subdivision(faces, len(verts))
        uv = loop_subdivision(faces, len(verts), smooth=False)[0] @ uv
        verts, fields, faces = sub @ verts, sub @ fields, new_faces
    write_bfm_uv(Path(out_dir) / BFM_UV_NAME, _fit_unit_square(uv, _UV_MARGIN))
    n = len(verts)
    id_base = fields[:, : 3 * NUM_ID].reshape(n, NUM_ID, 3).transpose(0, 2, 1)
    exp_base = fields[:, 3 * NUM_ID :].reshape(n, NUM_EXP, 3).transpose(0, 2, 1)
    keypoints = _nearest_vertices(verts, head.landmarks)
    rng = np.random.default_rng([seed, 7])
    mean_tex, skin = _skin_albedo(verts, head)
    tex_base = _albedo_basis(verts, rng)
    return write_bfm_mat(
        Path(out_dir) / BFM_MAT_NAME,
        mean_shape=verts * M_TO_DM,
        id_base=id_base * M_TO_DM,
        exp_base=exp_base * M_TO_DM,
        mean_tex=mean_tex,
        tex_base=tex_base,
        faces=faces,
        keypoints=keypoints,
        skin_mask=skin,
        front_mask=_front_mask(verts, head.landmarks),
    )


def _head_fields(head: HeadGeometry) -> np.ndarray:
    """(V, 3 (K_id + K_exp)) per-vertex basis values, identity then [jaw opening, head expressions]."""
    n = head.num_verts
    exp = np.concatenate([jaw_open_mode(head, SYNTHETIC_JAW_OPEN_RAD)[..., None], head.expression_basis], axis=2)
    return np.concatenate([head.identity_basis.transpose(0, 2, 1).reshape(n, -1),
                           exp.transpose(0, 2, 1).reshape(n, -1)], axis=1)


def jaw_open_mode(head: HeadGeometry, angle: float, smoothing: int = 8) -> np.ndarray:
    """(V, 3) displacement of opening the jaw by ``angle`` radians about the jaw hinge (the x axis through it).

    The jaw weight is 1 on the face below the mouth and on the lower lip, 0 elsewhere (upper lip, neck, scalp,
    eyeballs), then smoothed over the mesh (``smoothing`` rounds of neighbour averaging, the lips held fixed), so
    cheeks and the skin under the chin stretch instead of tearing. (The head's own expression basis has no jaw
    opening: FLAME opens the jaw with a joint, BFM and FaceScape need it as a blendshape.)
    """
    v = head.verts
    n = len(v)
    upper, lower = head.mouth_slit
    mouth_y = v[np.concatenate([upper, lower]), 1].mean()
    weight = np.zeros(n)
    weight[head.regions["face"]] = (v[head.regions["face"], 1] < mouth_y).astype(np.float64)
    fixed = (head.lip_side != 0) | np.isin(np.arange(n), np.concatenate(
        [head.regions["left_eyeball"], head.regions["right_eyeball"]]))
    weight[head.lip_side < 0], weight[head.lip_side > 0], weight[fixed & (head.lip_side == 0)] = 1.0, 0.0, 0.0
    f = head.faces
    adj = scipy.sparse.coo_matrix((np.ones(6 * len(f)), (np.concatenate([f[:, 0], f[:, 1], f[:, 2]] * 2),
                                   np.concatenate([f[:, 1], f[:, 2], f[:, 0], f[:, 2], f[:, 0], f[:, 1]]))),
                                  shape=(n, n)).tocsr()
    adj.data[:] = 1.0
    degree = np.maximum(np.asarray(adj.sum(axis=1)).ravel(), 1.0)
    for _ in range(smoothing):
        weight = np.where(fixed, weight, 0.5 * weight + 0.5 * (adj @ weight) / degree)
    c, s = np.cos(angle), np.sin(angle)
    rel = v - head.joints[2]
    rotated = np.stack([rel[:, 0], c * rel[:, 1] - s * rel[:, 2], s * rel[:, 1] + c * rel[:, 2]], axis=1)
    return weight[:, None] * (rotated - rel)


def _face_patch(head: HeadGeometry, fields: np.ndarray, crop: bool):
    """The head's face region (cropped like BFM's front model when ``crop``), as a compact mesh.

    Returns:
        verts (N, 3), faces (F, 3), fields (N, C) and the head's UVs per vertex (N, 2) (the face region has no UV
        seam: every vertex has one UV).
    """
    v = head.verts
    keep = np.zeros(len(v), dtype=bool)
    keep[head.regions["face"]] = True
    if crop:
        lm = head.landmarks
        brow_top = lm[17:27, 1].max()
        contour_x, contour_z = np.abs(lm[[0, 16], 0]).mean(), lm[[0, 16], 2].mean()
        keep &= v[:, 1] < brow_top + 0.026
        keep &= (np.abs(v[:, 0]) < 0.9 * contour_x) | (v[:, 2] > contour_z - 0.004)
    inside = keep[head.faces].all(axis=1)
    faces, faces_uv = head.faces[inside], head.faces_uv[inside]
    used = np.unique(faces)
    new_id = np.full(len(v), -1, dtype=np.int64)
    new_id[used] = np.arange(len(used))
    uv = np.zeros((len(v), 2))
    uv[faces.reshape(-1)] = head.uv[faces_uv.reshape(-1)]
    if not np.allclose(uv[faces.reshape(-1)], head.uv[faces_uv.reshape(-1)]):
        raise RuntimeError("the head's face region has a UV seam; the BFM stand-in needs one UV per vertex")
    return v[used], new_id[faces], fields[used], uv[used]


def _fit_unit_square(uv: np.ndarray, margin: float) -> np.ndarray:
    """(N, 2) UVs scaled uniformly (aspect kept) and centred into [margin, 1 - margin]^2."""
    lo, hi = uv.min(axis=0), uv.max(axis=0)
    scale = (1.0 - 2.0 * margin) / (hi - lo).max()
    return 0.5 + (uv - 0.5 * (lo + hi)) * scale


def loop_subdivision(faces: np.ndarray, num_verts: int, smooth: bool = True
                     ) -> tuple[scipy.sparse.csr_matrix, np.ndarray]:
    """One step of Loop subdivision (Loop 1987) as a linear operator, with the boundary rules of Hoppe et al. 1994.

    Args:
        faces: (F, 3) triangles, 0-based.
        num_verts: V.
        smooth: False gives the same topology with linear (midpoint) weights instead: old vertices kept, each edge
            vertex the mean of its endpoints (for quantities that must not be smoothed, such as UVs).

    Returns:
        ``S`` (V + E, V) sparse with ``new_values = S @ values`` for any per-vertex quantity (old vertices first,
        then one vertex per edge), and the (4F, 3) new triangles (winding kept).
    """
    faces = np.asarray(faces, dtype=np.int64)
    half = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])  # (3F, 2) edge k of face f
    opposite = np.concatenate([faces[:, 2], faces[:, 0], faces[:, 1]])
    key = np.sort(half, axis=1)
    edges, edge_of = np.unique(key, axis=0, return_inverse=True)
    edge_of = edge_of.reshape(-1)
    n_edges = len(edges)
    n_adj = np.bincount(edge_of, minlength=n_edges)
    boundary = n_adj == 1

    rows, cols, vals = [], [], []

    def add(r, c, w):
        rows.append(np.asarray(r)), cols.append(np.asarray(c)), vals.append(np.broadcast_to(w, np.shape(r)))

    # edge points: 3/8 of each endpoint + 1/8 of each opposite vertex; 1/2 + 1/2 on the boundary (and unsmoothed)
    e_rows = num_verts + np.arange(n_edges)
    linear = np.ones(n_edges, dtype=bool) if not smooth else boundary
    add(np.repeat(e_rows, 2), edges.reshape(-1), np.repeat(np.where(linear, 0.5, 0.375), 2))
    if not smooth:
        add(np.arange(num_verts), np.arange(num_verts), 1.0)
        return _assemble(rows, cols, vals, faces, edge_of, num_verts, n_edges)
    interior_half = ~boundary[edge_of]
    add(num_verts + edge_of[interior_half], opposite[interior_half], 0.125)

    # vertex points: (1 - n beta) v + beta sum(neighbours); on the boundary 3/4 v + 1/8 per boundary neighbour
    nbr = np.concatenate([edges, edges[:, ::-1]])  # (2E, 2) directed: vertex -> neighbour
    nbr_boundary = np.concatenate([boundary, boundary])
    valence = np.bincount(nbr[:, 0], minlength=num_verts).astype(np.float64)
    n_bnd = np.bincount(nbr[nbr_boundary, 0], minlength=num_verts)
    on_boundary = n_bnd > 0
    beta = (0.625 - (0.375 + 0.25 * np.cos(2 * np.pi / np.maximum(valence, 1))) ** 2) / np.maximum(valence, 1)
    regular_boundary = n_bnd == 2  # a vertex on more than one boundary loop (n_bnd > 2) is kept in place
    inner = ~on_boundary[nbr[:, 0]]
    add(nbr[inner, 0], nbr[inner, 1], beta[nbr[inner, 0]])
    bnd = nbr_boundary & regular_boundary[nbr[:, 0]]
    add(nbr[bnd, 0], nbr[bnd, 1], 0.125)
    self_w = np.where(on_boundary, np.where(regular_boundary, 0.75, 1.0), 1 - valence * beta)
    add(np.arange(num_verts), np.arange(num_verts), self_w)
    return _assemble(rows, cols, vals, faces, edge_of, num_verts, n_edges)


def _assemble(rows, cols, vals, faces, edge_of, num_verts, n_edges) -> tuple[scipy.sparse.csr_matrix, np.ndarray]:
    """The sparse subdivision operator from its (row, col, weight) lists, and the 1-to-4 split of ``faces``."""
    n_faces = len(faces)
    sub = scipy.sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                                  shape=(num_verts + n_edges, num_verts))
    mid = (num_verts + edge_of).reshape(3, n_faces).T  # midpoints of edges (0-1, 1-2, 2-0) per face
    a, b, c = faces.T
    ab, bc, ca = mid.T
    new_faces = np.concatenate([np.stack([a, ab, ca], 1), np.stack([ab, b, bc], 1), np.stack([ca, bc, c], 1),
                                np.stack([ab, bc, ca], 1)])
    return sub, new_faces


def _nearest_vertices(verts: np.ndarray, points: np.ndarray) -> np.ndarray:
    return scipy.spatial.cKDTree(verts).query(points)[1].astype(np.int64)


def _distance_to_curves(verts: np.ndarray, curves: list[np.ndarray]) -> np.ndarray:
    """(V,) distance from each vertex to the nearest point of the given polylines (resampled every 1/8 segment)."""
    seg = np.linspace(0.0, 1.0, 8, endpoint=False)[None, :, None]
    pts = np.concatenate([(c[:-1, None] + seg * (c[1:] - c[:-1])[:, None]).reshape(-1, 3) for c in curves]
                         + [c[-1:] for c in curves])
    return scipy.spatial.cKDTree(pts).query(verts)[0]


def _skin_albedo(verts: np.ndarray, head: HeadGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Mean albedo (V, 3) in 0..255 (skin, rosier cheeks, red lips, dark brows) and the (V,) skin mask."""
    c = head.curves
    lips = _distance_to_curves(verts, [c["lips_outer_upper"], c["lips_outer_lower"], c["lips_inner_upper"],
                                       c["lips_inner_lower"]])
    mouth = head.landmarks[48:60]
    inside_lips = _inside_outline(verts, mouth)
    lip_w = np.maximum(np.exp(-0.5 * (lips / 0.0018) ** 2), inside_lips.astype(np.float64))
    brows = _distance_to_curves(verts, [c["left_brow_upper"], c["left_brow_lower"], c["right_brow_upper"],
                                        c["right_brow_lower"]])
    brow_w = np.exp(-0.5 * (brows / 0.0035) ** 2)
    lids = _distance_to_curves(verts, [c["left_eye_upper"], c["left_eye_lower"], c["right_eye_upper"],
                                       c["right_eye_lower"]])
    lid_w = np.exp(-0.5 * (lids / 0.004) ** 2)
    cheek_c = head.landmarks[[2, 14]] * 0.5 + head.landmarks[[31, 35]] * 0.5
    cheek_w = sum(np.exp(-0.5 * (np.linalg.norm(verts - p, axis=1) / 0.018) ** 2) for p in cheek_c)
    skin = np.array([200.0, 150.0, 126.0])
    albedo = skin + (verts[:, 1:2] - verts[:, 1].mean()) * np.array([120.0, 110.0, 100.0])  # lighter forehead
    albedo += cheek_w[:, None] * np.array([14.0, -10.0, -8.0])
    albedo += lid_w[:, None] * np.array([-22.0, -24.0, -20.0])
    albedo = albedo * (1 - brow_w[:, None]) + brow_w[:, None] * np.array([96.0, 70.0, 56.0])
    albedo = albedo * (1 - lip_w[:, None]) + lip_w[:, None] * np.array([178.0, 96.0, 92.0])
    skin_mask = (lip_w < 0.2) & (brow_w < 0.2) & (lid_w < 0.3)
    return np.clip(albedo, 0.0, 255.0), skin_mask


def _inside_outline(verts: np.ndarray, outline: np.ndarray) -> np.ndarray:
    """(V,) whether each vertex projects (along z) inside the closed polygon ``outline`` (N, 3) (even-odd rule)."""
    x, y = verts[:, 0], verts[:, 1]
    inside = np.zeros(len(verts), dtype=bool)
    px, py = outline[:, 0], outline[:, 1]
    for i in range(len(outline)):
        x0, y0, x1, y1 = px[i - 1], py[i - 1], px[i], py[i]
        crosses = (y0 > y) != (y1 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < x_at)
    return inside & (verts[:, 2] > outline[:, 2].min() - 0.01)


def _albedo_basis(verts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(V, 3, 80) albedo basis in 0..255 units: tone, redness, yellowness, then smooth random colour fields."""
    n = len(verts)
    ones = np.ones(n)
    p = verts - verts.mean(axis=0)
    cheeks = np.exp(-0.5 * ((np.abs(p[:, 0]) - 0.04) ** 2 + (p[:, 1] + 0.01) ** 2) / 0.02**2)
    modes = [
        np.outer(ones, [16.0, 14.0, 12.0]),  # overall lightness
        np.outer(0.5 + cheeks, [7.0, -3.0, -2.5]),  # redness, strongest on the cheeks
        np.outer(ones, [2.5, 2.0, -5.0]),  # yellowness
    ]
    for k in range(len(modes), NUM_TEX):
        wavelength = 0.12 / (1 + k / 12)
        waves = rng.standard_normal((6, 3))
        waves *= (2 * np.pi / wavelength) / np.linalg.norm(waves, axis=1, keepdims=True)
        field = np.sin(p @ waves.T + rng.uniform(0, 2 * np.pi, 6)).sum(axis=1) / np.sqrt(6)
        colour = np.array([1.0, 0.85, 0.75]) + 0.25 * rng.standard_normal(3)  # mostly skin-tone changes
        modes.append(np.outer(field, colour / np.linalg.norm(colour)) * 6.0 * (3 / (k + 1)) ** 0.6)
    return np.stack(modes, axis=-1)


def _front_mask(verts: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """(V,) the smaller photometric-loss region: an ellipse through the brows, the chin and the jaw contour."""
    centre_x = landmarks[27:36, 0].mean()
    top, bottom = landmarks[17:27, 1].max() + 0.01, landmarks[8, 1]
    half_w = 0.92 * np.abs(landmarks[[1, 15], 0] - centre_x).mean()
    q = ((verts[:, 0] - centre_x) / half_w) ** 2 + ((verts[:, 1] - 0.5 * (top + bottom)) / (0.5 * (top - bottom))) ** 2
    return q < 1.0
