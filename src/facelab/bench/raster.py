"""Rasterize + interpolate + shade a full-size synthetic FLAME at 224^2, forward and backward.

The workload is SMIRK's render: weak-perspective camera, hard rasterization, area-weighted vertex normals
interpolated per pixel, five gray directional lights, constant albedo, then ``image.mean().backward()`` into the
vertex positions. Every backend gets the same inputs: B copies of the synthetic head, each slightly rotated,
scaled to fill most of the image like a face crop.

Columns: ``ms`` forward+backward per batch; ``ms_per_image``; ``raster_ms`` / ``interp_ms`` / ``shade_ms`` the
forward time of rasterization, interpolation of normals, and normals+Lambert+compositing, each timed alone;
``bwd_ms`` the backward pass alone (timed on a retained graph); ``speedup_vs_p3d`` against the pytorch3d backend
at the same batch and device; ``peak_mem_mb`` the peak memory of one forward+backward (CPU: peak resident set
growth, reset before the call where Linux allows; CUDA: allocator peak).
"""

from __future__ import annotations

import argparse
import math
import sys

import torch
import torch.nn.functional as F
from torch import Tensor

from facelab.bench.common import BenchRow, available_devices, peak_memory_mb, proc_status_kb, synchronize, time_fn
from facelab.render.camera import WeakPerspectiveCamera, axis_angle_to_matrix
from facelab.render.rasterize import available_backends, interpolate_packed, rasterize
from facelab.render.shading import lambertian, shape_lights, vertex_normals

IMAGE_SIZE = 224
ALBEDO = 180.0 / 255.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32], help="batch sizes")
    parser.add_argument("--image-size", type=int, default=IMAGE_SIZE)
    parser.add_argument("--backends", nargs="+", default=["torch", "pytorch3d"],
                        help="rasterizer backends (pytorch3d is skipped when not installed)")
    parser.add_argument("--repeat", type=int, default=10, help="timed repetitions (torch backend)")
    parser.add_argument("--pytorch3d-repeat", type=int, default=3,
                        help="timed repetitions for pytorch3d on CPU (about 2 s per image)")
    parser.add_argument("--pytorch3d-max-batch-cpu", type=int, default=8,
                        help="largest batch pytorch3d runs on CPU (B=32 takes minutes per call)")
    parser.add_argument("--mesh", choices=["head", "sphere"], default="head",
                        help="full-size synthetic FLAME head, or a 10k-face sphere")


def load_mesh(kind: str = "head") -> tuple[Tensor, Tensor]:
    """(V, 3) vertices (metres, +y up, facing +z) and (F, 3) faces of the benchmark mesh.

    The synthetic head comes from :func:`facelab.morphable.synthetic.head.build_head`; if that cannot be imported
    a ~10k-face sphere of head size stands in (with a printed note).
    """
    if kind == "head":
        try:
            from facelab.morphable.synthetic.head import build_head

            head = build_head(size="full", n_identity=1, n_expression=1)
            return torch.as_tensor(head.verts, dtype=torch.float32), torch.as_tensor(head.faces, dtype=torch.long)
        except Exception as err:  # the head is another module's; keep the benchmark usable without it
            print(f"note: synthetic head unavailable ({err!r}); benchmarking a 10k-face sphere", file=sys.stderr)
    import trimesh

    sphere = trimesh.creation.uv_sphere(count=[50, 50])  # ~9.6k faces
    verts = torch.as_tensor(sphere.vertices, dtype=torch.float32) * 0.1
    return verts, torch.as_tensor(sphere.faces, dtype=torch.long)


def make_inputs(verts: Tensor, batch: int, device: str, seed: int = 0) -> tuple[Tensor, WeakPerspectiveCamera]:
    """B slightly rotated copies of the mesh and a camera that frames it like a 224^2 face crop."""
    gen = torch.Generator().manual_seed(seed)
    angles = (torch.rand(batch, 3, generator=gen) - 0.5) * torch.tensor([0.3, 0.6, 0.15])  # pitch, yaw, roll
    rot = axis_angle_to_matrix(angles)
    centre = (verts.amax(0) + verts.amin(0)) / 2
    posed = (verts - centre) @ rot.transpose(1, 2)
    half_height = (verts[:, 1].amax() - verts[:, 1].amin()) / 2
    scale = torch.full((batch,), 1.15 / float(half_height))  # head a bit taller than the image, like a face crop
    cam = WeakPerspectiveCamera(scale=scale.to(device), translation=torch.zeros(batch, 2, device=device))
    return posed.to(device), cam


