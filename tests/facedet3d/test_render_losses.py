"""FaceDet3D R losses: AugW's I* construction (Eq. 14: identity when the details are equal, the shading ratio
otherwise), the Laplacian AugW loss, DSL masking to the skin region (Eq. 16), the AU loss (Eq. 18-19)."""

from __future__ import annotations

import torch

from facedet3d.render_losses import (
    ShadingPredictor,
    au_loss,
    augmented_image,
    augmented_wrinkle_loss,
    detailed_shading_loss,
)


def _scene(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(2, 3, 32, 32, generator=g)
    shading = 0.5 + torch.rand(2, 3, 32, 32, generator=g)
    mask = torch.zeros(2, 1, 32, 32)
    mask[..., 4:28, 4:28] = 1
    return image, shading, mask


def test_augmented_image_is_the_identity_when_the_details_are_equal():
    image, shading, mask = _scene()
    shading[0, :, 10, 10] = 0.0  # deep shadow: kept, not divided by
    torch.testing.assert_close(augmented_image(image, shading, shading.clone(), mask), image, rtol=0, atol=0)


def test_augmented_image_swaps_the_shading_inside_the_face_only():
    image, shading, mask = _scene()
    albedo = image / shading  # I = albedo x Shading
    fake = shading * (1 + 0.3 * torch.randn_like(shading)).clamp(min=0.2)
    out = augmented_image(image, shading, fake, mask)
    inside = mask.expand_as(image) > 0
    torch.testing.assert_close(out[inside], (albedo * fake)[inside])  # the image re-lit with the fake details
    torch.testing.assert_close(out[~inside], image[~inside], rtol=0, atol=0)


def test_augw_loss_is_zero_for_a_perfect_render_and_ignores_the_background():
    image, shading, mask = _scene()
    fake = augmented_image(image, shading, shading * 0.9, mask)
    assert augmented_wrinkle_loss(fake, fake, mask, levels=3) == 0
    outside = fake + (1 - mask) * 5.0
    assert augmented_wrinkle_loss(outside, fake, mask, levels=3) == 0
    assert augmented_wrinkle_loss(fake + mask * 0.1, fake, mask, levels=3) > 0


def test_dsl_compares_only_the_skin_region():
    torch.manual_seed(0)
    predictor = ShadingPredictor(hidden=4)
    image, shading, _ = _scene(1)
    skin = torch.zeros(2, 1, 32, 32)
    skin[..., 8:24, 8:24] = 1
    base = detailed_shading_loss(predictor, image, shading, skin, levels=3)
    changed = shading + (1 - skin) * torch.rand_like(shading)  # the target changes off the skin only
    torch.testing.assert_close(detailed_shading_loss(predictor, image, changed, skin, levels=3), base)
    assert detailed_shading_loss(predictor, image, shading + skin * 0.5, skin, levels=3) != base
    loss = detailed_shading_loss(predictor, image, shading, skin, levels=3)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in predictor.parameters())
    assert len(list(predictor.net.children())) == 3  # conv, activation, conv: two layers (Eq. 16)


def test_au_loss_is_the_squared_error_summed_over_units():
    pred, target = torch.zeros(2, 17), torch.full((2, 17), 0.5)
    torch.testing.assert_close(au_loss(pred, target), torch.tensor(17 * 0.25))
