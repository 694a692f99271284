"""A procedural human head: the shared geometry behind facelab's synthetic FLAME, BFM and FaceScape stand-ins.

The head is sculpted as a smooth implicit surface (ellipsoids, capsules and round cones blended with smooth
min/max: cranium, face mass, mandible, neck, brow ridge, cheekbones, nose, lips, eyelids, ears) and meshed by
casting rays from a point inside it through a latitude/longitude grid whose rows and columns are packed densely
over the face. The grid gives the mesh its structure:

* **eye openings** are holes cut out of the grid; the cells around each hole are re-parameterised (a discrete
  harmonic map) so the hole boundary becomes an almond-shaped lid margin lying just in front of an eyeball
  sphere (the eyeballs are separate connected components, as in FLAME);
* **the mouth** is a slit along one grid row: the lip vertices on it are duplicated, the upper copies belong to
  the upper lip and the lower copies to the lower lip, so rotating the jaw opens the mouth;
* **the neck** continues the grid downwards and ends in an open boundary ring;
* **UVs** are the grid parameters (a cylindrical unwrap with its seam at the back of the head), the eyeballs are
  two polar-unwrapped islands below the head.

Frame and units: metres, right-handed, +y up, the face looks along +z, the subject's left is +x; the origin is
near the centre of the head. Faces are counter-clockwise seen from outside (outward normals).

On top of the rest shape :func:`build_head` provides an identity basis (smooth, decaying energy, semantic first
components), a localized expression basis (jaw opening excluded: that is the jaw joint), the 68 iBUG landmarks
embedded as (face, barycentric) pairs, feature polylines (lid margins, lip contours, brows, nose) other embeddings
are built from, joint centres and FLAME's named vertex regions. Everything is deterministic given ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse
import scipy.sparse.linalg

#: The skeleton every stand-in shares (FLAME's joint order).
JOINT_NAMES = ("root", "neck", "jaw", "left_eye", "right_eye")
#: FLAME's region mask names (``FLAME_masks.pkl``).
REGION_NAMES = (
    "face", "eye_region", "left_eye_region", "right_eye_region", "forehead", "nose", "lips",
    "left_eyeball", "right_eyeball", "left_ear", "right_ear", "neck", "scalp", "boundary",
)  # fmt: skip
SIZES = ("full", "tiny")


@dataclass
class HeadGeometry:
    """The procedural head and its bases. All arrays are numpy, float64 positions in metres.

    Attributes:
        verts: (V, 3) rest vertices.
        faces: (F, 3) int64 triangles, counter-clockwise seen from outside.
        uv: (T, 2) texture coordinates in [0, 1] (v up).
        faces_uv: (F, 3) int64 per-corner indices into ``uv`` (a seam at the back of the head, eyeball islands).
        regions: FLAME mask name -> (N,) int64 vertex ids (see :data:`REGION_NAMES`).
        identity_basis: (V, 3, K_id) identity blendshapes; coefficient 1 is one standard deviation.
        expression_basis: (V, 3, K_exp) expression blendshapes (localized; no jaw opening).
        joints: (J, 3) joint centres in :data:`JOINT_NAMES` order (root at the neck base, neck, jaw hinge centre
            below the ears, left and right eyeball centres).
        landmark_faces: (68,) int64 face of each iBUG-68 landmark (frontal jawline for 0..16).
        landmark_bary: (68, 3) barycentric coordinates of each landmark in its face.
        curves: named feature polylines, (N, 3) points on the rest surface, each ordered from -x to +x (image left
            to right in a frontal view): ``{left,right}_eye_{upper,lower}`` lid margins (canthus to canthus),
            ``lips_{outer,inner}_{upper,lower}`` (corner to corner), ``{left,right}_brow_{upper,lower}``,
            ``nose_ridge`` (nasion to tip, top to bottom) and ``nose_base`` (alar to alar through subnasale).
        eyeball_radius: radius of both eyeballs.
        lip_side: (V,) +1 for vertices of the upper lip side of the mouth slit, -1 for the lower side, 0 far away
            (the slit's two vertex copies have opposite signs).
        lid_side: (V,) +1 upper eyelid, -1 lower eyelid, 0 elsewhere (on both eyes).
        eye_margins: side ("left"/"right") -> (upper, lower) int64 vertex ids of the lid margin, each ordered
            from lateral to medial canthus, canthi included in both.
        mouth_slit: (upper, lower) int64 vertex ids along the slit from the -x corner to the +x corner (corners
            shared).
        neck_rings: (R, C) int64 vertex ids of the neck rows, top to bottom; the last row is the open boundary.
        grid_param: (V, 2) the (around, down) grid parameter of every head vertex, NaN on eyeballs; ``down`` is in
            rows (the crown pole is row 0).
        grid_rows: the rows of the eye openings' top edge, the mouth slit and the last ray-cast row (under the chin),
            as {"eye_top", "mouth", "end"}.
        contour: the 17 jawline slices of the yaw-dependent iBUG contour (see :func:`contour_at_yaw`).
    """

    verts: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    faces_uv: np.ndarray
    regions: dict[str, np.ndarray]
    identity_basis: np.ndarray
    expression_basis: np.ndarray
    joints: np.ndarray
    landmark_faces: np.ndarray
    landmark_bary: np.ndarray
    curves: dict[str, np.ndarray] = field(default_factory=dict)
    eyeball_radius: float = 0.012
    lip_side: np.ndarray | None = None
    lid_side: np.ndarray | None = None
    eye_margins: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    mouth_slit: tuple[np.ndarray, np.ndarray] | None = None
    neck_rings: np.ndarray | None = None
    grid_param: np.ndarray | None = None
    grid_rows: dict[str, int] = field(default_factory=dict)
    contour: ContourSlices | None = None

    @property
    def num_verts(self) -> int:
        return int(self.verts.shape[0])

    @property
    def landmarks(self) -> np.ndarray:
        """(68, 3) the iBUG landmarks on the rest shape."""
        return barycentric_interpolate(self.verts, self.faces, self.landmark_faces, self.landmark_bary)


# ----------------------------------------------------------------------------------------------------------------
# small geometry helpers


def barycentric_interpolate(verts: np.ndarray, faces: np.ndarray, face_idx: np.ndarray, bary: np.ndarray):
    """Points (..., 3) at ``bary`` (..., 3) inside faces ``face_idx`` (...) of a mesh ``verts`` (V, 3)."""
    return np.einsum("...k,...kd->...d", bary, verts[faces[face_idx]])


def closest_points_on_mesh(
    verts: np.ndarray, faces: np.ndarray, points: np.ndarray, face_subset: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Embed points on a triangle mesh: the closest surface point of each query as (face, barycentrics).

    Args:
        verts: (V, 3). faces: (F, 3). points: (N, 3) query points.
        face_subset: optional (F',) face ids to search (defaults to all faces).

    Returns:
        face_idx (N,) int64 and bary (N, 3) float64 (non-negative, summing to 1).
    """
    cand = np.arange(len(faces)) if face_subset is None else np.asarray(face_subset)
    tri = verts[faces[cand]]  # (F', 3, 3)
    centroid = tri.mean(axis=1)
    radius = np.linalg.norm(tri - centroid[:, None], axis=-1).max(axis=1)
    face_idx = np.empty(len(points), dtype=np.int64)
    bary = np.empty((len(points), 3))
    for n, p in enumerate(np.asarray(points, dtype=np.float64)):
        # a face whose bounding sphere is farther than the nearest centroid cannot hold the closest point
        d_c = np.linalg.norm(centroid - p, axis=1)
        near = np.nonzero(d_c - radius <= d_c.min() + 1e-12)[0]
        q, b = _closest_on_triangles(p, tri[near])
        best = np.argmin(np.linalg.norm(q - p, axis=1))
        face_idx[n], bary[n] = cand[near[best]], b[best]
    return face_idx, bary


def _closest_on_triangles(p: np.ndarray, tri: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closest points to ``p`` (3,) on each triangle of ``tri`` (M, 3, 3) and their barycentrics (M, 3).

    Projects onto the plane, then clamps to the nearest edge when the projection falls outside.
    """
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    e0, e1, w = b - a, c - a, p - a
    d00, d01, d11 = (e0 * e0).sum(1), (e0 * e1).sum(1), (e1 * e1).sum(1)
    d20, d21 = (w * e0).sum(1), (w * e1).sum(1)
    den = np.maximum(d00 * d11 - d01 * d01, 1e-30)
    v = (d11 * d20 - d01 * d21) / den
    u = (d00 * d21 - d01 * d20) / den
    bary = np.stack([1 - v - u, v, u], axis=1)
    outside = (bary < 0).any(axis=1)
    if outside.any():
        best_d = np.full(outside.sum(), np.inf)
        best_b = np.zeros((outside.sum(), 3))
        for i, j in ((0, 1), (1, 2), (2, 0)):
            pa, pb = tri[outside, i], tri[outside, j]
            seg = pb - pa
            t = np.clip(((p - pa) * seg).sum(1) / np.maximum((seg * seg).sum(1), 1e-30), 0.0, 1.0)
            d = np.linalg.norm(pa + t[:, None] * seg - p, axis=1)
            better = d < best_d
            best_d[better] = d[better]
            bb = np.zeros((better.sum(), 3))
            bb[:, i], bb[:, j] = 1 - t[better], t[better]
            best_b[better] = bb
        bary[outside] = best_b
    return np.einsum("mk,mkd->md", bary, tri), bary


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V, 3) unit area-weighted vertex normals (outward for counter-clockwise faces)."""
    fn = np.cross(verts[faces[:, 1]] - verts[faces[:, 0]], verts[faces[:, 2]] - verts[faces[:, 0]])
    vn = np.zeros_like(verts)
    for k in range(3):
        np.add.at(vn, faces[:, k], fn)
    return vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _gauss(p: np.ndarray, centre, radii) -> np.ndarray:
    """Anisotropic Gaussian bump exp(-|(p - centre) / radii|^2 / 2) at points p (N, 3)."""
    q = (p - np.asarray(centre)) / np.asarray(radii)
    return np.exp(-0.5 * (q * q).sum(axis=-1))


# ----------------------------------------------------------------------------------------------------------------
# anatomy and the implicit surface


@dataclass
class _Anatomy:
    """Landmark positions and sizes of the rest head (metres); symmetric in x, each side mirrored."""

    crown: float = 0.108  # top of the head
    cranium_c: tuple = (0.0, 0.022, -0.012)
    cranium_r: tuple = (0.077, 0.088, 0.097)
    brow_y: float = 0.036
    brow_z: float = 0.079
    eye_c: tuple = (0.031, 0.021, 0.060)  # left eyeball centre
    eye_r: float = 0.012
    eye_half_w: float = 0.0103
    eye_up: float = 0.0052
    eye_lo: float = 0.0038
    nasion: tuple = (0.0, 0.027, 0.081)
    nose_tip: tuple = (0.0, -0.015, 0.108)
    alar: tuple = (0.0135, -0.019, 0.088)
    mouth_y: float = -0.044
    mouth_half_w: float = 0.024
    lip_z: float = 0.089
    upper_lip_h: float = 0.008
    lower_lip_h: float = 0.009
    chin: tuple = (0.0, -0.071, 0.072)
    menton_y: float = -0.083
    gonion: tuple = (0.05, -0.052, -0.006)
    zygoma: tuple = (0.047, 0.006, 0.052)
    ear_c: tuple = (0.072, 0.006, -0.014)
    ear_r: tuple = (0.0085, 0.03, 0.017)
    neck_r: tuple = (0.052, 0.054)
    neck_z: float = -0.016
    neck_bottom: float = -0.118
    jaw_hinge: tuple = (0.0, -0.008, -0.002)
    origin: tuple = (0.0, 0.004, -0.006)  # where grid rays start: inside the head, in front of the spine

    @classmethod
    def sample(cls, seed: int) -> _Anatomy:
        """The default anatomy with proportions jittered by a few percent (deterministic in ``seed``)."""
        rng = np.random.default_rng([seed, 0])
        a = cls()
        if seed == 0:
            return a

        def jit(v, s):
            return tuple(np.asarray(v) * (1 + s * rng.standard_normal(np.shape(v)))) if np.ndim(v) else float(
                v * (1 + s * rng.standard_normal())
            )

        a.cranium_r = jit(a.cranium_r, 0.025)
        a.eye_half_w = jit(a.eye_half_w, 0.03)
        a.nose_tip = (0.0, a.nose_tip[1] * (1 + 0.05 * rng.standard_normal()),
                      a.nose_tip[2] + 0.003 * rng.standard_normal())
        a.alar = jit(a.alar, 0.04)
        a.mouth_half_w = jit(a.mouth_half_w, 0.04)
        a.chin = (0.0, a.chin[1], a.chin[2] + 0.003 * rng.standard_normal())
        a.gonion = jit(a.gonion, 0.03)
        a.zygoma = jit(a.zygoma, 0.03)
        a.neck_r = jit(a.neck_r, 0.03)
        return a


def _sd_ellipsoid(p: np.ndarray, c, r) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipsoid (negative inside)."""
    r = np.asarray(r, dtype=np.float64)
    q = (p - np.asarray(c)) / r
    k0 = np.linalg.norm(q, axis=-1)
    k1 = np.maximum(np.linalg.norm(q / r, axis=-1), 1e-12)
    return k0 * (k0 - 1.0) / k1


def _sd_round_cone(p: np.ndarray, a, b, ra: float, rb: float) -> np.ndarray:
    """Approximate signed distance to a capsule from ``a`` to ``b`` with radius varying from ``ra`` to ``rb``."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ab = b - a
    t = np.clip(((p - a) @ ab) / (ab @ ab), 0.0, 1.0)
    return np.linalg.norm(p - (a + t[..., None] * ab), axis=-1) - (ra + t * (rb - ra))


def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum (smooth union) with blend radius ``k``."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def _smax(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    return -_smin(-a, -b, k)


def _mirror_x(p: np.ndarray) -> np.ndarray:
    """Points (N, 3) reflected onto the +x side (for features that come in mirrored pairs)."""
    q = np.array(p, dtype=np.float64, copy=True)
    q[..., 0] = np.abs(q[..., 0])
    return q


def _neck_axis_z(y: np.ndarray, a: _Anatomy) -> np.ndarray:
    """z of the neck axis at height y: the neck leans back a little towards the shoulders."""
    return a.neck_z + 0.12 * np.minimum(y, 0.0)


def _head_sdf(p: np.ndarray, a: _Anatomy) -> np.ndarray:
    """Signed distance-like field of the head (negative inside) at points p (..., 3)."""
    pa = _mirror_x(p)  # every paired feature is evaluated on the +x side (mirror symmetry)
    # cranium: an egg, fuller at the back
    d = _sd_ellipsoid(p, a.cranium_c, a.cranium_r)
    d = _smin(d, _sd_ellipsoid(p, (0.0, 0.03, -0.03), (0.071, 0.075, 0.085)), 0.02)
    # face mass (maxilla, cheeks) and mandible
    d = _smin(d, _sd_ellipsoid(p, (0.0, -0.012, 0.030), (0.061, 0.052, 0.056)), 0.022)
    gon, chin = np.asarray(a.gonion), np.asarray(a.chin)
    chin_side = np.array([0.017, chin[1] - 0.004, chin[2] - 0.006])
    mand = _sd_round_cone(pa, gon, chin_side, 0.013, 0.012)
    mand = _smin(mand, _sd_round_cone(pa, gon + (0, 0.035, -0.008), gon, 0.013, 0.013), 0.01)  # ramus
    mand = _smin(mand, _sd_ellipsoid(p, (0.0, -0.056, 0.028), (0.04, 0.027, 0.036)), 0.015)  # mandible body
    mand = _smin(mand, _sd_ellipsoid(p, chin, (0.019, 0.014, 0.012)), 0.012)
    d = _smin(d, mand, 0.024)
    # the muzzle: the rounded dental arches under the lips
    d = _smin(d, _sd_ellipsoid(p, (0.0, a.mouth_y - 0.002, a.lip_z - 0.037), (0.034, 0.027, 0.028)), 0.012)
    # neck: an elliptic cylinder leaning slightly forward at the bottom
    q = p * np.array([1.0, 0.0, 1.0])
    q[..., 2] -= _neck_axis_z(p[..., 1], a)
    neck = _sd_ellipsoid(q, (0.0, 0.0, 0.0), (a.neck_r[0], 1.0, a.neck_r[1]))
    neck = _smax(neck, p[..., 1] - 0.0, 0.01)  # the neck ends inside the head
    d = _smin(d, neck, 0.03)
    # brow ridge, cheekbones
    brow_l = (0.052, a.brow_y - 0.006, a.brow_z - 0.02)
    brow_m = (0.012, a.brow_y - 0.004, a.brow_z + 0.001)
    d = _smin(d, _sd_round_cone(pa, brow_l, brow_m, 0.006, 0.0075), 0.012)
    d = _smin(d, _sd_ellipsoid(pa, a.zygoma, (0.02, 0.012, 0.016)), 0.014)
    # eye sockets carved, then the lids: a shell slightly larger than the eyeball
    e = np.asarray(a.eye_c)
    d = _smax(d, -_sd_ellipsoid(pa, e + (-0.001, 0.001, 0.012), (0.0145, 0.011, 0.0105)), 0.006)
    d = _smin(d, np.linalg.norm(pa - e, axis=-1) - (a.eye_r + 0.0022), 0.004)
    # nose: bridge, tip, alae
    nas, tip, alar = np.asarray(a.nasion), np.asarray(a.nose_tip), np.asarray(a.alar)
    nose = _sd_round_cone(p, nas, tip - (0.0, 0.0, 0.004), 0.0055, 0.0075)
    nose = _smin(nose, _sd_ellipsoid(p, tip - (0.0, 0.003, 0.004), (0.0085, 0.0075, 0.0075)), 0.004)
    nose = _smin(nose, _sd_ellipsoid(pa, alar, (0.0065, 0.0058, 0.0075)), 0.005)
    nose = _smin(nose, _sd_round_cone(p, tip - (0.0, 0.006, 0.006), (0.0, alar[1] - 0.004, alar[2] - 0.004),
                                      0.005, 0.006), 0.004)
    d = _smin(d, nose, 0.007)
    # lips and the mouth corners
    y_m, w_m, z_l = a.mouth_y, a.mouth_half_w, a.lip_z
    corner_up = (w_m - 0.002, y_m + 0.0006, z_l - 0.017)
    corner_lo = (w_m - 0.003, y_m - 0.0006, z_l - 0.017)
    upper = _sd_round_cone(pa, (0.0, y_m + 0.42 * a.upper_lip_h, z_l - 0.0032), corner_up,
                           0.66 * a.upper_lip_h, 0.0018)
    lower = _sd_round_cone(pa, (0.0, y_m - 0.45 * a.lower_lip_h, z_l - 0.0046), corner_lo,
                           0.68 * a.lower_lip_h, 0.0018)
    d = _smin(d, _smin(upper, lower, 0.0015), 0.004)
    d = _smax(d, -_sd_ellipsoid(pa, (w_m + 0.002, y_m, z_l - 0.012), (0.004, 0.004, 0.006)), 0.004)
    # labiomental fold
    d = _smax(d, -_sd_round_cone(pa, (0.0, y_m - 0.0155, z_l + 0.002), (0.016, y_m - 0.015, z_l - 0.008),
                                  0.0032, 0.002), 0.004)
    # ears: a flattened disc with a hollow bowl on its outer side
    ear_c = np.asarray(a.ear_c)
    ear = _sd_ellipsoid(pa, ear_c, a.ear_r)
    ear = _smax(ear, -_sd_ellipsoid(pa, ear_c + (0.0075, -0.003, 0.004), (0.005, 0.011, 0.0075)), 0.003)
    d = _smin(d, ear, 0.005)
    return d


def _raycast(origins: np.ndarray, dirs: np.ndarray, a: _Anatomy, r_max: float = 0.25, steps: int = 160):
    """Distance along each ray (N,) to the outermost crossing of the head surface.

    Rays start inside the head; the field is sampled along each ray, the last inside sample is bracketed with
    the next one and the crossing refined by bisection.
    """
    n = len(origins)
    ts = np.linspace(0.0, r_max, steps)
    pts = origins[:, None, :] + ts[None, :, None] * dirs[:, None, :]
    inside = _head_sdf(pts.reshape(-1, 3), a).reshape(n, steps) < 0
    last = steps - 1 - np.argmax(inside[:, ::-1], axis=1)
    if not inside.any(axis=1).all():
        raise RuntimeError("a ray origin lies outside the synthetic head")
    lo, hi = ts[last], ts[np.minimum(last + 1, steps - 1)]
    for _ in range(32):
        mid = 0.5 * (lo + hi)
        ins = _head_sdf(origins + mid[:, None] * dirs, a) < 0
        lo, hi = np.where(ins, mid, lo), np.where(ins, hi, mid)
    return 0.5 * (lo + hi)


# ----------------------------------------------------------------------------------------------------------------
# the grid: where rows and columns go


@dataclass(frozen=True)
class _Resolution:
    """Grid sizes of one ``size`` of the head.

    Attributes:
        n_cols: columns around the head (even, so the front meridian is a column).
        top_rows: row steps from the crown pole down to the upper edge of the eye openings.
        mid_rows: row steps from the lower edge of the eye openings down to the mouth slit.
        low_rows: row steps from the mouth slit down to the end of the ray-cast part (under the chin).
        neck_rows: row steps down the neck to its open boundary.
        window: cells around each eye opening that are re-parameterised to round the opening.
        eyeball_rings, eyeball_segments: latitude rings (poles excluded) and segments of each eyeball sphere.
        col_density: (base, face, face_sigma, ear, ear_sigma): column density around the head (radians).
    """

    n_cols: int
    top_rows: int
    mid_rows: int
    low_rows: int
    neck_rows: int
    window: int
    eyeball_rings: int
    eyeball_segments: int
    col_density: tuple = (0.3, 1.0, 0.75, 0.25, 0.2)


_RESOLUTIONS = {
    "full": _Resolution(88, 17, 13, 11, 7, 3, 14, 18),
    "tiny": _Resolution(14, 2, 2, 1, 1, 1, 2, 4, (0.3, 1.0, 0.6, 0.0, 0.2)),
}
_PHI_END_FRONT = np.deg2rad(156.0)  # last ray-cast row under the chin (front) ...
_PHI_END_BACK = np.deg2rad(128.0)  # ... and at the nape
_UV_HEAD_BOTTOM = 0.22  # the head island spans v in [_UV_HEAD_BOTTOM, 1]; eyeballs sit below


@dataclass
class _Grid:
    """The parameterisation (s around in [0, 1), t down in rows) and its mapping to ray directions."""

    res: _Resolution
    origin: np.ndarray
    theta_table: np.ndarray
    cdf_table: np.ndarray
    phi_rows: np.ndarray  # (J_mouth + 1,) polar angle of rows 0 (pole) .. mouth row, shared by all columns
    j_eye_top: int
    j_mouth: int
    phi_mouth: float
    mouth_theta: np.ndarray | None = None  # (M,) azimuths where the mouth row is bent ...
    mouth_bend: np.ndarray | None = None  # (M,) ... by this polar offset, so the slit runs level across the lips

    @property
    def n_cols(self) -> int:
        return self.res.n_cols

    @property
    def j_end(self) -> int:
        """The last ray-cast row."""
        return self.j_mouth + self.res.low_rows

    @property
    def j_last(self) -> int:
        """The neck's boundary row."""
        return self.j_end + self.res.neck_rows

    def theta(self, s: np.ndarray) -> np.ndarray:
        """Azimuth (0 at the front, +pi/2 at the subject's left) of grid parameter s in [0, 1]."""
        return np.interp(s, self.cdf_table, self.theta_table)

    def s_of_theta(self, theta: np.ndarray) -> np.ndarray:
        return np.interp(theta, self.theta_table, self.cdf_table)

    def phi(self, s: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Polar angle from +y of the ray through grid parameter (s, t), for t <= j_end."""
        upper = np.interp(t, np.arange(self.j_mouth + 1), self.phi_rows)
        theta = self.theta(s)
        phi_end = _PHI_END_BACK + (_PHI_END_FRONT - _PHI_END_BACK) * 0.5 * (1 + np.cos(theta))
        lower = self.phi_mouth + (t - self.j_mouth) / self.res.low_rows * (phi_end - self.phi_mouth)
        phi = np.where(t <= self.j_mouth, upper, lower)
        if self.mouth_bend is not None:  # a tent over +-3 rows keeps the rows ordered (the bend is < 1 row)
            tent = np.clip(1.0 - np.abs(t - self.j_mouth) / 3.0, 0.0, 1.0)
            phi = phi + tent * np.interp(theta, self.mouth_theta, self.mouth_bend, left=0.0, right=0.0)
        return phi

    def t_of_phi(self, phi: np.ndarray) -> np.ndarray:
        """Row parameter of polar angle phi (above the mouth row only)."""
        return np.interp(phi, self.phi_rows, np.arange(self.j_mouth + 1))

    def direction(self, s: np.ndarray, t: np.ndarray) -> np.ndarray:
        th, ph = self.theta(s), self.phi(s, t)
        return np.stack([np.sin(ph) * np.sin(th), np.cos(ph), np.sin(ph) * np.cos(th)], axis=-1)

    def angles_of(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(theta, phi) of points (N, 3) seen from the grid origin."""
        d = p - self.origin
        return np.arctan2(d[:, 0], d[:, 2]), np.arccos(np.clip(d[:, 1] / np.linalg.norm(d, axis=1), -1, 1))


def _eye_margin(a: _Anatomy, side: float, tau: np.ndarray) -> np.ndarray:
    """Points (N, 3) of the lid margin of one eye at angles tau (0 lateral canthus, pi/2 top of the upper lid,
    pi medial canthus, 3 pi/2 bottom of the lower lid). ``side`` is +1 for the left eye (+x), -1 for the right."""
    tau = np.asarray(tau, dtype=np.float64) % (2 * np.pi)
    lateral = a.eye_half_w * np.cos(tau)
    upper = tau <= np.pi
    # the upper lid peaks a little medially, the lower lid dips a little laterally; the lateral canthus is higher
    v = np.where(
        upper,
        a.eye_up * np.sin(tau) * (1 - 0.12 * np.cos(tau)),
        a.eye_lo * np.sin(tau) * (1 + 0.10 * np.cos(tau)),
    )
    v = v + 0.1 * lateral
    r_m = a.eye_r + 0.0009
    depth = np.sqrt(np.maximum(r_m**2 - lateral**2 - v**2, (0.35 * r_m) ** 2))
    e = np.asarray(a.eye_c)
    return np.stack([side * (e[0] + lateral), e[1] + v, e[2] + depth], axis=-1)


def _lip_outline(a: _Anatomy, x: np.ndarray, upper: bool) -> np.ndarray:
    """Height above (upper) or below (lower) the mouth line of the vermilion border at x (cupid's bow on top)."""
    u = np.clip(np.abs(x) / a.mouth_half_w, 0.0, 1.0)
    if upper:
        bow = 1.0 + 0.12 * np.exp(-(((u - 0.28) / 0.12) ** 2)) - 0.1 * np.exp(-((u / 0.1) ** 2))
        return a.upper_lip_h * np.sqrt(1 - u**2) ** 0.8 * bow
    return -a.lower_lip_h * np.sqrt(1 - u**2) ** 0.9


def _make_grid(a: _Anatomy, res: _Resolution) -> _Grid:
    """Choose the columns (dense over the face and at the ears) and rows (anchored at the eyes and mouth)."""
    origin = np.asarray(a.origin, dtype=np.float64)
    base, face, face_sig, ear, ear_sig = res.col_density
    theta_table = np.linspace(-np.pi, np.pi, 4001)
    dens = base + face * np.exp(-0.5 * (theta_table / face_sig) ** 2)
    dens += ear * (np.exp(-0.5 * ((np.abs(theta_table) - np.pi / 2) / ear_sig) ** 2))
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(theta_table))])
    cdf /= cdf[-1]
    # eye rows: through the top of the upper lid, the canthi and the bottom of the lower lid
    d = _eye_margin(a, 1.0, np.array([np.pi / 2, 0.0, np.pi, 1.5 * np.pi])) - origin
    phi_eye = np.arccos(d[:, 1] / np.linalg.norm(d, axis=1))
    phi_top, phi_mid, phi_bot = phi_eye[0], 0.5 * (phi_eye[1] + phi_eye[2]), phi_eye[3]
    # mouth row: the polar angle at which the front meridian meets the mouth line
    phis = np.linspace(np.deg2rad(100), np.deg2rad(135), 141)
    dirs = np.stack([np.zeros_like(phis), np.cos(phis), np.sin(phis)], axis=-1)
    hit_y = origin[1] + _raycast(np.repeat(origin[None], len(phis), 0), dirs, a) * dirs[:, 1]
    phi_mouth = float(np.interp(-a.mouth_y, -hit_y, phis))
    k = np.arange(res.top_rows + 1) / res.top_rows
    top = phi_top * (0.6 * k + 0.4 * (1 - (1 - k) ** 2))  # sparser near the crown, denser at the brows
    mid = np.linspace(phi_bot, phi_mouth, res.mid_rows + 1)
    phi_rows = np.concatenate([top, [phi_mid], mid])
    grid = _Grid(res, origin, theta_table, cdf, phi_rows, res.top_rows, len(phi_rows) - 1, phi_mouth)
    grid.mouth_theta, grid.mouth_bend = _mouth_bend(a, grid)
    return grid


