"""The pure-PyTorch rasterizer backend (the reference; CPU and CUDA).

Two passes:

1. **Visibility** (no gradient). Every triangle is set up once: pixel-space edge functions, a depth plane and
   the bounding box of the pixel centres it can cover. Only those boxes are tested, so the work is proportional
   to the area the boxes cover, not to ``faces x pixels``. Boxes are grouped by size, padded to a few bucket
   sizes (1, 2, 3, 4, 6, 8, 12, ...), and each group of G boxes is evaluated as a dense (rows, cols, G) block in
   which every per-triangle term is computed on (cols, G) or (rows, G) and broadcast: each full-size step is one
   add or compare over long contiguous runs, with no per-candidate gathers. Boxes taller than 64 rows are cut
   into bands and groups are split to at most ``MAX_CANDIDATES`` candidates, so memory is bounded for any
   triangle size. The z-test is a single ``scatter_reduce(amin)`` over a packed 64-bit key
   ``(depth bits, face id)``: the nearest face wins and exact depth ties go to the lower face id,
   deterministically on CPU and CUDA.
2. **Barycentrics** (differentiable). For the M covered pixels only, the winning triangle's corners are gathered
   from ``verts_ndc`` and the barycentric coordinates of the pixel centre are recomputed as a function of them,
   so autograd yields gradients with respect to vertex positions.

Watertightness: each edge function is evaluated from coefficients computed with the edge's endpoints in a
canonical order (lower vertex index first) and negated as needed, so two triangles sharing an edge compute
bit-identical values of opposite sign; with the top-left rule a pixel centre on a shared edge belongs to
exactly one of them and no pixel falls through a crack.
"""

from __future__ import annotations

import torch
from torch import Tensor

from facelab.render.rasterize import Fragments

#: Largest number of (triangle, pixel) candidates tested at once (bounds memory: ~50 bytes per candidate).
MAX_CANDIDATES = 1 << 21

#: Tallest band of rows one work item spans; taller boxes are cut into bands.
_MAX_BAND = 64

#: On CPU, the default strategy is "flat" up to this many candidates and "grouped" above. The grouped path costs a
#: few dozen small ops per occupied bucket (~10 ms at any batch on one core), which dominates small workloads such
#: as one 224² face (~3e4 candidates: flat ~4x faster); flat's gathers cost more per candidate, so from ~5e5
#: candidates (B = 16 faces at 224²) grouped wins.
FLAT_MAX_CANDIDATES_CPU = 1 << 18

_NO_HIT = torch.iinfo(torch.int64).max

# Rows of the per-item coefficient table (see _Setup): edge k has A, B, C at rows 3k, 3k + 1, 3k + 2.
_THRESH, _PLANE_X, _PLANE_Y, _D_REF, _X_REF, _Y_REF, _N_COEF = 9, 12, 13, 14, 15, 16, 17


def rasterize_torch(verts_ndc: Tensor, faces: Tensor, size: tuple[int, int], cull_backfaces: bool = False,
                    perspective_correct: bool = False, z_near: float = 1e-6) -> Fragments:
    """Rasterize with the torch backend; arguments as :func:`facelab.render.rasterize`.

    Args:
        verts_ndc: (B, V, 3) NDC ``(x, y, depth)``.
        faces: (F, 3) long.
        size: ``(H, W)``.

    Returns:
        :class:`~facelab.render.rasterize.Fragments`.
    """
    with torch.no_grad():
        pix_to_face = visible_faces(verts_ndc.detach(), faces, size, cull_backfaces, perspective_correct, z_near)
    return barycentric_fragments(verts_ndc, faces, pix_to_face, perspective_correct)


