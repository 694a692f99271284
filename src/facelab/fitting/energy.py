"""The terms of the fitting energy, each returning one value per face (B,) so that convergence is tracked per face.

* landmarks: reprojection error of 2D landmarks in units of the face size (Deep3DFaceRecon, Deng et al. 2019,
  Eq. 4) under a robust penalty ``rho`` (Cauchy / Geman-McClure / Huber, the M-estimators of robust regression),
  so that a few wrong detections do not pull the fit; with ``rho = r^2`` it is :func:`facelab.losses.landmark_loss`
  per face;
* photometric: :func:`facelab.losses.photometric_loss` (L1, skin- and coverage-masked; Deep3DFaceRecon Eq. 3)
  mapped over the batch;
* priors: ``||alpha||^2`` of coefficients in standard-deviation units (the Gaussian prior of a PCA model, Blanz &
  Vetter 1999) and a monochrome-light prior on the SH colours (Deep3DFaceRecon's ``L_gamma``);
* :func:`sh_least_squares`: the closed-form SH lighting of fixed geometry and albedo (the irradiance is linear in
  the 9 coefficients per channel, Ramamoorthi & Hanrahan 2001), the initialisation of the photometric stage.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import vmap

from facelab.losses.image import photometric_loss
from facelab.render.shading import sh_basis

__all__ = ["ROBUST_PENALTIES", "gaussian_prior", "landmark_energy", "photometric_energy", "robust_penalty",
           "sh_least_squares", "sh_monochrome_prior"]

ROBUST_PENALTIES = ("l2", "huber", "cauchy", "geman_mcclure")


def robust_penalty(sq: Tensor, kind: str = "cauchy", scale: float = 5.0) -> Tensor:
    """A robust penalty ``rho`` of squared residual norms ``r^2``; every one equals ``r^2`` for ``r << scale``.

    ``l2``: ``r^2``; ``huber``: ``r^2`` below ``scale``, ``2 scale r - scale^2`` above; ``cauchy`` (Lorentzian):
    ``scale^2 log(1 + r^2 / scale^2)``; ``geman_mcclure``: ``scale^2 r^2 / (scale^2 + r^2)`` (bounded).

    Args:
        sq: (...) squared residual norms.
        kind: one of :data:`ROBUST_PENALTIES`.
        scale: residual norm where the penalty starts to flatten.
    """
    c2 = scale * scale
    if kind == "l2":
        return sq
    if kind == "cauchy":
        return c2 * torch.log1p(sq / c2)
    if kind == "geman_mcclure":
        return c2 * sq / (c2 + sq)
    if kind == "huber":
        r = torch.sqrt(sq + 1e-20)
        return torch.where(r <= scale, sq, 2.0 * scale * r - c2)
    raise ValueError(f"unknown robust penalty '{kind}': choose from {ROBUST_PENALTIES}")


def landmark_energy(pred: Tensor, target: Tensor, weights: Tensor, unit: Tensor, kind: str = "cauchy",
                    scale: float = 5.0) -> Tensor:
    """Robust landmark error per face, ``sum_l w_l rho(||r_l||^2) / (2 sum_l w_l)`` with residuals ``r`` in a
    per-face length unit (for ``kind="l2"`` the mean squared coordinate error of
    :func:`facelab.losses.landmark_loss`).

    Args:
        pred: (B, L, 2) projected model landmarks. target: (B, L, 2) detected landmarks (same units).
        weights: (B, L) per-landmark confidences (0: missing).
        unit: (B,) the length unit of the residuals, in the landmarks' units (the fitter: 1 % of the face size,
            :func:`facelab.metrics.landmarks.nme_normalizer` with ``"bbox"``).
        kind, scale: the robust penalty (:func:`robust_penalty`), ``scale`` in ``unit``.

    Returns:
        (B,) energies.
    """
    r = (pred - target) / unit[:, None, None]
    rho = robust_penalty(r.square().sum(-1), kind, scale)
    return (weights * rho).sum(1) / (pred.shape[-1] * weights.sum(1).clamp_min(1e-12))


def _photometric_one(render: Tensor, image: Tensor, mask: Tensor) -> Tensor:
    return photometric_loss(render[None], image[None], mask[None], norm="l1")


def photometric_energy(render: Tensor, image: Tensor, mask: Tensor) -> Tensor:
    """Masked mean absolute colour error per face.

    Args:
        render: (B, C, H, W) rendered images. image: (B, C, H, W) targets.
        mask: (B, 1, H, W) weights in [0, 1] (rendered coverage x skin mask).

    Returns:
        (B,) energies; 0 for a face with an empty mask.
    """
    return vmap(_photometric_one)(render, image, mask)


def gaussian_prior(coeffs: Tensor) -> Tensor:
    """(B, K) coefficients in standard deviations -> (B,) ``sum_k c_k^2`` (the negative log of an N(0, I) prior,
    times 2)."""
    return coeffs.square().sum(-1)


def sh_monochrome_prior(sh: Tensor) -> Tensor:
    """(B, 27) Deep3DFaceRecon-layout SH (9 red, 9 green, 9 blue) -> (B,) squared deviation of each channel's
    coefficients from their mean over the channels (Deep3DFaceRecon's ``L_gamma``: light is close to white)."""
    rgb = sh.reshape(sh.shape[0], 3, 9)
    return (rgb - rgb.mean(dim=1, keepdim=True)).square().sum((1, 2))


def sh_least_squares(normals: Tensor, albedo: Tensor, image: Tensor, mask: Tensor, ridge: float = 1e-3,
                     convention: str = "deep3d") -> Tensor:
    """Least-squares SH lighting of images given per-pixel normals and albedo.

    Solves, per face and channel, ``min_L sum_i m_i (a_ic Y(n_i) . L_c - I_ic)^2 + ridge N ||L_c||^2`` (N the
    mask's pixel count), the linear half of ``image = albedo * sh_shading(normals, L)``.

    Args:
        normals: (B, 3, H, W) unit normals in the view frame (any value where ``mask`` is 0).
        albedo: (B, 3, H, W). image: (B, 3, H, W). mask: (B, 1, H, W) weights.
        ridge: Tikhonov weight per pixel.
        convention: SH basis convention (:func:`facelab.render.shading.sh_basis`).

    Returns:
        (B, 27) coefficients in Deep3DFaceRecon's layout (9 red, 9 green, 9 blue).
    """
    b = normals.shape[0]
    y = sh_basis(normals.permute(0, 2, 3, 1), convention).flatten(1, 2)  # (B, P, 9)
    m = mask.flatten(1)  # (B, P)
    ay = albedo.flatten(2)[..., None] * y[:, None]  # (B, 3, P, 9)
    lhs = torch.einsum("bp,bcpk,bcpl->bckl", m, ay, ay)
    rhs = torch.einsum("bp,bcpk,bcp->bck", m, ay, image.flatten(2))
    n = m.sum(1).clamp_min(1.0)[:, None, None, None]
    eye = torch.eye(9, dtype=lhs.dtype, device=lhs.device)
    coeffs = torch.linalg.solve(lhs + ridge * n * eye, rhs[..., None])[..., 0]  # (B, 3, 9)
    return coeffs.reshape(b, 27)
