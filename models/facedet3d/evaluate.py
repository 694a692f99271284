"""Evaluation of FaceDet3D's renderer: the AugW detail probe (paper Fig. 8) and FID / FaceID across expression edits
(paper Tables 1-2).
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["detail_response"]


def detail_response(render_true: Tensor, render_fake: Tensor, image: Tensor, image_fake: Tensor, mask: Tensor,
                    threshold: float = 0.01) -> dict[str, Tensor]:
    """How much of a detail change a renderer puts into the image (the AugW probe, paper Fig. 8).

    The change the details should make is ``delta_true = I*_x - I_x`` (Eq. 14: the image re-shaded with the fake
    details); the renderer's is ``delta_render = R(G_D*) - R(G_D)``. A renderer that ignores the geometry (the
    failure of plain neural rendering the paper describes) has ``delta_render = 0``.

    Args:
        render_true, render_fake: (B, 3, H, W) renders with the true and the fake details.
        image, image_fake: (B, 3, H, W) I_x and I*_x.
        mask: (B, 1, H, W) face region.
        threshold: a pixel's details "differ" where ``|delta_true|`` summed over RGB exceeds it.

    Returns:
        ``detail_gain``: projection slope ``<delta_r, delta_t> / |delta_t|^2`` (1 = the full change, 0 = none);
        ``detail_r2``: ``1 - |delta_r - delta_t|^2 / |delta_t|^2`` over the face; ``detail_corr``: cosine of the two
        changes where the details differ; ``detail_leak``: mean ``|delta_r|`` where they do not (changes the
        renderer makes where it should not).
    """
    m = mask.to(image.dtype)
    delta_t = (image_fake - image) * m
    delta_r = (render_fake - render_true) * m
    energy = delta_t.square().sum().clamp(min=1e-12)
    differ = (delta_t.abs().sum(1, keepdim=True) > threshold) & (m > 0.5)
    same = (~differ) & (m > 0.5)
    dt, dr = delta_t * differ, delta_r * differ
    corr = (dt * dr).sum() / (dt.square().sum().sqrt() * dr.square().sum().sqrt()).clamp(min=1e-12)
    leak = (delta_r.abs().sum(1, keepdim=True) * same).sum() / (3 * same.sum()).clamp(min=1)
    return {"detail_gain": (delta_r * delta_t).sum() / energy,
            "detail_r2": 1 - (delta_r - delta_t).square().sum() / energy,
            "detail_corr": corr, "detail_leak": leak}