def _mouth_bend(a: _Anatomy, grid: _Grid) -> tuple[np.ndarray, np.ndarray]:
    """Per-azimuth polar offsets of the mouth row that make the slit run level (corners a little up).

    A row of constant polar angle dips where the lips protrude; for each azimuth across the mouth the offset is
    found by casting a fan of rays and interpolating the one that meets the target height. It fades out past the
    mouth corners.
    """
    theta_c = np.arctan2(a.mouth_half_w, a.lip_z - 0.012 - grid.origin[2])
    fine = grid.n_cols >= 48
    theta = np.linspace(-theta_c - 0.35, theta_c + 0.35, 31 if fine else 7)
    offsets = np.deg2rad(np.linspace(-6.0, 6.0, 25 if fine else 9))
    th, off = np.meshgrid(theta, offsets, indexing="ij")
    ph = grid.phi_mouth + off
    dirs = np.stack([np.sin(ph) * np.sin(th), np.cos(ph), np.sin(ph) * np.cos(th)], -1).reshape(-1, 3)
    org = np.broadcast_to(grid.origin, dirs.shape)
    hits = (org + _raycast(org, dirs, a)[:, None] * dirs).reshape(*th.shape, 3)
    target = a.mouth_y + 0.0015 * np.clip(hits[..., 0] / a.mouth_half_w, -1, 1) ** 2
    # the hit height falls monotonically with the offset: interpolate where it crosses the target
    bend = np.array([np.interp(0.0, -(hits[i, :, 1] - target[i]), offsets) for i in range(len(theta))])
    fade = 1.0 - _smoothstep(theta_c, theta_c + 0.35, np.abs(theta))
    return theta, bend * fade