def visible_faces(verts_ndc: Tensor, faces: Tensor, size: tuple[int, int], cull_backfaces: bool = False,
                  perspective_correct: bool = False, z_near: float = 1e-6,
                  max_candidates: int = MAX_CANDIDATES, strategy: str | None = None) -> Tensor:
    """The nearest face covering each pixel centre (the non-differentiable half of rasterization).

    Two evaluation strategies give identical results: ``"grouped"`` (boxes grouped by size and tested as
    broadcast blocks: few memory passes, the CPU default for large workloads) and ``"flat"`` (every candidate
    expanded with index arithmetic and gathered coefficients in one pass: few kernel launches, the CUDA default and
    the CPU default up to :data:`FLAT_MAX_CANDIDATES_CPU` candidates).

    Args:
        verts_ndc: (B, V, 3) NDC ``(x, y, depth)``.
        faces: (F, 3) long.
        size: ``(H, W)``.
        cull_backfaces: skip triangles that are clockwise in NDC.
        perspective_correct: z-test on the perspective-correct depth (``1/depth`` is linear on screen).
        z_near: triangles with a corner at ``depth <= z_near`` are skipped.
        max_candidates: most candidates expanded at once (memory bound).
        strategy: ``"grouped"``, ``"flat"``, or None for the default of the device and workload size.

    Returns:
        (B, H, W) long face index, -1 where no face covers the pixel centre.
    """
    h, w = size
    b = verts_ndc.shape[0]
    if verts_ndc.dtype not in (torch.float32, torch.float64):
        verts_ndc = verts_ndc.float()
    n_pix = b * h * w
    # Padded bucket rows/columns may point past the last pixel: give them somewhere harmless to land.
    zkey = torch.full((n_pix + (_MAX_BAND + 1) * w + _bucket_sizes(w)[-1],), _NO_HIT, dtype=torch.int64,
                      device=verts_ndc.device)
    setup = _setup_triangles(verts_ndc, faces, size, cull_backfaces, perspective_correct, z_near)
    if strategy not in (None, "grouped", "flat"):
        raise ValueError(f"unknown strategy {strategy!r} (grouped | flat)")
    positive_keys = z_near >= 0 and not perspective_correct
    if setup is not None:
        setup = _band_rows(setup)
        if strategy is None:
            strategy = _default_strategy(setup)
        if strategy == "grouped":
            for group in _buckets(setup, w, max_candidates):
                _scatter_bucket(zkey, group, size, positive_keys)
        else:
            for start, end in _flat_chunks(setup, max_candidates):
                _scatter_flat(zkey, setup.slice(start, end), size, positive_keys)
    zkey = zkey[:n_pix]
    face = torch.where(zkey == _NO_HIT, torch.full_like(zkey, -1), zkey & 0xFFFFFFFF)
    return face.view(b, h, w)


def _default_strategy(setup: _Setup) -> str:
    """``"flat"`` on CUDA; on CPU ``"flat"`` for at most :data:`FLAT_MAX_CANDIDATES_CPU` candidates, else
    ``"grouped"``."""
    if setup.box.device.type != "cpu":
        return "flat"
    n_candidates = int((setup.box[2] * setup.box[3]).sum())
    return "flat" if n_candidates <= FLAT_MAX_CANDIDATES_CPU else "grouped"


def _bucket_sizes(limit: int) -> list[int]:
    """Box sizes work items are padded to: 1, 2, 3, 4, 6, 8, 12, ... (steps of 1.5x at most) up to ``limit``."""
    sizes = [1, 2, 3, 4]
    while sizes[-1] < limit:
        sizes.append(sizes[-2] * 2)
    return sizes


