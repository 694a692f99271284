"""The SMIRK pieces wired as the recipe will wire them (reconstruction path + cycle path) on tiny images: shapes
agree, losses are finite, and gradients reach exactly the networks each path trains."""

from __future__ import annotations

import torch
from torch import nn

from facelab.render import MeshRenderer, ndc_to_pixels, shape_lights
from smirk import (
    CycleLoss,
    SmirkEncoder,
    SmirkGenerator,
    SmirkMasker,
    augment_expressions,
    landmark_loss,
    reconstruction_loss,
    structural_identity_loss,
)
from smirk.networks import SmirkEncoding


def grads(module: nn.Module) -> bool:
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_reconstruction_and_cycle_paths(flame):
    size, b = 64, 4
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    encoder, generator = SmirkEncoder(), SmirkGenerator(channels=(8, 16, 32, 64), bottleneck_channels=64,
                                                        n_res_blocks=1)
    renderer = MeshRenderer.from_model(flame, region="face", image_size=size)
    masker = SmirkMasker()
    masker.set_topology(flame.faces, flame.regions, allowed_faces=flame.region_faces("face"))
    lights = shape_lights()
    image = torch.rand(b, 3, size, size, generator=gen)
    target_mp = torch.rand(b, 105, 2, generator=gen) * 0.6 - 0.3

    def render(enc: SmirkEncoding):
        mesh = flame(enc.flame_params())
        out = renderer(mesh.verts, enc.camera(), albedo=180 / 255, lights=lights)
        return mesh, out

    # reconstruction path
    enc = encoder(image)
    mesh, rendered = render(enc)
    verts_px = ndc_to_pixels(rendered.verts_ndc, size)
    lmk_px = ndc_to_pixels(enc.camera().project(mesh.landmarks_mp), size)
    masked = masker(image, lmk_px, rendered.mask, verts_px, flame.faces, generator=gen)
    assert masked.masked_image.shape == image.shape
    reconstructed = generator(rendered.image, masked.masked_image)
    lmk_ndc = enc.camera().project(mesh.landmarks_mp)
    loss = 100 * landmark_loss(lmk_ndc, target_mp) + 10 * reconstruction_loss(reconstructed, image)
    loss = loss + structural_identity_loss(encoder.shape_encoder, reconstructed, image)
    assert torch.isfinite(loss)
    loss.backward()
    assert grads(encoder.expression_encoder) and grads(encoder.pose_encoder) and grads(generator)

    # cycle path: augmented expressions rendered, translated with transferred pixels, re-encoded
    encoder.zero_grad(), generator.zero_grad()
    base = enc.detach()
    aug = augment_expressions(base.expression, base.jaw_pose, base.eyelids, torch.randn(3, 50), gen)
    target = SmirkEncoding(shape=base.shape, expression=aug.expression, eyelids=aug.eyelids, jaw_pose=aug.jaw_pose,
                           global_pose=base.global_pose, cam=base.cam)
    with torch.no_grad():
        _, rendered_aug = render(target)
    masked_aug = masker(image, lmk_px.detach(), rendered_aug.mask, verts_px.detach(), flame.faces,
                        points=masked.points, verts_px_dst=ndc_to_pixels(rendered_aug.verts_ndc, size),
                        patch_drop_p=masker.cycle_patch_drop_p, generator=gen)
    generated = generator(rendered_aug.image, masked_aug.masked_image).detach()  # encoder step: generator frozen
    cycle = CycleLoss()(encoder(generated), target)
    assert torch.isfinite(cycle)
    cycle.backward()
    assert grads(encoder.expression_encoder) and not grads(generator)