# ----------------------------------------------------------------------------------------------------------------
# the mesh


@dataclass
class _Mesh:
    """The meshed head before bases and annotations are attached (indices already compacted)."""

    verts: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    faces_uv: np.ndarray
    grid_param: np.ndarray  # (V, 2) (s, t); NaN on eyeballs
    eyeballs: dict[str, np.ndarray]
    eye_margins: dict[str, tuple[np.ndarray, np.ndarray]]
    mouth_slit: tuple[np.ndarray, np.ndarray]
    neck_rings: np.ndarray
    lip_side: np.ndarray
    lid_side: np.ndarray
    grid_rows: dict[str, int]


def _eye_hole(grid: _Grid, a: _Anatomy, side: float) -> dict:
    """The grid cells removed for one eye opening and the almond parameters of the hole's boundary loop.

    The cells are chosen from the default anatomy, so the mesh topology is the same for every seed.
    """
    n = grid.n_cols
    tau = np.linspace(0, 2 * np.pi, 73)[:-1]
    th, ph = grid.angles_of(_eye_margin(_Anatomy(), side, tau))
    s = grid.s_of_theta(th) * n
    i0, i1 = int(np.round(s.min())), int(np.round(s.max()))
    i1 = max(i1, i0 + 1)
    w, j0 = i1 - i0, grid.j_eye_top
    lateral_first = side > 0  # left eye: the lateral canthus has the larger column index
    cols = np.arange(i0, i1 + 1) if not lateral_first else np.arange(i1, i0 - 1, -1)  # lateral -> medial
    upper = [(j0, c) for c in cols]  # w + 1 vertices, corners included
    lower = [(j0 + 2, c) for c in cols[::-1]]  # medial -> lateral
    loop = [(j0 + 1, cols[0])] + upper + [(j0 + 1, cols[-1])] + lower
    k = np.arange(1, w + 2)
    taus = np.concatenate([[0.0], np.pi * k / (w + 2), [np.pi], np.pi + np.pi * k / (w + 2)])
    pts = _eye_margin(a, side, taus)
    th, ph = grid.angles_of(pts)
    param = np.stack([grid.s_of_theta(th) * n, grid.t_of_phi(ph)], axis=1)
    interior = [(j0 + 1, c) for c in range(i0 + 1, i1)]
    return dict(loop=loop, param=param, points=pts, interior=interior, i0=i0, i1=i1, j0=j0, w=w)