class _Setup:
    """Per-work-item data (a work item is one triangle's pixel-centre box, or a band of its rows).

    Attributes:
        coef: (17, T) float rows: ``A_k, B_k, C_k`` of the edge functions for k = 0..2 (edge k is opposite
            corner k, ``w_k = A_k x + B_k y + C_k`` in centred pixel coordinates, positive inside), the inside
            thresholds ``t_k`` (0, or minus the smallest normal float on top-left edges so that ``w_k = 0``
            counts), then ``P_x, P_y, d_ref, x_ref, y_ref`` of the key-depth plane
            ``d_ref + P_x (x - x_ref) + P_y (y - y_ref)`` (depth, or minus 1/depth when perspective-correct).
        box: (4, T) long ``x0, y0, bw, bh``: first column/row of the box and its size.
        face: (T,) long face index.
        batch: (T,) long batch index.
    """

    def __init__(self, coef: Tensor, box: Tensor, face: Tensor, batch: Tensor):
        self.coef, self.box, self.face, self.batch = coef, box, face, batch

    def take(self, index: Tensor) -> _Setup:
        """The work items ``index`` (gathered contiguously)."""
        return _Setup(self.coef.index_select(1, index), self.box.index_select(1, index),
                      self.face.index_select(0, index), self.batch.index_select(0, index))

    def slice(self, start: int, end: int) -> _Setup:
        """Work items ``start:end`` (views)."""
        return _Setup(self.coef[:, start:end], self.box[:, start:end], self.face[start:end], self.batch[start:end])


def _setup_triangles(verts: Tensor, faces: Tensor, size: tuple[int, int], cull_backfaces: bool,
                     perspective_correct: bool, z_near: float) -> _Setup | None:
    h, w = size
    b = verts.shape[0]
    n_faces = faces.shape[0]
    # Centred pixel space, +y down: pixel (i, j) has its centre at (j - cx, i - cy).
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    tri = verts.index_select(1, faces.t().reshape(-1)).view(b, 3, n_faces, 3)
    tri = tri.permute(3, 1, 0, 2).reshape(3, 3, b * n_faces)  # (xyz, corner, triangle)
    px, py, depth = tri[0] * (0.5 * w), tri[1] * (-0.5 * h), tri[2]
    area2 = (px[1] - px[0]) * (py[2] - py[0]) - (py[1] - py[0]) * (px[2] - px[0])
    # Pixel-centre bounding box, clamped to the image (as floats first: coordinates may be huge).
    lo_x = torch.ceil(px.amin(dim=0) + cx).clamp(0, w)
    hi_x = torch.floor(px.amax(dim=0) + cx).clamp(-1, w - 1)
    lo_y = torch.ceil(py.amin(dim=0) + cy).clamp(0, h)
    hi_y = torch.floor(py.amax(dim=0) + cy).clamp(-1, h - 1)
    valid = torch.isfinite(area2) & (area2 != 0) & (depth.amin(dim=0) > z_near) & (hi_x >= lo_x) & (hi_y >= lo_y)
    if cull_backfaces:  # counter-clockwise in NDC (+y up) is clockwise in pixel space (+y down): area2 < 0
        valid &= area2 < 0
    sel = torch.nonzero(valid).squeeze(1)
    if sel.numel() == 0:
        return None
    px, py, depth, area2 = px[:, sel], py[:, sel], depth[:, sel], area2[sel]
    face = sel % n_faces
    corner_ids = faces.t()[:, face]  # (3, T)
    orient = torch.sign(area2)
    # Edge k runs from corner k+1 to corner k+2; evaluate it from its lower-index endpoint (canonical order).
    nxt, nxt2 = [1, 2, 0], [2, 0, 1]
    swap = corner_ids[nxt] > corner_ids[nxt2]  # (3, T)
    ax, ay = torch.where(swap, px[nxt2], px[nxt]), torch.where(swap, py[nxt2], py[nxt])
    qx, qy = torch.where(swap, px[nxt], px[nxt2]), torch.where(swap, py[nxt], py[nxt2])
    sign = torch.where(swap, -orient, orient)
    coef_a, coef_b = (ay - qy) * sign, (qx - ax) * sign
    coef_c = -(sign * ((ay - qy) * ax + (qx - ax) * ay))
    # Top-left rule in +y-down pixel space, for the edge oriented inside-positive: a left edge goes up (A > 0),
    # a top edge is horizontal going right (A == 0, B > 0).
    top_left = (coef_a > 0) | ((coef_a == 0) & (coef_b > 0))
    thresh = torch.where(top_left, px.new_tensor(-torch.finfo(px.dtype).tiny), px.new_tensor(0.0))
    key_depth = 1.0 / depth if perspective_correct else depth  # linear in screen space
    inv_area = 1.0 / area2.abs()
    dk1, dk2 = key_depth[1] - key_depth[0], key_depth[2] - key_depth[0]
    plane_x = (coef_a[1] * dk1 + coef_a[2] * dk2) * inv_area
    plane_y = (coef_b[1] * dk1 + coef_b[2] * dk2) * inv_area
    coef = px.new_empty(_N_COEF, sel.shape[0])
    edges = coef[:9].view(3, 3, -1)  # (edge, [A, B, C], T)
    edges[:, 0], edges[:, 1], edges[:, 2] = coef_a, coef_b, coef_c
    coef[_THRESH:_THRESH + 3] = thresh
    sign = -1.0 if perspective_correct else 1.0  # nearest = largest 1/depth: negate so that the minimum wins
    coef[_PLANE_X], coef[_PLANE_Y], coef[_D_REF] = sign * plane_x, sign * plane_y, sign * key_depth[0]
    coef[_X_REF], coef[_Y_REF] = px[0], py[0]
    x0, y0 = lo_x[sel].long(), lo_y[sel].long()
    box = torch.stack([x0, y0, hi_x[sel].long() - x0 + 1, hi_y[sel].long() - y0 + 1])
    return _Setup(coef, box, face, torch.div(sel, n_faces, rounding_mode="floor"))


