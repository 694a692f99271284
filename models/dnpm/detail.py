"""``facelab detail --method dnpm``: a detailed face from an identity and an expression with a trained Detailed3DMM.

    facelab detail --method dnpm --ckpt D3DMM.ckpt --id ID.npy|random --exp EXP.npy|PRESET|random --out DIR
                   [--seed N] [--render-size 512]

Writes into ``DIR`` (created; nothing is written before every input has been checked):

* ``displacement.png``: the generated map as a 16-bit single-channel PNG in the FaceScape encoding
  (``v = 32768 + 32768 mm / 0.914``, clipped to [0, 65535]) at the generator's resolution, in the crop frame of
  FaceScape's detail maps (box (1100, 600, 3000, 2500) of the 4096^2 UV map);
* ``displacement.npy``: the same map as float32 millimetres (S, S);
* ``detailed.obj`` (``V_h``, Eq. 2, on the subdivided mesh, with UVs) and ``proxy.obj`` (``V_p``, Eq. 3);
* ``render.png``: proxy | detailed side by side (gray shape renders, DECA's lights);
* ``params.npz``: ``identity`` (50), ``expression`` (52), ``ws`` (N, D).

Inputs: ``--id`` a ``.npy`` of K identity coefficients (``BilinearParams.identity``: offsets from the mean in
standard deviations) or ``random`` (N(0, I)); ``--exp`` a ``.npy`` of 52 (FaceScape's vector, leading 1) or 51
(blendshape weights) values, ``random`` (uniform [0, 0.6] on the stand-in's named components) or a preset name
(:data:`PRESETS`; defined on the synthetic stand-in's blendshapes, whose meanings are known).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from dnpm.detailed3dmm import FACESCAPE_MM_PER_UNIT, NUM_EXPRESSION_VECTOR, render_meshes
from facelab.data.wrinkles import HEAD_EXPRESSION_NAMES, head_expression_offset
from facelab.errors import FacelabError, MissingAssetError
from facelab.io.obj import write_obj
from facelab.render import MeshRenderer

__all__ = ["PRESETS", "add_arguments", "encode_facescape_png", "expression_preset", "run"]

#: Named expressions on the synthetic bilinear stand-in: ``{name: {component: weight}}``; ``jaw_open`` is the
#: stand-in's blendshape 0, the others the procedural head's components (:data:`HEAD_EXPRESSION_NAMES`).
PRESETS: dict[str, dict[str, float]] = {
    "neutral": {},
    "smile": {"smile_left": 1.0, "smile_right": 1.0, "left_squint": 0.3, "right_squint": 0.3},
    "surprise": {"brows_up": 1.0, "eyes_wide": 0.8, "jaw_open": 0.5},
    "anger": {"frown": 1.0, "lip_press": 0.6, "nose_wrinkle": 0.4},
    "squint": {"left_squint": 1.0, "right_squint": 1.0},
    "disgust": {"nose_wrinkle": 1.0, "upper_lip_up": 0.7, "frown": 0.4},
    "jaw_open": {"jaw_open": 1.0},
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="a Detailed3DMMModule checkpoint (configs/dnpm_detailed3dmm.yaml;"
                                                      " it carries the frozen DNPM generator)")
    parser.add_argument("--id", dest="identity", default="random", help="ID.npy (K identity coefficients) or random")
    parser.add_argument("--exp", dest="expression", default="neutral",
                        help=f"EXP.npy (52 FaceScape values or 51 blendshape weights), random, or a preset: "
                             f"{', '.join(PRESETS)}")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of random identities / expressions")
    parser.add_argument("--render-size", type=int, default=512, help="side of each render in render.png")


def expression_preset(name: str, model) -> np.ndarray:
    """(52,) FaceScape expression vector of a :data:`PRESETS` name on the synthetic stand-in."""
    offset = head_expression_offset(model)
    if offset is None:
        raise ValueError(f"--exp {name}: presets name the synthetic stand-in's blendshapes; this checkpoint's bilinear "
                         "model comes from real assets: give an EXP.npy of its 52 FaceScape expression weights")
    vec = np.zeros(NUM_EXPRESSION_VECTOR, dtype=np.float32)
    vec[0] = 1.0
    jaw = model.jaw_open_component
    for comp, weight in PRESETS[name].items():
        k = jaw[0] if comp == "jaw_open" and jaw is not None else offset + HEAD_EXPRESSION_NAMES.index(comp)
        vec[1 + k] = weight
    return vec


def _vector(arg: str, what: str, sizes: tuple[int, ...]) -> np.ndarray:
    path = Path(arg)
    if not path.is_file():
        raise MissingAssetError(f"--{what} {arg}: no such file (give a .npy, or 'random')")
    try:
        vec = np.load(path, allow_pickle=False)
    except ValueError as err:
        raise ValueError(f"--{what} {arg}: not a numeric .npy array ({err})") from err
    vec = np.asarray(vec, dtype=np.float64).reshape(-1)
    if vec.size not in sizes:
        raise ValueError(f"--{what} {arg}: {vec.size} values, expected {' or '.join(map(str, sizes))}")
    if not np.isfinite(vec).all():
        raise ValueError(f"--{what} {arg}: contains NaN or infinite values")
    return vec.astype(np.float32)


def _inputs(options: argparse.Namespace, model) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(options.seed)
    k = model.num_identity
    identity = (rng.standard_normal(k).astype(np.float32) if options.identity == "random"
                else _vector(options.identity, "id", (k,)))
    if options.expression == "random":
        exp = np.zeros(NUM_EXPRESSION_VECTOR, dtype=np.float32)
        exp[0] = 1.0
        offset = head_expression_offset(model.bilinear)
        first, count = (1, NUM_EXPRESSION_VECTOR - 1) if offset is None else (1 + offset, len(HEAD_EXPRESSION_NAMES))
        exp[first:first + count] = rng.uniform(0.0, 0.6, count) * (rng.random(count) < 0.3)
    elif options.expression in PRESETS:
        exp = expression_preset(options.expression, model.bilinear)
    elif options.expression.endswith(".npy") or Path(options.expression).exists():
        exp = _vector(options.expression, "exp", (NUM_EXPRESSION_VECTOR, NUM_EXPRESSION_VECTOR - 1))
        if exp.size == NUM_EXPRESSION_VECTOR - 1:
            exp = np.concatenate([[1.0], exp]).astype(np.float32)
        elif not np.isclose(exp[0], 1.0):
            raise ValueError(f"--exp {options.expression}: a 52-value FaceScape vector starts with the neutral weight "
                             f"1, got {exp[0]:g} (give the 51 blendshape weights alone instead)")
    else:
        raise ValueError(f"--exp {options.expression!r}: not a .npy file, 'random' or a preset ({', '.join(PRESETS)})")
    return identity, exp


def encode_facescape_png(displacement_mm: np.ndarray) -> np.ndarray:
    """(S, S) millimetres -> (S, S) uint16 in FaceScape's encoding ``32768 + 32768 mm / 0.914`` (clipped)."""
    levels = np.rint(32768.0 + 32768.0 * displacement_mm / FACESCAPE_MM_PER_UNIT)
    return np.clip(levels, 0, 65535).astype(np.uint16)