def _relax_window(param: np.ndarray, fixed: np.ndarray, removed: np.ndarray, rows, cols) -> np.ndarray:
    """Discrete harmonic re-parameterisation of a grid window: free vertices become the average of their grid
    neighbours, with the window border and the hole boundary held (Dirichlet). Works in place on ``param``.

    Args:
        param: (R, C, 2) grid parameters of all vertices (modified).
        fixed: (R, C) bool, vertices whose parameters are held.
        removed: (R, C) bool, vertices that do not exist (inside the hole).
        rows, cols: slices of the window.
    """
    sub = param[rows, cols]
    fx, rm = fixed[rows, cols].copy(), removed[rows, cols]
    fx[0, :] = fx[-1, :] = fx[:, 0] = fx[:, -1] = True
    free = ~fx & ~rm
    idx = -np.ones(fx.shape, dtype=np.int64)
    idx[free] = np.arange(free.sum())
    r_i, c_i = np.nonzero(free)
    lap_r, lap_c, lap_v = [], [], []
    rhs = np.zeros((free.sum(), 2))
    for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        nr, nc = r_i + dr, c_i + dc
        exists = ~rm[nr, nc]
        is_free = free[nr, nc] & exists
        lap_r.append(idx[r_i[is_free], c_i[is_free]])
        lap_c.append(idx[nr[is_free], nc[is_free]])
        lap_v.append(-np.ones(is_free.sum()))
        held = exists & ~is_free
        np.add.at(rhs, idx[r_i[held], c_i[held]], sub[nr[held], nc[held]])
        lap_r.append(idx[r_i[exists], c_i[exists]])
        lap_c.append(idx[r_i[exists], c_i[exists]])
        lap_v.append(np.ones(exists.sum()))
    lap = scipy.sparse.csr_matrix((np.concatenate(lap_v), (np.concatenate(lap_r), np.concatenate(lap_c))),
                                  shape=(free.sum(), free.sum()))
    sol = scipy.sparse.linalg.spsolve(lap.tocsc(), rhs)
    sub[free] = sol.reshape(-1, 2)
    param[rows, cols] = sub
    return param


def _eyeball(centre: np.ndarray, radius: float, rings: int, segs: int, uv_centre, uv_radius: float):
    """A latitude/longitude sphere looking along +z with a polar UV island (pupil at the island centre).

    Returns verts (2 + rings * segs, 3), faces, uv, faces_uv, local vertex order: front pole, rings, back pole.
    """
    alpha = np.pi * np.arange(1, rings + 1) / (rings + 1)
    beta = 2 * np.pi * np.arange(segs) / segs
    ring = np.stack([np.sin(alpha)[:, None] * np.cos(beta), np.sin(alpha)[:, None] * np.sin(beta),
                     np.cos(alpha)[:, None] * np.ones_like(beta)], axis=-1).reshape(-1, 3)
    unit = np.concatenate([[[0.0, 0.0, 1.0]], ring, [[0.0, 0.0, -1.0]]])
    verts = centre + radius * unit
    rid = 1 + np.arange(rings * segs).reshape(rings, segs)
    nxt = np.roll(rid, -1, axis=1)
    back = 1 + rings * segs
    faces = [np.stack([np.zeros(segs, np.int64), rid[0], nxt[0]], 1)]
    faces += [np.stack([rid[:-1], rid[1:], nxt[1:]], -1).reshape(-1, 3),
              np.stack([rid[:-1], nxt[1:], nxt[:-1]], -1).reshape(-1, 3)]
    faces.append(np.stack([rid[-1], np.full(segs, back), nxt[-1]], 1))
    faces = np.concatenate(faces)
    # UV: rho grows with the angle from the pupil; the back pole becomes the island's rim (one uv per fan corner)
    rho = uv_radius * alpha / np.pi
    uv_ring = np.asarray(uv_centre) + np.stack([rho[:, None] * np.cos(beta), rho[:, None] * np.sin(beta)], -1)
    beta_mid = beta + np.pi / segs
    uv_back = np.asarray(uv_centre) + uv_radius * np.stack([np.cos(beta_mid), np.sin(beta_mid)], -1)
    uv = np.concatenate([[uv_centre], uv_ring.reshape(-1, 2), uv_back])
    faces_uv = faces.copy()
    faces_uv[-segs:, 1] = back + np.arange(segs)
    # a ring's last segment wraps around: its uv must come from the same beta branch, so duplicate nothing --
    # beta in [0, 2 pi) is continuous on the disc, there is no seam on a polar island
    return verts, faces, uv, faces_uv


