"""A procedural FLAME: the synthetic head rigged like FLAME 2020 and written as a FLAME asset folder.

What is built here on top of :func:`~facelab.morphable.synthetic.head.build_head`:

* ``shapedirs`` (V, 3, 400): the head's 300 identity then 100 expression components;
* five joints in FLAME's order (root at the neck base, neck, jaw, left eye, right eye; parents [-1, 0, 1, 1, 1])
  and a ``J_regressor`` whose rows are convex weights over nearby vertices reproducing the joint centres;
* smooth skinning weights: eyeballs rigid on their eye joints, the lower lip, chin and lower face on the jaw with
  a smooth falloff towards the cheeks and the throat, the neck blended between root and neck, the rest of the
  head on the neck joint;
* ``posedirs`` (V, 3, 36): small smooth pose correctives (jaw opening, nodding and turning the neck);
* the eyelid offsets ``l_eyelid`` / ``r_eyelid`` closing each upper lid at weight 1;
* the landmark embeddings: 51 static iBUG points, the 79 x 17 yaw-dependent contour, 105 mediapipe points;
* the region masks and the template UVs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import scipy.optimize

from facelab.morphable.flame_assets import FlameArrays, write_flame_folder
from facelab.morphable.synthetic.head import (
    HeadGeometry,
    build_head,
    closest_points_on_mesh,
    contour_at_yaw,
    resample_polyline,
)

#: FLAME's kinematic tree: root (global), neck, jaw, left eye, right eye.
FLAME_PARENTS = np.array([-1, 0, 1, 1, 1], dtype=np.int64)
NUM_SHAPE = 300
NUM_EXPRESSION = 100
#: Rows of the dynamic contour table: yaw 0..39 then -1..-39 (DECA's layout, see flame_assets).
NUM_YAW_BINS = 79

# The 105 mediapipe face-mesh points of the embedding (indices into mediapipe's 478-point mesh, FACEMESH_* sets of
# mediapipe's face_mesh_connections), grouped by the feature curve they sit on. Mediapipe names sides from the
# subject's point of view like FLAME: its "right eye" (33 ... 133) is the subject's right eye, on the -x side.
# Each list is ordered from -x to +x along its curve. The irises (468-477) and the face oval are not included.
MP_LIPS_OUTER_UPPER = [61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291]  # corners 61 (-x) and 291 (+x)
MP_LIPS_OUTER_LOWER = [146, 91, 181, 84, 17, 314, 405, 321, 375]  # between the corners
MP_LIPS_INNER_UPPER = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308]  # inner corners 78 (-x) and 308 (+x)
MP_LIPS_INNER_LOWER = [95, 88, 178, 87, 14, 317, 402, 318, 324]
MP_RIGHT_EYE_UPPER = [33, 246, 161, 160, 159, 158, 157, 173, 133]  # lateral canthus 33 -> medial canthus 133
MP_RIGHT_EYE_LOWER = [7, 163, 144, 145, 153, 154, 155]
MP_LEFT_EYE_UPPER = [362, 398, 384, 385, 386, 387, 388, 466, 263]  # medial canthus 362 -> lateral canthus 263
MP_LEFT_EYE_LOWER = [382, 381, 380, 374, 373, 390, 249]
MP_RIGHT_BROW_UPPER = [70, 63, 105, 66, 107]  # lateral -> medial
MP_RIGHT_BROW_LOWER = [46, 53, 52, 65, 55]
MP_LEFT_BROW_UPPER = [336, 296, 334, 293, 300]  # medial -> lateral
MP_LEFT_BROW_LOWER = [285, 295, 282, 283, 276]
MP_NOSE_RIDGE = [168, 6, 197, 195, 5, 4, 1]  # between the brows -> nose tip
MP_NOSE_BASE = [98, 97, 2, 326, 327]  # right alar -> subnasale -> left alar
MP_NOSE_COLUMELLA = [19]  # under the tip, between 1 and 2


def _mediapipe_points(head: HeadGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Semantic 3D positions (105, 3) on the rest head and the matching mediapipe indices (105,)."""
    c, r = head.curves, resample_polyline
    inner = np.linspace(0, 1, 11)[1:-1]
    groups = [
        (MP_LIPS_OUTER_UPPER, r(c["lips_outer_upper"], np.linspace(0, 1, 11))),
        (MP_LIPS_OUTER_LOWER, r(c["lips_outer_lower"], inner)),
        (MP_LIPS_INNER_UPPER, r(c["lips_inner_upper"], np.linspace(0, 1, 11))),
        (MP_LIPS_INNER_LOWER, r(c["lips_inner_lower"], inner)),
        (MP_RIGHT_EYE_UPPER, r(c["right_eye_upper"], np.linspace(0, 1, 9))),
        (MP_RIGHT_EYE_LOWER, r(c["right_eye_lower"], np.linspace(0, 1, 9)[1:-1])),
        (MP_LEFT_EYE_UPPER, r(c["left_eye_upper"], np.linspace(0, 1, 9))),
        (MP_LEFT_EYE_LOWER, r(c["left_eye_lower"], np.linspace(0, 1, 9)[1:-1])),
        (MP_RIGHT_BROW_UPPER, r(c["right_brow_upper"], np.linspace(0, 1, 5))),
        (MP_RIGHT_BROW_LOWER, r(c["right_brow_lower"], np.linspace(0, 1, 5))),
        (MP_LEFT_BROW_UPPER, r(c["left_brow_upper"], np.linspace(0, 1, 5))),
        (MP_LEFT_BROW_LOWER, r(c["left_brow_lower"], np.linspace(0, 1, 5))),
    ]
    brow_mid = 0.5 * (c["right_brow_lower"][-1] + c["left_brow_lower"][0])
    ridge = np.concatenate([brow_mid[None] * (0, 1, 1), r(c["nose_ridge"], np.linspace(0, 1, 6))])
    groups.append((MP_NOSE_RIDGE, ridge))
    base = r(c["nose_base"], [0.0, 0.3, 0.5, 0.7, 1.0])
    groups.append((MP_NOSE_BASE, base))
    groups.append((MP_NOSE_COLUMELLA, (0.5 * (ridge[-1] + base[2]))[None]))
    indices = np.concatenate([np.asarray(i) for i, _ in groups])
    points = np.concatenate([p for _, p in groups])
    return points, indices