def _write_png16(path: Path, image: np.ndarray) -> None:
    import cv2

    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}")


def run(options: argparse.Namespace) -> int:
    """The ``facelab detail --method dnpm`` command (module docstring)."""
    from dnpm.module_detailed3dmm import load_detailed3dmm

    if not Path(options.ckpt).is_file():
        raise MissingAssetError(f"--ckpt {options.ckpt}: no such checkpoint (train one with "
                                "`lightning-cli fit --config configs/dnpm_detailed3dmm.yaml ...`)")
    if options.render_size < 16:
        raise ValueError(f"--render-size must be >= 16, got {options.render_size}")
    device = torch.device(getattr(options, "device", "cpu") or "cpu")
    model = load_detailed3dmm(options.ckpt).to(device)
    identity, expression = _inputs(options, model)  # every input checked before anything is written
    with torch.no_grad():
        out = model(torch.from_numpy(identity)[None].to(device), torch.from_numpy(expression)[None].to(device))
        renderer = MeshRenderer(model.mapper.faces, options.render_size, uv=model.mapper.uv,
                                faces_uv=model.mapper.faces_uv).to(device)
        images = render_meshes(renderer, torch.cat([out.dense_proxy_verts, out.verts]))
    if not torch.isfinite(out.verts).all():
        raise FacelabError("the generator produced non-finite values for these inputs (a broken checkpoint?)")
    out_dir = Path(options.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    disp_mm = out.displacement_mm[0, 0].cpu().numpy().astype(np.float32)
    _write_png16(out_dir / "displacement.png", encode_facescape_png(disp_mm))
    np.save(out_dir / "displacement.npy", disp_mm)
    faces = model.mapper.faces.cpu().numpy()
    uv, faces_uv = model.mapper.uv.cpu().numpy(), model.mapper.faces_uv.cpu().numpy()
    write_obj(out_dir / "detailed.obj", out.verts[0].cpu().numpy(), faces, uv, faces_uv)
    bl = model.bilinear
    write_obj(out_dir / "proxy.obj", out.proxy_verts[0].cpu().numpy(), bl.faces.cpu().numpy(), bl.uv.cpu().numpy(),
              bl.faces_uv.cpu().numpy())
    side = (torch.cat(list(images), dim=2).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    import cv2

    cv2.imwrite(str(out_dir / "render.png"), side[..., ::-1])
    np.savez(out_dir / "params.npz", identity=identity, expression=expression, ws=out.ws[0].cpu().numpy())
    print(f"wrote {out_dir}: displacement.png/.npy ({disp_mm.shape[0]}^2, |d| <= {np.abs(disp_mm).max():.3f} mm), "
          f"detailed.obj ({out.verts.shape[1]} vertices), proxy.obj, render.png, params.npz")
    return 0