def _build_mesh(a: _Anatomy, res: _Resolution) -> _Mesh:
    grid = _make_grid(a, res)
    n, jl = grid.n_cols, grid.j_last
    rows_all = jl + 1  # row 0 is the pole (a single vertex), rows 1..jl are rings of n vertices
    param = np.zeros((rows_all, n + 1, 2))
    param[..., 0] = np.arange(n + 1)[None, :]
    param[..., 1] = np.arange(rows_all)[:, None]
    fixed = np.zeros((rows_all, n + 1), dtype=bool)
    removed = np.zeros((rows_all, n + 1), dtype=bool)
    holes = {"left": _eye_hole(grid, a, 1.0), "right": _eye_hole(grid, a, -1.0)}
    for hole in holes.values():
        for (j, i), p in zip(hole["loop"], hole["param"]):
            param[j, i], fixed[j, i] = p, True
        for j, i in hole["interior"]:
            removed[j, i] = True
    for hole in holes.values():
        m = res.window
        rows = slice(hole["j0"] - m, hole["j0"] + 2 + m + 1)
        cols = slice(hole["i0"] - m, hole["i1"] + m + 1)
        _relax_window(param, fixed, removed, rows, cols)
    param[:, n] = param[:, 0] + (n, 0)  # the seam column repeats column 0 one turn later

    # positions: ray-cast rows, then neck rows cast horizontally from the neck axis
    s, t = param[1:, :n, 0] / n, param[1:, :n, 1]
    pos = np.zeros((rows_all, n, 3))
    cast = t <= grid.j_end + 1e-9
    dirs = grid.direction(s[cast], t[cast])
    org = np.broadcast_to(grid.origin, dirs.shape)
    pos[1:][cast] = org + _raycast(org, dirs, a)[:, None] * dirs
    end = pos[grid.j_end]
    theta = grid.theta(np.arange(n) / n)
    hdir = np.stack([np.sin(theta), np.zeros(n), np.cos(theta)], -1)
    for k in range(1, res.neck_rows + 1):
        f = k / res.neck_rows
        y = end[:, 1] + f * (a.neck_bottom - end[:, 1])
        o = np.stack([np.zeros(n), y, (1 - f) * grid.origin[2] + f * _neck_axis_z(y, a)], -1)
        pos[grid.j_end + k] = o + _raycast(o, hdir, a)[:, None] * hdir
    pole = grid.origin + _raycast(grid.origin[None], np.array([[0.0, 1.0, 0.0]]), a)[:, None] * np.array([0, 1, 0])
    for hole in holes.values():
        for (j, i), p in zip(hole["loop"], hole["points"]):
            pos[j, i] = p

    # the mouth slit along row j_mouth between the two corner columns
    jm = grid.j_mouth
    ref = _Anatomy()  # the slit's extent is topology: the same for every seed
    th_c, _ = grid.angles_of(np.array([[ref.mouth_half_w, ref.mouth_y, ref.lip_z - 0.012]]))
    half = max(int(np.round(grid.s_of_theta(th_c)[0] * n)) - n // 2, 1)
    slit_cols = np.arange(n // 2 - half, n // 2 + half + 1)  # corners included
    inner = slit_cols[1:-1]
    x = pos[jm, inner, 0]
    depth = 0.0032 * np.clip(1 - (x / a.mouth_half_w) ** 2, 0, 1) ** 0.5
    for dj, frac in ((-1, 0.25), (1, 0.25)):  # roll the lip edges inwards a little
        pos[jm + dj, inner, 2] -= frac * depth
    lower_pos = pos[jm, inner].copy()
    pos[jm, inner, 2] -= depth
    pos[jm, inner, 1] += 0.00025
    lower_pos[:, 2] -= depth
    lower_pos[:, 1] -= 0.00025

    # vertex ids: pole, rows 1..jl (n each), lower slit copies; then drop the hole interiors and compact
    gid = np.full((rows_all, n + 1), -1, dtype=np.int64)
    gid[0, :] = 0
    gid[1:, :n] = 1 + np.arange(jl * n).reshape(jl, n)
    gid[:, n] = gid[:, 0]
    n_grid = 1 + jl * n
    lower_id = n_grid + np.arange(len(inner))
    verts = np.concatenate([pole, pos[1:].reshape(-1, 3), lower_pos])
    gparam = np.concatenate([[[0.5 * n, 0.0]], param[1:, :n].reshape(-1, 2), param[jm, inner]])
    gparam[:, 0] /= n

    # uv ids: one per (row >= 1, column 0..n), per-corner ids at the pole, the lower slit copies
    uv_rows = param[1:, :, :].reshape(-1, 2) / (n, jl)
    uvid = np.full((rows_all, n + 1), -1, dtype=np.int64)
    uvid[1:] = np.arange(jl * (n + 1)).reshape(jl, n + 1)
    uv_pole = np.stack([(np.arange(n) + 0.5) / n, np.zeros(n)], -1)
    uv_lower = param[jm, inner] / (n, jl)
    uv_param = np.concatenate([uv_rows, uv_pole, uv_lower])
    pole_uv0, lower_uv0 = jl * (n + 1), jl * (n + 1) + n
    uv = np.stack([uv_param[:, 0], 1 - uv_param[:, 1] * (1 - _UV_HEAD_BOTTOM)], -1)

    faces, faces_uv = [], []
    j = np.arange(1, jl)[:, None]
    i = np.arange(n)[None, :]
    keep = ~(removed[j, i] | removed[j + 1, i] | removed[j, i + 1] | removed[j + 1, i + 1])
    # a hole is a 1-row strip: drop the cells that touch a removed vertex or lie between the hole's rows
    for hole in holes.values():
        r = hole["j0"]
        for jj in (r, r + 1):
            keep[jj - 1, hole["i0"]:hole["i1"]] = False
    jj, ii = np.broadcast_to(j, keep.shape)[keep], np.broadcast_to(i, keep.shape)[keep]
    va, vb, vc, vd = gid[jj, ii], gid[jj, ii + 1], gid[jj + 1, ii + 1], gid[jj + 1, ii]
    ta, tb, tc, td = uvid[jj, ii], uvid[jj, ii + 1], uvid[jj + 1, ii + 1], uvid[jj + 1, ii]
    # cells below the slit use the lower copies of the slit vertices
    below = jj == jm
    slit_map = dict(zip(inner.tolist(), range(len(inner))))
    for col, dst in ((ii, (va, ta)), (ii + 1, (vb, tb))):
        sel = below & np.isin(col, inner)
        k = np.array([slit_map[c] for c in col[sel]], dtype=np.int64)
        dst[0][sel], dst[1][sel] = lower_id[k], lower_uv0 + k
    faces += [np.stack([va, vd, vc], 1), np.stack([va, vc, vb], 1)]
    faces_uv += [np.stack([ta, td, tc], 1), np.stack([ta, tc, tb], 1)]
    # the crown: a fan around the pole
    ring = gid[1, :n + 1]
    faces.append(np.stack([np.zeros(n, np.int64), ring[:-1], ring[1:]], 1))
    faces_uv.append(np.stack([pole_uv0 + np.arange(n), uvid[1, :n], uvid[1, 1:n + 1]], 1))
    faces, faces_uv = np.concatenate(faces), np.concatenate(faces_uv)

    # drop the vertices inside the eye openings and compact
    used = np.zeros(len(verts), dtype=bool)
    used[faces.ravel()] = True
    remap = -np.ones(len(verts), dtype=np.int64)
    remap[used] = np.arange(used.sum())
    verts, gparam, faces = verts[used], gparam[used], remap[faces]
    uv_used = np.zeros(len(uv), dtype=bool)
    uv_used[faces_uv.ravel()] = True
    uv_remap = -np.ones(len(uv), dtype=np.int64)
    uv_remap[uv_used] = np.arange(uv_used.sum())
    uv, faces_uv = uv[uv_used], uv_remap[faces_uv]

    # per-vertex helpers: which side of the mouth slit / of each eye opening a vertex lies on
    lip_side = np.zeros(len(verts))
    near = (np.abs(gparam[:, 1] - jm) <= 4) & (np.abs(gparam[:, 0] * n - n / 2) <= half + 3)
    lip_side[near] = np.sign(jm + 0.5 - gparam[near, 1] - 1e-9)  # rows above and the slit row itself: upper
    lip_side[remap[lower_id]] = -1.0
    margins, lid_side = {}, np.zeros(len(verts))
    for name, hole in holes.items():
        w = hole["w"]
        loop_ids = remap[[gid[j_, i_] for j_, i_ in hole["loop"]]]
        up = loop_ids[: w + 3]  # lateral canthus, upper lid, medial canthus
        lo = np.concatenate([loop_ids[w + 2:], loop_ids[:1]])[::-1]  # lateral canthus ... medial canthus
        margins[name] = (up, lo)
        in_win = (np.abs(gparam[:, 0] * n - 0.5 * (hole["i0"] + hole["i1"])) <= 0.5 * w + res.window) & (
            np.abs(gparam[:, 1] - (hole["j0"] + 1)) <= 1 + res.window
        )
        lid_side[in_win] = np.sign(hole["j0"] + 1 - gparam[in_win, 1])
        lid_side[up[1:-1]], lid_side[lo[1:-1]] = 1.0, -1.0
    slit = (remap[gid[jm, slit_cols]], remap[np.concatenate([[gid[jm, slit_cols[0]]], lower_id,
                                                              [gid[jm, slit_cols[-1]]]])])
    neck_rings = remap[gid[grid.j_end:jl + 1, :n]]

    # eyeballs
    eyeballs = {}
    all_v, all_f, all_uv, all_fuv = [verts], [faces], [uv], [faces_uv]
    n_v, n_t = len(verts), len(uv)
    for name, side, uc in (("left", 1.0, (0.75, 0.11)), ("right", -1.0, (0.25, 0.11))):
        e = np.asarray(a.eye_c) * (side, 1, 1)
        ev, ef, euv, efuv = _eyeball(e, a.eye_r, res.eyeball_rings, res.eyeball_segments, uc, 0.1)
        eyeballs[name] = n_v + np.arange(len(ev))
        all_v.append(ev), all_f.append(ef + n_v), all_uv.append(euv), all_fuv.append(efuv + n_t)
        n_v, n_t = n_v + len(ev), n_t + len(euv)
    n_eye = n_v - len(verts)
    return _Mesh(
        verts=np.concatenate(all_v), faces=np.concatenate(all_f), uv=np.concatenate(all_uv),
        faces_uv=np.concatenate(all_fuv),
        grid_param=np.concatenate([gparam, np.full((n_eye, 2), np.nan)]),
        eyeballs=eyeballs, eye_margins=margins, mouth_slit=slit, neck_rings=neck_rings,
        lip_side=np.concatenate([lip_side, np.zeros(n_eye)]), lid_side=np.concatenate([lid_side, np.zeros(n_eye)]),
        grid_rows={"eye_top": grid.j_eye_top, "mouth": grid.j_mouth, "end": grid.j_end},
    )


# ----------------------------------------------------------------------------------------------------------------
# annotations: joints, feature curves, landmarks, regions


def _project_front(a: _Anatomy, xy: np.ndarray) -> np.ndarray:
    """Points (N, 3) of the head surface seen from the front at image positions xy (N, 2)."""
    xy = np.asarray(xy, dtype=np.float64)
    org = np.stack([xy[:, 0], xy[:, 1], np.full(len(xy), -0.01)], -1)
    fwd = np.broadcast_to(np.array([0.0, 0.0, 1.0]), org.shape)
    return org + _raycast(org, fwd, a)[:, None] * fwd


def resample_polyline(points: np.ndarray, fractions) -> np.ndarray:
    """Points at the given fractions (0 first, 1 last) of a polyline's arc length. points: (N, 3)."""
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)]) / max(seg.sum(), 1e-12)
    f = np.asarray(fractions, dtype=np.float64)
    return np.stack([np.interp(f, arc, points[:, k]) for k in range(3)], axis=-1)