class Pipeline:
    """SMIRK's render with a chosen backend, split into its stages for timing."""

    def __init__(self, faces: Tensor, backend: str, image_size: int):
        self.faces, self.backend, self.size = faces, backend, image_size

    def rasterize(self, verts: Tensor, cam: WeakPerspectiveCamera):
        return rasterize(cam.project(verts), self.faces, self.size, backend=self.backend)

    def interpolate(self, verts: Tensor, cam: WeakPerspectiveCamera, frags) -> Tensor:
        return interpolate_packed(vertex_normals(cam.to_view(verts), self.faces), frags)

    def shade(self, normals: Tensor, frags) -> Tensor:
        lights = shape_lights(device=normals.device, dtype=normals.dtype)
        color = ALBEDO * lambertian(F.normalize(normals, dim=-1), lights.directions, lights.intensities)
        return frags.unpack(color).permute(0, 3, 1, 2)

    def forward(self, verts: Tensor, cam: WeakPerspectiveCamera) -> Tensor:
        frags = self.rasterize(verts, cam)
        return self.shade(self.interpolate(verts, cam, frags), frags)

    def forward_backward(self, verts: Tensor, cam: WeakPerspectiveCamera) -> Tensor:
        verts = verts.detach().requires_grad_(True)
        self.forward(verts, cam).mean().backward()
        return verts.grad


def _cpu_peak_mb(fn) -> float:
    """Peak resident-set growth of one call, resetting the kernel's high-water mark first when allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        before = proc_status_kb("VmRSS")
        fn()
        return max(proc_status_kb("VmHWM") - before, 0) / 1024
    except OSError:
        return peak_memory_mb(fn, "cpu")


def measure(pipe: Pipeline, verts: Tensor, cam: WeakPerspectiveCamera, device: str, repeat: int) -> dict:
    """Timings (ms) of the stages and of forward+backward, and the peak memory of one forward+backward."""
    warmup = 1 if repeat <= 3 else 2
    run = lambda: pipe.forward_backward(verts, cam)  # noqa: E731
    peak = _cpu_peak_mb(run) if device == "cpu" else peak_memory_mb(run, device)
    total = time_fn(run, device, warmup=warmup, repeat=repeat)
    v = verts.detach().requires_grad_(True)
    frags = pipe.rasterize(v, cam)
    normals = pipe.interpolate(v, cam, frags)
    raster = time_fn(lambda: pipe.rasterize(v, cam), device, warmup=1, repeat=repeat)
    interp = time_fn(lambda: pipe.interpolate(v, cam, frags), device, warmup=1, repeat=repeat)
    shade = time_fn(lambda: pipe.shade(normals, frags), device, warmup=1, repeat=repeat)
    loss = pipe.forward(v, cam).mean()
    bwd = time_fn(lambda: torch.autograd.grad(loss, v, retain_graph=True), device, warmup=1, repeat=repeat)
    synchronize(device)
    return {"ms": total, "raster_ms": raster, "interp_ms": interp, "shade_ms": shade, "bwd_ms": bwd, "peak": peak,
            "coverage": float(frags.mask.float().mean())}


def run(args: argparse.Namespace) -> list[BenchRow]:
    verts, faces = load_mesh(getattr(args, "mesh", "head"))
    backends = [b for b in args.backends if b in available_backends()]
    for missing in set(args.backends) - set(backends):
        print(f"note: backend {missing!r} is not available here; skipped", file=sys.stderr)
    rows: list[BenchRow] = []
    for device in available_devices(args.device):
        faces_d = faces.to(device)
        for batch in args.batch:
            v, cam = make_inputs(verts, batch, device)
            results = {}
            for backend in backends:
                on_cpu_p3d = backend == "pytorch3d" and device == "cpu"
                if on_cpu_p3d and batch > args.pytorch3d_max_batch_cpu:
                    continue
                repeat = args.pytorch3d_repeat if on_cpu_p3d else args.repeat
                results[backend] = measure(Pipeline(faces_d, backend, args.image_size), v, cam, device, repeat)
            reference = results.get("pytorch3d")
            for backend, res in results.items():
                extra = {
                    "ms_per_image": res["ms"] / batch,
                    **{k: round(res[k], 2) for k in ("raster_ms", "interp_ms", "shade_ms", "bwd_ms")},
                    "speedup_vs_p3d": round(reference["ms"] / res["ms"], 1) if reference else math.nan,
                    "faces": int(faces.shape[0]),
                    "coverage": round(res["coverage"], 3),
                }
                rows.append(BenchRow(bench="raster", impl=backend, device=device, batch=batch, ms=res["ms"],
                                     items_per_s=1e3 * batch / res["ms"], peak_mem_mb=res["peak"], extra=extra))
    return rows
