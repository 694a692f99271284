"""``facelab evaluate --method facedet3d``: FID and FaceID distance of renders across expression edits (paper Tables
1-2) and the AugW detail probe (Fig. 8), each beside its baselines.

::

    facelab evaluate --method facedet3d --ckpt render.ckpt [--deth deth.ckpt] --data synthetic --num 64 \
        [--inception-weights pt_inception-2015-12-05.pth] [--facenet-weights 20180402-114759-vggface2.pt]
    facelab evaluate --method facedet3d --ckpt render.ckpt --data folder --folder CACHE     # facelab prepare cache

Protocol (Tables 1-2: "FID and FaceID distance across a variety of expression edits"): every evaluated face is
rendered in ``--edits`` new expressions; with ``--deth`` the targets are the six emotion presets
(:mod:`facedet3d.presets`, cycled), the detail is DetH's hallucination of the face's own map and the geometry takes
the target expression of the checkpoint's AU -> expression map (Eq. 3, :mod:`facedet3d.expression`); without it each
edit takes the detail map, AUs and BFM expression of another evaluated face (on the synthetic world: true wrinkle
maps of real expressions). FID compares the edited renders (composited over the photo's background) with a
disjoint set of real images (synthetic: the ``val`` split; a folder: its first half vs the second half); FaceID distance
(:func:`facelab.metrics.faceid_distance` of FaceNet embeddings) compares each edit with its input photo.

Rows: the checkpoint's R (``--ckpt``; ``--init``: the untrained R), the paper's "Ordinary Rendering" (BFM albedo x
SH, no network) and the trivial "copy the input" (the input photos as the edits: no edit at all, FaceID 0 and the
real-vs-real FID, a floor, not a competitor). The detail probe (synthetic / folder alike): ``detail_gain`` (1 = a
detail change fully rendered, 0 = ignored, as plain neural rendering does), ``detail_r2``, ``detail_corr``,
``detail_leak`` (see :func:`detail_response`); ordinary rendering renders details exactly by construction (it is how
the synthetic images were made) and is its ceiling; "ignore the geometry" (gain 0) its floor.

Pretrained networks take local weights; without them a console WARNING and a frozen random network (FID/FaceID
then compare the rows of one table only, never published numbers).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from facelab.log import get_logger

_log = get_logger(__name__)

__all__ = ["RenderEvaluation", "add_arguments", "detail_response", "evaluate"]


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


@dataclass
class RenderEvaluation:
    """The table of :func:`evaluate`: one row per renderer (``fid``, ``faceid_mean``, ``faceid_std``, detail
    probe)."""

    rows: list[dict]
    settings: dict = field(default_factory=dict)

    def format_table(self) -> str:
        cols = ["fid", "faceid_mean", "faceid_std", "detail_gain", "detail_r2", "detail_corr", "detail_leak"]
        width = max(len(r["renderer"]) for r in self.rows) + 2
        lines = ["renderer".ljust(width) + "".join(c.rjust(13) for c in cols)]
        for r in self.rows:
            cells = "".join((f"{r[c]:13.4g}" if isinstance(r.get(c), float) and math.isfinite(r[c])
                             else "-".rjust(13)) for c in cols)
            lines.append(r["renderer"].ljust(width) + cells)
        lines.append(f"({self.settings.get('faces')} faces x {self.settings.get('edits')} edits, targets: "
                     f"{self.settings.get('targets')}; paper Table 2: double 25.47 / 1.02e-3, single 40.78 / 2.2e-3, "
                     f"ordinary 48.18 / 2.7e-3 on FFHQ with real weights)")
        return "\n".join(lines)

    def write_json(self, path) -> Path:
        path = Path(path)
        path.write_text(json.dumps({"rows": self.rows, "settings": self.settings}, indent=1))
        return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--deth", default=None, metavar="CKPT",
                        help="DetH checkpoint: edits to the emotion presets with hallucinated detail (default: other "
                             "faces' detail maps and AUs)")
    parser.add_argument("--folder", default=None, metavar="CACHE", help="--data folder: a facedet3d prepare cache")
    parser.add_argument("--edits", type=int, default=6, help="expression edits per face")
    parser.add_argument("--inception-weights", default=None, help="FID Inception-v3 weights (local file)")
    parser.add_argument("--facenet-weights", default=None, help="FaceNet InceptionResnetV1 weights (local file)")
    parser.add_argument("--render-mode", choices=["checkpoint", "ordinary"], default="checkpoint",
                        help="ordinary: only the ordinary-rendering row and the baselines (no R needed)")


def _faces(request, options) -> tuple[object, Tensor]:
    """(faces to edit: a FaceDetailBatch, real images for FID)."""
    from facedet3d.data import FaceDetailBatch, SyntheticDetailDataset, load_detail_npz

    if request.data == "synthetic":
        size = request.image_size or 64
        seed = 0 if request.seed is None else request.seed
        make = lambda split: SyntheticDetailDataset(num_samples=request.num_images, split=split, pairs=False,  # noqa
                                                    image_size=size, texture_size=size, map_size=256, seed=seed)
        test = make("test")
        faces = FaceDetailBatch.collate(test.__getitems__(list(range(request.num_images))))
        real = FaceDetailBatch.collate(make("val").__getitems__(list(range(request.num_images)))).image
        return faces, real
    if options.folder is None:
        raise ValueError("--data folder needs --folder CACHE (a `facelab prepare --method facedet3d` cache)")
    from facedet3d.prepare import cache_entries

    entries = cache_entries(options.folder)[: 2 * request.num_images]
    if len(entries) < 4:
        raise ValueError(f"--folder {options.folder}: {len(entries)} prepared faces, need >= 4 (half real, half "
                         f"edited)")
    half = len(entries) // 2
    real = FaceDetailBatch.collate([load_detail_npz(e.path) for e in entries[:half]]).image
    faces = FaceDetailBatch.collate([load_detail_npz(e.path) for e in entries[half:]])
    return faces, real


def _targets(faces, options, deth, expression_map, device) -> list[tuple[Tensor, Tensor, Tensor]]:
    """(detail (N, 1, S, S), AUs (N, 17), BFM expression (N, K)) per edit."""
    from facedet3d.presets import EMOTION_PRESETS, preset_vector

    n, out = faces.batch_size, []
    names = list(EMOTION_PRESETS)
    for k in range(options.edits):
        if deth is None:
            shift = 1 + k % max(n - 1, 1)
            out.append(tuple(x.roll(shift, 0) for x in (faces.detail, faces.action_units, faces.expression)))
            continue
        y = preset_vector(names[k % len(names)]).to(device).expand(n, -1)
        with torch.no_grad():
            d = deth(faces.detail, faces.detail_mask, faces.action_units, y, faces.shape, faces.face_id,
                     faces.age).detail
        e = faces.expression
        if expression_map.fitted:
            e = expression_map.target_expression(faces.expression, faces.action_units, y)
        out.append((d, y, e))
    return out


def _fid(options):
    from facelab.log import warn_missing_weights
    from facelab.metrics import FID

    if options.inception_weights:
        return FID(options.inception_weights)
    import torchvision

    warn_missing_weights("--inception-weights", "Inception-v3 (FID)", "FID uses a frozen RANDOM Inception-v3's pool "
                         "features: the rows of this table compare with each other only", logger=__name__)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=True)
    net.fc = torch.nn.Identity()
    return FID(feature_extractor=_Resize299(net.eval()), feature_dim=2048)


class _Resize299(torch.nn.Module):
    def __init__(self, net) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        # a random Inception's activations grow by orders of magnitude through its un-calibrated batch norms: unit
        # length features keep the Frechet distance finite and comparable between rows
        return F.normalize(self.net(F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)), dim=1)


def _renderers(request, options, device) -> list[tuple[str, object]]:
    from facedet3d.module_render import load_render
    from facedet3d.renderer import RenderingNetwork

    size = request.image_size or 64
    out = []
    if options.render_mode == "checkpoint":
        if request.ckpt is not None:
            loaded = load_render(request.ckpt, device, size)
            out.append((f"FaceDet3D R ({loaded.network.branches} branch)", loaded))
        else:
            from facedet3d.module_render import LoadedRender
            from facedet3d.renderer import DetailRasterizer
            from facelab.data.albedo import UNITS_TO_METRES
            from facelab.morphable import load_model

            torch.manual_seed(0 if request.seed is None else request.seed)
            model = load_model("bfm", "synthetic").to(device)
            raster = DetailRasterizer.from_model(model, image_size=size,
                                                 displacement_scale=1e-3 / UNITS_TO_METRES[model.units]).to(device)
            out.append(("untrained R (--init)", LoadedRender(RenderingNetwork().to(device).eval(), raster, model,
                                                             size, size)))
    base = out[0][1] if out else None
    if base is None:
        from facedet3d.module_render import LoadedRender
        from facedet3d.renderer import DetailRasterizer
        from facelab.data.albedo import UNITS_TO_METRES
        from facelab.morphable import load_model

        model = load_model("bfm", "synthetic").to(device)
        raster = DetailRasterizer.from_model(model, image_size=size,
                                             displacement_scale=1e-3 / UNITS_TO_METRES[model.units]).to(device)
        base = LoadedRender(None, raster, model, size, size)
    out.append(("ordinary rendering (BFM albedo x SH)", replace(base, network=RenderingNetwork(branches="ordinary"))))
    return out


@torch.no_grad()
def _render(loaded, faces, detail: Tensor, au: Tensor, expression: Tensor, image: Tensor) -> tuple[Tensor, Tensor]:
    """Composited renders (N, 3, H, W) and their masks, the geometry at ``expression`` (N, K)."""
    from facedet3d.module_render import render_batch
    from facedet3d.renderer import neural_render

    rb = render_batch(replace(faces, expression=expression), loaded.model, None)
    inputs = replace(rb.inputs, action_units=au)
    out = neural_render(loaded.network, loaded.rasterizer, inputs, detail)
    return out.image * out.mask + image * (1 - out.mask), out.mask


def evaluate(request, options) -> RenderEvaluation:
    """Score R (and the baselines) on held-out faces (module docstring)."""
    from facedet3d.networks import FaceFeatures
    from facelab.metrics import FaceIDDistance

    if options.edits < 1:
        raise ValueError(f"--edits must be >= 1, got {options.edits}")
    if request.image_size is None:  # the checkpoint's render size (64 for --init / ordinary rendering)
        size = 64
        if request.ckpt is not None and options.render_mode == "checkpoint":
            from facelab.io.weights import read_checkpoint

            hp = read_checkpoint(request.ckpt, what="FaceDet3D renderer checkpoint", config_key="--ckpt")
            size = int(dict(hp.get("hyper_parameters", {})).get("image_size", 64))
        request = replace(request, image_size=size)
    device = request.device
    faces, real = _faces(request, options)
    faces, real = faces.to(device), real.to(device)
    size = request.image_size or 64
    image = F.interpolate(faces.image, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    real = F.interpolate(real, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    features = FaceFeatures(facenet_weights=options.facenet_weights, config_prefix="--").to(device)
    if faces.face_id is None:
        face_id, age = features(faces.image)
        faces = replace(faces, face_id=face_id, age=age)
    deth = expression_map = None
    if options.deth:
        from facedet3d.module_deth import load_deth

        deth, _, expression_map = load_deth(options.deth, device, with_expression_map=True)
        if not expression_map.fitted:
            _log.warning("the DetH checkpoint %s has no AU -> expression map: the edits keep each input's BFM "
                         "expression (only the detail and R's appearance change)", options.deth)
    targets = _targets(faces, options, deth, expression_map, device)
    faceid = FaceIDDistance(embedder=lambda x: features(x)[0])
    fid = _fid(options).to(device)
    rows = []
    for name, loaded in _renderers(request, options, device):
        edits = [_render(loaded, faces, d, y, e, image)[0] for d, y, e in targets]
        rows.append({"renderer": name, **_scores(fid, faceid, real, image, edits),
                     **_probe(loaded, faces, image)})
    rows.append({"renderer": "copy the input (no edit; floor)", **_scores(fid, faceid, real, image, [image]),
                 "detail_gain": 0.0, "detail_r2": 0.0})
    settings = {"faces": faces.batch_size, "edits": options.edits, "data": request.data,
                "targets": "emotion presets via DetH" if deth is not None else "other faces' maps and AUs",
                "inception": options.inception_weights or "random", "facenet": options.facenet_weights or "random"}
    return RenderEvaluation(rows, settings)


def _scores(fid, faceid, real: Tensor, image: Tensor, edits: list[Tensor]) -> dict:
    fid.reset()
    fid.update(real, real=True)
    dist = []
    for e in edits:
        fid.update(e, real=False)
        dist.append(faceid(e, image))
    dist = torch.cat(dist)
    return {"fid": float(fid.compute()), "faceid_mean": float(dist.mean()),
            "faceid_std": float(dist.std()) if dist.numel() > 1 else 0.0}


@torch.no_grad()
def _probe(loaded, faces, image: Tensor) -> dict:
    """The AugW detail probe: true vs next-face details at the face's own AUs."""
    from facedet3d.module_render import fake_details, render_batch
    from facedet3d.render_losses import augmented_image
    from facedet3d.renderer import neural_render

    rb = render_batch(faces, loaded.model, None)
    fake = fake_details(rb.detail)
    true = neural_render(loaded.network, loaded.rasterizer, rb.inputs, rb.detail)
    swapped = neural_render(loaded.network, loaded.rasterizer, rb.inputs, fake)
    mask = true.mask
    image_fake = augmented_image(image, true.detailed.shading, swapped.detailed.shading, mask)
    return {k: float(v) for k, v in detail_response(true.image, swapped.image, image, image_fake, mask).items()}
