"""IdentityLoss: ArcFace IResNet layout and size, FaceNet through facenet-pytorch, alignment against insightface's
norm_crop, cosine distances by hand, loud random weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facelab.errors import AssetFormatError, MissingAssetError
from facelab.losses import ARCFACE_LEVELS, FACENET_LEVELS, IdentityLoss, arcface_alignment, cosine_distance, iresnet


def test_iresnet_layout_and_published_sizes():
    # the published ArcFace backbones: IResNet-50 43.6 M and IResNet-100 65.2 M parameters
    with torch.device("meta"):
        assert sum(p.numel() for p in iresnet(50).parameters()) == 43_590_848
        assert sum(p.numel() for p in iresnet(100).parameters()) == 65_156_160
        state = iresnet(50).state_dict()
    # arcface_torch's key names
    for key in ("conv1.weight", "bn1.running_var", "prelu.weight", "layer1.0.bn1.weight", "layer1.0.conv1.weight",
                "layer1.0.prelu.weight", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.running_mean",
                "layer3.13.bn3.bias", "bn2.weight", "fc.weight", "features.running_mean"):
        assert key in state, key
    assert "layer3.14.conv1.weight" not in state and "layer2.0.downsample.0.weight" in state
    assert state["fc.weight"].shape == (512, 512 * 7 * 7)


@pytest.fixture(scope="module")
def arcface18_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("arcface") / "backbone.pth"
    torch.save(iresnet(18).state_dict(), path)
    return path


def test_arcface_loss_by_hand(arcface18_file):
    loss_fn = IdentityLoss("arcface", str(arcface18_file), arcface_depth=18, feature_layers=("layer1", "layer3"),
                           feature_weights=(0.5, 2.0), embedding_weight=1.5)
    net = iresnet(18).eval()
    net.load_state_dict(torch.load(arcface18_file, weights_only=True))
    torch.manual_seed(1)
    x, y = torch.rand(1, 3, 112, 112, requires_grad=True), torch.rand(1, 3, 112, 112)

    def levels(image):  # IResNet's forward, stage by stage, on (x - 0.5) / 0.5
        z = net.prelu(net.bn1(net.conv1((image - 0.5) / 0.5)))
        l1 = net.layer1(z)
        l3 = net.layer3(net.layer2(l1))
        return net.features(net.fc(net.bn2(net.layer4(l3)).flatten(1))), l1, l3

    def dist(a, b):
        a, b = a.flatten(1), b.flatten(1)
        return (1 - (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean()

    with torch.no_grad():
        (ex, ax, bx), (ey, ay, by) = levels(x), levels(y)
        expected = 1.5 * dist(ex, ey) + 0.5 * dist(ax, ay) + 2.0 * dist(bx, by)
    loss = loss_fn(x, y)
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)
    loss.backward()
    assert x.grad.abs().sum() > 0 and not any(p.requires_grad for p in loss_fn.parameters())


def test_input_preparation(arcface18_file):
    loss_fn = IdentityLoss("arcface", str(arcface18_file), arcface_depth=18)
    image = torch.rand(2, 3, 112, 112)
    torch.testing.assert_close(loss_fn.prepare(image), 2 * image - 1)  # (x - 0.5) / 0.5
    big = torch.rand(2, 3, 224, 224)
    expected = torch.nn.functional.interpolate(big, size=(112, 112), mode="bilinear", antialias=True)
    torch.testing.assert_close(loss_fn.prepare(big), 2 * expected - 1)  # other sizes are resized to 112
    center = loss_fn.prepare(big[..., 56:168, 56:168])
    loss_fn.crop = (0.25, 0.25, 0.75, 0.75)  # the face box inside a larger crop, taken before resizing
    torch.testing.assert_close(loss_fn.prepare(big), center)


def test_arcface_weight_file_errors(tmp_path, arcface18_file):
    with pytest.raises(AssetFormatError, match="arcface_depth=50"):
        IdentityLoss("arcface", str(arcface18_file), arcface_depth=50)
    with pytest.raises(MissingAssetError, match=r"(?s)ArcFace IResNet-50 weights.*weights_path"):
        IdentityLoss("arcface", str(tmp_path / "backbone.pth"))
    with pytest.raises(ValueError, match="unknown ArcFace IResNet-18 layers"):
        IdentityLoss("arcface", str(arcface18_file), arcface_depth=18, feature_layers=("layer9",))


@pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")  # insightface calls skimage's old API
def test_alignment_matches_insightface_norm_crop():
    from insightface.utils.face_align import arcface_dst, norm_crop

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (160, 200, 3), dtype=np.uint8)
    image = np.asarray(torch.nn.functional.avg_pool2d(torch.from_numpy(image).permute(2, 0, 1)[None].float(), 5, 1,
                                                      2)[0].permute(1, 2, 0).round().byte())  # smooth: less aliasing
    theta = 0.2
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    landmarks = (arcface_dst - 56.0) @ rot.T * 1.3 + np.array([100.0, 80.0])  # a rotated, scaled, shifted face
    expected = norm_crop(image, landmarks.astype(np.float32), image_size=112).astype(np.float64)
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None].double()
    ours = arcface_alignment(tensor, torch.from_numpy(landmarks)[None], 112)[0].permute(1, 2, 0).numpy()
    inside = np.s_[4:-4, 4:-4]  # away from the zero border
    assert np.abs(ours[inside] - expected[inside]).mean() < 1.0  # grey levels (cv2 rounds to uint8)
    # the template lands on itself
    same = torch.rand(1, 3, 112, 112, dtype=torch.float64)
    aligned = arcface_alignment(same, torch.as_tensor(arcface_dst, dtype=torch.float64)[None])
    torch.testing.assert_close(aligned, same)


def test_facenet_through_facenet_pytorch(tmp_path, capsys):
    from facenet_pytorch import InceptionResnetV1, fixed_image_standardization

    capsys.readouterr()
    random_net = IdentityLoss("facenet", allow_random=True, feature_layers=FACENET_LEVELS[:2])
    err = capsys.readouterr().err
    assert "WARNING" in err and "FaceNet InceptionResnetV1 (identity loss)" in err and "weights_path" in err
    # a facenet-pytorch state dict with its 8631-class classifier (vggface2): the logits are dropped
    state = {**random_net.net.state_dict(), "logits.weight": torch.zeros(8631, 512), "logits.bias": torch.zeros(8631)}
    torch.save(state, tmp_path / "20180402-114759-vggface2.pt")
    loss_fn = IdentityLoss("facenet", str(tmp_path / "20180402-114759-vggface2.pt"))
    reference = InceptionResnetV1(pretrained=None, classify=False).eval()
    reference.load_state_dict({k: v for k, v in state.items() if not k.startswith("logits.")})
    x, y = torch.rand(1, 3, 160, 160), torch.rand(1, 3, 160, 160)
    with torch.no_grad():
        ex = reference(fixed_image_standardization(x * 255))
        ey = reference(fixed_image_standardization(y * 255))
        torch.testing.assert_close(loss_fn(x, y), cosine_distance(ex, ey).mean())
    with pytest.raises(ValueError, match="MTCNN-style"):
        loss_fn(x, y, landmarks=torch.zeros(1, 5, 2))


def test_random_arcface_warns_and_levels(capsys):
    capsys.readouterr()
    loss_fn = IdentityLoss("arcface", allow_random=True, arcface_depth=18, feature_layers=ARCFACE_LEVELS)
    assert "ArcFace IResNet-18 (identity loss)" in capsys.readouterr().err
    image = torch.rand(1, 1, 112, 112)  # one channel: repeated to RGB
    emb, feats = loss_fn.embed(image)
    assert emb.shape == (1, 512) and [f.shape[1] for f in feats] == [64, 64, 128, 256, 512]
    with pytest.raises(ValueError, match="allow_random"):
        IdentityLoss("arcface")
