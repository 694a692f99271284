"""Analysis-by-synthesis fitting of any morphable model (FLAME, BFM, bilinear, ICT) to 2D landmarks and photos.

The energy of a face (one value per face; the batch is B independent problems optimised together)::

    E = w_68 E_lmk(68) + w_mp E_lmk(mediapipe) + w_photo E_photo
        + w_id ||alpha_id||^2 + w_exp ||alpha_exp||^2 + w_alb ||alpha_alb||^2 + w_sh L_gamma + w_jaw ||jaw||^2

(:mod:`facelab.fitting.energy`; Deep3DFaceRecon's objective, Deng et al. 2019, Eq. 2-7, with robust landmark
penalties). Coefficients are in standard-deviation units, so their priors are the models' Gaussian priors; where a
model declares an ``expression_range`` (bilinear / ICT blendshape weights in [0, 1]) the expression is kept in
that box by projection after every step, with the same quadratic pull towards 0.

Stages (:class:`FitSchedule`), each with its own iteration budget:

1. **closed-form pose**: weak-perspective Procrustes of the mean face's landmarks onto the targets
   (:func:`facelab.fitting.camera.weak_perspective_procrustes`), turned into a pinhole pose for perspective
   cameras;
2. **rigid**: head rotation, translation and scale (or depth) on the landmark terms;
3. **landmarks**: adds identity, expression and the pose fields a model has (jaw, eyelids);
4. **photometric** (with an image): the SH lighting is solved in closed form for the current geometry
   (:func:`facelab.fitting.energy.sh_least_squares`), then everything, albedo and SH included, is refined on the
   photometric + landmark + prior energy.

Per-face convergence: every ``check_every`` iterations a face whose energy changed by less than ``tolerance``
(relative) is frozen (its variables stop moving); a stage ends when every face is frozen or its budget is spent.
The :class:`FitReport` says, per face and stage, the final energies, the iterations used and whether it converged.

Landmarks: the model's iBUG 68 (targets from a detector, or from mediapipe's 478 through
:func:`facelab.fitting.mediapipe_to_ibug68`) and, where the model has a mediapipe embedding (FLAME's 105 points),
those points too. Contour: FLAME's 17 jaw points follow the head's yaw (its dynamic embedding); for every model the
17 contour points weigh ``FitWeights.contour`` (their place along the outline is the least well defined), and the
robust penalty bounds the pull of a wrong detection.

Uses beyond one photo: landmarks only (no image: DNPM's bilinear fit of degraded photos), a known identity
(``fix=("identity",)`` with ``init``), sequences sharing one identity (``identity_groups``: the frames of a video;
``init`` warm-starts a frame from the previous one), photos with texture and SH (FaceDet3D's proxy geometry and
texture map, DualStream's texture ground truth).

The head rotation turns the mesh about the model origin (the synthetic world's ``global_pose`` for BFM, bilinear
and ICT); for FLAME it is FLAME's own ``global_pose`` (its 68-landmark contour follows the yaw). Cameras are those of
:mod:`facelab.render.camera` with an identity rotation: weak perspective ``[s, tx, ty]`` or pinhole
``[fx, fy, cx, cy, tx, ty, tz]``, the synthetic world's camera vectors.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facelab.fitting.camera import matrix_to_axis_angle, perspective_from_weak, weak_perspective_procrustes
from facelab.fitting.energy import (
    gaussian_prior,
    landmark_energy,
    photometric_energy,
    sh_least_squares,
    sh_monochrome_prior,
)
from facelab.fitting.landmarks import mediapipe_to_ibug68
from facelab.metrics.landmarks import nme_normalizer
from facelab.morphable.base import MeshOutput, MorphableModel, MorphableParams
from facelab.render import MeshRenderer, PerspectiveCamera, WeakPerspectiveCamera, axis_angle_to_matrix
from facelab.render.camera import pixels_to_ndc
from facelab.render.rasterize import rasterize
from facelab.render.shading import vertex_normals
from facelab.uv import UnwrappedTexture, UVMapper, unwrap_texture

__all__ = ["FitReport", "FitResult", "FitSchedule", "FitTargets", "FitWeights", "MorphableFitter", "StageReport"]

#: The 17 jaw-contour points of the iBUG 68 layout (weighted by ``FitWeights.contour``).
CONTOUR_68 = slice(0, 17)
#: Regions tried, in order, for the photometric term (the first the model has); all faces when none.
PHOTOMETRIC_REGIONS = ("face", "front")
STAGES = ("rigid", "landmarks", "photometric")
#: The rigid-pose variables (head rotation, translation, log scale or log depth).
POSE_VARIABLES = ("rotation", "translation", "log_scale")


# ------------------------------------------------------------------------------------------------------ settings
@dataclass
class FitWeights:
    """Weights of the energy terms (see the module docstring).

    Attributes:
        landmarks68: iBUG-68 reprojection term.
        landmarks_mp: mediapipe term (models with a mediapipe embedding, e.g. FLAME's 105 points).
        photometric: masked photometric term.
        identity, expression, albedo: Gaussian priors of the coefficient blocks (sum of squares).
        sh: monochrome-light prior of the SH coefficients.
        jaw_pose: prior on the jaw rotation (radians^2); eyelids: on the eyelid closures.
        contour: relative weight of the 17 jaw-contour points among the 68 (their position along the face outline
            is the least well defined).
        robust: robust penalty of the landmark residuals (:data:`facelab.fitting.energy.ROBUST_PENALTIES`).
        robust_scale: residual (in percent of the face size, the unit of the landmark terms) where the robust
            penalty starts to flatten.
    """

    landmarks68: float = 1.0
    landmarks_mp: float = 1.0
    photometric: float = 1.0
    identity: float = 1e-3
    expression: float = 1e-3
    albedo: float = 1e-4
    sh: float = 1e-3
    jaw_pose: float = 1e-3
    eyelids: float = 1e-5
    contour: float = 0.5
    robust: str = "cauchy"
    robust_scale: float = 5.0


@dataclass
class FitSchedule:
    """Iteration budgets and step sizes of the stages.

    Attributes:
        rigid_iterations, landmark_iterations, photometric_iterations: budget of each stage (0 skips it; the
            photometric stage also needs an image).
        rigid_lr, lr, photometric_lr: initial Adam step sizes of each stage (in the unit-free variables: radians,
            log-scale, face-size translations, standard deviations).
        pose_lr: initial step size of the pose variables in the landmark and photometric stages.
        tolerance: a face is converged when its energy changed by less than ``tolerance * max(|E|, 1)`` over
            ``check_every`` iterations (relative, and absolute below the energy unit: landmark residuals of 1 % of
            the face size).
        check_every: iterations between convergence checks.
        final_lr_factor: Adam's step size decays exponentially to ``lr * final_lr_factor`` over a stage's budget.
    """

    rigid_iterations: int = 50
    landmark_iterations: int = 200
    photometric_iterations: int = 60
    rigid_lr: float = 0.02
    lr: float = 0.1
    pose_lr: float = 0.01
    photometric_lr: float = 0.03
    tolerance: float = 5e-3
    check_every: int = 10
    final_lr_factor: float = 0.1

    def iterations(self, stage: str) -> int:
        return {"rigid": self.rigid_iterations, "landmarks": self.landmark_iterations,
                "photometric": self.photometric_iterations}[stage]

    def learning_rate(self, stage: str) -> float:
        return {"rigid": self.rigid_lr, "landmarks": self.lr, "photometric": self.photometric_lr}[stage]


# ------------------------------------------------------------------------------------------------------ inputs
@dataclass
class FitTargets:
    """What a batch of B faces is fitted to (any subset; at least one landmark set).

    Pixel coordinates follow :mod:`facelab.render.camera` (origin at the top-left corner, +v down).

    Attributes:
        image_size: ``(H, W)`` of the images the landmarks refer to.
        landmarks68: (B, 68, 2) iBUG landmarks in pixels (derived from ``landmarks_mp`` when None and 478 given).
        landmarks68_weights: (B, 68) confidences (0: missing); all 1 when None.
        landmarks_mp: (B, 478, 2) mediapipe face-mesh landmarks in pixels.
        landmarks_mp_weights: (B, 478) confidences.
        image: (B, 3, H, W) photos in [0, 1] (enables the photometric stage, the texture and the overlay).
        mask: (B, 1, H, W) pixels the photometric term may compare (e.g. the skin); all when None.
        focal: (B, 2) known ``(fx, fy)`` in pixels for the perspective camera (the fitter's default when None).
        principal_point: (B, 2) known ``(cx, cy)`` in pixels (the image centre when None).
    """

    image_size: tuple[int, int]
    landmarks68: Tensor | None = None
    landmarks68_weights: Tensor | None = None
    landmarks_mp: Tensor | None = None
    landmarks_mp_weights: Tensor | None = None
    image: Tensor | None = None
    mask: Tensor | None = None
    focal: Tensor | None = None
    principal_point: Tensor | None = None

    def __post_init__(self) -> None:
        if isinstance(self.image_size, int):
            self.image_size = (self.image_size, self.image_size)
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        if self.landmarks68 is None and self.landmarks_mp is None:
            raise ValueError("FitTargets needs landmarks68 (B, 68, 2) or landmarks_mp (B, 478, 2)")
        b = self.batch_size
        checks = {"landmarks68": (b, 68, 2), "landmarks68_weights": (b, 68), "landmarks_mp_weights": None,
                  "image": (b, 3, *self.image_size), "mask": (b, 1, *self.image_size), "focal": (b, 2),
                  "principal_point": (b, 2)}
        for name, shape in checks.items():
            value = getattr(self, name)
            if value is not None and shape is not None and tuple(value.shape) != shape:
                raise ValueError(f"FitTargets.{name} must be {shape}, got {tuple(value.shape)}")
        if self.landmarks_mp is not None:
            if self.landmarks_mp.dim() != 3 or self.landmarks_mp.shape[0] != b or self.landmarks_mp.shape[2] != 2 \
                    or self.landmarks_mp.shape[1] not in (468, 478):
                raise ValueError(f"FitTargets.landmarks_mp must be (B, 478, 2), got {tuple(self.landmarks_mp.shape)}")
            w = self.landmarks_mp_weights
            if w is not None and tuple(w.shape) != tuple(self.landmarks_mp.shape[:2]):
                raise ValueError(f"FitTargets.landmarks_mp_weights must be {tuple(self.landmarks_mp.shape[:2])}, "
                                 f"got {tuple(w.shape)}")

    @property
    def batch_size(self) -> int:
        return (self.landmarks68 if self.landmarks68 is not None else self.landmarks_mp).shape[0]

    def to(self, *args, **kwargs) -> FitTargets:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, Tensor):
                moved[name] = value.to(*args, **kwargs)
        return FitTargets(**moved)


# ------------------------------------------------------------------------------------------------------ outputs
@dataclass
class StageReport:
    """One stage of a fit, per face.

    Attributes:
        name: ``rigid`` | ``landmarks`` | ``photometric``.
        energies: term name -> (B,) final value (``total`` is the weighted sum).
        iterations: (B,) long iterations the face was optimised for.
        converged: (B,) bool, the face met the tolerance within the budget.
        budget: the stage's iteration budget.
    """

    name: str
    energies: dict[str, Tensor]
    iterations: Tensor
    converged: Tensor
    budget: int


@dataclass
class FitReport:
    """The convergence report of a fit: the stages that ran, in order."""

    stages: list[StageReport] = field(default_factory=list)

    @property
    def final(self) -> StageReport:
        """The last stage that ran."""
        return self.stages[-1]

    @property
    def converged(self) -> Tensor:
        """(B,) bool: every stage converged."""
        return torch.stack([s.converged for s in self.stages]).all(dim=0)

    @property
    def iterations(self) -> Tensor:
        """(B,) long total iterations."""
        return torch.stack([s.iterations for s in self.stages]).sum(dim=0)

    def face(self, index: int) -> dict:
        """Face ``index``'s report as plain Python values (for JSON)."""
        return {
            "converged": bool(self.converged[index]),
            "iterations": int(self.iterations[index]),
            "stages": [{"name": s.name, "iterations": int(s.iterations[index]), "budget": s.budget,
                        "converged": bool(s.converged[index]),
                        "energies": {k: float(v[index]) for k, v in s.energies.items()}} for s in self.stages],
        }


@dataclass
class FitResult:
    """A fitted batch.

    Attributes:
        params: the model's params dataclass (FLAME: ``global_pose`` holds the head rotation).
        rotation: (B, 3) axis-angle head rotation about the model origin (for FLAME, its ``global_pose``).
        camera: the fitted camera (identity rotation), a :class:`WeakPerspectiveCamera` or
            :class:`PerspectiveCamera`.
        camera_vector: (B, 3) ``[s, tx, ty]`` or (B, 7) ``[fx, fy, cx, cy, tx, ty, tz]``.
        sh: (B, 27) SH lighting, Deep3DFaceRecon layout (9 red, 9 green, 9 blue); None without a photometric stage.
        mesh: the posed mesh in the camera's world frame (``verts``, ``landmarks68``, ``landmarks_mp``, and
            ``albedo`` (B, V, 3) when the model has a colour basis).
        verts_ndc: (B, V, 3) the mesh projected to NDC.
        landmarks68_pix: (B, 68, 2) the fitted landmarks in pixels.
        image_size: ``(H, W)``.
        report: the :class:`FitReport`.
        render: (B, 3, H, W) albedo x SH shading of the fitted face (photometric fits), 0 off the face.
        render_mask: (B, 1, H, W) its coverage.
        texture: the photo unwrapped into the model's UV layout with its visibility mask (models with UVs, with an
            image), :class:`facelab.uv.UnwrappedTexture`.
        overlay: (B, 3, H, W) the shaded mesh over the photo with the fitted landmarks (with an image).
    """

    params: MorphableParams
    rotation: Tensor
    camera: WeakPerspectiveCamera | PerspectiveCamera
    camera_vector: Tensor
    sh: Tensor | None
    mesh: MeshOutput
    verts_ndc: Tensor
    landmarks68_pix: Tensor
    image_size: tuple[int, int]
    report: FitReport
    render: Tensor | None = None
    render_mask: Tensor | None = None
    texture: UnwrappedTexture | None = None
    overlay: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.rotation.shape[0]

    def arrays(self, index: int) -> dict[str, Tensor]:
        """Face ``index``'s parameters as ``name -> tensor`` (for ``.npz`` files): every coefficient block and pose
        field of the params, ``rotation``, ``camera`` and ``sh``."""
        out = {k: v[index] for k, v in self.params.tensors().items()}
        out.update(rotation=self.rotation[index], camera=self.camera_vector[index])
        if self.sh is not None:
            out["sh"] = self.sh[index]
        return {k: v.detach().cpu() for k, v in out.items()}


# ------------------------------------------------------------------------------------------------------ the fitter
class MorphableFitter(nn.Module):
    """Fits a morphable model to batches of landmark sets and photos (see the module docstring).

    Args:
        model: any :class:`facelab.morphable.base.MorphableModel`.
        camera: ``"weak"`` (scaled orthographic, DECA / SMIRK) or ``"perspective"`` (pinhole).
        focal: perspective cameras: the default focal length in units of the image width (Deep3DFaceRecon:
            1015 px at 224, 4.53); ``FitTargets.focal`` overrides it per face.
        render_size: side of the photometric renders (None: the image's height; smaller is faster).
        uv_size: side of the unwrapped texture.
        weights: the energy weights (:class:`FitWeights` defaults when None).
        schedule: the stage budgets (:class:`FitSchedule` defaults when None).
        photometric_region: the model region rendered in the photometric term (None: the first of
            :data:`PHOTOMETRIC_REGIONS` the model has, else the whole mesh).
        skin_albedo: RGB albedo of models without a colour basis (the SH colours absorb the rest).
        backend: rasterizer backend.
        texture_min_cos: texels whose normal faces the camera by less than this are not unwrapped (grazing).
    """

    def __init__(self, model: MorphableModel, camera: Literal["weak", "perspective"] = "weak", focal: float = 4.53,
                 render_size: int | None = None, uv_size: int = 256, weights: FitWeights | None = None,
                 schedule: FitSchedule | None = None, photometric_region: str | None = None,
                 skin_albedo: tuple[float, float, float] = (0.72, 0.55, 0.47), backend: str = "torch",
                 texture_min_cos: float = 0.1) -> None:
        super().__init__()
        if camera not in ("weak", "perspective"):
            raise ValueError(f"camera must be 'weak' or 'perspective', got '{camera}'")
        self.model = model
        #: the model poses its head itself (FLAME's root joint, whose 68-landmark contour follows the yaw)
        self.pose_in_model = bool(model.has_skeleton)
        embedding = model.mediapipe_embedding
        self.register_buffer("mp_indices", None if embedding is None else embedding[0].long(), persistent=False)
        #: optional parameter fields fitted beside identity / expression (the others stay zero)
        self.fitted_fields = tuple(f for f in ("jaw_pose", "eyelids") if f in model.pose_fields)
        self._zero_fields = {k: v.shape[1] for k, v in model.neutral_params(1).tensors().items()
                             if k in model.pose_fields and k != "global_pose"}
        self.camera_model = camera
        self.focal = float(focal)
        self.render_size = render_size
        self.uv_size = int(uv_size)
        self.weights = weights or FitWeights()
        self.schedule = schedule or FitSchedule()
        self.skin_albedo = tuple(float(c) for c in skin_albedo)
        self.backend = backend
        self.texture_min_cos = float(texture_min_cos)
        region = photometric_region or next((r for r in PHOTOMETRIC_REGIONS if r in model.regions), None)
        self.photometric_region = region
        self._renderers: dict[tuple, MeshRenderer] = {}
        self._uv_mapper: UVMapper | None = None
        with torch.no_grad():
            neutral = self._forward_mesh(self._neutral_state(1, model_device_dtype(model)), photometric=False)
        lmk = neutral.landmarks68[0]
        #: size of the mean face's landmark box in model units: the unit of the translation variables
        self.extent = float((lmk.amax(0) - lmk.amin(0))[:2].max())
        self.register_buffer("mean_landmarks68", neutral.landmarks68[0].clone(), persistent=False)

    # ---------------------------------------------------------------------------------------------- public API
    @property
    def has_uv(self) -> bool:
        return bool(self.model.has_uv)

    def fit(self, targets: FitTargets, init: FitResult | MorphableParams | None = None, fix: tuple[str, ...] = (),
            identity_groups: Tensor | None = None, schedule: FitSchedule | None = None,
            outputs: bool = True) -> FitResult:
        """Fit a batch.

        Args:
            targets: the landmarks (and photos) of B faces.
            init: start from an earlier fit (a :class:`FitResult`, e.g. the previous frame of a video: pose, camera,
                SH and coefficients; the closed-form pose is skipped), or from known coefficients (a params object
                of B rows, e.g. a person's identity: the pose is still solved in closed form).
            fix: variable names held at their initial values: ``identity`` (e.g. a known identity of a sequence, with
                ``init``), ``expression``, ``albedo``, ``sh``, ``pose`` (rotation and translation), ``jaw_pose``.
            identity_groups: (B,) long group id of each face: faces of a group share identity (and albedo), e.g.
                the frames of one video. Groups freeze together.
            schedule: overrides the fitter's :class:`FitSchedule` for this call.
            outputs: also produce the render, texture and overlay (with an image).

        Returns:
            :class:`FitResult` (detached).
        """
        schedule = schedule or self.schedule
        device, dtype = model_device_dtype(self.model)
        targets = targets.to(device=device, dtype=dtype)
        prepared = self._prepare(targets, identity_groups)
        state = self._initial_state(prepared, init)
        report = FitReport()
        photometric = targets.image is not None and schedule.photometric_iterations > 0
        for stage in STAGES:
            if stage == "photometric" and not photometric:
                continue
            budget = schedule.iterations(stage)
            if budget <= 0:
                continue
            if stage == "photometric" and "sh" not in fix:
                with torch.no_grad():
                    state["sh"] = self._solve_sh(state, prepared)
            names = self._stage_variables(stage, fix)
            report.stages.append(self._run_stage(stage, names, state, prepared, budget, schedule))
        if not report.stages:  # nothing to optimise: report the initial energies
            report.stages.append(self._evaluate_stage("initial", state, prepared))
        with torch.no_grad():
            return self._result(state, prepared, report, photometric, outputs)

    forward = fit

    # ---------------------------------------------------------------------------------------------- preparation
    def _prepare(self, targets: FitTargets, groups: Tensor | None) -> _Prepared:
        b = targets.batch_size
        device, dtype = model_device_dtype(self.model)
        lmk68, w68 = targets.landmarks68, targets.landmarks68_weights
        if lmk68 is None:
            if targets.landmarks_mp.shape[1] != 478 and targets.landmarks_mp.shape[1] != 468:
                raise ValueError("iBUG-68 targets can only be derived from mediapipe's 478 / 468 landmarks")
            lmk68 = mediapipe_to_ibug68(targets.landmarks_mp)
            if targets.landmarks_mp_weights is not None:
                w68 = mediapipe_to_ibug68(targets.landmarks_mp_weights[..., None])[..., 0]
        w68 = torch.ones(b, 68, device=device, dtype=dtype) if w68 is None else w68.clone()
        w68[:, CONTOUR_68] *= self.weights.contour
        ndc68 = pixels_to_ndc(lmk68, targets.image_size)
        mp_ndc = mp_w = None
        if targets.landmarks_mp is not None and self.mp_indices is not None:
            idx = self.mp_indices
            mp_ndc = pixels_to_ndc(targets.landmarks_mp[:, idx], targets.image_size)
            mp_w = torch.ones_like(mp_ndc[..., 0]) if targets.landmarks_mp_weights is None \
                else targets.landmarks_mp_weights[:, idx]
        # residuals are measured in percent of the face size (energies of order 1 for any image and model size)
        size = 0.01 * nme_normalizer(ndc68, "bbox", visibility=w68 > 0).clamp_min(1e-6)
        if groups is None:
            groups = torch.arange(b, device=device)
        else:
            groups = torch.as_tensor(groups, device=device).long()
            if groups.shape != (b,):
                raise ValueError(f"identity_groups must be (B,) = ({b},), got {tuple(groups.shape)}")
            groups = torch.unique(groups, return_inverse=True)[1]
        h, w = targets.image_size
        focal = targets.focal if targets.focal is not None else torch.full((b, 2), self.focal * w, device=device,
                                                                           dtype=dtype)
        pp = targets.principal_point if targets.principal_point is not None else \
            torch.tensor([w / 2.0, h / 2.0], device=device, dtype=dtype).expand(b, 2)
        render_size = self.render_size or h
        image = mask = None
        if targets.image is not None:
            rh, rw = render_size, max(1, round(render_size * w / h))
            image = _resize(targets.image, (rh, rw))
            mask = _resize(targets.mask, (rh, rw)) if targets.mask is not None else None
        return _Prepared(targets=targets, ndc68=ndc68, w68=w68, mp_ndc=mp_ndc, mp_w=mp_w, size=size, groups=groups,
                         num_groups=int(groups.max()) + 1, focal=focal, principal_point=pp, image=image, mask=mask)

    def _neutral_state(self, b: int, device_dtype, groups: int | None = None) -> dict[str, Tensor]:
        device, dtype = device_dtype
        groups = b if groups is None else groups
        z = lambda *s: torch.zeros(*s, device=device, dtype=dtype)  # noqa: E731
        m = self.model
        state = {"identity": z(groups, m.num_identity), "expression": z(b, m.num_expression),
                 "rotation": z(b, 3), "translation": z(b, 2), "log_scale": z(b), "sh": z(b, 27)}
        if m.expression_range is not None:
            lo, hi = m.expression_range
            state["expression"] = state["expression"].clamp(lo, hi)
        if m.num_albedo:
            state["albedo"] = z(groups, m.num_albedo)
        for name in self.fitted_fields:
            state[name] = z(b, self._zero_fields[name])
        return state

    def _initial_state(self, prep: _Prepared, init: FitResult | MorphableParams | None) -> dict[str, Tensor]:
        b = prep.targets.batch_size
        state = self._neutral_state(b, model_device_dtype(self.model), prep.num_groups)
        if isinstance(init, FitResult):
            self._load_init(state, prep, init)
            return state
        if init is not None:  # known coefficients (e.g. an identity), unknown pose
            self._load_params(state, prep, init)
        # closed-form pose of the mean face (its landmarks do not depend on the pose for non-FLAME models; FLAME's
        # contour does, so its static 51 points alone are used there)
        pts = self.mean_landmarks68.expand(b, -1, -1)
        weights = prep.w68.clone()
        if self.pose_in_model:
            weights[:, CONTOUR_68] = 0.0
        rot, scale, trans = weak_perspective_procrustes(pts, prep.ndc68, weights)
        state["rotation"] = matrix_to_axis_angle(rot)
        if self.camera_model == "weak":
            state["log_scale"] = torch.log(scale * self.extent)
            state["translation"] = trans / self.extent
        else:
            centroid = (weights[..., None] * pts).sum(1) / weights.sum(1, keepdim=True).clamp_min(1e-12)
            t = perspective_from_weak(rot, scale, trans, centroid, prep.focal, prep.principal_point,
                                      prep.targets.image_size)
            state["translation"] = t[:, :2] / self.extent
            state["log_scale"] = torch.log(-t[:, 2] / self.extent)  # log depth, in face extents
        if self.pose_in_model:  # FLAME rotates about its root joint: re-centre the translation once
            self._recentre_translation(state, prep)
        return state

    @torch.no_grad()
    def _recentre_translation(self, state: dict[str, Tensor], prep: _Prepared) -> None:
        """Shift the translation so the weighted landmark centroid projects where the targets' centroid is."""
        mesh = self._forward_mesh(state, photometric=False, verts=False)
        cam = self._camera(state, prep, prep.targets.image_size)
        w = prep.w68.clone()
        w[:, CONTOUR_68] = 0.0
        w = w / w.sum(1, keepdim=True).clamp_min(1e-12)
        ndc = cam.project(mesh.landmarks68)[..., :2]
        shift_ndc = (w[..., None] * (prep.ndc68 - ndc)).sum(1)  # (B, 2)
        if self.camera_model == "weak":
            per_unit = torch.exp(state["log_scale"])[:, None]
        else:
            h, wd = prep.targets.image_size
            depth = torch.exp(state["log_scale"]) * self.extent
            per_unit = torch.stack([2 * prep.focal[:, 0] / wd, 2 * prep.focal[:, 1] / h], -1) / depth[:, None]
            per_unit = per_unit * self.extent
        state["translation"] = state["translation"] + shift_ndc / per_unit

    def _load_params(self, state: dict[str, Tensor], prep: _Prepared, params: MorphableParams) -> None:
        """Coefficient blocks and fitted pose fields of ``params`` (B rows) into ``state``; a group takes the
        identity / albedo of its first face."""
        blocks = params.tensors()
        b = prep.targets.batch_size
        if params.batch_size != b:
            raise ValueError(f"init has {params.batch_size} faces but the targets have {b}")
        groups = prep.groups
        faces = torch.arange(b, device=groups.device)
        first = torch.full((prep.num_groups,), b, dtype=torch.long, device=groups.device)
        first = first.scatter_reduce(0, groups, faces, reduce="amin")
        state["identity"] = blocks["identity"].detach().to(state["identity"])[first].clone()
        state["expression"] = blocks["expression"].detach().to(state["expression"]).clone()
        if "albedo" in state and blocks.get("albedo") is not None:
            state["albedo"] = blocks["albedo"].detach().to(state["albedo"])[first].clone()
        for name in self.fitted_fields:
            if blocks.get(name) is not None:
                state[name] = blocks[name].detach().to(state[name]).clone()

    def _load_init(self, state: dict[str, Tensor], prep: _Prepared, init: FitResult) -> None:
        self._load_params(state, prep, init.params)
        state["rotation"] = init.rotation.detach().to(state["rotation"]).clone()
        if init.sh is not None:
            state["sh"] = init.sh.detach().to(state["sh"]).clone()
        cam = init.camera_vector.detach().to(state["rotation"])
        if self.camera_model == "weak":
            if cam.shape[1] != 3:
                raise ValueError("init comes from a perspective fit but this fitter uses a weak-perspective camera")
            state["log_scale"] = torch.log(cam[:, 0] * self.extent)
            state["translation"] = cam[:, 1:3] / self.extent
        else:
            if cam.shape[1] != 7:
                raise ValueError("init comes from a weak-perspective fit but this fitter uses a perspective camera")
            state["translation"] = cam[:, 4:6] / self.extent
            state["log_scale"] = torch.log(-cam[:, 6] / self.extent)

    # ---------------------------------------------------------------------------------------------- the model
    def _forward_mesh(self, state: dict[str, Tensor], photometric: bool, groups: Tensor | None = None,
                      verts: bool = True) -> MeshOutput:
        """The posed mesh of ``state`` in the camera's world frame (the head rotation applied by the model).

        ``verts=False`` (landmark energies) leaves the vertices unrotated and empty (B, 0, 3) for the models that
        are rotated rigidly: only the landmarks are turned.
        """
        if groups is None:
            groups = torch.arange(state["identity"].shape[0], device=state["identity"].device)
        params = self._params(state, groups, photometric)
        if self.pose_in_model or verts:
            return self.model.forward_posed(params, head_pose=state["rotation"])
        mesh = self.model(params)
        return replace(mesh, verts=mesh.verts[:, :0]).rotated(axis_angle_to_matrix(state["rotation"]))

    def _params(self, state: dict[str, Tensor], groups: Tensor, photometric: bool,
                with_head_pose: bool = False) -> MorphableParams:
        """The model's params of ``state`` (identity / albedo expanded from groups to faces); with
        ``with_head_pose`` a skinned model's ``global_pose`` holds the head rotation."""
        albedo = state["albedo"][groups] if "albedo" in state and photometric else None
        b = state["expression"].shape[0]
        extra = {k: state[k] if k in state else state["rotation"].new_zeros(b, n) for k, n in self._zero_fields.items()}
        if with_head_pose and self.pose_in_model:
            extra["global_pose"] = state["rotation"]
        return self.model.make_params(state["identity"][groups], state["expression"], albedo, **extra)

    def _camera(self, state: dict[str, Tensor], prep: _Prepared, image_size: tuple[int, int]):
        """The camera of ``state`` for images of ``image_size`` (intrinsics scaled from the targets' size)."""
        b = state["rotation"].shape[0]
        if self.camera_model == "weak":
            return WeakPerspectiveCamera(scale=torch.exp(state["log_scale"]) / self.extent,
                                         translation=state["translation"] * self.extent)
        h0, w0 = prep.targets.image_size
        sx, sy = image_size[1] / w0, image_size[0] / h0
        ratio = prep.focal.new_tensor([sx, sy])
        t = torch.cat([state["translation"] * self.extent, -torch.exp(state["log_scale"])[:, None] * self.extent], 1)
        eye = torch.eye(3, device=t.device, dtype=t.dtype).expand(b, 3, 3)
        return PerspectiveCamera(focal=prep.focal * ratio, principal_point=prep.principal_point * ratio,
                                 image_size=image_size, rotation=eye, translation=t)

    def _camera_vector(self, state: dict[str, Tensor], prep: _Prepared) -> Tensor:
        cam = self._camera(state, prep, prep.targets.image_size)
        if self.camera_model == "weak":
            return torch.cat([cam.scale[:, None], cam.translation], dim=1)
        return torch.cat([cam.focal, cam.principal_point, cam.translation], dim=1)

    # ---------------------------------------------------------------------------------------------- energies
    def _energies(self, state: dict[str, Tensor], prep: _Prepared, photometric: bool) -> dict[str, Tensor]:
        """Per-face energy terms (B,) and their weighted ``total``."""
        wt = self.weights
        mesh = self._forward_mesh(state, photometric, prep.groups, verts=photometric)
        cam = self._camera(state, prep, prep.targets.image_size)
        terms: dict[str, Tensor] = {}
        lmk = cam.project(mesh.landmarks68)[..., :2]
        terms["landmarks68"] = landmark_energy(lmk, prep.ndc68, prep.w68, prep.size, wt.robust, wt.robust_scale)
        total = wt.landmarks68 * terms["landmarks68"]
        if prep.mp_ndc is not None and mesh.landmarks_mp is not None:
            mp = cam.project(mesh.landmarks_mp)[..., :2]
            terms["landmarks_mp"] = landmark_energy(mp, prep.mp_ndc, prep.mp_w, prep.size, wt.robust,
                                                    wt.robust_scale)
            total = total + wt.landmarks_mp * terms["landmarks_mp"]
        if photometric:
            render, cover = self._render(mesh, state, prep)
            mask = cover if prep.mask is None else cover * prep.mask
            terms["photometric"] = photometric_energy(render, prep.image, mask)
            total = total + wt.photometric * terms["photometric"]
            terms["sh_prior"] = sh_monochrome_prior(state["sh"])
            total = total + wt.sh * terms["sh_prior"]
        groups = prep.groups
        per_face = lambda x: x[groups] / torch.bincount(groups).to(x)[groups]  # noqa: E731  shared: split evenly
        terms["identity_prior"] = per_face(gaussian_prior(state["identity"]))
        total = total + wt.identity * terms["identity_prior"]
        terms["expression_prior"] = gaussian_prior(state["expression"])
        total = total + wt.expression * terms["expression_prior"]
        if "albedo" in state and photometric:
            terms["albedo_prior"] = per_face(gaussian_prior(state["albedo"]))
            total = total + wt.albedo * terms["albedo_prior"]
        if "jaw_pose" in state:
            terms["jaw_prior"] = gaussian_prior(state["jaw_pose"])
            total = total + wt.jaw_pose * terms["jaw_prior"]
        if "eyelids" in state:
            terms["eyelid_prior"] = gaussian_prior(state["eyelids"])
            total = total + wt.eyelids * terms["eyelid_prior"]
        terms["total"] = total
        return terms

    def _renderer(self, size: tuple[int, int], region: str | None) -> MeshRenderer:
        key = (size, region)
        if key not in self._renderers:
            device = self.model.faces.device
            self._renderers[key] = MeshRenderer.from_model(self.model, region=region, image_size=size,
                                                           backend=self.backend).to(device)
        return self._renderers[key]

    def _albedo(self, mesh: MeshOutput, like: Tensor) -> Tensor:
        if mesh.albedo is not None:
            return mesh.albedo
        return like.new_tensor(self.skin_albedo)

    def _render(self, mesh: MeshOutput, state: dict[str, Tensor], prep: _Prepared) -> tuple[Tensor, Tensor]:
        size = tuple(prep.image.shape[-2:])
        cam = self._camera(state, prep, size)
        out = self._renderer(size, self.photometric_region)(mesh.verts, cam, albedo=self._albedo(mesh, mesh.verts),
                                                            sh_coeffs=state["sh"])
        return out.image, out.mask

    def _solve_sh(self, state: dict[str, Tensor], prep: _Prepared) -> Tensor:
        """Closed-form SH of the current geometry and albedo (start of the photometric stage)."""
        mesh = self._forward_mesh(state, True, prep.groups)
        size = tuple(prep.image.shape[-2:])
        cam = self._camera(state, prep, size)
        normals = vertex_normals(mesh.verts, self.model.faces)
        albedo = self._albedo(mesh, mesh.verts)
        albedo = albedo.expand_as(mesh.verts) if albedo.dim() == 1 else albedo
        out = self._renderer(size, self.photometric_region)(mesh.verts, cam, albedo=torch.cat([normals, albedo], -1))
        mask = out.mask if prep.mask is None else out.mask * prep.mask
        normals_img = F.normalize(out.image[:, :3], dim=1, eps=1e-12)
        return sh_least_squares(normals_img, out.image[:, 3:], prep.image, mask)

    # ---------------------------------------------------------------------------------------------- optimisation
    def _stage_variables(self, stage: str, fix: tuple[str, ...]) -> list[str]:
        names = list(POSE_VARIABLES) if "pose" not in fix else []
        if stage in ("landmarks", "photometric"):
            names += ["identity", "expression", "jaw_pose", "eyelids"]
        if stage == "photometric":
            names += ["albedo", "sh"]
        unknown = set(fix) - {"identity", "expression", "albedo", "sh", "pose", "jaw_pose", "eyelids"}
        if unknown:
            raise ValueError(f"fix: unknown variables {sorted(unknown)}")
        return [n for n in names if n not in fix]

    def _project(self, state: dict[str, Tensor]) -> None:
        """Keep box-constrained variables in their boxes (projected gradient descent)."""
        if self.model.expression_range is not None:
            lo, hi = self.model.expression_range
            state["expression"].clamp_(lo, hi)
        if "eyelids" in state:
            state["eyelids"].clamp_(0.0, 1.0)

    def _run_stage(self, stage: str, names: list[str], state: dict[str, Tensor], prep: _Prepared, budget: int,
                   schedule: FitSchedule) -> StageReport:
        photometric = stage == "photometric"
        names = [n for n in names if n in state]
        groups = prep.groups
        b = groups.shape[0]
        leaves = {n: state[n].detach().clone().requires_grad_(True) for n in names}
        for n in names:
            state[n] = leaves[n]
        # per-face variables are (B, ...); identity / albedo are (G, ...) shared by a group's faces
        rows = {n: (prep.num_groups if n in ("identity", "albedo") else b) for n in names}
        active = torch.ones(b, dtype=torch.bool, device=groups.device)
        iterations = torch.zeros(b, dtype=torch.long, device=groups.device)
        converged = torch.zeros(b, dtype=torch.bool, device=groups.device)
        last = None
        lr = schedule.learning_rate(stage)

        # after the rigid stage the pose takes small steps (it is close; large ones throw the shape off)
        pose = [leaves[n] for n in names if n in POSE_VARIABLES]
        other = [leaves[n] for n in names if n not in POSE_VARIABLES]
        pose_lr = lr if stage == "rigid" else schedule.pose_lr
        groups_lr = [{"params": pose, "lr": pose_lr}, {"params": other, "lr": lr}]
        opt = torch.optim.Adam([g for g in groups_lr if g["params"]], lr=lr)
        # exponential decay to lr * final_lr_factor over the budget: large early steps, settled faces at the end
        decay = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=schedule.final_lr_factor ** (1.0 / budget))
        for it in range(budget):
            opt.zero_grad(set_to_none=True)
            total = self._energies(state, prep, photometric)["total"]
            total.sum().backward()
            frozen = {n: leaves[n].detach().clone() for n in names}
            opt.step()
            decay.step()
            with torch.no_grad():
                self._project(state)
                group_active = torch.zeros(prep.num_groups, dtype=torch.bool, device=groups.device)
                group_active.index_fill_(0, groups[active], True)
                for n in names:  # frozen faces keep their values (Adam's momentum would still move them)
                    keep = (group_active if rows[n] != b else active).view(-1, *[1] * (leaves[n].dim() - 1))
                    leaves[n].copy_(torch.where(keep, leaves[n], frozen[n]))
            iterations += active.long()
            if it % schedule.check_every == 0:  # the energy before this step, every check_every steps
                now = total.detach()
                if last is not None:
                    # relative change, with energies below 1 (landmark residuals of 1 % of the face size) compared
                    # absolutely: a face fitted almost exactly has no meaningful relative change
                    newly = active & ((last - now).abs() < schedule.tolerance * last.abs().clamp_min(1.0))
                    converged |= newly
                    # a group stays active while any of its faces is
                    still = torch.zeros(prep.num_groups, dtype=torch.bool, device=groups.device)
                    still.index_fill_(0, groups[active & ~newly], True)
                    active = still[groups]
                    converged |= ~active
                last = now
                if not bool(active.any()):
                    break
        for n in names:
            state[n] = leaves[n].detach()
        with torch.no_grad():
            energies = {k: v.detach() for k, v in self._energies(state, prep, photometric).items()}
        return StageReport(name=stage, energies=energies, iterations=iterations, converged=converged, budget=budget)

    def _evaluate_stage(self, name: str, state: dict[str, Tensor], prep: _Prepared) -> StageReport:
        with torch.no_grad():
            energies = self._energies(state, prep, False)
        b = prep.groups.shape[0]
        zeros = torch.zeros(b, dtype=torch.long, device=prep.groups.device)
        return StageReport(name=name, energies=energies, iterations=zeros, converged=zeros.bool(), budget=0)

    # ---------------------------------------------------------------------------------------------- results
    def _result(self, state: dict[str, Tensor], prep: _Prepared, report: FitReport, photometric: bool,
                outputs: bool) -> FitResult:
        groups = prep.groups
        size = prep.targets.image_size
        params = self._params(state, groups, photometric, with_head_pose=True)
        mesh = self._forward_mesh(state, photometric, groups)
        cam = self._camera(state, prep, size)
        verts_ndc = cam.project(mesh.verts)
        lmk_pix = cam.project_pixels(mesh.landmarks68, size)
        result = FitResult(params=params, rotation=state["rotation"].detach(), camera=cam,
                           camera_vector=self._camera_vector(state, prep), sh=state["sh"] if photometric else None,
                           mesh=mesh, verts_ndc=verts_ndc, landmarks68_pix=lmk_pix, image_size=size, report=report)
        image = prep.targets.image
        if outputs and image is not None:
            self._add_image_outputs(result, mesh, cam, image, photometric, state)
        return result

    def _add_image_outputs(self, result: FitResult, mesh: MeshOutput, cam, image: Tensor, photometric: bool,
                           state: dict[str, Tensor]) -> None:
        from facelab.viz import mesh_overlay

        size = result.image_size
        full = self._renderer(size, None)
        result.overlay = mesh_overlay(image, mesh.verts, cam, full, landmarks=result.landmarks68_pix)
        if photometric:
            out = self._renderer(size, self.photometric_region)(mesh.verts, cam, albedo=self._albedo(mesh, mesh.verts),
                                                                sh_coeffs=state["sh"])
            result.render, result.render_mask = out.image.clamp(0, 1), out.mask
        if self.has_uv:
            if self._uv_mapper is None:
                m = self.model
                self._uv_mapper = UVMapper(m.faces.cpu(), m.uv.cpu(), m.faces_uv.cpu(), self.uv_size,
                                           num_verts=m.num_verts).to(m.faces.device)
            frags = rasterize(result.verts_ndc, self.model.faces, size, backend=self.backend,
                              perspective_correct=cam.is_perspective)
            normals = vertex_normals(cam.to_view(mesh.verts), self.model.faces)
            result.texture = unwrap_texture(image, result.verts_ndc, self._uv_mapper, frags,
                                            perspective=cam.is_perspective, normals_view=normals,
                                            min_cos=self.texture_min_cos)


@dataclass
class _Prepared:
    """Targets converted once per fit: NDC landmarks, weights, face sizes, groups, intrinsics, resized images."""

    targets: FitTargets
    ndc68: Tensor
    w68: Tensor
    mp_ndc: Tensor | None
    mp_w: Tensor | None
    size: Tensor
    groups: Tensor
    num_groups: int
    focal: Tensor
    principal_point: Tensor
    image: Tensor | None
    mask: Tensor | None


def model_device_dtype(model: MorphableModel) -> tuple[torch.device, torch.dtype]:
    """The device and floating dtype of a model's buffers."""
    for buf in model.buffers():
        if buf.is_floating_point():
            return buf.device, buf.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="area" if x.shape[-2] > size[0] else "bilinear",
                         **({} if x.shape[-2] > size[0] else {"align_corners": False}))

