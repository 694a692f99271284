"""``facelab animate --method facedet3d``: new expressions with hallucinated detail, rendered (paper Fig. 4/5).

::

    facelab animate --method facedet3d --deth deth.ckpt --render render.ckpt [--rcan rcan.ckpt] \\
        --input photos/ --au happy --au surprise --au AU12=0.8,AU06=0.6 [--views -30 30] --out anim/ \\
        [--detail-maps fds/ | --regressor regressor.ckpt] [--action-units openface/]

``--input`` is a photo, a folder of photos (fitted with the BFM and given detail maps and AUs by
:mod:`facedet3d.prepare`, into ``OUT/inputs``), or an existing ``facelab prepare --method facedet3d`` cache. Per face
``<stem>_face<k>`` and target expression ``<label>`` (a preset of :mod:`facedet3d.presets` or ``au_...``):

* ``_<label>_detail.png`` / ``.npy``: the hallucinated detail map D~(I_y) (Eq. 2-4; with ``--rcan`` super-resolved
  twice to 16x its side, Eq. 9, else DetH's 256^2 with a warning): 16-bit PNG in the FDS encoding
  ``(d + 1) / 2 * 65535`` with d in millimetres (clipped to +-1 mm) and the float map in mm;
* ``_<label>_mesh.obj``: the proxy mesh of the target (shape alpha_s, target expression alpha^_e, Eq. 3)
  subdivided and displaced along its normals by the map, with UVs; ``_<label>_expression.npy``: alpha^_e;
* ``_<label>_shading.png``: the SH shading of the detailed geometry (gray albedo, the photo's light);
* ``_<label>_render.png``: R's render (Eq. 3, 13) over the photo's background; ``_<label>_yaw<deg>.png`` (and
  ``_<label>_yaw<deg>_shading.png``) per ``--views`` angle;
* ``_grid.png``: input, reconstruction (the input's own detail and AUs) and one column per target; rows: renders,
  detailed shadings, one render row per view (Fig. 4 / Fig. 5).

The target geometry's BFM expression is ``alpha^_e = [y, 1] W``, the AU -> expression regression that the
DetH checkpoint fitted on its training faces (:mod:`facedet3d.expression`); a checkpoint without one (from before
it existed) keeps the input's expression, with a warning, so only the detail and R's appearance change. A face's
files are written to a temporary folder and moved into ``OUT`` when all of them exist, so nothing is half-written.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from facelab.log import get_logger

__all__ = ["add_arguments", "animate_face", "run"]

_log = get_logger(__name__)
SHADING_GRAY = 0.72  # albedo of the shaded-geometry images


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--deth", default=None, metavar="CKPT", help="DetH checkpoint (configs/facedet3d_deth.yaml)")
    parser.add_argument("--render", default=None, metavar="CKPT",
                        help="rendering network R checkpoint (configs/facedet3d_render.yaml)")
    parser.add_argument("--rcan", default=None, metavar="CKPT",
                        help="RCAN checkpoint (configs/facedet3d_rcan.yaml): maps 256 -> 1024 -> 4096; without it "
                             "the maps stay at DetH's 256^2")
    parser.add_argument("--input", "-i", required=True, help="photo, photo folder, or a facedet3d prepare cache")
    parser.add_argument("--au", action="append", required=True, metavar="TARGET",
                        help="target expression: happy|anger|disgust|surprise|sad|fear, 17 comma-separated AU "
                             "intensities in [0, 1], or AUxx=v pairs; repeat for several")
    parser.add_argument("--views", type=float, nargs="*", default=[], metavar="YAW",
                        help="extra head yaw angles (degrees) to render each target in")
    parser.add_argument("--out", "-o", required=True, help="output folder")
    parser.add_argument("--image-size", type=int, default=None, help="render side (default: R's training size)")
    parser.add_argument("--subdivisions", type=int, default=1, help="mesh subdivisions for the detailed OBJ")
    parser.add_argument("--rcan-tile", type=int, default=256, help="RCAN tile side (bounds its peak memory)")
    parser.add_argument("--rcan-overlap", type=int, default=16, help="RCAN tile overlap")
    prep = parser.add_argument_group("photo preparation (facedet3d prepare), when --input is not a cache")
    prep.add_argument("--detail-maps", default=None, metavar="DIR", help="FDS detail maps of the photos")
    prep.add_argument("--regressor", default=None, metavar="CKPT",
                      help="detail regressor (stands in for FDS) for photos without a map")
    prep.add_argument("--action-units", default=None, metavar="DIR", help="OpenFace CSVs of the photos")
    prep.add_argument("--facenet-weights", default=None)
    prep.add_argument("--age-weights", default=None)
    prep.add_argument("--model-path", default="synthetic", help="the BFM asset")
    prep.add_argument("--max-faces", type=int, default=None)


def _is_cache(path: Path) -> bool:
    return path.is_dir() and (path / "index.jsonl").is_file()


def _faces(options: argparse.Namespace, out: Path) -> list[tuple[str, object]]:
    """(name, single FaceDetailBatch) of every face of the input."""
    from facedet3d.data import load_detail_npz
    from facedet3d.prepare import cache_entries

    source = Path(options.input)
    if not source.exists():
        raise FileNotFoundError(f"--input {source}: no such file or folder")
    cache = source
    if not _is_cache(source):
        from facedet3d import prepare

        cache = out / "inputs"
        args = argparse.Namespace(
            input=[str(source)], out=str(cache), detail_maps=options.detail_maps, detail_size=0,
            detail_scale_mm=1.0, detail_layout=None, regressor=options.regressor, action_units=options.action_units,
            facenet_weights=options.facenet_weights, age_weights=options.age_weights, model_path=options.model_path,
            identity_from="none", size=256, scale=1.6, texture_size=256, map_size=256, iterations=[50, 200, 60],
            batch_size=8, max_faces=options.max_faces, no_progress=True, device=options.device)
        prepare.run(args)
    return [(f"{Path(e.source).stem}_face{e.face}", load_detail_npz(e.path)) for e in cache_entries(cache)]


def _upscale(rcan, detail: Tensor, tile: int, overlap: int) -> Tensor:
    """Eq. 9: RCAN twice, in overlapping tiles."""
    from facedet3d.rcan import upscale_tiled

    with torch.no_grad():
        return upscale_tiled(rcan, upscale_tiled(rcan, detail, tile=tile, overlap=overlap), tile=tile,
                             overlap=overlap)


def _for_render(detail: Tensor, image_size: int) -> Tensor:
    """A map no finer than twice the render resolution (area filter) for bump shading: finer texels alias."""
    side = detail.shape[-1]
    limit = 2 * image_size
    return F.interpolate(detail, size=(limit, limit), mode="area") if side > limit else detail


def _yawed(verts: Tensor, degrees: float) -> Tensor:
    from facelab.render import axis_angle_to_matrix

    rot = axis_angle_to_matrix(verts.new_tensor([[0.0, math.radians(degrees), 0.0]]))
    centre = verts.mean(dim=1, keepdim=True)
    return (verts - centre) @ rot.transpose(1, 2) + centre


def _save_png(path: Path, image: Tensor) -> None:
    from PIL import Image

    arr = (image.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    Image.fromarray(arr).save(path)


def _save_detail(stem: Path, detail: Tensor) -> None:
    from PIL import Image

    from facedet3d.data import encode_fds

    d = detail[0, 0].detach().cpu().numpy().astype(np.float32)
    np.save(f"{stem}_detail.npy", d)
    Image.fromarray(encode_fds(d)).save(f"{stem}_detail.png")  # uint16 -> 16-bit grayscale PNG


def animate_face(face, name: str, targets: list[tuple[str, Tensor]], nets: dict, views: list[float], out: Path,
                 options: argparse.Namespace) -> list[str]:
    """Every output of one face (see the module docstring); returns the files written."""
    from facedet3d.data import FaceDetailBatch
    from facedet3d.renderer import RenderInputs, neural_render
    from facelab.io.obj import write_obj
    from facelab.uv import DisplacementMapper

    render = nets["render"]
    device, size = options.device, render.image_size
    model, raster, network = render.model, render.rasterizer, render.network
    b = FaceDetailBatch.collate([face]).to(device)
    if b.face_id is None or b.age is None:  # not precomputed: the frozen FaceNet / age networks (warn when random)
        with torch.no_grad():
            b = replace(b, **dict(zip(("face_id", "age"), nets["features"](b.image))))
    with torch.no_grad():
        mesh = b.proxy_mesh(model)
        image = F.interpolate(b.image, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        inputs = RenderInputs(texture=b.texture * b.texture_mask, verts=mesh.verts, camera=b.camera_object(),
                              sh_coeffs=b.sh, albedo=mesh.albedo, action_units=b.action_units)
        gray = replace(inputs, albedo=torch.full_like(mesh.albedo, SHADING_GRAY))
        ntm = network.neural_texture(inputs.texture)
        mapper = DisplacementMapper(model.faces, model.uv, model.faces_uv, model.num_verts,
                                    subdivisions=options.subdivisions).to(device)
        mm = raster.displacement_scale

        def draw(verts: Tensor, detail: Tensor, au: Tensor) -> tuple[Tensor, Tensor]:
            d = _for_render(detail, size)
            out_r = neural_render(network, raster, replace(inputs, verts=verts, action_units=au), d, ntm=ntm)
            shade = raster(replace(gray, verts=verts), d).shaded_albedo
            composite = out_r.image * out_r.mask + image * (1 - out_r.mask)
            return composite[0], (shade + (1 - raster(replace(gray, verts=verts)).mask))[0].clamp(0, 1)

        recon, recon_shading = draw(mesh.verts, b.detail, b.action_units)
        columns, shadings, view_rows = [image[0], recon], [_detail_panel(b.detail, size), recon_shading], []
        view_rows = [[torch.zeros_like(recon), torch.zeros_like(recon)] for _ in views]
        tmp = out / f".{name}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for label, au in targets:
            y = au[None].to(device)
            expression = b.expression
            if nets["expression_map"].fitted:  # Eq. 3's alpha^_e
                expression = nets["expression_map"].target_expression(b.expression, b.action_units, y)
            target_verts = b.proxy_mesh(model, expression=expression).verts
            detail = nets["deth"](b.detail, b.detail_mask, b.action_units, y, b.shape, b.face_id, b.age).detail
            if nets["rcan"] is not None:
                detail = _upscale(nets["rcan"], detail, options.rcan_tile, options.rcan_overlap)
            stem = tmp / f"{name}_{label}"
            _save_detail(stem, detail)
            np.save(f"{stem}_expression.npy", expression[0].cpu().numpy().astype(np.float32))
            verts = mapper(target_verts, detail, scale=mm)
            write_obj(f"{stem}_mesh.obj", verts[0].cpu().numpy(), mapper.faces.cpu().numpy(),
                      mapper.uv.cpu().numpy(), mapper.faces_uv.cpu().numpy())
            rendered, shading = draw(target_verts, detail, y)
            _save_png(Path(f"{stem}_render.png"), rendered)
            _save_png(Path(f"{stem}_shading.png"), shading)
            columns.append(rendered)
            shadings.append(shading)
            for row, yaw in zip(view_rows, views):
                view_render, view_shading = draw(_yawed(target_verts, yaw), detail, y)
                _save_png(Path(f"{stem}_yaw{yaw:+.0f}.png"), view_render)
                _save_png(Path(f"{stem}_yaw{yaw:+.0f}_shading.png"), view_shading)
                row.append(view_render)
        from facelab.viz import rows_grid

        rows = [torch.stack(columns), torch.stack(shadings), *(torch.stack(r) for r in view_rows)]
        _save_png(tmp / f"{name}_grid.png", rows_grid(*rows, max_images=len(columns)))
    written = []
    for file in sorted(tmp.iterdir()):
        target = out / file.name
        file.replace(target)
        written.append(str(target))
    tmp.rmdir()
    return written


def _detail_panel(detail: Tensor, size: int) -> Tensor:
    from facedet3d.module_render import detail_to_rgb

    return detail_to_rgb(detail, size)[0]


def _load_networks(options: argparse.Namespace) -> dict:
    from facedet3d.module_deth import load_deth
    from facedet3d.module_render import load_render
    from facelab.log import warn_missing_weights

    for flag, what in (("deth", "the detail hallucination network DetH (configs/facedet3d_deth.yaml)"),
                       ("render", "the rendering network R (configs/facedet3d_render.yaml)")):
        if not getattr(options, flag):
            raise ValueError(f"facedet3d animate needs --{flag} CKPT: {what}")
    deth, _, expression_map = load_deth(options.deth, options.device, with_expression_map=True)
    if not expression_map.fitted:
        _log.warning("the DetH checkpoint %s has no AU -> expression map (saved before facedet3d.expression existed, "
                     "or before its first training step): the target meshes keep the input's BFM expression and only "
                     "the detail and the render show the target expression; retrain or fine-tune DetH to get it",
                     options.deth)
    render = load_render(options.render, options.device, options.image_size)
    rcan = None
    if options.rcan:
        from facedet3d.module_rcan import load_rcan

        rcan = load_rcan(options.rcan, options.device)
    else:
        warn_missing_weights("--rcan", "RCAN super-resolution (configs/facedet3d_rcan.yaml)",
                             "the detail maps stay at DetH's 256^2 (Eq. 9 skipped): fine wrinkles are coarser in "
                             "the maps and meshes", logger=__name__)
    return {"deth": deth, "render": render, "rcan": rcan, "features": _LazyFeatures(options),
            "expression_map": expression_map}


class _LazyFeatures:
    """FaceNet and age features for faces whose cache has none (built on first use)."""

    def __init__(self, options: argparse.Namespace) -> None:
        self.options, self.net = options, None

    def __call__(self, image: Tensor) -> tuple[Tensor, Tensor]:
        if self.net is None:
            from facedet3d.networks import FaceFeatures

            o = self.options
            self.net = FaceFeatures(facenet_weights=o.facenet_weights, age_weights=o.age_weights,
                                    config_prefix="--").to(o.device).eval()
        return self.net(image)


def run(options: argparse.Namespace) -> int:
    """The animate action; returns 0 when at least one face was animated, 1 when none was."""
    from facedet3d.presets import parse_target

    options.device = getattr(options, "device", None) or "cpu"
    targets = [parse_target(t) for t in options.au]  # bad targets fail before anything is loaded or written
    if len({label for label, _ in targets}) != len(targets):
        raise ValueError(f"--au: the targets {[lb for lb, _ in targets]} repeat a label")
    nets = _load_networks(options)
    out = Path(options.out)
    source = Path(options.input).resolve()
    if source.is_dir() and out.resolve().is_relative_to(source):
        raise ValueError(f"--out {out} lies inside --input {source}: choose another output folder")
    out.mkdir(parents=True, exist_ok=True)
    faces = _faces(options, out)
    report = {"faces": [], "targets": {label: au.tolist() for label, au in targets}}
    for name, face in faces:
        files = animate_face(face, name, targets, nets, list(options.views), out, options)
        report["faces"].append({"face": name, "files": [Path(f).name for f in files]})
    (out / "animate.json").write_text(json.dumps(report, indent=1))
    if not faces:
        _log.warning("facedet3d animate: no face to animate in %s (see %s)", options.input,
                     out / "inputs" / "report.json")
        return 1
    print(f"animate facedet3d: {len(faces)} face(s) x {len(targets)} target(s) -> {out}")
    return 0