def _feature_curves(a: _Anatomy, mesh: _Mesh) -> dict[str, np.ndarray]:
    v = mesh.verts
    curves = {}
    for name, (up, lo) in mesh.eye_margins.items():
        flip = (lambda ids: ids[::-1]) if name == "left" else (lambda ids: ids)  # lateral->medial to -x->+x
        curves[f"{name}_eye_upper"], curves[f"{name}_eye_lower"] = v[flip(up)], v[flip(lo)]
    upper, lower = mesh.mouth_slit
    curves["lips_inner_upper"], curves["lips_inner_lower"] = v[upper], v[lower]
    x_c = v[upper[[0, -1]], 0]
    xs = np.linspace(x_c[0] - 0.001, x_c[1] + 0.001, 21)
    for part, is_upper in (("upper", True), ("lower", False)):
        ys = a.mouth_y + _lip_outline(a, xs, is_upper)
        pts = _project_front(a, np.stack([xs, ys], -1))
        pts[[0, -1]] = v[upper[[0, -1]]] + np.array([[-0.001, 0, 0], [0.001, 0, 0]])
        curves[f"lips_outer_{part}"] = pts
    u = np.linspace(0.0, 1.0, 11)  # medial -> lateral
    x_b = 0.012 + u * (0.041 + 0.5 * (a.eye_half_w - 0.0103))
    y_c = a.brow_y + 0.004 * np.sin(np.pi * u**0.8) - 0.003 * u
    thick = 0.0085 - 0.004 * u
    for name, side in (("left", 1.0), ("right", -1.0)):
        order = slice(None) if side > 0 else slice(None, None, -1)  # -x -> +x
        for part, sgn in (("upper", 0.5), ("lower", -0.5)):
            pts = _project_front(a, np.stack([side * x_b, y_c + sgn * thick], -1))
            curves[f"{name}_brow_{part}"] = pts[order]
    nas, tip = np.asarray(a.nasion), np.asarray(a.nose_tip)
    ridge_y = np.linspace(nas[1] - 0.004, tip[1], 9)
    curves["nose_ridge"] = _project_front(a, np.stack([np.zeros_like(ridge_y), ridge_y], -1))
    alar = np.asarray(a.alar)
    bx = np.linspace(-1.0, 1.0, 9) * (alar[0] + 0.002)
    by = alar[1] - 0.002 - 0.0055 * (1 - (bx / (alar[0] + 0.002)) ** 2) ** 0.5
    curves["nose_base"] = _project_front(a, np.stack([bx, by], -1))
    return curves


def _skin_faces(mesh: _Mesh) -> np.ndarray:
    eyeball = np.zeros(len(mesh.verts), dtype=bool)
    for ids in mesh.eyeballs.values():
        eyeball[ids] = True
    return np.nonzero(~eyeball[mesh.faces].any(axis=1))[0]


@dataclass
class ContourSlices:
    """The 17 jawline slices the yaw-dependent iBUG contour slides along.

    Slice k is the intersection of the jaw/cheek surface with a plane that contains the viewing axis (z) and the
    ray from the face centre in image direction ``normal[k]``; at a given yaw, contour point k is the slice point
    that lies farthest along ``normal[k]`` in the image (the silhouette of the jaw along that slice).

    Attributes:
        points: list of 17 (N_k, 3) slice points on the rest surface.
        faces: list of 17 (N_k,) faces holding them; bary: list of 17 (N_k, 3) barycentrics.
        normal: (17, 3) outward image-plane directions (z = 0), point 0 on the subject's right (-x).
    """

    points: list
    faces: list
    bary: list
    normal: np.ndarray


def jaw_contour_slices(
    centre: np.ndarray, verts: np.ndarray, faces: np.ndarray, candidate_faces: np.ndarray, fallback_faces=None
) -> ContourSlices:
    """Intersect the candidate faces with the 17 contour planes (see :class:`ContourSlices`).

    Args:
        centre: (3,) the face centre the planes pass through.
        verts: (V, 3). faces: (F, 3). candidate_faces: (F',) ids of the jaw/cheek faces the contour may use.
        fallback_faces: faces to use for a slice that misses every candidate (coarse meshes).
    """
    o = np.asarray(centre, dtype=np.float64)
    slices = _slice_faces(o, verts, faces, np.asarray(candidate_faces))
    if fallback_faces is not None and any(len(p) == 0 for p in slices.points):
        backup = _slice_faces(o, verts, faces, np.asarray(fallback_faces))
        for k in range(17):
            if len(slices.points[k]) == 0:
                slices.points[k], slices.faces[k], slices.bary[k] = backup.points[k], backup.faces[k], backup.bary[k]
    return slices


def _slice_faces(o: np.ndarray, verts: np.ndarray, faces: np.ndarray, candidate_faces: np.ndarray) -> ContourSlices:
    psi0 = np.deg2rad(5.0)
    psi = np.pi + psi0 + np.arange(17) / 16 * (np.pi - 2 * psi0)
    normal = np.stack([np.cos(psi), np.sin(psi), np.zeros(17)], -1)
    plane_n = np.stack([-np.sin(psi), np.cos(psi), np.zeros(17)], -1)
    fc = faces[candidate_faces]
    out_p, out_f, out_b = [], [], []
    for k in range(17):
        sd = (verts - o) @ plane_n[k]
        pts, fids, bars = [], [], []
        for i, j in ((0, 1), (1, 2), (2, 0)):
            a_, b_ = sd[fc[:, i]], sd[fc[:, j]]
            cross = (a_ * b_ < 0) | ((a_ == 0) & (b_ != 0))
            t = a_[cross] / (a_[cross] - b_[cross])
            bar = np.zeros((cross.sum(), 3))
            bar[:, i], bar[:, j] = 1 - t, t
            pts.append(np.einsum("nk,nkd->nd", bar, verts[fc[cross]]))
            fids.append(candidate_faces[cross])
            bars.append(bar)
        p, f, b = np.concatenate(pts), np.concatenate(fids), np.concatenate(bars)
        ahead = (p - o) @ normal[k] > 0
        out_p.append(p[ahead]), out_f.append(f[ahead]), out_b.append(b[ahead])
    return ContourSlices(out_p, out_f, out_b, normal)