def _band_rows(setup: _Setup) -> _Setup:
    """Cut boxes taller than ``_MAX_BAND`` rows into bands (work items) of at most that many rows."""
    bh = setup.box[3]
    tall = bh > _MAX_BAND
    if not bool(tall.any()):
        return setup
    n_bands = torch.where(tall, torch.div(bh + _MAX_BAND - 1, _MAX_BAND, rounding_mode="floor"), 1)
    item = torch.repeat_interleave(torch.arange(bh.shape[0], device=bh.device), n_bands)
    band = torch.arange(item.shape[0], device=bh.device) - (torch.cumsum(n_bands, 0) - n_bands)[item]
    setup = setup.take(item)
    box = setup.box
    y0 = box[1] + band * _MAX_BAND
    box = torch.stack([box[0], y0, box[2], torch.minimum(box[1] + box[3] - y0, torch.full_like(y0, _MAX_BAND))])
    return _Setup(setup.coef, box, setup.face, setup.batch)


def _buckets(setup: _Setup, width: int, max_candidates: int):
    """Group work items by padded box size and yield ``(items, bw_pad, bh_pad)`` groups of at most
    ``max_candidates`` candidates (or a single item); ``items`` is a contiguous :class:`_Setup` slice."""
    sizes_w, sizes_h = _bucket_sizes(width), _bucket_sizes(_MAX_BAND)
    dev = setup.box.device
    bucket = (torch.searchsorted(torch.tensor(sizes_w, device=dev), setup.box[2]) * len(sizes_h)
              + torch.searchsorted(torch.tensor(sizes_h, device=dev), setup.box[3]))
    setup = setup.take(torch.argsort(bucket))
    counts = torch.bincount(bucket, minlength=len(sizes_w) * len(sizes_h)).tolist()
    start = 0
    for bid, n in enumerate(counts):
        if n == 0:
            continue
        bw_pad, bh_pad = sizes_w[bid // len(sizes_h)], sizes_h[bid % len(sizes_h)]
        step = max(1, max_candidates // (bw_pad * bh_pad))
        for s in range(start, start + n, step):
            yield setup.slice(s, min(s + step, start + n)), bw_pad, bh_pad
        start += n


def _scatter_bucket(zkey: Tensor, group, size: tuple[int, int], positive_keys: bool) -> None:
    """Test the (bh_pad, bw_pad, G) candidates of one group and z-reduce them into ``zkey``.

    Per-item terms are computed on (bw_pad, G) and (bh_pad, G) arrays and broadcast, so each full-size step is a
    single add or compare.
    """
    items, bw_pad, bh_pad = group
    h, w = size
    coef, box = items.coef, items.box  # (K, G), (4, G)
    dev, dtype = coef.device, coef.dtype
    cols = torch.arange(bw_pad, device=dev)[:, None]
    rows = torch.arange(bh_pad, device=dev)[:, None]
    # Layout (rows, cols, G): the item axis is innermost so every broadcast op runs over long contiguous runs.
    x = (box[0] + cols).to(dtype) - (w - 1) / 2.0  # (bw_pad, G) centred pixel coordinates
    y = (box[1] + rows).to(dtype) - (h - 1) / 2.0  # (bh_pad, G)
    inside = None
    for k in range(3):
        ex = coef[3 * k] * x + coef[3 * k + 2]  # (bw_pad, G)
        ey = coef[3 * k + 1] * y  # (bh_pad, G)
        if k == 0:  # padding columns/rows beyond the box: force outside
            ex = ex.masked_fill(cols >= box[2], -torch.inf)
            ey = ey.masked_fill(rows >= box[3], -torch.inf)
        test = torch.gt(ex[None] + ey[:, None], coef[_THRESH + k])
        inside = test if inside is None else inside.logical_and_(test)
    dx = coef[_PLANE_X] * (x - coef[_X_REF]) + coef[_D_REF]
    dy = coef[_PLANE_Y] * (y - coef[_Y_REF])
    key = _depth_key(dx[None] + dy[:, None], items.face, inside, positive_keys)  # (bh_pad, bw_pad, G)
    base = items.batch * (h * w) + box[1] * w + box[0]
    pix = (base + cols)[None] + (rows * w)[:, None]
    zkey.scatter_reduce_(0, pix.reshape(-1), key.reshape(-1), reduce="amin", include_self=True)


def _depth_key(depth: Tensor, face: Tensor, inside: Tensor, positive_keys: bool) -> Tensor:
    """Pack ``(float32 depth bits, face id)`` into int64 keys whose integer order is (depth, face) order."""
    bits = depth.float().view(torch.int32)
    if not positive_keys:  # map float order to signed int order (negative floats count down)
        bits = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    key = (bits.long() << 32).bitwise_or_(face)
    return key.masked_fill_(~inside, _NO_HIT)


def _flat_chunks(setup: _Setup, max_candidates: int) -> list[tuple[int, int]]:
    """Contiguous ranges of work items holding about ``max_candidates`` candidates each (at least one item)."""
    counts = setup.box[2] * setup.box[3]
    ends = torch.cumsum(counts, 0)
    if int(ends[-1]) <= max_candidates:
        return [(0, counts.shape[0])]
    chunk_id = torch.div(ends - counts, max_candidates, rounding_mode="floor")
    sizes = torch.unique_consecutive(chunk_id, return_counts=True)[1].tolist()
    bounds = [0]
    for n in sizes:
        bounds.append(bounds[-1] + n)
    return list(zip(bounds[:-1], bounds[1:]))


def _scatter_flat(zkey: Tensor, items: _Setup, size: tuple[int, int], positive_keys: bool) -> None:
    """Expand every (item, pixel) candidate of ``items`` by index arithmetic, test it and z-reduce it.

    The arithmetic is the grouped path's, term for term, so both strategies give bit-identical results.
    """
    h, w = size
    box = items.box
    counts = box[2] * box[3]
    n = int(counts.sum())
    item = torch.repeat_interleave(torch.arange(counts.shape[0], device=counts.device), counts, output_size=n)
    offset = torch.arange(n, device=counts.device) - (torch.cumsum(counts, 0) - counts).index_select(0, item)
    bw = box[2].index_select(0, item)
    dy = torch.div(offset, bw, rounding_mode="floor")
    dx = offset - dy * bw
    coef = items.coef.index_select(1, item)  # (17, n)
    col = box[0].index_select(0, item) + dx
    row = box[1].index_select(0, item) + dy
    x = col.to(coef.dtype) - (w - 1) / 2.0
    y = row.to(coef.dtype) - (h - 1) / 2.0
    inside = None
    for k in range(3):
        test = torch.gt((coef[3 * k] * x + coef[3 * k + 2]) + coef[3 * k + 1] * y, coef[_THRESH + k])
        inside = test if inside is None else inside.logical_and_(test)
    depth = (coef[_PLANE_X] * (x - coef[_X_REF]) + coef[_D_REF]) + coef[_PLANE_Y] * (y - coef[_Y_REF])
    key = _depth_key(depth, items.face.index_select(0, item), inside, positive_keys)
    pix = items.batch.index_select(0, item) * (h * w) + row * w + col
    zkey.scatter_reduce_(0, pix, key, reduce="amin", include_self=True)


def barycentric_fragments(verts_ndc: Tensor, faces: Tensor, pix_to_face: Tensor,
                          perspective_correct: bool = False) -> Fragments:
    """Differentiable barycentric coordinates and depth of each pixel centre in its visible face.

    Args:
        verts_ndc: (B, V, 3) NDC vertices (with grad if needed).
        faces: (F, 3) long.
        pix_to_face: (B, H, W) long visible face per pixel, -1 for none.
        perspective_correct: correct the screen-space barycentrics by ``1/depth``.

    Returns:
        :class:`~facelab.render.rasterize.Fragments`.
    """
    b, h, w = pix_to_face.shape
    n_verts = verts_ndc.shape[1]
    pix_idx = torch.nonzero(pix_to_face.reshape(-1) >= 0).squeeze(1)
    face_idx = pix_to_face.reshape(-1).index_select(0, pix_idx)
    batch = torch.div(pix_idx, h * w, rounding_mode="floor")
    rem = pix_idx - batch * (h * w)
    row = torch.div(rem, w, rounding_mode="floor")
    dtype = verts_ndc.dtype
    xp = (rem - row * w).to(dtype) * (2.0 / w) + (1.0 / w - 1.0)  # pixel-centre NDC
    yp = row.to(dtype) * (-2.0 / h) + (1.0 - 1.0 / h)
    corner = (faces.index_select(0, face_idx) + (batch * n_verts)[:, None]).t().reshape(-1)
    tri = verts_ndc.reshape(-1, 3).index_select(0, corner).view(3, -1, 3)  # (corner, M, xyz)
    dx, dy = tri[..., 0] - xp, tri[..., 1] - yp  # corners relative to the pixel centre, (3, M)
    # Twice the signed area of the sub-triangle opposite corner k: (v_{k+1} - p) x (v_{k+2} - p).
    edge = torch.stack([dx[1] * dy[2] - dy[1] * dx[2], dx[2] * dy[0] - dy[2] * dx[0], dx[0] * dy[1] - dy[0] * dx[1]])
    bary = (edge / edge.sum(dim=0)).t()  # (M, 3), rows sum to 1
    z = tri[..., 2].t()
    if perspective_correct:
        bary = bary / z
        inv_depth = bary.sum(dim=1, keepdim=True)
        bary = bary / inv_depth
        depth = 1.0 / inv_depth.squeeze(1)
    else:
        depth = (bary * z).sum(dim=1)
    return Fragments(pix_to_face=pix_to_face, faces=faces, num_verts=n_verts, pix_idx=pix_idx, face_idx=face_idx,
                     bary_packed=bary, zbuf_packed=depth)
