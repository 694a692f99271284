"""SMIRK inference: a trained checkpoint in, FLAME reconstructions of face crops out (``facelab reconstruct``).

:class:`SmirkReconstructor` loads the encoders (and, from a core-phase checkpoint, the translator) of a
:class:`smirk.SmirkModule` checkpoint with ``torch.load(weights_only=True)`` and runs, on batches of square crops in
[0, 1] (SMIRK's crop: the bounding box of the mediapipe landmarks, side ``mean(w, h) * 1.6``):

    encoding = reconstructor.encode(crops)           # facelab.reconstruction.FaceEncoding: FlameParams + camera
    result = reconstructor.decode(encoding, crops)   # FLAME mesh, face-region render, overlay (+ translator)
    result = reconstructor.reconstruct(crops)        # both

``encode`` and ``decode`` are separate so that a video's parameters can be smoothed in between. The reconstructor
is a :class:`facelab.reconstruction.Reconstructor`: ``facelab reconstruct --method smirk`` builds it through the
method registry (:mod:`smirk.plugin`), ``--translator`` sets ``translate``.

Frames: ``verts`` are in FLAME's model frame (metres, +y up, the face looks along +z); ``cam = [s, tx, ty]`` is the
weak-perspective camera of :class:`facelab.render.WeakPerspectiveCamera` (``x_ndc = s (x + tx)``, ``y_ndc =
s (y + ty)``) and NDC spans the crop, +y up; pixel coordinates are those of :mod:`facelab.render.camera` (origin at the
crop's top-left corner, +v down). Shapes: ``B`` batch, ``S`` crop side, ``V`` vertices, ``F`` faces, ``T`` UVs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from facelab.errors import AssetFormatError, MissingAssetError
from facelab.io.assets import require_file
from facelab.io.weights import load_state_dict_strict, read_checkpoint
from facelab.masks import convex_hull_mask
from facelab.morphable import Flame
from facelab.reconstruction import FaceEncoding, Reconstruction, region_topology
from facelab.render import MeshRenderer, ndc_to_pixels, shape_lights
from facelab.viz import blend
from smirk.masking import SmirkMasker
from smirk.module import RENDER_ALBEDO, load_encoder_checkpoint
from smirk.networks import SmirkEncoder, SmirkGenerator

__all__ = ["SmirkCheckpoint", "SmirkReconstruction", "SmirkReconstructor", "read_smirk_checkpoint"]


@dataclass
class SmirkCheckpoint:
    """What a SMIRK checkpoint holds, read without building any network.

    Attributes:
        path: the file.
        phase: ``"pretrain"`` or ``"core"`` (from the hyper-parameters; ``"encoder"`` for a bare encoder state dict).
        hparams: the checkpoint's ``hyper_parameters`` (empty for a bare state dict).
        n_shape, n_expression: read from the encoder heads' weight shapes.
        generator_state: the translator's weights (``generator.*`` without the prefix); None when absent.
    """

    path: Path
    phase: str
    hparams: dict
    n_shape: int
    n_expression: int
    generator_state: dict[str, Tensor] | None


def read_smirk_checkpoint(path: str | Path, config_key: str = "--ckpt") -> SmirkCheckpoint:
    """Read a SMIRK checkpoint (``torch.load(weights_only=True)``, memory-mapped when possible).

    Accepts a Lightning checkpoint of :class:`smirk.SmirkModule` (``state_dict`` with ``encoder.*``, plus
    ``generator.*`` from the core phase, and ``hyper_parameters``) or a bare :class:`SmirkEncoder` state dict.

    Raises:
        MissingAssetError: no such file (the message names ``config_key``).
        AssetFormatError: not loadable with ``weights_only=True``, or no SMIRK encoder weights inside.
    """
    file = require_file(path, what="SMIRK checkpoint", config_key=config_key, family="weights")
    raw = read_checkpoint(file, what="SMIRK checkpoint", config_key=config_key)
    state = raw["state_dict"] if isinstance(raw.get("state_dict"), dict) else raw
    hparams = dict(raw.get("hyper_parameters") or {})
    encoder = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")} or state
    heads = ("shape_encoder.head.weight", "expression_encoder.head.weight")
    if not all(isinstance(encoder.get(k), Tensor) for k in heads):
        raise AssetFormatError(f"{file} ({config_key}) holds no SMIRK encoder weights (no {heads[0]} / {heads[1]}, "
                               "with or without the 'encoder.' prefix): is it a SmirkModule checkpoint?")
    generator = {k[len("generator."):]: v for k, v in state.items() if k.startswith("generator.")}
    phase = str(hparams.get("phase", "core" if generator else "pretrain")) if hparams else "encoder"
    return SmirkCheckpoint(path=file, phase=phase, hparams=hparams, n_shape=int(encoder[heads[0]].shape[0]),
                           n_expression=int(encoder[heads[1]].shape[0]) - 5, generator_state=generator or None)


def _generator_for_state(state: dict[str, Tensor], source: Path) -> SmirkGenerator:
    """A :class:`SmirkGenerator` whose widths fit ``state`` (a module may be trained with an injected, smaller one,
    which its hyper-parameters do not record), loaded strictly."""
    try:
        n_levels = len({k.split(".")[2] for k in state if k.startswith("unet.down.")})
        channels = [int(state[f"unet.down.{i}.0.weight"].shape[0]) for i in range(n_levels)]
        bottleneck = int(state["unet.bottleneck.0.weight"].shape[0])
    except KeyError as err:
        raise AssetFormatError(f"{source}: the generator.* weights are not a SmirkGenerator's (no {err})") from err
    n_res = len({k.split(".")[2] for k in state if k.startswith("unet.res_blocks.")})
    generator = SmirkGenerator(channels=channels, bottleneck_channels=bottleneck, n_res_blocks=n_res)
    load_state_dict_strict(generator, state, source, hint="the translator (generator.*) of a core-phase checkpoint")
    return generator


@dataclass
class SmirkReconstruction(Reconstruction):
    """What :meth:`SmirkReconstructor.decode` returns for a batch of crops (a
    :class:`facelab.reconstruction.Reconstruction`).

    Attributes:
        encoding: the (possibly smoothed) :class:`FaceEncoding` (``FlameParams``, weak-perspective camera).
        mesh: FLAME's output: ``verts`` (B, V, 3) in the model frame (metres), ``landmarks68``, ``landmarks_mp``.
        render: (B, 3, S, S) the gray, five-light render of FLAME's face region (0 on the background).
        render_mask: (B, 1, S, S) its coverage.
        overlay: (B, 3, S, S) the render blended over the crops.
        extra_images: ``{"translator": (B, 3, S, S)}`` when the translator ran, else empty.
        landmarks_px: (B, 105, 2) the predicted mediapipe-subset landmarks projected to crop pixels.
        masked_image: (B, 3, S, S) the translator's masked input, or None.
    """

    landmarks_px: Tensor | None = None
    masked_image: Tensor | None = None

    @property
    def translated(self) -> Tensor | None:
        """(B, 3, S, S) the translator's reconstruction of the crops, or None."""
        return self.extra_images.get("translator")


