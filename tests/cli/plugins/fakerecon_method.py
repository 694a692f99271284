"""A test-only method on BFM, registered at test time through a dist-info directory on ``sys.path``.

No file of ``src/facelab`` names it: it reaches ``facelab reconstruct``, ``facelab bench`` and ``facelab methods``
through the ``facelab.methods`` entry point alone, which is what tests/cli/test_methods.py checks. The method is
small but real: a linear regressor from a crop's mean colour to BFM expression coefficients (its checkpoint is a
state dict read with ``weights_only=True``), the neutral identity, a weak-perspective camera framing the model, and
a per-vertex-albedo render under the shape lights; its extra image is the crop's mean colour.

This module is also the method's benchmark module (``add_arguments`` / ``run``).
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor, nn

from facelab.bench.common import BenchRow, time_fn
from facelab.io.weights import load_state_dict_strict, read_state_dict
from facelab.methods import ActionEntry, Benchmark, Method, ReconstructEntry
from facelab.morphable import load_model
from facelab.reconstruction import FaceEncoding, Reconstruction, region_topology
from facelab.render import MeshRenderer, WeakPerspectiveCamera, shape_lights
from facelab.viz import blend

NAME = "fakerecon"
IMAGE_SIZE = 32


class ColourRegressor(nn.Module):
    """(B, 3, S, S) crops -> (B, K_exp) expression coefficients from their mean colour."""

    def __init__(self, num_expression: int) -> None:
        super().__init__()
        self.linear = nn.Linear(3, num_expression)

    def forward(self, crops: Tensor) -> Tensor:
        return self.linear(crops.mean(dim=(2, 3)))


class FakeReconstructor:
    """A :class:`facelab.reconstruction.Reconstructor` of a BFM (``model_path``, default the tiny stand-in)."""

    def __init__(self, model: nn.Module, regressor: ColourRegressor, gain: float = 1.0) -> None:
        self.model, self.regressor, self.gain = model.eval(), regressor.eval(), float(gain)
        self.image_size, self.device, self.uses_face_hull = IMAGE_SIZE, torch.device("cpu"), False
        self.meshes = {"mesh": region_topology(model)}
        self.renderer = MeshRenderer.from_model(model, image_size=IMAGE_SIZE)
        with torch.no_grad():
            verts = model(model.neutral_params(1)).verts[0]
        lo, hi = verts.amin(0), verts.amax(0)
        self._scale, self._centre = 1.6 / float((hi - lo)[:2].max()), (lo + hi)[:2] / 2

    @torch.no_grad()
    def encode(self, crops: Tensor) -> FaceEncoding:
        b = crops.shape[0]
        params = self.model.neutral_params(b)
        params.expression = self.gain * self.regressor(crops)
        camera = WeakPerspectiveCamera(scale=torch.full((b,), self._scale), translation=-self._centre.expand(b, 2))
        return FaceEncoding(params=params, camera=camera)

    @torch.no_grad()
    def decode(self, encoding: FaceEncoding, crops: Tensor, face_hull: Tensor | None = None) -> Reconstruction:
        mesh = self.model(encoding.params)
        out = self.renderer(mesh.verts, encoding.camera, albedo=mesh.albedo, lights=shape_lights())
        image = out.image.clamp(0, 1)
        mean = crops.mean(dim=(2, 3), keepdim=True).expand_as(crops)
        return Reconstruction(encoding=encoding, mesh=mesh, render=image, render_mask=out.mask,
                              overlay=blend(crops, image, out.mask, 0.6), extra_images={"mean_colour": mean})

    def settings(self) -> dict:
        return {"method": NAME, "family": "bfm", "gain": self.gain}


def from_checkpoint(ckpt: str, *, model_path: str | None = None, device: str = "cpu",
                    options: argparse.Namespace | None = None, config_key: str = "--ckpt") -> FakeReconstructor:
    state = read_state_dict(ckpt, what=f"{NAME} checkpoint", config_key=config_key)
    model = load_model("bfm", model_path or "synthetic:tiny")
    regressor = ColourRegressor(model.num_expression)
    load_state_dict_strict(regressor, state, ckpt)
    return FakeReconstructor(model, regressor, gain=getattr(options, "gain", 1.0))


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gain", type=float, default=1.0, help="expression gain")


# ------------------------------------------------------------------------------------------------ benchmark
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=2)


def run(args: argparse.Namespace) -> list[BenchRow]:
    model = load_model("bfm", "synthetic:tiny")
    recon = FakeReconstructor(model, ColourRegressor(model.num_expression))
    crops = torch.rand(args.batch, 3, IMAGE_SIZE, IMAGE_SIZE)
    ms = time_fn(lambda: recon.decode(recon.encode(crops), crops), "cpu", warmup=0, repeat=1)
    return [BenchRow(bench=f"{NAME}-speed", impl="encode+decode", device="cpu", batch=args.batch, ms=ms,
                     items_per_s=1000.0 * args.batch / ms, peak_mem_mb=0.0)]


def _animate_arguments(parser) -> None:
    parser.add_argument("--frames", type=int, required=True, help="frames to write")
    parser.add_argument("--out", required=True, help="output file")


def _animate(options) -> int:
    """Writes one line per frame (what the CLI test reads back)."""
    if options.frames < 1:
        raise ValueError(f"--frames must be >= 1, got {options.frames}")
    with open(options.out, "w") as f:
        f.writelines(f"frame {i} on {options.device}\n" for i in range(options.frames))
    return 0


method = Method(
    name=NAME, description="test-only: BFM expressions from a crop's mean colour", family="bfm",
    reconstruct=ReconstructEntry(from_checkpoint=from_checkpoint, add_arguments=_arguments, crop_scale=1.25,
                                 crop="box", checkpoint_help="a ColourRegressor state dict"),
    benchmarks={f"{NAME}-speed": Benchmark("fakerecon_method", "test-only: encode + decode of a tiny BFM")},
    actions={"animate": ActionEntry(run=_animate, add_arguments=_animate_arguments, help="test-only: frame lines")},
)

#: Not a Method: an entry point naming it must fail to load, clearly.
NOT_A_METHOD = "fakerecon"
