"""DualStream's geometry data: ASM ground truth from the synthetic world and from 300W-LP, and the DataModule.

Every source yields :class:`AsmSample` records (collated into the same class): the crop, the identity ASM and the
expression ASM in crop pixels (:mod:`dualstream.asm`), the PRNet UV weight mask (:mod:`dualstream.uv_weights`), the
parametric ground truth of the PSN (albedo coefficients, 27 SH coefficients, head rotation; each with a validity
flag, since 300W-LP has no SH), 68 landmarks in crop pixels and a visibility mask (and, for the synthetic world,
its region segmentation).

Sources:

* **synthetic world** (:class:`SyntheticAsmDataset`): :class:`facelab.data.synthetic.SyntheticFaceDataset` of the BFM
  family with ``return_position_maps`` gives image-aligned UV position maps of the full face and of the neutral face
  under the same pose and camera (exact ground truth), z shifted to min 0 here
  (:func:`dualstream.asm.shift_z_to_min_zero`).
* **300W-LP** (:class:`Lp300wDataset`) as distributed (Zhu et al., CVPR 2016): one image + ``.mat`` per face with
  ``Pose_Para`` (1, 7) = pitch, yaw, roll, tx, ty, tz, scale; ``Shape_Para`` (199, 1); ``Exp_Para`` (29, 1);
  optionally ``Tex_Para`` (199, 1) and ``pt2d`` (2, 68), on face3d's / 3DDFA's ``BFM.mat`` (struct ``model``:
  BFM 2009 trimmed to 53,215 vertices + the 3DDFA expression basis, :func:`read_face3d_bfm`) with UVs from
  3DMMasSTN's ``BFM_UV.mat``. The ground truth follows face3d's ``examples/8_generate_posmap_300WLP.py``
  (PRNet's recipe): vertices ``shapeMU + shapePC @ Shape_Para + expPC @ Exp_Para``; the 3DDFA similarity
  ``s R(pitch, yaw, roll) v + t`` (:func:`angle2matrix_3ddfa`); image y flipped (``y_img = H - 1 - y``); a square
  crop of side ``margin`` (1.5) x the keypoint box size around its centre, jittered by up to ``jitter`` (0.1) x
  that size and scaled by ``1 +- scale_jitter`` (0.1); positions mapped by the same similarity (z scaled by it),
  z shifted to min 0, rasterized into UV at ``uv_size``. The neutral face is the same with ``Exp_Para = 0``.
  Files: 300W-LP from the 3DDFA project page (Zhu et al., http://www.cbsr.ia.ac.cn/users/xiangyuzhu/projects/3DDFA/main.htm);
  ``BFM.mat`` from face3d (YadiraF/face3d ``examples/Data/BFM``, generated from BFM 2009 + 3DDFA's expression basis by
  its ``generate.m``); ``BFM_UV.mat`` from 3DMMasSTN (anilbas/3DMMasSTN ``util/BFM_UV.mat``).
  :func:`write_300wlp_standin` writes the same layout from the synthetic BFM stand-in (``scipy.io.savemat``), so the
  loader is exercised in tests.

Bad input: a missing root / model / UV file raises :class:`facelab.errors.MissingAssetError` naming the file, the
argument and where to get it; a corrupt or incomplete ``.mat`` raises :class:`facelab.errors.AssetFormatError`
with the path and the key (:func:`read_300wlp_mat`); at dataset construction every pair is checked and the bad ones
are skipped with the reason in :attr:`Lp300wDataset.skipped` (logged), and a folder with nothing usable is an error.

Shapes: ``B`` batch, ``H`` crop side, ``S`` UV side, ``V`` vertices, ``K`` albedo coefficients.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from dualstream.asm import AsmCodec, shift_z_to_min_zero
from dualstream.uv_weights import UVWeightMask
from facelab.data.crop import crop_matrix, transform_points, warp_crop
from facelab.data.image_io import read_image
from facelab.data.synthetic import SEGMENTATION_LABELS, SyntheticFaceDataset, SyntheticFaceSample
from facelab.errors import AssetFormatError, MissingAssetError
from facelab.log import get_logger
from facelab.masks import convex_hull_mask
from facelab.morphable import load_model

__all__ = [
    "AsmDataModule",
    "AsmSample",
    "Face3dBfm",
    "FaceTopology",
    "Lp300wDataset",
    "Lp300wRecord",
    "SyntheticAsmDataset",
    "angle2matrix_3ddfa",
    "load_topology",
    "matrix_to_axis_angle",
    "read_300wlp_mat",
    "read_face3d_bfm",
    "write_300wlp_standin",
    "write_face3d_bfm",
]

_log = get_logger("dualstream.data")

LP300W_SOURCE = ("300W-LP: the 3DDFA project page (Zhu et al., CVPR 2016), "
                 "http://www.cbsr.ia.ac.cn/users/xiangyuzhu/projects/3DDFA/main.htm")
FACE3D_BFM_SOURCE = ("face3d's BFM.mat (YadiraF/face3d, examples/Data/BFM: run its generate.m on BFM 2009 "
                     "01_MorphableModel.mat from https://faces.dmi.unibas.ch/bfm/ and 3DDFA's Model_Expression.mat)")
BFM_UV_SOURCE = "3DMMasSTN's BFM_UV.mat (anilbas/3DMMasSTN, util/BFM_UV.mat)"
#: Segmentation labels that are skin of the reconstructed face (visibility mask of the synthetic world).
FACE_LABELS = ("face", "forehead", "eye_region", "nose", "lips")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


# ---------------------------------------------------------------------------------------------------- records
@dataclass
class AsmSample:
    """One face (or, collated, a batch: ``B`` leading on every tensor) of the geometry stream.

    Attributes:
        image: (3, H, W) RGB crop in [0, 1].
        asm_id: (3, S, S) identity ASM, crop pixels ``(x, y, z)``, z min 0 (off-chart texels 0 or the gutter).
        asm_exp: (3, S, S) expression ASM, ``full - identity`` in pixels.
        weight_mask: (1, S, S) PRNet weight mask of the layout (16 / 4 / 3 / 0).
        albedo: (K,) albedo coefficients of the morphable model (zeros where unknown).
        sh: (27,) SH lighting (Deep3DFaceRecon layout: 9 red, 9 green, 9 blue; zeros where unknown).
        pose: (3,) axis-angle head rotation in the model frame (+y up, face toward +z).
        albedo_valid, sh_valid, pose_valid: () bool, which parametric targets exist.
        landmarks: (68, 2) iBUG landmarks in crop pixels (origin top-left corner, +y down).
        visibility: (1, H, W) float: 1 on visible face skin (synthetic: from the segmentation; 300W-LP: the hull of
            the 68 landmarks).
        segmentation: (H, W) long :data:`facelab.data.synthetic.SEGMENTATION_LABELS` ids, or -1 where unknown.
    """

    image: Tensor
    asm_id: Tensor
    asm_exp: Tensor
    weight_mask: Tensor
    albedo: Tensor
    sh: Tensor
    pose: Tensor
    albedo_valid: Tensor
    sh_valid: Tensor
    pose_valid: Tensor
    landmarks: Tensor
    visibility: Tensor
    segmentation: Tensor

    @property
    def asm_full(self) -> Tensor:
        """The full map ``A = A_id + A_exp`` (Eq. 2)."""
        return self.asm_id + self.asm_exp

    @classmethod
    def collate(cls, samples: Sequence[AsmSample]) -> AsmSample:
        """Stack samples (the ``collate_fn`` of a DataLoader)."""
        return cls(**{f.name: torch.stack([getattr(s, f.name) for s in samples]) for f in fields(cls)})

    def to(self, *args, **kwargs) -> AsmSample:
        return AsmSample(**{f.name: getattr(self, f.name).to(*args, **kwargs) for f in fields(self)})


# ---------------------------------------------------------------------------------------------------- topology
@dataclass
class FaceTopology:
    """What the geometry stream needs of the mesh: triangles, UV layout, landmark vertices, a reference shape.

    Attributes:
        faces: (F, 3) long. uv: (T, 2) in [0, 1], v up. faces_uv: (F, 3) long. keypoints: (68,) long vertex ids.
        mean_shape: (V, 3) the model's mean shape (model frame, +x to the face's left, +y up; for mirror pairs).
        zero_faces: (F_0,) long faces weighted 0 by the UV weight mask (a neck region; may be empty).
        num_albedo: albedo coefficients of the model (the PSN's albedo output).
    """

    faces: Tensor
    uv: Tensor
    faces_uv: Tensor
    keypoints: Tensor
    mean_shape: Tensor
    zero_faces: Tensor
    num_albedo: int = 0

    @property
    def num_verts(self) -> int:
        return self.mean_shape.shape[0]

    def codec(self, uv_size: int, image_size: int, expression_gain: float = 8.0) -> AsmCodec:
        return AsmCodec(self.faces, self.uv, self.faces_uv, uv_size, image_size, expression_gain, self.num_verts)

    def weight_mask(self, uv_size: int) -> Tensor:
        """(1, 1, S, S) PRNet weight mask of this layout."""
        zero = self.zero_faces if self.zero_faces.numel() else None
        return UVWeightMask(self.faces, self.uv, self.faces_uv, uv_size, self.keypoints, zero_faces=zero).mask


def load_topology(model_path: str = "synthetic", uv_path: str | None = None) -> FaceTopology:
    """The topology of a BFM-family model file.

    Args:
        model_path: ``"synthetic"`` / ``"synthetic:tiny"`` (the generated stand-in), Deep3DFaceRecon's
            ``BFM_model_front.mat`` or a Basel ``.h5`` (:class:`facelab.morphable.Bfm`), or face3d's ``BFM.mat``
            (struct ``model``, :func:`read_face3d_bfm`; the 300W-LP topology).
        uv_path: the UV layout (``BFM_UV.mat``); None: ``BFM_UV.mat`` beside the model.
    """
    if not str(model_path).startswith("synthetic") and _is_face3d_bfm(model_path):
        bfm = read_face3d_bfm(model_path)
        uv, faces_uv = _face3d_uv(bfm, model_path, uv_path)
        return FaceTopology(faces=bfm.faces, uv=uv, faces_uv=faces_uv, keypoints=bfm.keypoints,
                            mean_shape=bfm.shape_mu.view(-1, 3), zero_faces=torch.zeros(0, dtype=torch.long),
                            num_albedo=bfm.tex_pc.shape[1])
    model = load_model("bfm", model_path, **({"uv_path": uv_path} if uv_path else {}))
    if not model.has_uv:
        raise MissingAssetError(f"{model_path}: the BFM has no UV layout; give `uv_path` ({BFM_UV_SOURCE})")
    zero = [model.region_faces(r) for r in ("neck",) if r in model.regions]
    return FaceTopology(faces=model.faces, uv=model.uv, faces_uv=model.faces_uv, keypoints=model.keypoints,
                        mean_shape=model.mean_shape.view(-1, 3),
                        zero_faces=torch.cat(zero) if zero else torch.zeros(0, dtype=torch.long),
                        num_albedo=model.num_albedo)


# ---------------------------------------------------------------------------------------------------- synthetic
def visibility_from_segmentation(segmentation: Tensor) -> Tensor:
    """(..., H, W) label ids -> (..., 1, H, W) float mask of visible face skin (:data:`FACE_LABELS`)."""
    ids = torch.tensor([SEGMENTATION_LABELS.index(n) for n in FACE_LABELS], device=segmentation.device)
    return torch.isin(segmentation, ids).to(torch.float32).unsqueeze(-3)


class SyntheticAsmDataset(Dataset):
    """ASM ground truth from the synthetic world (BFM family; module docstring).

    Args:
        num_samples: length of the split. split: ``train`` | ``val`` | ``test``. seed: the world's seed.
        model_path: the BFM asset (``"synthetic"`` for the stand-in). image_size: crop side. uv_size: ASM side.
        camera: ``weak`` or ``perspective``. render_wrinkles: bump-map wrinkles into the images.
        expression_scale: multiplier of the world's expression prior (larger: more expressive faces).
        model: an already loaded :class:`facelab.morphable.Bfm` (shared between splits).
    """

    def __init__(self, num_samples: int, split: Literal["train", "val", "test"] = "train", seed: int = 0,
                 model_path: str = "synthetic", image_size: int = 256, uv_size: int = 256,
                 camera: Literal["weak", "perspective"] = "weak", render_wrinkles: bool = True,
                 expression_scale: float = 1.0, model=None) -> None:
        from facelab.data.synthetic import SceneConfig

        self.world = SyntheticFaceDataset(
            family="bfm", model_path=model_path, num_samples=num_samples, split=split, seed=seed,
            image_size=image_size, camera=camera, uv_size=uv_size, render_wrinkles=render_wrinkles,
            return_position_maps=True, albedo_source="model", model=model,
            scene=SceneConfig(expression_scale=expression_scale))
        m = self.world.model
        if not m.has_uv:
            raise ValueError(f"{model_path}: the BFM has no UV layout (BFM_UV.mat beside it): ASMs need one")
        zero = [m.region_faces(r) for r in ("neck",) if r in m.regions]
        self.weight_mask = UVWeightMask(m.faces, m.uv, m.faces_uv, uv_size, m.keypoints,
                                        zero_faces=torch.cat(zero) if zero else None).mask[0]
        self.chart_mask = self.world.uv_mapper.mask

    @property
    def model(self):
        return self.world.model

    def __len__(self) -> int:
        return len(self.world)

    def __getitem__(self, index: int) -> AsmSample:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[AsmSample]:
        return [self.convert(s) for s in self.world.generate([int(i) for i in indices])]

    def convert(self, s: SyntheticFaceSample) -> AsmSample:
        """One world sample -> :class:`AsmSample` (z shifted to min 0 by the identity face)."""
        ident, full = shift_z_to_min_zero(s.position_neutral_uv[None], s.position_uv[None], self.chart_mask)
        true = torch.tensor(True)
        return AsmSample(
            image=s.image, asm_id=ident[0], asm_exp=full[0] - ident[0], weight_mask=self.weight_mask,
            albedo=s.albedo, sh=s.sh_coeffs, pose=s.global_pose, albedo_valid=true, sh_valid=true, pose_valid=true,
            landmarks=s.landmarks68_pix, visibility=visibility_from_segmentation(s.segmentation),
            segmentation=s.segmentation)


# ---------------------------------------------------------------------------------------------------- face3d BFM
@dataclass
class Face3dBfm:
    """face3d's / 3DDFA's ``BFM.mat`` (struct ``model``), 0-based, as tensors.

    Attributes:
        shape_mu: (3V,) mean shape (+ ``expMU``, as face3d's ``load_BFM`` does), xyz interleaved.
        shape_pc: (3V, K_id) identity basis (BFM 2009: 199). exp_pc: (3V, K_exp) expression basis (3DDFA: 29).
        tex_mu: (3V,) mean texture (0..255). tex_pc: (3V, K_tex).
        faces: (F, 3) long. keypoints: (68,) long ``kpt_ind``.
    """

    shape_mu: Tensor
    shape_pc: Tensor
    exp_pc: Tensor
    tex_mu: Tensor
    tex_pc: Tensor
    faces: Tensor
    keypoints: Tensor

    def vertices(self, shape_para: Tensor, exp_para: Tensor) -> Tensor:
        """(K_id,), (K_exp,) raw coefficients -> (V, 3) model-frame vertices (face3d ``generate_vertices``)."""
        v = self.shape_mu + self.shape_pc @ shape_para.to(self.shape_pc) + self.exp_pc @ exp_para.to(self.exp_pc)
        return v.view(-1, 3)


def _loadmat(path: Path, what: str) -> dict:
    import scipy.io

    try:
        return scipy.io.loadmat(str(path), struct_as_record=False, squeeze_me=False)
    except Exception as exc:  # scipy raises ValueError/TypeError/OSError on broken files
        raise AssetFormatError(f"{path}: not a readable MATLAB file ({what}): {type(exc).__name__}: {exc}") from exc


def _is_face3d_bfm(path: str | os.PathLike) -> bool:
    p = Path(path).expanduser()
    if p.suffix != ".mat" or not p.is_file():
        return False
    import scipy.io

    try:
        return "model" in {name for name, _, _ in scipy.io.whosmat(str(p))}
    except Exception:
        return False


def read_face3d_bfm(path: str | os.PathLike) -> Face3dBfm:
    """Read face3d's ``BFM.mat`` (struct ``model``: ``shapeMU`` (3V, 1), ``shapePC`` (3V, 199), ``expMU``,
    ``expPC`` (3V, 29), ``texMU``, ``texPC``, ``tri`` (3, F) 1-based, ``kpt_ind`` (1, 68) 1-based)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise MissingAssetError(f"face3d BFM model not found: {p}\n  set by: bfm_path\n  obtain it from: "
                                f"{FACE3D_BFM_SOURCE}\n  or write the stand-in: dualstream.data.write_300wlp_standin")
    mat = _loadmat(p, "face3d BFM.mat")
    if "model" not in mat:
        raise AssetFormatError(f"{p}: no struct `model` (expected face3d's BFM.mat)")
    model = mat["model"][0, 0]

    def get(key: str, required: bool = True):
        if not hasattr(model, key):
            if required:
                raise AssetFormatError(f"{p}: model.{key} is missing (expected face3d's BFM.mat layout)")
            return None
        return np.asarray(getattr(model, key), dtype=np.float64)

    mu = get("shapeMU").reshape(-1)
    exp_mu = get("expMU", required=False)
    if exp_mu is not None:
        mu = mu + exp_mu.reshape(-1)
    n3 = mu.size
    tri = get("tri").astype(np.int64)
    tri = tri.T if tri.shape[0] == 3 and tri.shape[1] != 3 else tri
    kpt = get("kpt_ind").astype(np.int64).reshape(-1)
    if kpt.size != 68:
        raise AssetFormatError(f"{p}: model.kpt_ind has {kpt.size} entries, expected 68")
    arrays = {k: get(k) for k in ("shapePC", "expPC")}
    for k, a in arrays.items():
        if a.shape[0] != n3:
            raise AssetFormatError(f"{p}: model.{k} has {a.shape[0]} rows, shapeMU has {n3}")
    tex_mu, tex_pc = get("texMU", required=False), get("texPC", required=False)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).float()  # noqa: E731
    return Face3dBfm(
        shape_mu=t(mu), shape_pc=t(arrays["shapePC"]), exp_pc=t(arrays["expPC"]),
        tex_mu=t(np.zeros(n3) if tex_mu is None else tex_mu.reshape(-1)),
        tex_pc=t(np.zeros((n3, 0)) if tex_pc is None else tex_pc),
        faces=torch.from_numpy(tri - 1), keypoints=torch.from_numpy(kpt - 1))