def contour_at_yaw(slices: ContourSlices, yaw_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """The 17 jawline landmarks (faces (17,), bary (17, 3)) seen at a head yaw (rotation about +y, degrees)."""
    c, s = np.cos(np.deg2rad(yaw_deg)), np.sin(np.deg2rad(yaw_deg))
    rot = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    f_out, b_out = np.empty(17, dtype=np.int64), np.empty((17, 3))
    for k in range(17):
        best = np.argmax(slices.points[k] @ rot.T @ slices.normal[k])
        f_out[k], b_out[k] = slices.faces[k][best], slices.bary[k][best]
    return f_out, b_out


def contour_candidate_faces(a: _Anatomy, mesh: _Mesh) -> np.ndarray:
    """Faces of the jaw, cheeks and chin the contour may run over: in front of the ears, above the jaw line,
    not facing down (the under-chin), not on ears, neck or eyeballs."""
    v = mesh.verts
    normals = vertex_normals(v, mesh.faces)
    gon, chin = np.asarray(a.gonion), np.asarray(a.chin)
    f = np.clip((v[:, 2] - gon[2]) / (chin[2] - gon[2]), 0.0, 1.0)
    y_jaw = gon[1] + f * (a.menton_y - gon[1])
    ok = (v[:, 1] > y_jaw - 0.004) & (normals[:, 1] > -0.85)
    ok &= v[:, 2] > a.ear_c[2] + a.ear_r[2] + 0.004
    ok &= np.abs(v[:, 0]) < a.ear_c[0] - 0.004
    ok &= v[:, 1] < a.eye_c[1] - 0.008
    skin = _skin_faces(mesh)
    return skin[ok[mesh.faces[skin]].all(axis=1)]


def contour_centre(a: _Anatomy) -> np.ndarray:
    return np.array([0.0, 0.5 * (a.eye_c[1] + a.nose_tip[1]) - 0.004, 0.0])


def _ibug68(a: _Anatomy, mesh: _Mesh, curves: dict[str, np.ndarray], contour: ContourSlices):
    """The 68 iBUG landmarks (faces (68,), bary (68, 3)): the frontal jawline silhouette, then 51 points from the
    feature curves."""
    jaw_f, jaw_b = contour_at_yaw(contour, 0.0)
    r = resample_polyline
    third = [0.0, 1 / 3, 2 / 3, 1.0]
    pts = [
        r(curves["right_brow_upper"], np.linspace(0, 1, 5)),  # 17-21
        r(curves["left_brow_upper"], np.linspace(0, 1, 5)),  # 22-26
        r(curves["nose_ridge"], np.linspace(0, 1, 4)),  # 27-30
        r(curves["nose_base"], np.linspace(0.12, 0.88, 5)),  # 31-35
    ]
    for side in ("right", "left"):  # 36-41, 42-47: from the -x corner along the upper lid, back along the lower
        up, lo = r(curves[f"{side}_eye_upper"], third), r(curves[f"{side}_eye_lower"], third)
        pts.append(np.concatenate([up, lo[[2, 1]]]))
    six = np.linspace(0, 1, 7)
    ou, ol = r(curves["lips_outer_upper"], six), r(curves["lips_outer_lower"], six)
    pts.append(np.concatenate([ou, ol[5:0:-1]]))  # 48-59
    four = np.linspace(0, 1, 5)
    iu, il = r(curves["lips_inner_upper"], four), r(curves["lips_inner_lower"], four)
    pts.append(np.concatenate([iu, il[3:0:-1]]))  # 60-67
    pts = np.concatenate(pts)
    f, b = closest_points_on_mesh(mesh.verts, mesh.faces, pts, _skin_faces(mesh))
    return np.concatenate([jaw_f, f]), np.concatenate([jaw_b, b])


def _joints(a: _Anatomy, mesh: _Mesh) -> np.ndarray:
    v = mesh.verts
    root = v[mesh.neck_rings[-2:]].reshape(-1, 3).mean(axis=0)  # centre of the neck's last two rings
    neck_y = a.mouth_y + 0.006
    neck = np.array([0.0, neck_y, float(_neck_axis_z(np.array(neck_y), a)) + 0.004])
    eyes = [np.asarray(a.eye_c) * (s, 1, 1) for s in (1.0, -1.0)]
    return np.stack([root, neck, np.asarray(a.jaw_hinge, dtype=np.float64), *eyes])


def _regions(a: _Anatomy, mesh: _Mesh, joints: np.ndarray) -> dict[str, np.ndarray]:
    """FLAME's named vertex regions, from positions on the rest head."""
    v = mesh.verts
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    nv = len(v)
    eyeball = np.zeros(nv, dtype=bool)
    for ids in mesh.eyeballs.values():
        eyeball[ids] = True
    skin = ~eyeball
    ear = {}
    for name, side in (("left", 1.0), ("right", -1.0)):
        c = np.asarray(a.ear_c) * (side, 1, 1)
        ear[name] = skin & (_sd_ellipsoid(v, c, np.asarray(a.ear_r) + 0.003) < 0.0) & (side * x > 0.055)
    any_ear = ear["left"] | ear["right"]
    boundary = np.zeros(nv, dtype=bool)
    boundary[mesh.neck_rings[-2:].ravel()] = True
    gon = np.asarray(a.gonion)
    f = np.clip((z - gon[2]) / (a.chin[2] - gon[2]), 0.0, 1.0)
    below_jaw = y < gon[1] + f * (a.menton_y - gon[1]) - 0.004
    neck = skin & (below_jaw | (y < a.neck_bottom + 0.035)) & (z < a.chin[2] - 0.01) & ~any_ear
    hairline = a.brow_y + 0.045
    ear_front = a.ear_c[2] + a.ear_r[2]
    face = skin & ~neck & ~any_ear & (y < hairline) & (z > ear_front) & (np.abs(x) < a.ear_c[0] - 0.006)
    scalp = skin & ~neck & ~any_ear & ~face
    eye_reg = {}
    for name, side in (("left", 1.0), ("right", -1.0)):
        e = np.asarray(a.eye_c) * (side, 1, 1)
        q = ((x - e[0]) / 0.025) ** 2 + ((y - e[1] - 0.004) / 0.021) ** 2
        eye_reg[name] = skin & (q < 1.0) & (z > e[2] - 0.02)
    forehead = face & (y > a.brow_y + 0.006) & (z > 0.0) & (np.abs(x) < 0.06)
    nose = skin & (_head_sdf_nose_distance(v, a) < 0.0025) & (y > a.alar[1] - 0.012) & (y < a.nasion[1] + 0.004)
    nose &= np.abs(x) < a.alar[0] + 0.01
    lips = skin & (((x / (a.mouth_half_w + 0.006)) ** 2 + ((y - a.mouth_y) / 0.015) ** 2) < 1) & (z > a.lip_z - 0.03)
    regions = {
        "face": face, "eye_region": eye_reg["left"] | eye_reg["right"], "left_eye_region": eye_reg["left"],
        "right_eye_region": eye_reg["right"], "forehead": forehead, "nose": nose, "lips": lips,
        "left_ear": ear["left"], "right_ear": ear["right"], "neck": neck, "scalp": scalp, "boundary": boundary,
    }
    out = {name: np.nonzero(mask)[0].astype(np.int64) for name, mask in regions.items()}
    out["left_eyeball"] = mesh.eyeballs["left"].astype(np.int64)
    out["right_eyeball"] = mesh.eyeballs["right"].astype(np.int64)
    return {name: out[name] for name in REGION_NAMES}


def _head_sdf_nose_distance(p: np.ndarray, a: _Anatomy) -> np.ndarray:
    """Distance-like field of the nose primitives alone (for the nose region)."""
    pa = _mirror_x(p)
    nas, tip, alar = np.asarray(a.nasion), np.asarray(a.nose_tip), np.asarray(a.alar)
    nose = _sd_round_cone(p, nas, tip - (0.0, 0.0, 0.004), 0.0075, 0.0095)
    nose = np.minimum(nose, _sd_ellipsoid(pa, alar, (0.0085, 0.0078, 0.0095)))
    return nose


# ----------------------------------------------------------------------------------------------------------------
# bases


def _normalized(field: np.ndarray, amplitude: float) -> np.ndarray:
    """Scale a displacement field (V, 3) so that its largest vertex displacement is ``amplitude`` metres."""
    peak = np.linalg.norm(field, axis=1).max()
    return field * (amplitude / peak) if peak > 0 else field


def _eyeballs_rigid(field: np.ndarray, mesh: _Mesh) -> np.ndarray:
    """Make each eyeball follow its lid margin rigidly (mean displacement of the margin vertices)."""
    for name, ids in mesh.eyeballs.items():
        up, lo = mesh.eye_margins[name]
        field[ids] = field[np.concatenate([up, lo])].mean(axis=0)
    return field


def _random_fourier_field(p: np.ndarray, rng: np.random.Generator, wavelength: float, n_waves: int = 8):
    """A smooth random vector field (V, 3): a sum of plane waves with random directions, phases, amplitudes."""
    k = rng.standard_normal((n_waves, 3))
    k *= (2 * np.pi / wavelength) / np.linalg.norm(k, axis=1, keepdims=True)
    phase = rng.uniform(0, 2 * np.pi, n_waves)
    amp = rng.standard_normal((n_waves, 3))
    return np.sin(p @ k.T + phase) @ amp / np.sqrt(n_waves)


def _identity_basis(a: _Anatomy, mesh: _Mesh, n: int, seed: int) -> np.ndarray:
    """(V, 3, n) identity blendshapes with decaying energy.

    The first components are semantic (size, width, height, depth, face length, jaw width, nose length and
    width, brow ridge, cheekbones, chin, lips, eye depth, forehead slope, ears, neck, mouth width, cheeks); the
    rest are smooth random fields whose wavelength shrinks from ~15 cm to ~1.5 cm.
    """
    v = mesh.verts
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    c = np.array([0.0, 0.0, -0.01])
    zero = np.zeros_like(x)
    vm = _mirror_x(v)
    face_w = _smoothstep(-0.02, 0.04, z)
    lower = _smoothstep(a.eye_c[1], a.mouth_y, y)
    nose_w = _gauss(v, (0.0, -0.005, 0.1), (0.012, 0.022, 0.02))
    alar_w = _gauss(vm, a.alar, (0.01, 0.01, 0.012))
    brow_w = _gauss(vm, (0.03, a.brow_y, a.brow_z), (0.03, 0.009, 0.02))
    zyg_w = _gauss(vm, a.zygoma, (0.018, 0.014, 0.02))
    chin_w = _gauss(v, a.chin, (0.022, 0.018, 0.03))
    lip_w = _gauss(v, (0.0, a.mouth_y, a.lip_z), (0.022, 0.009, 0.01))
    ear_w = _gauss(vm, a.ear_c, (0.015, 0.035, 0.025))
    neck_w = _smoothstep(a.menton_y + 0.01, a.neck_bottom + 0.03, y) * (1 - face_w * _smoothstep(-0.09, -0.06, y))
    jaw_w = _gauss(vm, a.gonion, (0.025, 0.025, 0.04)) + 0.6 * chin_w
    eye_w = sum(_gauss(v, np.asarray(a.eye_c) * (s, 1, 1), (0.02, 0.016, 0.02)) for s in (1, -1))
    cheek_w = _gauss(vm, (0.048, -0.03, 0.04), (0.02, 0.022, 0.025))
    semantic = [
        (np.stack([x, y, z + 0.01], -1), 0.009),  # overall size
        (np.stack([x, zero, zero], -1), 0.007),  # head width
        (np.stack([zero, np.maximum(y - a.eye_c[1], 0), zero], -1), 0.006),  # cranial height
        (np.stack([zero, zero, np.minimum(z - c[2], 0)], -1), 0.006),  # head depth (occiput)
        (np.stack([zero, -lower * face_w, zero], -1), 0.005),  # face length
        (np.stack([x * jaw_w, zero, zero], -1), 0.004),  # jaw width
        (np.stack([zero, -0.35 * nose_w, nose_w], -1), 0.004),  # nose length / projection
        (np.stack([x * alar_w, zero, zero], -1), 0.0025),  # nose width
        (np.stack([zero, 0.2 * brow_w, brow_w], -1), 0.003),  # brow ridge
        (np.stack([np.sign(x) * zyg_w, zero, 0.6 * zyg_w], -1), 0.003),  # cheekbones
        (np.stack([zero, -0.3 * chin_w, chin_w], -1), 0.004),  # chin protrusion
        (np.stack([zero, (y - a.mouth_y) * 60 * lip_w, lip_w], -1), 0.002),  # lip fullness
        (np.stack([zero, zero, -eye_w], -1), 0.002),  # eye depth
        (np.stack([zero, zero, _smoothstep(a.brow_y, a.crown, y) * face_w], -1), 0.004),  # forehead slope
        (np.stack([np.sign(x) * ear_w, zero, -0.3 * ear_w], -1), 0.003),  # ear protrusion
        (np.stack([x * neck_w, zero, (z - a.neck_z) * neck_w], -1), 0.004),  # neck thickness
        (np.stack([x * lip_w, zero, zero], -1), 0.002),  # mouth width
        (np.stack([np.sign(x) * cheek_w, zero, 0.3 * cheek_w], -1), 0.003),  # cheek fullness
    ]
    rng = np.random.default_rng([seed, 1])
    fields = [_normalized(_eyeballs_rigid(f, mesh), amp) for f, amp in semantic][:n]
    for k in range(len(fields), n):
        wavelength = 0.15 / (1 + (k - len(semantic)) / 30)
        amp = 0.0015 * (len(semantic) / (k + 1)) ** 1.5
        fields.append(_normalized(_eyeballs_rigid(_random_fourier_field(v, rng, wavelength), mesh), amp))
    return np.stack(fields, axis=-1)


def _expression_basis(a: _Anatomy, mesh: _Mesh, n: int, seed: int) -> np.ndarray:
    """(V, 3, n) localized expression blendshapes: ~28 named facial actions, then random smooth bumps on the face
    with decaying energy. Jaw opening is not among them (it is the jaw joint)."""
    v = mesh.verts
    x, y = v[:, 0], v[:, 1]
    e = np.asarray(a.eye_c)
    y_m, w_m = a.mouth_y, a.mouth_half_w
    vm = _mirror_x(v)
    up_lip = (mesh.lip_side > 0).astype(np.float64)
    lo_lip = (mesh.lip_side < 0).astype(np.float64)
    far = mesh.lip_side == 0  # away from the slit the side is decided by height
    up_lip[far], lo_lip[far] = (y[far] > y_m), (y[far] <= y_m)
    up_lid = (mesh.lid_side > 0).astype(np.float64)
    lo_lid = (mesh.lid_side < 0).astype(np.float64)
    mouth = _gauss(v, (0.0, y_m, a.lip_z), (0.03, 0.016, 0.03))
    # vertical distance from the slit, 0 on it: lip-on-lip actions leave the slit itself alone so lips never cross
    off_slit = 1 - np.exp(-(((y - y_m) / 0.004) ** 2))

    def side(s):
        return np.asarray((s, 1.0, 1.0))

    def brow(s):
        return _gauss(v, np.asarray((0.033, a.brow_y + 0.004, a.brow_z)) * side(s), (0.02, 0.014, 0.03))

    def inner_brow(s):
        return _gauss(v, np.asarray((0.014, a.brow_y + 0.002, a.brow_z + 0.003)) * side(s), (0.011, 0.012, 0.03))

    def lids(s):
        return _gauss(v, e * side(s) + (0, 0, 0.012), (0.016, 0.011, 0.02))

    def corner(s):
        return _gauss(v, np.asarray((w_m, y_m, a.lip_z - 0.015)) * side(s), (0.011, 0.011, 0.02))

    def cheek(s):
        return _gauss(v, np.asarray((0.04, y_m + 0.018, 0.065)) * side(s), (0.016, 0.014, 0.03))

    def vec(dx, dy, dz):
        return np.stack([np.broadcast_to(d, x.shape) for d in (dx, dy, dz)], -1).astype(np.float64)

    brows = brow(1) + brow(-1)
    # brow actions must not drag the lid margins off the eyeballs: damp them over the eyes
    lid_guard = 1.0 - sum(_gauss(v, e * side(s) + (0, 0, 0.01), (0.014, 0.0075, 0.03)) for s in (1.0, -1.0))
    glabella = _gauss(v, (0.0, a.brow_y, a.brow_z + 0.005), (0.012, 0.012, 0.03))
    lips_near = _gauss(v, (0.0, y_m, a.lip_z), (0.026, 0.012, 0.02))
    semantic = [
        (vec(0, brows + 0.3 * _gauss(v, (0, a.brow_y + 0.03, 0.07), (0.05, 0.025, 0.04)), 0), 0.006),  # brows up
        (vec(-np.sign(x) * 0.5 * brows, -brows - glabella, 0.2 * glabella), 0.004),  # frown
        (vec(0, inner_brow(1) + inner_brow(-1), 0), 0.004),  # inner brows up
        (vec(0, brow(1), 0), 0.005),  # left brow up
        (vec(0, brow(-1), 0), 0.005),  # right brow up
        (vec(0, lids(1) * (lo_lid - 0.4 * up_lid) + 0.5 * cheek(1), 0.2 * cheek(1)), 0.003),  # left squint
        (vec(0, lids(-1) * (lo_lid - 0.4 * up_lid) + 0.5 * cheek(-1), 0.2 * cheek(-1)), 0.003),  # right squint
        (vec(0, (lids(1) + lids(-1)) * up_lid, 0), 0.0025),  # eyes wide
        (vec(0.5 * corner(1), corner(1) + 0.6 * cheek(1), -0.6 * corner(1) + 0.3 * cheek(1)), 0.006),  # smile L
        (vec(-0.5 * corner(-1), corner(-1) + 0.6 * cheek(-1), -0.6 * corner(-1) + 0.3 * cheek(-1)), 0.006),  # R
        (vec(0.2 * corner(1), -corner(1), 0), 0.004),  # left lip corner down
        (vec(-0.2 * corner(-1), -corner(-1), 0), 0.004),  # right lip corner down
        (vec(-x / w_m * 0.6 * mouth, 0, mouth), 0.007),  # pucker
        (vec(-x / w_m * 0.3 * mouth, lips_near * off_slit * (up_lip - lo_lip), 0.8 * mouth), 0.005),  # funnel
        (vec(0, -lips_near * off_slit * (up_lip - lo_lip), -0.5 * lips_near), 0.003),  # lip press
        (vec(x / w_m * mouth, -0.3 * mouth * np.abs(x) / w_m, -0.3 * mouth * np.abs(x) / w_m), 0.005),  # stretch
        (vec(0, lips_near * up_lip * (0.3 + 0.7 * off_slit), 0.3 * lips_near * up_lip), 0.004),  # upper lip up
        (vec(0, -lips_near * lo_lip * (0.3 + 0.7 * off_slit), 0.3 * lips_near * lo_lip), 0.004),  # lower lip down
        (vec(np.sign(x) * (cheek(1) + cheek(-1)), 0, 0.5 * (cheek(1) + cheek(-1))), 0.005),  # cheek puff
        (vec(0, _gauss(vm, a.alar, (0.012, 0.012, 0.02)) + 0.4 * glabella, 0), 0.003),  # nose wrinkle
        (vec(mouth, 0, 0), 0.004),  # mouth left
        (vec(-mouth, 0, 0), 0.004),  # mouth right
        (vec(0, -0.3 * lips_near * (up_lip - lo_lip) * off_slit, -lips_near), 0.003),  # lips roll in
        (vec(0, _gauss(v, a.chin, (0.02, 0.015, 0.03)) + 0.5 * lips_near * lo_lip, 0.3 * lips_near * lo_lip),
         0.004),  # chin raise
        (vec(0, 0, -_gauss(v, np.asarray((w_m + 0.006, y_m, a.lip_z - 0.016)), (0.005, 0.006, 0.02))), 0.002),
        (vec(0, 0, -_gauss(v, np.asarray((-w_m - 0.006, y_m, a.lip_z - 0.016)), (0.005, 0.006, 0.02))), 0.002),
        (vec(0, -0.3 * lips_near * lo_lip, lips_near * lo_lip), 0.003),  # lower lip pout
        (vec(0, 0.3 * lips_near * up_lip, lips_near * up_lip), 0.003),  # upper lip pout
    ]
    for f in semantic[:5]:  # the brow actions
        f[0][:] *= lid_guard[:, None]
    fields = [_normalized(f, 0.6 * amp) for f, amp in semantic][:n]
    rng = np.random.default_rng([seed, 2])
    on_face = (v[:, 2] > 0.03) & (y > a.menton_y) & (y < a.brow_y + 0.03) & ~np.isnan(mesh.grid_param[:, 0])
    face_ids = np.nonzero(on_face)[0]
    for k in range(len(fields), n):
        centre = v[rng.choice(face_ids)]
        radius = 0.022 / (1 + (k - len(semantic)) / 25)
        direction = rng.standard_normal(3)
        bump = _gauss(v, centre, (radius, radius, 2 * radius))[:, None] * direction / np.linalg.norm(direction)
        fields.append(_normalized(bump, 0.0012 * (len(semantic) / (k + 1))))
    for f in fields:  # eyeballs are driven by the eye joints only
        for ids in mesh.eyeballs.values():
            f[ids] = 0.0
    return np.stack(fields, axis=-1)


# ----------------------------------------------------------------------------------------------------------------
# the public entry point


def build_head(size: str = "full", seed: int = 0, n_identity: int = 300, n_expression: int = 100) -> HeadGeometry:
    """Build the procedural head (see the module doc).

    Args:
        size: ``"full"`` (~4,900 vertices, ~9,700 triangles, FLAME-like) or ``"tiny"`` (~130 vertices with the
            same regions, joints and landmarks, for unit tests).
        seed: varies the rest proportions a little and the random parts of the bases; equal seeds give equal
            outputs.
        n_identity: number of identity components K_id.
        n_expression: number of expression components K_exp.

    Returns:
        The :class:`HeadGeometry`.
    """
    if size not in _RESOLUTIONS:
        raise ValueError(f"unknown head size {size!r}; choose one of {SIZES}")
    a = _Anatomy.sample(seed)
    mesh = _build_mesh(a, _RESOLUTIONS[size])
    curves = _feature_curves(a, mesh)
    contour = jaw_contour_slices(contour_centre(a), mesh.verts, mesh.faces, contour_candidate_faces(a, mesh),
                                 _skin_faces(mesh))
    lmk_faces, lmk_bary = _ibug68(a, mesh, curves, contour)
    joints = _joints(a, mesh)
    return HeadGeometry(
        verts=mesh.verts,
        faces=mesh.faces.astype(np.int64),
        uv=mesh.uv,
        faces_uv=mesh.faces_uv.astype(np.int64),
        regions=_regions(a, mesh, joints),
        identity_basis=_identity_basis(a, mesh, n_identity, seed),
        expression_basis=_expression_basis(a, mesh, n_expression, seed),
        joints=joints,
        landmark_faces=lmk_faces,
        landmark_bary=lmk_bary,
        curves=curves,
        eyeball_radius=a.eye_r,
        lip_side=mesh.lip_side,
        lid_side=mesh.lid_side,
        eye_margins=mesh.eye_margins,
        mouth_slit=mesh.mouth_slit,
        neck_rings=mesh.neck_rings,
        grid_param=mesh.grid_param,
        grid_rows=mesh.grid_rows,
        contour=contour,
    )
