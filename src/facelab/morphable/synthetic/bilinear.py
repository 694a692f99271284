"""The synthetic stand-in for FaceScape's ``facescape_bm_v1.6_847_50_52_id_front.npz``, built on the procedural head.

The core is built in FaceScape's residual form (see :mod:`facelab.morphable.bilinear`) and converted to the
stored, absolute form before writing. With ``w_id = id_mean + sigma * c`` and ``w_exp = [1, b_1 .. b_51]``:

- **neutral face** ``R[:, 0] @ w_id``: factor 0 is the head's overall size (``id_mean[0] = -1``, a negative
  leading factor as in FaceScape's model, whose demos flip the sign of a random factor 0 that comes out positive),
  factors 1..49 the head's first 49 identity components; at ``id_mean`` the neutral face is exactly the head;
- **51 blendshapes** ``R[:, e] @ w_id``: a jaw opening (FaceScape has no jaw joint) and the head's first 50
  localized expression fields, at weight 1 a full expression (several millimetres);
- **bilinear coupling**: each identity factor k >= 1 also rescales every blendshape by a smooth spatial field
  ``1 + beta_k c_k s_k(x)`` (about +-17% in total over the identity prior), and the size factor scales the deltas
  with the head, so a blendshape's shape depends on who makes it; at ``id_mean`` the deltas are exactly the
  head's;
- millimetres, +y up, the face looks along +z; UVs, 68 landmark vertices (``lm_list_v16``) and the frontal vertex
  list (``v_indices_front``, the head's ``face`` region) come from the head.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from facelab.morphable.bilinear import (
    FACESCAPE_NPZ_NAME,
    NUM_EXPRESSIONS,
    SYNTHETIC_JAW_OPEN_RAD,
    core_to_absolute,
    write_facescape_npz,
)
from facelab.morphable.synthetic.bfm import jaw_open_mode
from facelab.morphable.synthetic.head import build_head

NUM_ID = 50
M_TO_MM = 1000.0
_SIZE_STD = 0.03  # relative head-size change of one standard deviation of factor 0
_COUPLING = 0.08  # beta_k = _COUPLING / sqrt(k): identity-dependent rescaling of the blendshapes


def write_synthetic_bilinear(out_dir: str | os.PathLike, seed: int = 0, size: str = "full") -> Path:
    """Write ``facescape_bm_v1.6_847_50_52_id_front.npz`` of the procedural head into ``out_dir``.

    Args:
        out_dir: destination folder (created if needed).
        seed: generator seed; equal seeds give equal files.
        size: ``"full"`` (the ~4.9k-vertex head; the (3V, 52, 50) float32 core, ~150 MB, is written compressed,
            ~50 MB) or ``"tiny"`` (~130 vertices).

    Returns:
        The path of the written ``.npz``.
    """
    head = build_head(size, seed, n_identity=NUM_ID - 1, n_expression=NUM_EXPRESSIONS - 2)
    n = head.num_verts
    rng = np.random.default_rng([seed, 11])
    template = head.verts * M_TO_MM
    id_basis = head.identity_basis * M_TO_MM  # (V, 3, 49), one standard deviation each
    deltas = np.concatenate([jaw_open_mode(head, SYNTHETIC_JAW_OPEN_RAD)[..., None], head.expression_basis], axis=2)
    deltas = deltas * M_TO_MM  # (V, 3, 51)

    k = np.arange(1, NUM_ID)
    sigma = np.concatenate([[_SIZE_STD], 0.2 / np.sqrt(k)])  # std of each identity factor
    id_mean = np.concatenate([[-1.0], 0.05 * rng.standard_normal(NUM_ID - 1)])
    coupling = _COUPLING / np.sqrt(k)[None, :] * _smooth_scalar_fields(head.verts, NUM_ID - 1, rng)  # (V, 49)

    core = np.empty((n, 3, NUM_EXPRESSIONS, NUM_ID))
    core[:, :, 0, 1:] = id_basis / sigma[1:]
    core[:, :, 1:, 1:] = deltas[..., None] * (coupling / sigma[1:])[:, None, None, :]
    # factor 0 carries the mean: chosen so that w_id = id_mean gives exactly the head and its blendshapes
    rest = np.concatenate([template[..., None], deltas], axis=2)  # (V, 3, 52)
    core[:, :, :, 0] = (rest - core[:, :, :, 1:] @ id_mean[1:]) / id_mean[0]
    core = core.reshape(3 * n, NUM_EXPRESSIONS, NUM_ID)

    skin = np.setdiff1d(np.arange(n), np.concatenate([head.regions["left_eyeball"], head.regions["right_eyeball"]]))
    landmarks = skin[_nearest(head.verts[skin], head.landmarks)]
    return write_facescape_npz(
        Path(out_dir) / FACESCAPE_NPZ_NAME,
        core=core_to_absolute(core),
        faces=head.faces,
        uv=head.uv,
        faces_uv=head.faces_uv,
        id_mean=id_mean,
        id_var=sigma**2,
        landmarks=landmarks,
        front_vertices=head.regions["face"],
        compress=size == "full",  # ~150 MB of float32 core -> ~50 MB
    )


def _smooth_scalar_fields(p: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """(V, count) smooth random scalar fields in [-1, 1] (sums of plane waves of ~10 cm wavelength)."""
    waves = rng.standard_normal((count, 4, 3))
    waves *= (2 * np.pi / 0.1) / np.linalg.norm(waves, axis=-1, keepdims=True)
    phase = rng.uniform(0, 2 * np.pi, (count, 4))
    field = np.sin(np.einsum("vd,cwd->vcw", p, waves) + phase).sum(axis=-1)
    return field / np.abs(field).max(axis=0, keepdims=True)


def _nearest(points: np.ndarray, queries: np.ndarray) -> np.ndarray:
    import scipy.spatial

    return scipy.spatial.cKDTree(points).query(queries)[1].astype(np.int64)