def write_face3d_bfm(path: str | os.PathLike, shape_mu: np.ndarray, shape_pc: np.ndarray, exp_pc: np.ndarray,
                     tex_mu: np.ndarray, tex_pc: np.ndarray, faces: np.ndarray, keypoints: np.ndarray) -> Path:
    """Write face3d's ``BFM.mat`` layout (0-based ``faces`` / ``keypoints`` in; 1-based in the file)."""
    import scipy.io

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = {"shapeMU": shape_mu.reshape(-1, 1), "shapePC": shape_pc, "shapeEV": np.ones((shape_pc.shape[1], 1)),
             "expMU": np.zeros((shape_mu.size, 1)), "expPC": exp_pc, "expEV": np.ones((exp_pc.shape[1], 1)),
             "texMU": tex_mu.reshape(-1, 1), "texPC": tex_pc, "texEV": np.ones((tex_pc.shape[1], 1)),
             "tri": (faces.T + 1).astype(np.float64), "kpt_ind": (keypoints.reshape(1, -1) + 1).astype(np.float64)}
    scipy.io.savemat(str(path), {"model": model}, do_compression=True)
    return path


def _face3d_uv(bfm: Face3dBfm, model_path, uv_path) -> tuple[Tensor, Tensor]:
    from facelab.morphable.bfm import BFM_UV_NAME, read_bfm_uv

    uv_file = Path(uv_path).expanduser() if uv_path else Path(model_path).expanduser().parent / BFM_UV_NAME
    if not uv_file.is_file():
        raise MissingAssetError(f"BFM UV layout not found: {uv_file}\n  set by: uv_path\n  obtain it from: "
                                f"{BFM_UV_SOURCE}")
    uv, faces_uv = read_bfm_uv(uv_file, bfm.faces.numpy(), bfm.shape_mu.numel() // 3,
                               search_dirs=[uv_file.parent, Path(model_path).expanduser().parent])
    return torch.from_numpy(np.asarray(uv, dtype=np.float32)), torch.from_numpy(np.asarray(faces_uv)).long()