class SmirkReconstructor(nn.Module):
    """SMIRK's encoders + FLAME + the face-region renderer (+ the translator) for inference.

    Build it with :meth:`from_checkpoint`; the constructor takes already built parts (tests, notebooks).

    Args:
        encoder: the three encoders.
        flame: the FLAME model (``n_shape`` / ``n_expression`` as the encoder's, mediapipe embedding and the
            ``face`` region loaded).
        generator: the translator (core-phase checkpoints), or None.
        image_size: crop side ``S`` the encoders were trained on (the renderer's image size).
        overlay_alpha: opacity of the mesh in the overlays.
        translator_seed: seed of the translator input's sparse pixel sampling (the same crops give the same output).
        translate: :meth:`decode` also runs the translator by default (``--translator``; needs ``generator``).
    """

    def __init__(self, encoder: SmirkEncoder, flame: Flame, generator: SmirkGenerator | None = None,
                 image_size: int = 224, overlay_alpha: float = 0.6, translator_seed: int = 0,
                 translate: bool = False) -> None:
        super().__init__()
        if not flame.has_mediapipe or "face" not in flame.regions:
            raise AssetFormatError("SMIRK needs FLAME's mediapipe landmark embedding and its 'face' region mask "
                                   "(FLAME_masks.pkl) beside the FLAME model (--model-path)")
        if translate and generator is None:
            raise ValueError(_NO_TRANSLATOR.format(phase="pretraining"))
        self.encoder, self.flame, self.generator, self.translate = encoder, flame, generator, bool(translate)
        self.image_size, self.overlay_alpha, self.translator_seed = int(image_size), overlay_alpha, translator_seed
        self.renderer = MeshRenderer.from_model(flame, region="face", image_size=self.image_size)
        # Inference-time masking: the training masker's hole and 1% guidance pixels; in eval mode it skips its
        # augmentations (multiplicative noise, patch dropout).
        self.masker = SmirkMasker().eval()
        self.masker.set_topology(flame.faces, flame.regions, allowed_faces=flame.region_faces("face"))
        self.head_topology = region_topology(flame)
        self.face_topology = region_topology(flame, flame.region_faces("face"))
        #: The OBJs ``facelab reconstruct`` writes per face: the whole head (FLAME's vertex order) and the face
        #: region SMIRK renders (re-indexed).
        self.meshes = {"head": self.head_topology, "face": self.face_topology}
        self.checkpoint: Path | None = None  # set by from_checkpoint
        self.phase = "pretrain" if generator is None else "core"
        self.eval()

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, flame_path: str | None = None, n_shape: int | None = None,
                        n_expression: int | None = None, image_size: int | None = None, load_generator: bool = True,
                        translate: bool = False, device: str | torch.device = "cpu", config_key: str = "--ckpt"
                        ) -> SmirkReconstructor:
        """Build from a checkpoint of either phase (or a bare :class:`SmirkEncoder` state dict).

        Settings come from the checkpoint's ``hyper_parameters`` unless given here; ``n_shape`` / ``n_expression``
        default to the encoder heads' sizes, ``image_size`` to 224 and ``flame_path`` to ``"synthetic"`` for a bare
        state dict. Weights load strictly (:func:`smirk.module.load_encoder_checkpoint`).

        Args:
            path: the checkpoint.
            flame_path: FLAME asset (``generic_model.pkl``, its folder, or ``"synthetic"``); None: the checkpoint's.
            n_shape, n_expression: FLAME components; None: the checkpoint's (a different value is an error).
            image_size: crop side; None: the checkpoint's.
            load_generator: also load the translator when the checkpoint has one.
            translate: :meth:`decode` runs the translator by default (a core-phase checkpoint is needed).
            device: where the networks run.
            config_key: the option naming ``path`` (for error messages).

        Raises:
            MissingAssetError: no checkpoint or FLAME file. AssetFormatError: unreadable checkpoint, or weights that
                do not fit (e.g. another ``n_expression``). ValueError: ``translate`` without a translator.
        """
        ckpt = read_smirk_checkpoint(path, config_key)
        if translate and (ckpt.generator_state is None or not load_generator):
            raise ValueError(_NO_TRANSLATOR.format(phase=ckpt.phase))
        hp = ckpt.hparams
        for name, inferred, asked in (("n_shape", ckpt.n_shape, n_shape), ("n_expression", ckpt.n_expression,
                                                                           n_expression)):
            value = asked if asked is not None else hp.get(name)
            if value is not None and int(value) != inferred:
                source = "was asked for" if asked is not None else "is in its hyper_parameters"
                raise AssetFormatError(f"{ckpt.path} ({config_key}): {name}={value} {source}, but its encoder "
                                       f"weights predict {name}={inferred}: the checkpoint and the settings disagree")
        n_shape, n_expression = ckpt.n_shape, ckpt.n_expression
        flame = _build_flame(flame_path, hp.get("flame_path", "synthetic"), n_shape, n_expression)
        encoder = SmirkEncoder(n_shape, n_expression)
        load_encoder_checkpoint(encoder, str(ckpt.path), config_key=config_key)
        generator = None
        if load_generator and ckpt.generator_state is not None:
            generator = _generator_for_state(ckpt.generator_state, ckpt.path)
        size = int(image_size if image_size is not None else hp.get("image_size", 224))
        model = cls(encoder, flame, generator, image_size=size, translate=translate)
        model.checkpoint, model.phase = ckpt.path, ckpt.phase
        return model.to(device)

    @property
    def device(self) -> torch.device:
        return self.flame.v_template.device

    @property
    def has_translator(self) -> bool:
        return self.generator is not None

    @property
    def model(self) -> Flame:
        """The morphable model (:class:`facelab.reconstruction.Reconstructor`)."""
        return self.flame

    @property
    def uses_face_hull(self) -> bool:
        """The translator's mask hides the crop's face hull: ``facelab reconstruct`` passes it when translating."""
        return self.translate

    def settings(self) -> dict:
        """JSON-able description of the model (written beside the parameters)."""
        return {"method": "smirk", "family": "flame", "checkpoint": str(self.checkpoint or ""),
                "phase": self.phase, "n_shape": self.flame.n_shape,
                "n_expression": self.flame.n_expression, "image_size": self.image_size,
                "flame_units": self.flame.units}

    def train(self, mode: bool = True) -> SmirkReconstructor:
        """Always eval: BatchNorm uses its running statistics (this module is for inference only)."""
        return super().train(False)

    # ------------------------------------------------------------------------------------------------ encoding
    @torch.inference_mode()
    def encode(self, crops: Tensor) -> FaceEncoding:
        """SMIRK's parameters of face crops.

        Args:
            crops: (B, 3, S, S) RGB in [0, 1] (SMIRK's crop, ``S = image_size``).

        Returns:
            :class:`FaceEncoding`: ``FlameParams`` (identity, expression, global/jaw pose, eyelids; neck and eye
            poses None, as in SMIRK) and the weak-perspective camera of the predicted ``cam``.
        """
        self._check_crops(crops)
        encoding = self.encoder(crops.to(self.device, self.flame.v_template.dtype))
        return FaceEncoding(params=encoding.flame_params(), camera=encoding.camera())

    # ------------------------------------------------------------------------------------------------ decoding
    @torch.inference_mode()
    def decode(self, encoding: FaceEncoding, crops: Tensor, face_hull: Tensor | None = None,
               translate: bool | None = None) -> SmirkReconstruction:
        """FLAME meshes, renders and overlays of an encoding (and the translator's reconstruction).

        Args:
            encoding: (B, ...) parameters, e.g. from :meth:`encode` (possibly smoothed).
            crops: (B, 3, S, S) the crops in [0, 1] (overlay background, translator input).
            face_hull: (B, 1, S, S) the face hull of each crop (convex hull of its 478 mediapipe landmarks, SMIRK's
                hole for the translator); None, or an all-zero row where a crop has no landmarks: the hull of the
                predicted landmarks is used instead.
            translate: run the translator (needs a core-phase checkpoint); None: :attr:`translate`.

        Returns:
            :class:`SmirkReconstruction`.
        """
        self._check_crops(crops)
        translate = self.translate if translate is None else translate
        if translate and self.generator is None:
            raise ValueError("the translator needs a core-phase SMIRK checkpoint (generator.* weights); this one is "
                             f"a {self.phase} checkpoint")
        crops = crops.to(self.device, self.flame.v_template.dtype)
        mesh = self.flame(encoding.params)
        camera = encoding.camera
        lights = shape_lights(device=crops.device, dtype=crops.dtype)
        render = self.renderer(mesh.verts, camera, albedo=RENDER_ALBEDO, lights=lights)
        image = render.image.clamp(0, 1)
        landmarks_px = ndc_to_pixels(camera.project(mesh.landmarks_mp), self.image_size)
        result = SmirkReconstruction(encoding=encoding, mesh=mesh, render=image, render_mask=render.mask,
                                     overlay=blend(crops, image, render.mask, self.overlay_alpha),
                                     landmarks_px=landmarks_px)
        if translate:
            hull = self._hull(face_hull, landmarks_px)
            generator = torch.Generator(device=crops.device).manual_seed(self.translator_seed)
            verts_px = ndc_to_pixels(render.verts_ndc, self.image_size)
            masked = self.masker(crops, None, render.mask, verts_px, self.flame.faces, hull_mask=hull,
                                 generator=generator)
            result.masked_image = masked.masked_image
            result.extra_images["translator"] = self.generator(render.image, masked.masked_image)
        return result

    def reconstruct(self, crops: Tensor, face_hull: Tensor | None = None, translate: bool | None = None
                    ) -> SmirkReconstruction:
        """:meth:`encode` then :meth:`decode` of (B, 3, S, S) crops in [0, 1]."""
        return self.decode(self.encode(crops), crops, face_hull=face_hull, translate=translate)

    def _hull(self, face_hull: Tensor | None, landmarks_px: Tensor) -> Tensor:
        """(B, 1, S, S): the given hulls, the predicted landmarks' hull where none is given."""
        predicted = convex_hull_mask(landmarks_px, (self.image_size, self.image_size)).to(landmarks_px.dtype)
        if face_hull is None:
            return predicted
        face_hull = face_hull.to(predicted)
        missing = face_hull.flatten(1).amax(1) <= 0
        return torch.where(missing[:, None, None, None], predicted, face_hull)

    def _check_crops(self, crops: Tensor) -> None:
        s = self.image_size
        if crops.dim() != 4 or crops.shape[1:] != (3, s, s):
            raise ValueError(f"expected crops (B, 3, {s}, {s}) in [0, 1], got {tuple(crops.shape)}")


#: ``--translator`` (``translate=True``) without the translator's weights.
_NO_TRANSLATOR = ("--translator needs a checkpoint with the translator (SMIRK: a core-phase checkpoint, generator.* "
                  "weights); this is a {phase} checkpoint")


def _build_flame(flame_path: str | None, trained_with: str, n_shape: int, n_expression: int) -> Flame:
    """FLAME for the checkpoint: ``--model-path`` if given, else the path stored in the checkpoint."""
    path = flame_path if flame_path is not None else trained_with
    try:
        return Flame(path, n_shape=n_shape, n_expression=n_expression)
    except MissingAssetError as err:
        hint = ("" if flame_path is not None else
                f"\n  the checkpoint was trained with flame_path={trained_with!r}; pass --model-path PATH to use "
                "another")
        raise MissingAssetError(f"{err}{hint}") from err