def _skin_faces(head: HeadGeometry) -> np.ndarray:
    eyeball = np.zeros(head.num_verts, dtype=bool)
    eyeball[head.regions["left_eyeball"]] = eyeball[head.regions["right_eyeball"]] = True
    return np.nonzero(~eyeball[head.faces].any(axis=1))[0]


def _convex_weights(points: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Non-negative weights summing to 1 with ``weights @ points == target``, as close to uniform as possible.

    Solved as a bounded least-squares problem: the reproduction and sum rows are weighted heavily, a small
    ridge towards the uniform weights picks the smoothest of the exact solutions.
    """
    n = len(points)
    uniform = np.full(n, 1.0 / n)
    big, ridge = 1e4, 1e-3
    lhs = np.concatenate([big * points.T, big * np.ones((1, n)), ridge * np.eye(n)])
    rhs = np.concatenate([big * target, [big], ridge * uniform])
    w = scipy.optimize.lsq_linear(lhs, rhs, bounds=(0.0, 1.0), method="bvls").x
    return w / w.sum()


def joint_regressor(head: HeadGeometry) -> np.ndarray:
    """(J, V) convex joint regressor over vertices near each joint (neck rings, jaw angles, eyeballs)."""
    v, joints = head.verts, head.joints
    reg = np.zeros((len(joints), len(v)))
    skin = np.ones(len(v), dtype=bool)
    skin[head.regions["left_eyeball"]] = skin[head.regions["right_eyeball"]] = False
    skin_ids = np.nonzero(skin)[0]
    candidates = [
        head.neck_rings[-2:].ravel(),  # root: the base of the neck
        skin_ids[np.argsort(np.abs(v[skin_ids, 1] - joints[1, 1]) + 0.3 * np.abs(v[skin_ids, 0]))[:48]],  # neck
    ]
    hinge = []
    for side in (1.0, -1.0):  # the jaw: skin over both jaw hinges
        d = np.linalg.norm(v[skin_ids] - joints[2] - (side * 0.06, 0.0, 0.0), axis=1)
        hinge.append(skin_ids[np.argsort(d)[:40]])
    candidates.append(np.concatenate(hinge))
    candidates += [head.regions["left_eyeball"], head.regions["right_eyeball"]]
    for j, ids in enumerate(candidates):
        reg[j, ids] = _convex_weights(v[ids], joints[j])
    return reg


def _smoothstep(e0, e1, x):
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def skinning_weights(head: HeadGeometry) -> np.ndarray:
    """(V, 5) smooth skinning weights (rows sum to 1), see the module doc.

    The jaw region is delimited in the head's grid parameters: below the mouth slit in front (the slit's two
    vertex copies fall on either side, so the mouth opens), rising smoothly towards the jaw hinge behind the
    cheeks, with a transition that is sharp at the lips and widens over the cheeks; it fades out over the first
    neck rows and behind the ears.
    """
    v = head.verts
    nv = len(v)
    weights = np.zeros((nv, 5))
    s, t = head.grid_param[:, 0], head.grid_param[:, 1]
    head_v = ~np.isnan(s)
    j_m, j_end = head.grid_rows["mouth"], head.grid_rows["end"]
    upper, lower = head.mouth_slit
    t_eff = t.copy()
    t_eff[upper[1:-1]] -= 0.5  # the slit's upper copies count as above it, the lower copies as below
    t_eff[lower[1:-1]] += 0.5
    theta = np.abs(np.arctan2(v[:, 0], v[:, 2] - head.joints[2, 2]))
    corner = np.abs(np.arctan2(v[upper[0], 0], v[upper[0], 2] - head.joints[2, 2]))
    ear = np.deg2rad(80.0)
    hinge_row = j_m - 0.45 * (j_m - head.grid_rows["eye_top"])
    rise = _smoothstep(corner, ear, theta)
    t_b = j_m - (j_m - hinge_row) * rise
    eps = 0.45 + 3.0 * _smoothstep(corner * 0.8, corner + 0.35, theta)
    jaw = _smoothstep(-eps, eps, t_eff - t_b)
    jaw *= 1.0 - _smoothstep(ear - 0.1, ear + 0.15, theta)  # nothing behind the ears
    jaw *= 1.0 - _smoothstep(j_end + 0.5, j_end + 3.0, t)  # fade out down the throat
    neck_bottom = v[head.neck_rings[-1], 1].mean()
    root = _smoothstep(neck_bottom + 0.045, neck_bottom + 0.004, v[:, 1])
    root[~np.isin(np.arange(nv), head.regions["neck"]) & (t < j_end)] = 0.0
    jaw = np.where(head_v, jaw * (1 - root), 0.0)
    root = np.where(head_v, root, 0.0)
    weights[:, 0], weights[:, 2] = root, jaw
    weights[:, 1] = np.where(head_v, 1.0 - root - jaw, 0.0)
    weights[head.regions["left_eyeball"], 3] = 1.0
    weights[head.regions["right_eyeball"], 4] = 1.0
    return weights


def pose_correctives(head: HeadGeometry, weights: np.ndarray) -> np.ndarray:
    """(V, 3, 36) pose-corrective blendshapes driven by the entries of (R_j - I) of joints 1..4.

    Jaw opening (a rotation about +x: sin enters entries (2, 1) and -(1, 2)) pushes the lower lip a little forward,
    draws the blended cheeks in and stretches the skin under the chin; its cos - 1 entries narrow the mouth corners
    for wide openings. Nodding bulges the throat, turning shears the neck skin. Eyes have none (as in FLAME).
    Magnitudes stay within a few millimetres per radian.
    """
    v = head.verts
    nv = len(v)
    dirs = np.zeros((nv, 3, 36))
    w_jaw, w_root = weights[:, 2], weights[:, 0]
    blend = 4.0 * w_jaw * (1.0 - w_jaw)  # the cheeks, where the jaw and head weights meet
    lips = head.curves["lips_inner_lower"]
    centre_lo = lips[len(lips) // 2]
    lower_lip = np.exp(-0.5 * np.sum(((v - centre_lo) / (0.02, 0.008, 0.02)) ** 2, axis=1)) * w_jaw
    under_chin = w_jaw * _smoothstep(head.joints[2, 1] - 0.06, head.joints[2, 1] - 0.085, v[:, 1])
    open_field = np.zeros((nv, 3))
    open_field[:, 2] += 0.002 * lower_lip
    open_field[:, 0] -= 0.003 * np.sign(v[:, 0]) * blend
    open_field[:, 1] -= 0.003 * under_chin
    corner = head.verts[head.mouth_slit[0][-1]]  # the +x mouth corner; the -x one mirrors it
    vm = np.concatenate([np.abs(v[:, :1]), v[:, 1:]], axis=1)
    corners = np.exp(-0.5 * np.sum(((vm - corner) / 0.01) ** 2, axis=1))
    quad_field = np.zeros((nv, 3))
    quad_field[:, 0] = 0.004 * np.sign(v[:, 0]) * corners  # (cos - 1) < 0: the corners move towards the middle
    jaw = 9
    dirs[:, :, jaw + 7] += 0.5 * open_field  # (R - I)[2, 1] = sin
    dirs[:, :, jaw + 5] -= 0.5 * open_field  # (R - I)[1, 2] = -sin
    dirs[:, :, jaw + 4] += 0.5 * quad_field  # (R - I)[1, 1] = cos - 1
    dirs[:, :, jaw + 8] += 0.5 * quad_field  # (R - I)[2, 2] = cos - 1
    neck_zone = 4.0 * w_root * (1.0 - w_root)
    throat = neck_zone * _smoothstep(head.joints[0, 2], head.joints[0, 2] + 0.05, v[:, 2])
    nod = np.stack([np.zeros(nv), -0.3 * throat, throat], -1) * 0.003
    dirs[:, :, 7] += 0.5 * nod
    dirs[:, :, 5] -= 0.5 * nod
    turn = np.stack([neck_zone, np.zeros(nv), np.zeros(nv)], -1) * 0.002
    dirs[:, :, 2] += 0.5 * turn  # (R - I)[0, 2] = sin for a rotation about +y
    dirs[:, :, 6] -= 0.5 * turn  # (R - I)[2, 0] = -sin
    return dirs


def eyelid_offsets(head: HeadGeometry, side: str) -> np.ndarray:
    """(V, 3) offsets that close one upper eyelid at weight 1 (``side`` is "left" or "right").

    The upper lid turns about the horizontal axis through the eyeball centre until its margin meets the lower lid;
    the skin above follows with a falloff over ~9 mm, so the lid slides over the eyeball instead of cutting it.
    """
    v = head.verts
    e = head.joints[3 if side == "left" else 4]
    up, lo = head.eye_margins[side]
    ang_up = np.arctan2(v[up, 1] - e[1], v[up, 2] - e[2])
    order = np.argsort(v[lo, 0])
    ang_lo = np.interp(v[up, 0], v[lo[order], 0], np.arctan2(v[lo, 1] - e[1], v[lo, 2] - e[2])[order])
    close = np.maximum(ang_up - ang_lo - 0.02, 0.0)  # rotate down to just above the lower lid
    close[[0, -1]] = 0.0  # the canthi stay
    order_up = np.argsort(v[up, 0])
    x_up, y_up, c_up = v[up[order_up], 0], v[up[order_up], 1], close[order_up]
    lid = (head.lid_side > 0) | np.isin(np.arange(len(v)), up)
    ids = np.nonzero(lid)[0]
    alpha = np.interp(v[ids, 0], x_up, c_up, left=0.0, right=0.0)
    above = v[ids, 1] - np.interp(v[ids, 0], x_up, y_up)
    alpha *= 1.0 - _smoothstep(0.0, 0.009, above)
    rel = v[ids] - e
    ca, sa = np.cos(alpha), np.sin(alpha)  # R_x(alpha) turns +y towards +z: the lid goes down
    rotated = np.stack([rel[:, 0], ca * rel[:, 1] - sa * rel[:, 2], sa * rel[:, 1] + ca * rel[:, 2]], -1)
    offsets = np.zeros_like(v)
    offsets[ids] = rotated - rel
    return offsets


def dynamic_contour(head: HeadGeometry) -> tuple[np.ndarray, np.ndarray]:
    """The (79, 17) faces and (79, 17, 3) barycentrics of the yaw-dependent jawline, DECA's row layout.

    Row ``a`` holds the contour for a head yaw of ``a`` degrees (a rotation about +y, the face turning towards
    +x) for a in [0, 39], row ``39 - a`` the one for a in [-39, -1]; yaw is that of R_global @ R_neck as DECA
    computes it (``rot_mat_to_euler``, no sign flip).
    """
    faces = np.empty((NUM_YAW_BINS, 17), dtype=np.int64)
    bary = np.empty((NUM_YAW_BINS, 17, 3))
    for row in range(NUM_YAW_BINS):
        yaw = row if row <= 39 else 39 - row
        faces[row], bary[row] = contour_at_yaw(head.contour, float(yaw))
    return faces, bary


def build_flame_arrays(seed: int = 0, size: str = "full") -> FlameArrays:
    """Every array of a FLAME asset folder for the procedural head (see the module doc)."""
    head = build_head(size=size, seed=seed, n_identity=NUM_SHAPE, n_expression=NUM_EXPRESSION)
    weights = skinning_weights(head)
    dyn_faces, dyn_bary = dynamic_contour(head)
    mp_points, mp_indices = _mediapipe_points(head)
    mp_faces, mp_bary = closest_points_on_mesh(head.verts, head.faces, mp_points, _skin_faces(head))
    return FlameArrays(
        v_template=head.verts,
        faces=head.faces,
        shapedirs=np.concatenate([head.identity_basis, head.expression_basis], axis=2),
        posedirs=pose_correctives(head, weights),
        j_regressor=joint_regressor(head),
        weights=weights,
        parents=FLAME_PARENTS.copy(),
        static_lmk_faces=head.landmark_faces[17:].copy(),
        static_lmk_bary=head.landmark_bary[17:].copy(),
        dynamic_lmk_faces=dyn_faces,
        dynamic_lmk_bary=dyn_bary,
        mp_faces=mp_faces,
        mp_bary=mp_bary,
        mp_indices=mp_indices,
        masks={k: v.copy() for k, v in head.regions.items()},
        l_eyelid=eyelid_offsets(head, "left"),
        r_eyelid=eyelid_offsets(head, "right"),
        uv=head.uv,
        faces_uv=head.faces_uv,
    )


def write_synthetic_flame(out_dir: str | os.PathLike, seed: int = 0, size: str = "full") -> Path:
    """Write the procedural FLAME as an official FLAME asset folder (``generic_model.pkl`` and companions)."""
    return write_flame_folder(out_dir, build_flame_arrays(seed=seed, size=size))
