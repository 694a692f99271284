"""Visualization: image grids, mesh overlays and landmark drawing as tensors ready for TensorBoard, and mesh
export (``.obj`` with UVs and texture, ``.ply``) through trimesh.

Images are float (B, C, H, W) in [0, 1]; the grid functions return (3, H', W') for
``SummaryWriter.add_image``. Landmarks are pixel coordinates in the convention of :mod:`facelab.render.camera`
(``(u, v)``, origin at the image corner, pixel centres at half-integers).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["blend", "draw_landmarks", "export_obj", "export_ply", "image_grid", "mesh_overlay", "rows_grid"]


def _to_rgb(images: Tensor) -> Tensor:
    if images.shape[1] == 1:
        return images.expand(-1, 3, -1, -1)
    if images.shape[1] != 3:
        raise ValueError(f"images must have 1 or 3 channels, got {images.shape[1]}")
    return images


def image_grid(images: Tensor, ncol: int = 8, padding: int = 2, pad_value: float = 1.0) -> Tensor:
    """Tile a batch of images into one image, row-major.

    Args:
        images: (N, C, H, W) with C in {1, 3}, values in [0, 1] (clamped).
        ncol: images per row.
        padding: pixels between and around tiles.
        pad_value: colour of the padding.

    Returns:
        (3, H', W') grid.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got {tuple(images.shape)}")
    images = _to_rgb(images.detach().float().clamp(0, 1))
    n, _, h, w = images.shape
    ncol = max(1, min(ncol, n))
    nrow = (n + ncol - 1) // ncol
    grid = images.new_full((3, nrow * (h + padding) + padding, ncol * (w + padding) + padding), pad_value)
    for i in range(n):
        r, c = divmod(i, ncol)
        y, x = padding + r * (h + padding), padding + c * (w + padding)
        grid[:, y:y + h, x:x + w] = images[i]
    return grid


def rows_grid(*batches: Tensor, max_images: int = 8, padding: int = 2) -> Tensor:
    """One row per batch (e.g. input, render, overlay), one column per sample: the usual TensorBoard panel.

    Args:
        *batches: (B, C, H, W) tensors of the same H, W (C in {1, 3}).
        max_images: at most this many samples (columns).
        padding: pixels between tiles.

    Returns:
        (3, H', W').
    """
    n = min(max_images, *(b.shape[0] for b in batches))
    stacked = torch.cat([_to_rgb(b[:n].detach().float()) for b in batches], dim=0)
    return image_grid(stacked, ncol=n, padding=padding)


def blend(image: Tensor, render: Tensor, mask: Tensor, alpha: float = 0.6) -> Tensor:
    """Blend a rendering over images where it covers them (mesh overlay).

    Args:
        image: (B, 3, H, W) input images.
        render: (B, 3, H, W) e.g. the shaded mesh of :class:`facelab.render.MeshRenderer`.
        mask: (B, 1, H, W) coverage of the rendering.
        alpha: opacity of the rendering.

    Returns:
        (B, 3, H, W).
    """
    weight = alpha * mask.to(image.dtype)
    return image * (1 - weight) + render.to(image.dtype) * weight


def draw_landmarks(images: Tensor, points: Tensor, color: Sequence[float] = (0.0, 1.0, 0.0),
                   radius: float = 1.5) -> Tensor:
    """Draw landmarks as filled discs.

    Args:
        images: (B, 3, H, W).
        points: (B, L, 2) pixel coordinates ``(u, v)``; non-finite points are skipped.
        color: RGB in [0, 1].
        radius: disc radius in pixels (a pixel is drawn when its centre is within it).

    Returns:
        (B, 3, H, W) a copy with the discs drawn.
    """
    out = images.detach().clone()
    b, _, h, w = out.shape
    r = int(np.ceil(radius))
    offsets = torch.arange(-r, r + 1, device=out.device)
    dy, dx = torch.meshgrid(offsets, offsets, indexing="ij")
    pts = points.detach().to(out.device, torch.float32)
    col = torch.floor(pts[..., 0])[..., None] + dx.reshape(-1)  # (B, L, K) pixel columns around each point
    row = torch.floor(pts[..., 1])[..., None] + dy.reshape(-1)
    dist2 = (col + 0.5 - pts[..., :1]) ** 2 + (row + 0.5 - pts[..., 1:]) ** 2
    keep = (dist2 <= radius**2) & (col >= 0) & (col < w) & (row >= 0) & (row < h) & torch.isfinite(dist2)
    batch = torch.arange(b, device=out.device)[:, None, None].expand_as(col)
    bi, ri, ci = batch[keep], row[keep].long(), col[keep].long()
    rgb = torch.as_tensor(color, dtype=out.dtype, device=out.device)
    for c in range(3):
        out[bi, c, ri, ci] = rgb[c]
    return out