# ---------------------------------------------------------------------------------------------------- 300W-LP
@dataclass
class Lp300wRecord:
    """One 300W-LP / AFLW2000-3D ``.mat``.

    Attributes:
        pose_para: (7,) pitch, yaw, roll (radians), tx, ty, tz, scale. shape_para: (K_id,). exp_para: (K_exp,).
        tex_para: (K_tex,) or None. pt2d: (2, 68) or None. pt3d_68: (3, 68) or None (AFLW2000-3D).
    """

    pose_para: Tensor
    shape_para: Tensor
    exp_para: Tensor
    tex_para: Tensor | None = None
    pt2d: Tensor | None = None
    pt3d_68: Tensor | None = None


def read_300wlp_mat(path: str | os.PathLike, require_shape: bool = True) -> Lp300wRecord:
    """Read a 300W-LP (or AFLW2000-3D) ``.mat``: ``Pose_Para`` (1, 7), ``Shape_Para`` (199, 1), ``Exp_Para``
    (29, 1), optional ``Tex_Para``, ``pt2d`` (2, 68), ``pt3d_68`` (3, 68).

    Raises:
        MissingAssetError: no such file. AssetFormatError: unreadable, or a key missing / of the wrong size.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise MissingAssetError(f"300W-LP annotation not found: {p}\n  obtain it from: {LP300W_SOURCE}")
    mat = _loadmat(p, "300W-LP annotation")

    def get(key: str, size: int | None, required: bool) -> Tensor | None:
        if key not in mat:
            if required:
                raise AssetFormatError(f"{p}: key `{key}` is missing (300W-LP layout: Pose_Para, Shape_Para, "
                                       "Exp_Para)")
            return None
        a = np.asarray(mat[key], dtype=np.float64)
        if size is not None and a.size != size:
            raise AssetFormatError(f"{p}: `{key}` has {a.size} values, expected {size}")
        if not np.isfinite(a).all():
            raise AssetFormatError(f"{p}: `{key}` holds non-finite values")
        return torch.from_numpy(a).float()

    pose = get("Pose_Para", 7, True).reshape(-1)
    shape = get("Shape_Para", None, require_shape)
    exp = get("Exp_Para", None, require_shape)
    pt2d, pt3d = get("pt2d", 136, False), get("pt3d_68", None, False)
    if pt3d is not None:
        if pt3d.shape[-1] != 68 or pt3d.numel() not in (136, 204):
            raise AssetFormatError(f"{p}: `pt3d_68` has shape {tuple(pt3d.shape)}, expected (3, 68)")
    return Lp300wRecord(
        pose_para=pose, shape_para=None if shape is None else shape.reshape(-1),
        exp_para=None if exp is None else exp.reshape(-1), tex_para=_flat(get("Tex_Para", None, False)),
        pt2d=None if pt2d is None else pt2d.reshape(2, 68), pt3d_68=pt3d)


def _flat(x: Tensor | None) -> Tensor | None:
    return None if x is None else x.reshape(-1)


def angle2matrix_3ddfa(angles: Tensor) -> Tensor:
    """3DDFA's rotation of ``Pose_Para[:3]`` (face3d ``mesh.transform.angle2matrix_3ddfa``): ``R = R_x R_y R_z``.

    Args:
        angles: (..., 3) pitch (x), yaw (y), roll (z) in radians.

    Returns:
        (..., 3, 3) with ``R_x = [[1, 0, 0], [0, c, s], [0, -s, c]]``, ``R_y = [[c, 0, -s], [0, 1, 0], [s, 0, c]]``,
        ``R_z = [[c, s, 0], [-s, c, 0], [0, 0, 1]]`` (3DDFA's sign convention).
    """
    c, s = angles.cos(), angles.sin()
    one, zero = torch.ones_like(c[..., 0]), torch.zeros_like(c[..., 0])

    def mat(rows):
        return torch.stack([torch.stack(r, -1) for r in rows], -2)

    rx = mat([[one, zero, zero], [zero, c[..., 0], s[..., 0]], [zero, -s[..., 0], c[..., 0]]])
    ry = mat([[c[..., 1], zero, -s[..., 1]], [zero, one, zero], [s[..., 1], zero, c[..., 1]]])
    rz = mat([[c[..., 2], s[..., 2], zero], [-s[..., 2], c[..., 2], zero], [zero, zero, one]])
    return rx @ ry @ rz


def matrix_to_axis_angle(rot: Tensor) -> Tensor:
    """(..., 3, 3) rotation matrices -> (..., 3) axis-angle (kornia's conversion)."""
    from kornia.geometry.conversions import rotation_matrix_to_axis_angle

    return rotation_matrix_to_axis_angle(rot.reshape(-1, 3, 3)).reshape(*rot.shape[:-2], 3)


def image_vertices(verts: Tensor, pose_para: Tensor, image_height: int) -> Tensor:
    """(V, 3) model-frame vertices -> (V, 3) image positions: 3DDFA's ``s R v + t``, y flipped to image rows
    (face3d: ``H - 1 - y`` with pixel centres at integers; here +0.5 to facelab's corner-origin pixels)."""
    rot = angle2matrix_3ddfa(pose_para[:3])
    v = pose_para[6] * verts @ rot.T + pose_para[3:6]
    return torch.stack([v[:, 0] + 0.5, image_height - 1 - v[:, 1] + 0.5, v[:, 2]], dim=1)


def keypoint_crop(landmarks: Tensor, out_size: int, margin: float = 1.5, jitter: float = 0.0,
                  scale_jitter: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
    """face3d / PRNet's crop: square of side ``margin * (w + h) / 2`` of the landmark box around its centre,
    shifted by ``U(-jitter, jitter) * size`` per axis and scaled by ``U(1 - scale_jitter, 1 + scale_jitter)``.

    Args:
        landmarks: (L, 2) pixel points.

    Returns:
        (2, 3) source-to-crop similarity (:func:`facelab.data.crop.crop_matrix`).
    """
    lo, hi = landmarks.amin(0), landmarks.amax(0)
    center, old = (lo + hi) / 2, float(((hi - lo).sum()) / 2)
    u = torch.rand(3, generator=generator) * 2 - 1
    center = center + u[:2] * jitter * old
    size = old * margin * (1 + float(u[2]) * scale_jitter)
    return crop_matrix(center, torch.tensor(size), out_size)


def _pairs(root: Path) -> tuple[list[tuple[Path, Path]], list[str]]:
    """(image, .mat) pairs under ``root`` and the reasons for the .mat files left out."""
    pairs, skipped = [], []
    for mat in sorted(root.rglob("*.mat")):
        image = next((mat.with_suffix(s) for s in _IMAGE_SUFFIXES if mat.with_suffix(s).is_file()), None)
        if image is None:
            skipped.append(f"{mat}: no image beside it ({'/'.join(_IMAGE_SUFFIXES)})")
            continue
        pairs.append((image, mat))
    return pairs, skipped


class Lp300wDataset(Dataset):
    """300W-LP as distributed -> :class:`AsmSample` (module docstring: face3d / PRNet's recipe).

    Args:
        root: the folder of image + ``.mat`` pairs (searched recursively: ``AFW/``, ``HELEN/``, ... and their
            ``_Flip`` copies).
        bfm_path: face3d's ``BFM.mat``. uv_path: ``BFM_UV.mat`` (None: beside ``bfm_path``).
        image_size: crop side. uv_size: ASM side. margin: crop side over the keypoint box size.
        jitter, scale_jitter: crop perturbation (0 for evaluation). seed: jitter seed (per index, deterministic).
        files: an explicit list of ``.mat`` files (a split), instead of all under ``root``.
        check: read every ``.mat`` at construction and skip the bad ones with reasons (:attr:`skipped`).
    """

    def __init__(self, root: str | os.PathLike, bfm_path: str | os.PathLike, uv_path: str | None = None,
                 image_size: int = 256, uv_size: int = 256, margin: float = 1.5, jitter: float = 0.1,
                 scale_jitter: float = 0.1, seed: int = 0, files: Sequence[str] | None = None,
                 check: bool = True) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise MissingAssetError(f"300W-LP folder not found: {self.root}\n  set by: lp_root\n  obtain it from: "
                                    f"{LP300W_SOURCE}\n  or write the stand-in: dualstream.data.write_300wlp_standin")
        self.bfm = read_face3d_bfm(bfm_path)
        uv, faces_uv = _face3d_uv(self.bfm, bfm_path, uv_path)
        topo = FaceTopology(self.bfm.faces, uv, faces_uv, self.bfm.keypoints, self.bfm.shape_mu.view(-1, 3),
                            torch.zeros(0, dtype=torch.long), self.bfm.tex_pc.shape[1])
        self.topology = topo
        self.codec = topo.codec(uv_size, image_size)
        self.weight_mask = topo.weight_mask(uv_size)[0]
        self.image_size, self.uv_size, self.margin = int(image_size), int(uv_size), float(margin)
        self.jitter, self.scale_jitter, self.seed = float(jitter), float(scale_jitter), int(seed)
        pairs, self.skipped = _pairs(self.root)
        if files is not None:
            wanted = {Path(f).expanduser().resolve() for f in files}
            pairs = [p for p in pairs if p[1].resolve() in wanted]
        if check:
            pairs = [p for p in pairs if self._usable(p[1])]
        for reason in self.skipped:
            _log.warning("300W-LP: skipped %s", reason)
        if not pairs:
            raise MissingAssetError(f"no usable 300W-LP image + .mat pairs under {self.root} "
                                    f"({len(self.skipped)} skipped)\n  obtain it from: {LP300W_SOURCE}")
        self.pairs = pairs

    def _usable(self, mat: Path) -> bool:
        try:
            rec = read_300wlp_mat(mat)
        except AssetFormatError as exc:
            self.skipped.append(str(exc))
            return False
        if rec.shape_para.numel() > self.bfm.shape_pc.shape[1] or rec.exp_para.numel() > self.bfm.exp_pc.shape[1]:
            k_id, k_exp = self.bfm.shape_pc.shape[1], self.bfm.exp_pc.shape[1]
            self.skipped.append(f"{mat}: {rec.shape_para.numel()} shape / {rec.exp_para.numel()} expression "
                                f"coefficients, the model has {k_id} / {k_exp}")
            return False
        return True

    def __len__(self) -> int:
        return len(self.pairs)

    def _coeffs(self, x: Tensor, k: int) -> Tensor:
        return F.pad(x, (0, k - x.numel()))

    def __getitem__(self, index: int) -> AsmSample:
        image_path, mat_path = self.pairs[index]
        rec = read_300wlp_mat(mat_path)
        img = torch.from_numpy(read_image(image_path)).permute(2, 0, 1).float() / 255.0  # (3, H0, W0)
        shape = self._coeffs(rec.shape_para, self.bfm.shape_pc.shape[1])
        exp = self._coeffs(rec.exp_para, self.bfm.exp_pc.shape[1])
        full = image_vertices(self.bfm.vertices(shape, exp), rec.pose_para, img.shape[1])
        ident = image_vertices(self.bfm.vertices(shape, torch.zeros_like(exp)), rec.pose_para, img.shape[1])
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        mat = keypoint_crop(full[self.bfm.keypoints, :2], self.image_size, self.margin, self.jitter,
                            self.scale_jitter, g)
        crop = warp_crop(img[None], mat[None], self.image_size)[0].clamp(0, 1)
        scale = float(mat[0, :2].norm())

        def to_crop(v: Tensor) -> Tensor:
            return torch.cat([transform_points(v[:, :2], mat), v[:, 2:] * scale], dim=1)

        pos_id, pos_full = shift_z_to_min_zero(self.codec.from_vertices(to_crop(ident)[None]),
                                               self.codec.from_vertices(to_crop(full)[None]), self.codec.mask)
        lmk = transform_points(full[self.bfm.keypoints, :2], mat)
        k_tex = self.bfm.tex_pc.shape[1]
        albedo = torch.zeros(k_tex) if rec.tex_para is None else self._coeffs(rec.tex_para[:k_tex], k_tex)
        rot = angle2matrix_3ddfa(rec.pose_para[:3])
        return AsmSample(
            image=crop, asm_id=pos_id[0], asm_exp=pos_full[0] - pos_id[0], weight_mask=self.weight_mask,
            albedo=albedo, sh=torch.zeros(27), pose=matrix_to_axis_angle(rot),
            albedo_valid=torch.tensor(rec.tex_para is not None), sh_valid=torch.tensor(False),
            pose_valid=torch.tensor(True), landmarks=lmk,
            visibility=convex_hull_mask(lmk[None], (self.image_size, self.image_size))[0],
            segmentation=torch.full((self.image_size, self.image_size), -1, dtype=torch.long))


def write_300wlp_standin(out_dir: str | os.PathLike, num_images: int = 4, seed: int = 0, size: str = "tiny",
                         image_size: int = 200, corrupt: bool = False) -> Path:
    """Write a 300W-LP-layout stand-in from the synthetic BFM: ``BFM.mat`` (face3d layout, micrometres like BFM
    2009), ``BFM_UV.mat``, and ``images/NNNN.jpg`` + ``.mat`` (``Pose_Para``, ``Shape_Para`` 199, ``Exp_Para`` 29,
    ``Tex_Para`` 199, ``pt2d``) rendered with flat Lambertian shading from the 3DDFA transform.

    Args:
        out_dir: destination. num_images: faces. seed: generator seed. size: ``tiny`` | ``full`` stand-in mesh.
        image_size: side of the (uncropped) images. corrupt: also write a truncated ``.mat`` and a ``.mat``
            without its image (bad-input tests).

    Returns:
        The folder of the images (``out_dir / "images"``); the model files are in ``out_dir``.
    """
    import scipy.io
    from PIL import Image

    from facelab.morphable.bfm import write_bfm_uv
    from facelab.render import rasterize
    from facelab.render.rasterize import interpolate
    from facelab.render.shading import vertex_normals

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    m = load_model("bfm", "synthetic" if size == "full" else "synthetic:tiny")
    um = 1e5  # decimetres -> micrometres (BFM 2009's unit)
    pad = lambda a, k: np.pad(a, ((0, 0), (0, k - a.shape[1])))  # noqa: E731
    id_pc = pad(m.id_basis.T.double().numpy() * um, 199)
    exp_pc = pad(m.exp_basis.T.double().numpy()[:, :29] * um, 29)
    tex_pc = pad(m.albedo_basis.T.double().numpy() * 255, 199)
    mu = m.mean_shape.double().numpy() * um
    write_face3d_bfm(out / "BFM.mat", mu, id_pc, exp_pc, m.mean_albedo.double().numpy() * 255, tex_pc,
                     m.faces.numpy(), m.keypoints.numpy())
    write_bfm_uv(out / "BFM_UV.mat", m.uv.double().numpy())
    images = out / "images"
    images.mkdir(exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    bfm = read_face3d_bfm(out / "BFM.mat")
    extent = float((bfm.shape_mu.view(-1, 3)[:, :2].amax(0) - bfm.shape_mu.view(-1, 3)[:, :2].amin(0)).amax())
    for i in range(num_images):
        shape = torch.zeros(199)
        shape[: m.num_id] = torch.randn(m.num_id, generator=g)
        exp = torch.zeros(29)
        exp[:29] = torch.randn(29, generator=g) * 0.8
        tex = torch.zeros(199)
        tex[: m.num_tex] = torch.randn(m.num_tex, generator=g) * 0.5
        angles = (torch.rand(3, generator=g) * 2 - 1) * torch.tensor([0.25, 0.7, 0.15])
        s = 0.5 * image_size / extent
        t = torch.tensor([image_size / 2, image_size / 2, 0.0]) + (torch.rand(3, generator=g) - 0.5) * 10
        pose = torch.cat([angles, t, torch.tensor([s])])
        verts = image_vertices(bfm.vertices(shape, exp), pose, image_size)  # (V, 3) pixels, +y down
        ndc = torch.stack([verts[:, 0] / image_size * 2 - 1, 1 - verts[:, 1] / image_size * 2,
                           verts[:, 2].amax() - verts[:, 2] + 1.0], dim=1)[None]
        frags = rasterize(ndc, bfm.faces, image_size)
        colour = ((bfm.tex_mu + bfm.tex_pc @ tex).view(-1, 3) / 255).clamp(0, 1)
        normal_z = vertex_normals((verts * torch.tensor([1.0, -1.0, 1.0]))[None], bfm.faces)[0, :, 2:].abs()
        shaded = interpolate((colour * (0.3 + 0.7 * normal_z))[None], frags)[0]  # (H, W, 3)
        covered = (frags.pix_to_face[0] >= 0)[..., None]
        bg = torch.rand(3, generator=g)
        img = torch.where(covered, shaded, bg.expand_as(shaded))
        Image.fromarray((img.clamp(0, 1).numpy() * 255).astype(np.uint8)).save(images / f"{i:04d}.jpg", quality=95)
        kp = verts[bfm.keypoints]
        scipy.io.savemat(str(images / f"{i:04d}.mat"), {
            "Pose_Para": pose.double().numpy()[None], "Shape_Para": shape.double().numpy()[:, None],
            "Exp_Para": exp.double().numpy()[:, None], "Tex_Para": tex.double().numpy()[:, None],
            "pt2d": (kp[:, :2] - 0.5).double().numpy().T,
            "pt3d_68": torch.cat([kp[:, :2] - 0.5, kp[:, 2:]], 1).double().numpy().T})
    if corrupt:
        (images / "broken.mat").write_bytes(b"MATLAB 5.0 MAT-file, truncated")
        Image.new("RGB", (8, 8)).save(images / "broken.jpg")
        scipy.io.savemat(str(images / "orphan.mat"), {"Pose_Para": np.zeros((1, 7))})
        scipy.io.savemat(str(images / "nokeys.mat"), {"Pose_Para": np.zeros((1, 7))})
        Image.new("RGB", (8, 8)).save(images / "nokeys.jpg")
    return images


# ---------------------------------------------------------------------------------------------------- DataModule
class AsmDataModule(LightningDataModule):
    """Train/val loaders of :class:`AsmSample` batches (the geometry stage of ``configs/dualstream_geometry.yaml``).

    Args:
        source: ``synthetic`` (the BFM synthetic world) or ``300wlp`` (:class:`Lp300wDataset`).
        model_path: the synthetic world's BFM (``"synthetic"``; must match the module's ``model_path``).
        lp_root: 300W-LP folder. lp_bfm_path: face3d's ``BFM.mat``. lp_uv_path: ``BFM_UV.mat`` (None: beside it).
        image_size: crop side (paper: 256). uv_size: ASM side (paper: 256).
        num_train, num_val: synthetic samples per split; for 300W-LP ``num_val`` files (the last in sorted order)
            are held out.
        batch_size: paper: 8. num_workers: loader processes. seed: data seed.
        expression_scale: the synthetic world's expression prior multiplier.
        render_wrinkles: bump-map the world's wrinkles.

    Under DDP Lightning shards the loaders (its distributed sampler); every sample is a pure function of its index.
    """

    def __init__(
        self,
        source: Literal["synthetic", "300wlp"] = "synthetic",
        model_path: str = "synthetic",
        lp_root: str | None = None,
        lp_bfm_path: str | None = None,
        lp_uv_path: str | None = None,
        image_size: int = 128,
        uv_size: int = 128,
        num_train: int = 10000,
        num_val: int = 64,
        batch_size: int = 4,
        num_workers: int = 0,
        seed: int = 0,
        expression_scale: float = 1.0,
        render_wrinkles: bool = True,
    ) -> None:
        super().__init__()
        if source not in ("synthetic", "300wlp"):
            raise ValueError(f"source must be 'synthetic' or '300wlp', got {source!r}")
        if source == "300wlp" and (lp_root is None or lp_bfm_path is None):
            raise ValueError("source='300wlp' needs lp_root (the 300W-LP folder) and lp_bfm_path (face3d's BFM.mat)"
                             f"; get them from {LP300W_SOURCE} and {FACE3D_BFM_SOURCE}")
        self.save_hyperparameters()
        self.datasets: dict[str, Dataset] = {}

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if self.datasets:
            return
        if hp.source == "synthetic":
            kw = dict(seed=hp.seed, model_path=hp.model_path, image_size=hp.image_size, uv_size=hp.uv_size,
                      render_wrinkles=hp.render_wrinkles, expression_scale=hp.expression_scale)
            train = SyntheticAsmDataset(hp.num_train, "train", **kw)
            self.datasets = {"train": train, "val": SyntheticAsmDataset(hp.num_val, "val", model=train.model, **kw)}
            return
        kw = dict(root=hp.lp_root, bfm_path=hp.lp_bfm_path, uv_path=hp.lp_uv_path, image_size=hp.image_size,
                  uv_size=hp.uv_size, seed=hp.seed)
        every = Lp300wDataset(**kw, jitter=0.0, scale_jitter=0.0)
        files = [str(m) for _, m in every.pairs]
        n_val = min(hp.num_val, max(len(files) - 1, 0))
        self.datasets = {"train": Lp300wDataset(**kw, files=files[: len(files) - n_val], check=False),
                         "val": Lp300wDataset(**kw, files=files[len(files) - n_val:] or files[-1:], jitter=0.0,
                                              scale_jitter=0.0, check=False)}

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        self.setup()
        w = self.hparams.num_workers
        return DataLoader(self.datasets[split], batch_size=self.hparams.batch_size, shuffle=shuffle, num_workers=w,
                          collate_fn=AsmSample.collate, drop_last=shuffle, persistent_workers=w > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)


def expression_strength(asm_exp: Tensor, weight_mask: Tensor) -> Tensor:
    """(B, 3, S, S) expression ASMs -> (B,) mean offset length in pixels over the face texels (how expressive)."""
    face = (weight_mask > 0).to(asm_exp.dtype).expand(asm_exp.shape[0], 1, -1, -1)
    return (asm_exp.norm(dim=1, keepdim=True) * face).flatten(1).sum(1) / face.flatten(1).sum(1).clamp(min=1)

