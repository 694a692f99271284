"""``facelab evaluate --method dualstream``: AFLW2000-3D NME, MICC-style scan error, texture MAE / photometric error.

    facelab evaluate --method dualstream --ckpt CKPT --data synthetic [--num 256]
    facelab evaluate --method dualstream --ckpt CKPT --data aflw2000 --aflw-root AFLW2000 [--bfm-path BFM.mat]
    facelab evaluate --method dualstream --ckpt CKPT --data micc --micc-root FOLDER
    facelab evaluate --method dualstream --init --data synthetic --image-size 64 --uv-size 32 --width 0.25

Protocols:

* **AFLW2000-3D NME** (paper Table III; 3DDFA's benchmark): per image the mean 2D distance of the 68 keypoint
  vertices read from the predicted full ASM to ``pt3d_68`` (x, y), divided by ``sqrt(w h)`` of the ground-truth
  landmark box (:func:`facelab.metrics.landmark_nme` ``"bbox"``), averaged per absolute-yaw bin ([0, 30), [30, 60),
  [60, 90] degrees, ``Pose_Para[1]``) and over the bins (:func:`facelab.metrics.yaw_binned_mean`). The **dense**
  variant (the paper's Table III text: "per-vertex mean error" between the generated and ground-truth shapes): the
  mean 3D distance over all vertices, both z shifted to min 0 (the maps' convention), same normaliser; it needs the
  ground-truth shape (``Shape_Para`` / ``Exp_Para`` on face3d's ``BFM.mat``, ``--bfm-path``) and a network trained
  on that topology. Crops: the keypoint box x 1.5 around its centre, no jitter (the training crop).
* **MICC Florence-style** (Table I): the predicted mesh (crop pixels, y flipped to y-up) is similarity-aligned to
  the scan (centroid and RMS radius, then point-to-point ICP with scale, :func:`facelab.metrics.rigid_icp`), the
  scan is cropped to ``--crop-radius`` (95 mm) around the aligned nose tip (keypoint 30), aligned again, and the
  mean point-to-plane distance of the scan points to the mesh is reported in scan units
  (:func:`facelab.metrics.scan_to_mesh_distance` ``"plane"``).
* **Texture MAE / photometric error** (Table II, Fig. 11; :func:`evaluate_texture`): :func:`texture_mae` (mean
  absolute error of UV textures in [0, 1] over the UV chart) of the stylised albedo against the true albedo of
  held-out synthetic FTD faces, and :func:`photometric_error` (mean absolute RGB error x 255 of the render against
  the photo over the rendered face region). Baselines beside them: ``linear_fit`` (``I_ua``, the best linear 3DMM
  albedo of each face: the ridge fit of its true texture), ``linear_pred`` (the linear albedo of the geometry
  stream's predicted coefficients, i.e. the reconstruction without the texture stream; for the photometric error
  the same mesh rendered with it) and ``mean_texture`` (the evaluated faces' mean). They need a texture-stage or
  end-to-end checkpoint (``generator.*`` weights); a geometry checkpoint or ``--init`` prints ``n/a``.
* **Synthetic world** (``--data synthetic``, exact ground truth): the full-ASM and vertex errors (crop pixels),
  the 68-point and dense NME with yaw bins, the point-to-plane error against the true mesh, each beside the *mean
  ASM* baseline (the mean map of the evaluated faces, an oracle trivial answer).

Folder layouts: AFLW2000-3D as distributed (``image00002.jpg`` + ``image00002.mat`` with ``pt3d_68`` (3, 68) and
``Pose_Para`` (1, 7), from the 3DDFA project page); MICC: ``NAME.jpg|png`` beside ``NAME.obj|ply|off|stl`` (a frame of
each MICC video with the subject's scan, in millimetres). Bad files are skipped with their reason in the table.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from dualstream.data import (
    AsmSample,
    SyntheticAsmDataset,
    image_vertices,
    keypoint_crop,
    read_300wlp_mat,
    read_face3d_bfm,
)
from dualstream.inference import DualStreamReconstructor
from dualstream.module import texture_mae
from facelab.data.crop import transform_points, warp_crop
from facelab.data.image_io import read_image
from facelab.errors import AssetFormatError, MissingAssetError
from facelab.io.weights import constructor_arguments, read_checkpoint
from facelab.methods import EvaluateEntry, EvaluateRequest
from facelab.metrics import landmark_nme, rigid_icp, scan_to_mesh_distance, yaw_binned_mean
from facelab.metrics.registration import RigidTransform
from facelab.rotations import axis_angle_to_matrix

__all__ = ["DualStreamEvaluation", "GeometryPredictor", "add_arguments", "evaluate_aflw2000", "evaluate_entry",
           "evaluate_micc", "evaluate_synthetic", "evaluate_texture", "load_models", "load_predictor",
           "micc_point_to_plane", "photometric_error", "read_scan", "run", "texture_mae"]

NOSE_TIP = 30
_SCAN_SUFFIXES = (".obj", ".ply", ".off", ".stl")


# ------------------------------------------------------------------------------------------------ results
@dataclass
class DualStreamEvaluation:
    """Rows ``(metric, value, unit, baselines)`` of one evaluation; ``format_table`` / ``write_json``."""

    data: str
    rows: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def add(self, metric: str, value: float | None, unit: str = "", **baselines: float) -> None:
        self.rows.append({"metric": metric, "value": value, "unit": unit, "baselines": baselines})

    def value(self, metric: str) -> float | None:
        return next(r["value"] for r in self.rows if r["metric"] == metric)

    def format_table(self) -> str:
        names = sorted({k for r in self.rows for k in r["baselines"]})
        fmt = lambda v: "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"  # noqa: E731
        lines = [f"DualStream evaluation on {self.data}",
                 f"{'metric':40s} {'ours':>10s} " + " ".join(f"{n:>12s}" for n in names) + "  unit"]
        for r in self.rows:
            lines.append(f"{r['metric']:40s} {fmt(r['value']):>10s} "
                         + " ".join(f"{fmt(r['baselines'].get(n)):>12s}" for n in names) + f"  {r['unit']}")
        lines += [f"skipped: {s}" for s in self.skipped]
        return "\n".join(lines)

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"data": self.data, "rows": self.rows, "skipped": self.skipped}, indent=2))
        return path


# ------------------------------------------------------------------------------------------------ predictor
@dataclass
class Prediction:
    """Maps and vertices of a batch, crop pixels: pos_id / pos_full (B, 3, S, S), verts (B, V, 3)."""

    pos_id: Tensor
    pos_full: Tensor
    verts: Tensor
    output: object


class GeometryPredictor:
    """A geometry stream with its ASM codec as images -> :class:`Prediction`: a trained (or initial)
    :class:`dualstream.module_geometry.GeometryModule` (:meth:`from_module`) or the stream inside a texture /
    end-to-end checkpoint (:meth:`from_reconstructor`).

    Args:
        stream: :class:`dualstream.geometry.GeometryStream`. codec: its :class:`dualstream.asm.AsmCodec`.
        keypoints: (68,) vertex ids. model_path: the BFM it was trained with. image_size / uv_size: crop / map side.
    """

    def __init__(self, stream, codec, keypoints: Tensor, model_path: str, image_size: int, uv_size: int,
                 device: str = "cpu") -> None:
        self.stream, self.codec = stream.to(device).eval(), codec.to(device)
        self.device = device
        self.model_path, self.image_size, self.uv_size = str(model_path), int(image_size), int(uv_size)
        self.keypoints = keypoints.cpu()
        self.faces = codec.mapper.faces.cpu()

    @classmethod
    def from_module(cls, module, device: str = "cpu") -> GeometryPredictor:
        hp = module.hparams
        return cls(module.stream, module.codec, module.keypoints, hp.model_path, hp.image_size, hp.uv_size, device)

    @classmethod
    def from_reconstructor(cls, recon, device: str = "cpu") -> GeometryPredictor:
        return cls(recon.geometry, recon.codec, recon.fusion.keypoints, recon.model_path, recon.image_size,
                   recon.uv_size, device)

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Prediction:
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            raise ValueError(f"images must be {self.image_size}^2 crops (the network's), got {tuple(images.shape)}")
        out = self.stream(images.to(self.device))
        pos_id, pos_full = self.codec.decode(out.a_id, out.a_exp)
        verts = self.codec.to_vertices(pos_full)
        return Prediction(pos_id.cpu(), pos_full.cpu(), verts.cpu(), out)


def load_predictor(request: EvaluateRequest, options: argparse.Namespace) -> GeometryPredictor:
    """The geometry of ``request.ckpt`` (``weights_only`` load: a geometry-stage checkpoint, or a texture /
    end-to-end one, whose geometry stream is used), or a fresh one for ``--init``."""
    return load_models(request, options)[0]


def load_models(request: EvaluateRequest, options: argparse.Namespace
                ) -> tuple[GeometryPredictor, DualStreamReconstructor | None]:
    """:func:`load_predictor` and, for a texture / end-to-end checkpoint (``generator.*`` weights inside), the
    whole :class:`dualstream.inference.DualStreamReconstructor` that the texture rows evaluate."""
    from dualstream.module_geometry import GeometryModule

    if request.ckpt is None:
        torch.manual_seed(request.seed or 0)
        module = GeometryModule(model_path=options.model_path, image_size=request.image_size or 256,
                                uv_size=options.uv_size, width=options.width, decoder_width=options.width)
        return GeometryPredictor.from_module(module, request.device), None
    ckpt = read_checkpoint(request.ckpt, what="DualStream checkpoint", config_key="--ckpt")
    if "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise AssetFormatError(f"{request.ckpt}: not a Lightning checkpoint of DualStream (no 'state_dict' / "
                               "'hyper_parameters')")
    hp = dict(ckpt["hyper_parameters"])
    if any(k.startswith("generator.") for k in ckpt["state_dict"]):
        recon = DualStreamReconstructor.from_checkpoint(request.ckpt, device=request.device)
        predictor = GeometryPredictor.from_reconstructor(recon, request.device)
    else:
        hp = constructor_arguments(hp)  # without lightning-cli's _class_path, _instantiator
        hp["vggface_weights"] = None  # the trained weights come from the checkpoint
        module = GeometryModule(**{k: v for k, v in hp.items() if k in GeometryModule.__init__.__code__.co_varnames})
        stream = {k[len("stream."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("stream.")}
        if not stream:
            raise AssetFormatError(f"{request.ckpt}: no `stream.*` (geometry stage) or `generator.*` (texture / "
                                   "end-to-end stage) weights: not a DualStream checkpoint")
        module.stream.load_state_dict(stream)
        predictor, recon = GeometryPredictor.from_module(module, request.device), None
    if request.image_size not in (None, predictor.image_size):
        raise ValueError(f"--image-size {request.image_size}: the checkpoint was trained on "
                         f"{predictor.image_size}^2 crops")
    return predictor, recon


# ------------------------------------------------------------------------------------------------ metrics
def photometric_error(render: Tensor, image: Tensor, mask: Tensor) -> Tensor:
    """(B, 3, H, W) in [0, 1], (B, 1, H, W) visible face -> (B,) mean absolute RGB error on 0..255 (Fig. 11)."""
    return 255.0 * texture_mae(render, image, mask)


def _yaw_degrees(pose: Tensor) -> Tensor:
    """(B, 3) axis-angle -> (B,) yaw (rotation about +y) in degrees."""
    r = axis_angle_to_matrix(pose)
    return torch.rad2deg(torch.atan2(r[:, 0, 2], r[:, 2, 2]))


def _dense_nme(pred: Tensor, true: Tensor, landmarks: Tensor) -> Tensor:
    """(B, V, 3) vertices (z shifted to min 0 each) -> (B,) mean 3D error / sqrt(w h) of the landmark box."""
    shift = lambda v: v - torch.stack([torch.zeros_like(v[..., 0]), torch.zeros_like(v[..., 0]),  # noqa: E731
                                       v[..., 2].amin(1, keepdim=True).expand_as(v[..., 0])], -1)
    return (shift(pred) - shift(true)).norm(dim=-1).mean(1) / _box(landmarks)


def _box(landmarks: Tensor) -> Tensor:
    wh = landmarks[..., :2].amax(1) - landmarks[..., :2].amin(1)
    return (wh[:, 0] * wh[:, 1]).sqrt()


def _to_y_up(verts: Tensor) -> Tensor:
    return verts * verts.new_tensor([1.0, -1.0, 1.0])


def micc_point_to_plane(verts: Tensor, faces: Tensor, scan: Tensor, nose_tip: int = NOSE_TIP,
                        crop_radius: float | None = 95.0) -> float:
    """MICC-style error (module docstring): similarity-align the mesh (V, 3) to the scan (N, 3), crop the scan
    around the aligned nose tip, align again, mean point-to-plane distance in scan units."""
    src = verts.double()
    dst = scan.double()

    def init() -> RigidTransform:
        s = (dst - dst.mean(0)).norm(dim=1).square().mean().sqrt() / (src - src.mean(0)).norm(dim=1).square().mean(
            ).sqrt()
        return RigidTransform(torch.eye(3, dtype=torch.float64)[None], (dst.mean(0) - s * src.mean(0))[None], s[None])

    icp = rigid_icp(src, dst, None, initial=init(), method="point", scale=True, max_iterations=40)
    if crop_radius is not None:
        tip = icp.aligned[nose_tip]
        keep = (dst - tip).norm(dim=1) <= crop_radius
        if keep.sum() >= 10:
            dst = dst[keep]
            icp = rigid_icp(src, dst, None, initial=icp.transform, method="point", scale=True, max_iterations=20)
    return float(scan_to_mesh_distance(dst, icp.aligned, faces, kind="plane").mean())


# ------------------------------------------------------------------------------------------------ synthetic
def _batches(ds, batch_size: int):
    for i in range(0, len(ds), batch_size):
        yield AsmSample.collate(ds.__getitems__(list(range(i, min(i + batch_size, len(ds))))))


def evaluate_synthetic(predictor: GeometryPredictor, num_images: int = 64, batch_size: int = 16, seed: int = 0,
                       texture: DualStreamReconstructor | None = None, icp_images: int = 8
                       ) -> DualStreamEvaluation:
    """The held-out synthetic world (module docstring); the mean-ASM baseline beside every geometry number."""
    ds = SyntheticAsmDataset(num_images, "test", seed=seed, model_path=predictor.model_path,
                             image_size=predictor.image_size, uv_size=predictor.uv_size, render_wrinkles=False)
    codec, kp, faces = predictor.codec, predictor.keypoints, predictor.faces
    batches = list(_batches(ds, batch_size))
    truth = AsmSample.collate([s for b in batches for s in (AsmSample(**{k: v[i] for k, v in vars(b).items()})
                                                            for i in range(b.image.shape[0]))])
    untrained = GeometryPredictor(predictor.stream.untrained_copy(seed), codec, kp, predictor.model_path,
                                  predictor.image_size, predictor.uv_size, predictor.device)
    preds = [predictor(b.image) for b in batches]
    pos_full = torch.cat([p.pos_full for p in preds])
    verts = torch.cat([p.verts for p in preds])
    raw = [untrained(b.image) for b in batches]
    pos_untrained, verts_untrained = torch.cat([p.pos_full for p in raw]), torch.cat([p.verts for p in raw])
    true_verts = codec.to_vertices(truth.asm_full)
    mean_full = truth.asm_full.mean(0, keepdim=True).expand_as(truth.asm_full)
    mean_verts = codec.to_vertices(mean_full)
    face = (truth.weight_mask > 0).to(pos_full.dtype)
    asm_err = lambda p: ((p - truth.asm_full).norm(dim=1, keepdim=True) * face).flatten(1).sum(1) / face.flatten(  # noqa: E731
        1).sum(1)
    yaw = _yaw_degrees(truth.pose)
    res = DualStreamEvaluation("synthetic")
    vert_err = lambda v: float((v - true_verts).norm(dim=-1).mean())  # noqa: E731
    res.add("ASM error (full map)", float(asm_err(pos_full).mean()), "px", mean_asm=float(asm_err(mean_full).mean()),
            untrained=float(asm_err(pos_untrained).mean()))
    res.add("vertex error", vert_err(verts), "px", mean_asm=vert_err(mean_verts), untrained=vert_err(verts_untrained))
    nme68 = lambda v: landmark_nme(v[:, kp], truth.landmarks, "bbox")  # noqa: E731
    _add_nme(res, "NME 68", nme68(verts), yaw, mean_asm=nme68(mean_verts), untrained=nme68(verts_untrained))
    dense = lambda v: _dense_nme(v, true_verts, truth.landmarks)  # noqa: E731
    _add_nme(res, "NME dense", dense(verts), yaw, mean_asm=dense(mean_verts), untrained=dense(verts_untrained))
    n = min(icp_images, verts.shape[0])
    p2p = lambda v: sum(micc_point_to_plane(v[i], faces, true_verts[i], crop_radius=None) for i in range(n)) / n  # noqa: E731
    res.add("point-to-plane after ICP (true mesh)", p2p(verts), "px", mean_asm=p2p(mean_verts),
            untrained=p2p(verts_untrained))
    if texture is None:
        res.add("texture MAE", None, "[0, 1] (needs a texture or end-to-end checkpoint)")
        res.add("photometric error", None, "0..255 (needs a texture or end-to-end checkpoint)")
        return res
    return evaluate_texture(texture, num_images, batch_size, seed, res)


def _add_nme(res: DualStreamEvaluation, name: str, nme: Tensor, yaw: Tensor, **baselines: Tensor) -> None:
    """An NME row balanced over the yaw bins, then one row per bin; each baseline binned the same way."""
    ours = yaw_binned_mean(nme, yaw)
    base = {k: yaw_binned_mean(v, yaw) for k, v in baselines.items()}
    res.add(f"{name} (yaw-balanced)", ours.balanced_mean, "", **{k: b.balanced_mean for k, b in base.items()})
    for i, ((lo, hi), v, c) in enumerate(zip(zip(ours.edges, ours.edges[1:]), ours.per_bin, ours.counts,
                                             strict=True)):
        res.add(f"{name} yaw [{lo:.0f}, {hi:.0f}] (n={c})", v, "", **{k: b.per_bin[i] for k, b in base.items()})


@torch.no_grad()
def evaluate_texture(recon: DualStreamReconstructor, num_images: int = 64, batch_size: int = 16, seed: int = 0,
                     res: DualStreamEvaluation | None = None) -> DualStreamEvaluation:
    """Texture rows (module docstring) of a texture / end-to-end model on the held-out synthetic FTD, each beside
    its linear-albedo baselines (Table II's comparison) and the mean texture."""
    from dualstream.texture_data import SyntheticTextureDataset, TextureSample

    res = res if res is not None else DualStreamEvaluation("synthetic")
    ds = SyntheticTextureDataset(num_images, "test", seed=seed, model_path=recon.model_path,
                                 image_size=recon.image_size, uv_size=recon.uv_size)
    rows: dict[str, list[Tensor]] = {k: [] for k in ("ours", "fit", "pred", "truth", "mask", "photo", "photo_lin")}
    for start in range(0, len(ds), batch_size):
        b = TextureSample.collate(ds.__getitems__(list(range(start, min(start + batch_size, len(ds))))))
        rec = recon.reconstruct(b.image)
        texture, linear = rec.extra_images["texture"].cpu(), rec.extra_images["albedo_map"].cpu()
        rows["ours"].append(texture_mae(texture, b.texture, b.texture_mask))
        rows["fit"].append(texture_mae(b.albedo_map, b.texture, b.texture_mask))
        rows["pred"].append(texture_mae(linear, b.texture, b.texture_mask))
        rows["truth"].append(b.texture)
        rows["mask"].append(b.texture_mask)
        verts = rec.mesh.verts[:, :recon.num_verts]
        render_linear, _ = recon.fusion(verts, linear.to(verts), rec.encoding.params.sh)
        mask = rec.render_mask.cpu()
        seen = mask.flatten(1).sum(1) > 0  # a collapsed mesh (e.g. an untrained network's) renders nothing
        rows["photo"].append(photometric_error(rec.render.cpu(), b.image, mask)[seen])
        rows["photo_lin"].append(photometric_error(render_linear.image.cpu(), b.image, mask)[seen])
    cat = {k: torch.cat(v) for k, v in rows.items()}
    m = cat["mask"]
    mean_texture = ((cat["truth"] * m).sum(0, keepdim=True) / m.sum(0, keepdim=True).clamp_min(1)).expand_as(
        cat["truth"])
    res.add("texture MAE", float(cat["ours"].mean()), "[0, 1] (synthetic FTD, true albedo)",
            linear_fit=float(cat["fit"].mean()), linear_pred=float(cat["pred"].mean()),
            mean_texture=float(texture_mae(mean_texture, cat["truth"], m).mean()))
    n, seen = len(ds), cat["photo"].numel()
    if seen == 0:
        res.add("photometric error", None, f"0..255 (no face rendered: the {n} meshes cover no pixel)")
    else:
        res.add("photometric error", float(cat["photo"].mean()), f"0..255 (rendered face region, {seen}/{n} faces)",
                linear_pred=float(cat["photo_lin"].mean()))
    return res


# ------------------------------------------------------------------------------------------------ folders
def _image_pairs(root: Path, suffixes: tuple[str, ...], what: str) -> tuple[list[tuple[Path, Path]], list[str]]:
    if not root.is_dir():
        raise MissingAssetError(f"{what} folder not found: {root}")
    pairs, skipped = [], []
    for image in sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")):
        other = next((image.with_suffix(s) for s in suffixes if image.with_suffix(s).is_file()), None)
        if other is None:
            skipped.append(f"{image}: no {'/'.join(suffixes)} beside it")
        else:
            pairs.append((image, other))
    return pairs, skipped


def _crop(image_path: Path, points: Tensor, size: int) -> tuple[Tensor, Tensor]:
    img = torch.from_numpy(read_image(image_path)).permute(2, 0, 1).float() / 255.0
    mat = keypoint_crop(points, size)
    return warp_crop(img[None], mat[None], size)[0].clamp(0, 1), mat


def evaluate_aflw2000(predictor: GeometryPredictor, root: str | Path, num_images: int | None = None,
                      bfm_path: str | None = None) -> DualStreamEvaluation:
    """AFLW2000-3D (module docstring): 68-point NME with yaw bins, and the dense NME with ``bfm_path``."""
    pairs, skipped = _image_pairs(Path(root).expanduser(), (".mat",), "AFLW2000-3D")
    bfm = read_face3d_bfm(bfm_path) if bfm_path else None
    if bfm is not None and bfm.shape_mu.numel() // 3 != predictor.codec.mapper.num_verts:
        raise ValueError(f"--bfm-path {bfm_path}: {bfm.shape_mu.numel() // 3} vertices, the network's topology has "
                         f"{predictor.codec.mapper.num_verts}: the dense NME needs the same topology")
    res = DualStreamEvaluation("aflw2000", skipped=skipped)
    nme, dense, yaws, size = [], [], [], predictor.image_size
    for image_path, mat_path in pairs[:num_images]:
        try:
            rec = read_300wlp_mat(mat_path, require_shape=False)
            if rec.pt3d_68 is None:
                raise AssetFormatError(f"{mat_path}: key `pt3d_68` is missing (AFLW2000-3D layout)")
            gt = rec.pt3d_68.reshape(3, 68).T  # (68, 3), image pixels (integer centres)
            crop, mat = _crop(image_path, gt[:, :2] + 0.5, size)
        except (AssetFormatError, MissingAssetError, OSError, ValueError) as exc:
            res.skipped.append(str(exc))
            continue
        pred = predictor(crop[None])
        lmk = transform_points(gt[:, :2] + 0.5, mat)[None]
        nme.append(landmark_nme(pred.verts[:, predictor.keypoints], lmk, "bbox"))
        yaws.append(torch.rad2deg(rec.pose_para[1:2]))
        if bfm is not None and rec.shape_para is not None:
            h = read_image(image_path).shape[0]
            v = image_vertices(bfm.vertices(_pad(rec.shape_para, bfm.shape_pc.shape[1]),
                                            _pad(rec.exp_para, bfm.exp_pc.shape[1])), rec.pose_para, h)
            v = torch.cat([transform_points(v[:, :2], mat), v[:, 2:] * float(mat[0, :2].norm())], 1)
            dense.append(_dense_nme(pred.verts, v[None], lmk))
    if not nme:
        raise MissingAssetError(f"no usable AFLW2000-3D image + .mat pairs under {root} ({len(res.skipped)} skipped)")
    yaw = torch.cat(yaws)
    binned = yaw_binned_mean(torch.cat(nme), yaw)
    res.add("NME 68 (yaw-balanced)", binned.balanced_mean)
    for (lo, hi), v, c in zip(zip(binned.edges, binned.edges[1:]), binned.per_bin, binned.counts, strict=True):
        res.add(f"NME 68 yaw [{lo:.0f}, {hi:.0f}] (n={c})", v)
    if dense:
        res.add("NME dense (yaw-balanced)", yaw_binned_mean(torch.cat(dense), yaw[: len(dense)]).balanced_mean)
    else:
        res.add("NME dense (yaw-balanced)", None, "needs --bfm-path and Shape_Para / Exp_Para")
    return res


def _pad(x: Tensor, k: int) -> Tensor:
    return torch.nn.functional.pad(x, (0, k - x.numel()))


def read_scan(path: str | Path) -> tuple[Tensor, Tensor]:
    """A scan mesh (OBJ / PLY / OFF / STL via trimesh) -> vertices (N, 3), faces (F, 3)."""
    import trimesh

    p = Path(path).expanduser()
    if not p.is_file():
        raise MissingAssetError(f"scan not found: {p}")
    try:
        mesh = trimesh.load(p, force="mesh", process=False)
    except Exception as exc:
        raise AssetFormatError(f"{p}: not a readable mesh: {type(exc).__name__}: {exc}") from exc
    if not hasattr(mesh, "vertices") or len(mesh.vertices) < 10:
        raise AssetFormatError(f"{p}: the scan has {len(getattr(mesh, 'vertices', []))} vertices (need >= 10)")
    return torch.as_tensor(mesh.vertices, dtype=torch.float32), torch.as_tensor(mesh.faces, dtype=torch.long)


def evaluate_micc(predictor: GeometryPredictor, root: str | Path, num_images: int | None = None,
                  crop_radius: float = 95.0, detector=None) -> DualStreamEvaluation:
    """Images beside scans (module docstring). Faces are cropped with the landmark box of ``detector``
    (``image (H, W, 3) uint8 -> (68, 2)`` pixels; default: :func:`facelab.data.landmarks` mediapipe when
    installed, else the centre square)."""
    pairs, skipped = _image_pairs(Path(root).expanduser(), _SCAN_SUFFIXES, "MICC")
    res = DualStreamEvaluation("micc", skipped=skipped)
    errors = []
    for image_path, scan_path in pairs[:num_images]:
        try:
            scan, _ = read_scan(scan_path)
            img = read_image(image_path)
        except (AssetFormatError, MissingAssetError, OSError, ValueError) as exc:
            res.skipped.append(str(exc))
            continue
        h, w = img.shape[:2]
        pts = detector(img) if detector is not None else torch.tensor([[w * 0.2, h * 0.2], [w * 0.8, h * 0.8]])
        crop, _ = _crop(image_path, torch.as_tensor(pts, dtype=torch.float32), predictor.image_size)
        pred = predictor(crop[None])
        errors.append(micc_point_to_plane(_to_y_up(pred.verts[0]), predictor.faces, scan, crop_radius=crop_radius))
    if not errors:
        raise MissingAssetError(f"no usable image + scan pairs under {root} ({len(res.skipped)} skipped)")
    res.add("point-to-plane after ICP (scan)", sum(errors) / len(errors), "scan units (MICC: mm)")
    return res


# ------------------------------------------------------------------------------------------------ entry
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--aflw-root", default=None, help="AFLW2000-3D folder (--data aflw2000)")
    parser.add_argument("--bfm-path", default=None, help="face3d BFM.mat, for the dense AFLW2000-3D NME")
    parser.add_argument("--micc-root", default=None, help="folder of NAME.jpg + NAME.obj scans (--data micc)")
    parser.add_argument("--crop-radius", type=float, default=95.0, help="MICC scan crop around the nose tip (mm)")
    parser.add_argument("--model-path", default="synthetic", help="--init: the BFM (default: synthetic stand-in)")
    parser.add_argument("--uv-size", type=int, default=256, help="--init: ASM side")
    parser.add_argument("--width", type=float, default=1.0, help="--init: encoder / decoder channel multiplier")


def run(request: EvaluateRequest, options: argparse.Namespace) -> DualStreamEvaluation:
    """The :class:`facelab.methods.EvaluateEntry` callable."""
    predictor, recon = load_models(request, options)
    if request.data == "synthetic":
        return evaluate_synthetic(predictor, request.num_images, request.batch_size, request.seed or 0, recon)
    if request.data == "aflw2000":
        if options.aflw_root is None:
            raise ValueError("--data aflw2000 needs --aflw-root (AFLW2000-3D from the 3DDFA project page)")
        return evaluate_aflw2000(predictor, options.aflw_root, request.num_images, options.bfm_path)
    if options.micc_root is None:
        raise ValueError("--data micc needs --micc-root (images beside their scans)")
    return evaluate_micc(predictor, options.micc_root, request.num_images, options.crop_radius)


evaluate_entry = EvaluateEntry(run=run, add_arguments=add_arguments, data=("synthetic", "aflw2000", "micc"))