def mesh_overlay(images: Tensor, verts: Tensor, camera, renderer, landmarks: Tensor | None = None,
                 alpha: float = 0.6, albedo: float = 180.0 / 255.0) -> Tensor:
    """The shaded mesh (gray albedo, the five-light rig of :func:`facelab.render.shape_lights`) blended over the
    images, landmarks drawn on top.

    Args:
        images: (B, 3, H, W) inputs, H, W = the renderer's image size.
        verts: (B, V, 3) meshes in the camera's world frame.
        camera: a :mod:`facelab.render.camera` camera.
        renderer: a :class:`facelab.render.MeshRenderer` for the mesh topology.
        landmarks: (B, L, 2) pixel coordinates to draw (e.g. ``camera.project_pixels(landmarks3d, size)``).
        alpha: opacity of the mesh.
        albedo: gray level of the mesh.

    Returns:
        (B, 3, H, W), detached.
    """
    from facelab.render.shading import shape_lights

    with torch.no_grad():
        out = renderer(verts, camera, albedo=albedo, lights=shape_lights(device=verts.device, dtype=verts.dtype))
        overlay = blend(images, out.image.clamp(0, 1), out.mask, alpha)
    return overlay if landmarks is None else draw_landmarks(overlay, landmarks)


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def export_obj(path: str | os.PathLike, verts, faces, uv=None, faces_uv=None, texture=None) -> Path:
    """Write a mesh as Wavefront OBJ, with UVs and a texture image (``<stem>.mtl`` and ``<stem>.png`` beside it).

    UV seams are kept by splitting vertices per distinct (vertex, uv) corner pair.

    Args:
        path: output ``.obj`` path.
        verts: (V, 3). faces: (F, 3) counter-clockwise triangles.
        uv: (T, 2) UVs in [0, 1], v up. faces_uv: (F, 3) per-corner UV indices.
        texture: (3, Ht, Wt) tensor in [0, 1] (row 0 = v = 1) or an (Ht, Wt, 3) uint8 array.

    Returns:
        The path written.
    """
    import trimesh
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    verts, faces = _numpy(verts).astype(np.float64), _numpy(faces).astype(np.int64)
    if uv is None or faces_uv is None:
        mesh = trimesh.Trimesh(verts, faces, process=False)
        path.write_text(trimesh.exchange.obj.export_obj(mesh, include_texture=False))
        return path
    uv, faces_uv = _numpy(uv).astype(np.float64), _numpy(faces_uv).astype(np.int64)
    pairs, corner = np.unique(np.stack([faces.reshape(-1), faces_uv.reshape(-1)], 1), axis=0, return_inverse=True)
    visual = trimesh.visual.TextureVisuals(uv=uv[pairs[:, 1]], image=_texture_image(texture) if texture is not None
                                           else Image.new("RGB", (1, 1), (255, 255, 255)))
    mesh = trimesh.Trimesh(verts[pairs[:, 0]], corner.reshape(-1, 3), visual=visual, process=False)
    text, files = trimesh.exchange.obj.export_obj(mesh, return_texture=True, mtl_name=f"{path.stem}.mtl")
    for name, data in files.items():  # rename trimesh's generic material file names after the mesh
        if name.endswith(".mtl"):
            data = data.replace(b"material_0.png", f"{path.stem}.png".encode())
            (path.parent / name).write_bytes(data)
        elif name == "material_0.png":
            (path.parent / f"{path.stem}.png").write_bytes(data)
    path.write_text(text)
    return path


def _texture_image(texture):
    from PIL import Image

    if isinstance(texture, Tensor):
        texture = (texture.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round()
    return Image.fromarray(np.asarray(texture).astype(np.uint8))


def export_ply(path: str | os.PathLike, verts, faces, colors=None) -> Path:
    """Write a mesh as binary PLY, optionally with per-vertex colours.

    Args:
        path: output ``.ply`` path.
        verts: (V, 3). faces: (F, 3).
        colors: (V, 3) floats in [0, 1] or uint8.

    Returns:
        The path written.
    """
    import trimesh

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {}
    if colors is not None:
        colors = _numpy(colors)
        if colors.dtype != np.uint8:
            colors = (np.clip(colors, 0, 1) * 255).round().astype(np.uint8)
        kwargs["vertex_colors"] = colors
    mesh = trimesh.Trimesh(_numpy(verts).astype(np.float64), _numpy(faces).astype(np.int64), process=False, **kwargs)
    mesh.export(path)
    return path
