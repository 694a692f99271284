"""SMIRK's augmented expression cycle path: new expressions for the generator to render and the encoder to re-read.

Recipe: ``shared/docs/smirk_reference.md`` ("Augmented expression cycle path"); supplementary §1.2 (transfer
pixels, re-exported here from :mod:`smirk.masking`), §1.4 (template injection from FaMoS fits) and §3.2, Table 3
(each augmentation group helps). The batch of (detached) estimates is split into equal groups:

1. random: ``exp += randn * (1 + 2u) * Bernoulli(0.5)``, clamp to [-4, 4], ``+ 0.2u' * randn``;
2. permutation: ``exp <- exp[randperm] * (0.25 + 1.25u) + 0.2u' * randn``;
3. template injection: ``exp <- template * (0.25 + 1.25u) + 0.2u' * randn``;
4. zero: ``exp = 0.2u * randn``, ``jaw = 0``, ``eyelids ~ U(0, 1)``.

Every sample then gets, with p = 0.5, ``jaw += randn * 0.2 * [1, 0.1, 0.1]`` (``jaw[0]`` clamped to [0, 0.5]) and
``eyelids += U(-0.25, 0.25)`` clamped to [0, 1]; the zero group's jaw and eyelids are set after that, as in the
public code. ``u`` and ``u'`` are independent per-sample U(0, 1) draws.

Templates (group 3) come from a file (:class:`ExpressionTemplates`; build one from any expression fits with
:func:`build_templates` or :func:`read_expression_fits`) or, for the synthetic FLAME, from
:func:`synthetic_templates` (``templates_path: synthetic`` in the configs).

Shapes: ``B`` batch, ``E`` expression components (50), ``T`` template rows. Every random draw takes a
``torch.Generator`` (on the tensors' device; None = the global RNG).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from facelab.data.wrinkles import HEAD_EXPRESSION_NAMES
from facelab.errors import AssetFormatError, MissingAssetError
from smirk.masking import transfer_pixels

__all__ = [
    "AUGMENTATION_GROUPS",
    "FAMOS_TEMPLATE_NAMES",
    "SYNTHETIC_FAMOS_RECIPES",
    "CycleAugmentation",
    "ExpressionTemplates",
    "SyntheticExpression",
    "augment_expressions",
    "build_templates",
    "jitter_eyelids",
    "jitter_jaw",
    "permute_expression",
    "random_expression",
    "read_expression_fits",
    "synthetic_templates",
    "template_expression",
    "transfer_pixels",
    "zero_expression",
]


#: The cycle path's augmentation groups, in the order of the paper.
AUGMENTATION_GROUPS = ("random", "permutation", "template", "zero")
#: The 12 FaMoS sequences SMIRK fitted its templates to (supplementary §1.4).
FAMOS_TEMPLATE_NAMES = ("lips_back", "rolling_lips", "mouth_side", "kissing", "high_smile", "mouth_up",
                        "mouth_middle", "mouth_down", "blow_cheeks", "cheeks_in", "jaw", "lips_up")


def _rand(n: int, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """(n, 1) per-sample U(0, 1)."""
    return torch.rand(n, 1, generator=generator, device=like.device, dtype=like.dtype)


def _randn(like: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)


def _small_noise(expression: Tensor, generator: torch.Generator | None, amplitude: float = 0.2) -> Tensor:
    """``amplitude * u * randn`` with a per-sample ``u ~ U(0, 1)``: the extra noise every group adds."""
    return amplitude * _rand(expression.shape[0], expression, generator) * _randn(expression, generator)


def random_expression(expression: Tensor, generator: torch.Generator | None = None, limit: float = 4.0) -> Tensor:
    """Group 1: perturb about half the coefficients strongly.

    ``clamp(exp + randn * (1 + 2u) * Bernoulli(0.5), -limit, limit) + 0.2u' * randn``.

    Args:
        expression: (B, E) detached estimates.

    Returns:
        (B, E) new expressions.
    """
    b = expression.shape[0]
    keep = torch.rand(expression.shape, generator=generator, device=expression.device) < 0.5
    step = _randn(expression, generator) * (1 + 2 * _rand(b, expression, generator)) * keep.to(expression.dtype)
    return (expression + step).clamp(-limit, limit) + _small_noise(expression, generator)


def permute_expression(expression: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Group 2: another sample's expression, rescaled: ``exp[randperm] * (0.25 + 1.25u) + 0.2u' * randn``.

    Args:
        expression: (B, E).

    Returns:
        (B, E).
    """
    b = expression.shape[0]
    perm = torch.randperm(b, generator=generator, device=expression.device)
    scale = 0.25 + 1.25 * _rand(b, expression, generator)
    return expression[perm] * scale + _small_noise(expression, generator)


def template_expression(templates: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
    """Group 3: template injection, ``template[random] * (0.25 + 1.25u) + 0.2u' * randn`` (supplementary §1.4).

    Args:
        templates: (T, E) template expressions (see :class:`ExpressionTemplates`).
        n: samples to draw.

    Returns:
        (n, E).
    """
    idx = torch.randint(templates.shape[0], (n,), generator=generator, device=templates.device)
    chosen = templates[idx]
    return chosen * (0.25 + 1.25 * _rand(n, chosen, generator)) + _small_noise(chosen, generator)


def zero_expression(expression: Tensor, eyelids: Tensor, generator: torch.Generator | None = None
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """Group 4: a near-neutral face with free eyelids: ``exp = 0.2u * randn``, ``jaw = 0``, ``eyelids ~ U(0, 1)``.

    Args:
        expression: (B, E) (only its shape, device and dtype are used).
        eyelids: (B, 2) likewise.

    Returns:
        ``(expression (B, E), jaw (B, 3), eyelids (B, 2))``.
    """
    jaw = expression.new_zeros(expression.shape[0], 3)
    lids = torch.rand(eyelids.shape, generator=generator, device=eyelids.device, dtype=eyelids.dtype)
    return _small_noise(expression, generator), jaw, lids


def jitter_jaw(jaw: Tensor, generator: torch.Generator | None = None, p: float = 0.5, std: float = 0.2,
               max_open: float = 0.5) -> Tensor:
    """With probability ``p`` per sample, ``jaw += randn * std * [1, 0.1, 0.1]``; then ``jaw[0]`` in [0, max_open].

    Args:
        jaw: (B, 3) axis-angle (``jaw[0]`` = opening).

    Returns:
        (B, 3).
    """
    on = (torch.rand(jaw.shape[0], 1, generator=generator, device=jaw.device) < p).to(jaw.dtype)
    axis_scale = jaw.new_tensor([1.0, 0.1, 0.1])
    out = jaw + _randn(jaw, generator) * std * axis_scale * on
    return torch.cat([out[:, :1].clamp(0.0, max_open), out[:, 1:]], dim=1)


def jitter_eyelids(eyelids: Tensor, generator: torch.Generator | None = None, amplitude: float = 0.25) -> Tensor:
    """``clamp(eyelids + U(-amplitude, amplitude), 0, 1)``. (B, 2) -> (B, 2)."""
    noise = torch.rand(eyelids.shape, generator=generator, device=eyelids.device, dtype=eyelids.dtype)
    return (eyelids + (2 * noise - 1) * amplitude).clamp(0.0, 1.0)


@dataclass
class CycleAugmentation:
    """What :func:`augment_expressions` returns.

    Attributes:
        expression: (B, E) augmented expressions.
        jaw_pose: (B, 3) augmented jaw.
        eyelids: (B, 2) augmented eyelids in [0, 1].
        group: (B,) long index into the ``groups`` that produced each sample.
    """

    expression: Tensor
    jaw_pose: Tensor
    eyelids: Tensor
    group: Tensor


def augment_expressions(expression: Tensor, jaw_pose: Tensor, eyelids: Tensor, templates: Tensor | None = None,
                        generator: torch.Generator | None = None,
                        groups: Sequence[str] = AUGMENTATION_GROUPS) -> CycleAugmentation:
    """Split the batch into equal random groups and augment each (module docstring; reference "cycle path").

    Args:
        expression: (B, E) estimates (detached inside).
        jaw_pose: (B, 3). eyelids: (B, 2).
        templates: (T, E') template expressions (truncated/zero-padded to E); required when ``"template"`` is in
            ``groups``.
        generator: random source.
        groups: which augmentations to use (subsets express the ablations of supplementary Table 3).

    Returns:
        :class:`CycleAugmentation`; group ``k`` holds ``B // len(groups)`` or one more samples.
    """
    unknown = sorted(set(groups) - set(AUGMENTATION_GROUPS))
    if unknown or not groups:
        raise ValueError(f"groups must be a non-empty subset of {AUGMENTATION_GROUPS}, got {list(groups)}")
    if "template" in groups and (templates is None or templates.shape[0] == 0):
        raise ValueError("the 'template' group needs expression templates (ExpressionTemplates.load(path)); "
                         "without them, leave 'template' out of groups")
    b = expression.shape[0]
    exp, jaw, lids = expression.detach().clone(), jaw_pose.detach().clone(), eyelids.detach().clone()
    order = torch.randperm(b, generator=generator, device=exp.device)
    group = torch.empty(b, dtype=torch.long, device=exp.device)
    chunks = torch.tensor_split(order, len(groups))
    for k, ids in enumerate(chunks):
        group[ids] = k
    for name, ids in zip(groups, chunks):
        if ids.numel() == 0:
            continue
        if name == "random":
            exp[ids] = random_expression(exp[ids], generator)
        elif name == "permutation":
            exp[ids] = permute_expression(exp[ids], generator)
        elif name == "template":
            exp[ids] = template_expression(_fit_components(templates.to(exp), exp.shape[1]), ids.numel(), generator)
    jaw, lids = jitter_jaw(jaw, generator), jitter_eyelids(lids, generator)
    if "zero" in groups:
        ids = chunks[list(groups).index("zero")]
        exp[ids], jaw[ids], lids[ids] = zero_expression(exp[ids], lids[ids], generator)
    return CycleAugmentation(expression=exp, jaw_pose=jaw, eyelids=lids, group=group)


def _fit_components(templates: Tensor, n: int) -> Tensor:
    """(T, E') -> (T, n): truncated, or zero-padded (FLAME's later components are the weaker ones)."""
    if templates.shape[1] >= n:
        return templates[:, :n]
    return torch.nn.functional.pad(templates, (0, n - templates.shape[1]))


# --------------------------------------------------------------------------------------------------------------
# Expression templates
# --------------------------------------------------------------------------------------------------------------


@dataclass
class ExpressionTemplates:
    """Named FLAME expression templates for the template-injection group (supplementary §1.4).

    SMIRK fitted FLAME to 12 FaMoS sequences of 70 subjects; those fits are not public here, so build the file
    from your own fits with :func:`build_templates` (or :func:`read_expression_fits`) and :meth:`save`. For the
    synthetic FLAME, :func:`synthetic_templates` acts the 12 classes out directly. File format (``.npz``, no pickles):
    ``expression`` (T, E) float32, ``jaw`` (T, 3), ``eyelids`` (T, 2), ``labels`` (T,) int64 index into
    ``names`` (K,) unicode.

    Attributes:
        names: the K template classes.
        labels: (T,) long class of each row.
        expression: (T, E). jaw: (T, 3). eyelids: (T, 2).
    """

    names: tuple[str, ...]
    labels: Tensor
    expression: Tensor
    jaw: Tensor
    eyelids: Tensor

    def __len__(self) -> int:
        return int(self.expression.shape[0])

    def expressions(self, n_expression: int | None = None) -> Tensor:
        """(T, n_expression) template expressions, truncated or zero-padded to the model's component count."""
        return self.expression if n_expression is None else _fit_components(self.expression, n_expression)

    def of(self, name: str) -> Tensor:
        """(T_name, E) the rows of one class."""
        if name not in self.names:
            raise KeyError(f"no template '{name}'; have {list(self.names)}")
        return self.expression[self.labels == self.names.index(name)]

    def save(self, path: str | os.PathLike) -> None:
        """Write the ``.npz`` described in the class docstring."""
        np.savez(Path(path), names=np.array(self.names, dtype=np.str_), labels=self.labels.numpy().astype(np.int64),
                 expression=self.expression.numpy().astype(np.float32), jaw=self.jaw.numpy().astype(np.float32),
                 eyelids=self.eyelids.numpy().astype(np.float32))

    @classmethod
    def load(cls, path: str | os.PathLike, config_key: str | None = None) -> ExpressionTemplates:
        """Read a file written by :meth:`save` (``allow_pickle=False``).

        Raises:
            MissingAssetError: no such file (says how to build one).
            AssetFormatError: keys or shapes are wrong.
        """
        p = Path(path).expanduser()
        if not p.is_file():
            raise MissingAssetError(
                f"SMIRK expression templates not found: {p}" + (f"\n  set by: {config_key}" if config_key else "")
                + "\n  build them from your own FLAME fits (e.g. FaMoS sequences, supplementary §1.4): "
                "smirk.cycle.build_templates({name: (K, E) expressions}).save(path), or "
                "smirk.cycle.read_expression_fits(folder_of_npy).save(path); or drop the 'template' "
                "augmentation group")
        with np.load(p, allow_pickle=False) as data:
            missing = {"names", "labels", "expression", "jaw", "eyelids"} - set(data.files)
            if missing:
                raise AssetFormatError(f"{p}: missing arrays {sorted(missing)}")
            t = data["expression"].shape[0]
            if data["jaw"].shape != (t, 3) or data["eyelids"].shape != (t, 2) or data["labels"].shape != (t,):
                raise AssetFormatError(f"{p}: jaw must be ({t}, 3), eyelids ({t}, 2), labels ({t},)")
            return cls(names=tuple(str(n) for n in data["names"]), labels=torch.from_numpy(data["labels"]).long(),
                       expression=torch.from_numpy(data["expression"]).float(),
                       jaw=torch.from_numpy(data["jaw"]).float(), eyelids=torch.from_numpy(data["eyelids"]).float())


def build_templates(expressions: Mapping[str, Tensor], jaw: Mapping[str, Tensor] | None = None,
                    eyelids: Mapping[str, Tensor] | None = None) -> ExpressionTemplates:
    """Collect named expression fits into :class:`ExpressionTemplates`.

    Args:
        expressions: class name -> (E,) or (K, E) fitted expression vectors (e.g. one row per fitted frame).
        jaw: class name -> (3,) or (K, 3) jaw poses of the same rows; zeros where absent.
        eyelids: class name -> (2,) or (K, 2); zeros where absent.

    Returns:
        The templates, rows grouped by class in the order of ``expressions``.
    """
    if not expressions:
        raise ValueError("no expressions given")
    names, labels, exp_rows, jaw_rows, lid_rows = [], [], [], [], []
    n_exp = None
    for k, (name, value) in enumerate(expressions.items()):
        rows = torch.as_tensor(value, dtype=torch.float32).reshape(-1, torch.as_tensor(value).shape[-1])
        n_exp = n_exp or rows.shape[1]
        if rows.shape[1] != n_exp:
            raise ValueError(f"template '{name}' has {rows.shape[1]} components, others {n_exp}")
        names.append(name)
        labels.append(torch.full((rows.shape[0],), k, dtype=torch.long))
        exp_rows.append(rows)
        jaw_rows.append(_rows_like(jaw, name, rows.shape[0], 3))
        lid_rows.append(_rows_like(eyelids, name, rows.shape[0], 2))
    return ExpressionTemplates(names=tuple(names), labels=torch.cat(labels), expression=torch.cat(exp_rows),
                               jaw=torch.cat(jaw_rows), eyelids=torch.cat(lid_rows))


def _rows_like(values: Mapping[str, Tensor] | None, name: str, n: int, dim: int) -> Tensor:
    if values is None or name not in values:
        return torch.zeros(n, dim)
    rows = torch.as_tensor(values[name], dtype=torch.float32).reshape(-1, dim)
    if rows.shape[0] != n:
        raise ValueError(f"template '{name}': {rows.shape[0]} rows of {dim}-vectors for {n} expression rows")
    return rows


def read_expression_fits(source: str | os.PathLike) -> ExpressionTemplates:
    """Templates from a folder of expression fits: every ``*.npy`` / ``*.npz`` below ``source`` is one class's rows.

    The class is the file's stem, so per-subject layouts (``fits/subject_01/jaw.npy``, ``fits/subject_02/jaw.npy``)
    pool their rows; except for ``facelab fit`` output (``NAME_params.npz``), whose class is the first folder below
    ``source`` (``fits/<class>/<image>_params.npz``: one ``facelab fit --model flame`` run per expression class).
    A ``.npy`` holds ``(K, E)`` or ``(E,)`` expressions; a ``.npz`` holds ``expression`` and optionally ``jaw`` (or
    ``jaw_pose``, as ``facelab fit`` writes it) ``(K, 3)`` and ``eyelids`` ``(K, 2)``. Classes come in sorted order.
    ``facelab prepare --method smirk --fits fits/ --out templates.npz`` builds the template file the configs point at
    (``model.init_args.templates_path``).

    Raises:
        MissingAssetError: ``source`` is not a folder or holds no fits.
        AssetFormatError: a ``.npz`` without ``expression``, or rows that do not fit together.
    """
    root = Path(source).expanduser()
    files = sorted(p for p in root.rglob("*") if p.suffix in (".npy", ".npz")) if root.is_dir() else []
    if not files:
        raise MissingAssetError(f"no expression fits (*.npy / *.npz) below {root}")
    parts: dict[str, dict[str, list[Tensor]]] = {}
    for path in files:
        arrays = _read_arrays(path)
        if "expression" not in arrays:
            raise AssetFormatError(f"{path}: a .npz fit needs an 'expression' array, has {sorted(arrays)}")
        expression = np.asarray(arrays["expression"], np.float32)
        rows = torch.from_numpy(expression).reshape(-1, expression.shape[-1])
        entry = parts.setdefault(_fit_class(root, path), {"expression": [], "jaw": [], "eyelids": []})
        entry["expression"].append(rows)
        for key, dim in (("jaw", 3), ("eyelids", 2)):
            value = arrays.get(key, arrays.get("jaw_pose") if key == "jaw" else None)
            entry[key].append(torch.zeros(len(rows), dim) if value is None else
                              torch.from_numpy(np.asarray(value, np.float32)).reshape(-1, dim))
    names = sorted(parts)
    try:
        return build_templates({n: torch.cat(parts[n]["expression"]) for n in names},
                               jaw={n: torch.cat(parts[n]["jaw"]) for n in names},
                               eyelids={n: torch.cat(parts[n]["eyelids"]) for n in names})
    except (ValueError, RuntimeError) as err:
        raise AssetFormatError(f"expression fits below {root}: {err}") from err


def _fit_class(root: Path, path: Path) -> str:
    """A fit file's class: the first folder below ``root`` for ``facelab fit``'s ``*_params.npz``, else the stem."""
    rel = path.relative_to(root)
    if path.name.endswith("_params.npz") and len(rel.parts) > 1:
        return rel.parts[0]
    return path.stem


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a ``.npy`` (as ``expression``) or ``.npz`` file, without pickles."""
    if path.suffix == ".npy":
        return {"expression": np.load(path, allow_pickle=False)}
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


# --------------------------------------------------------------------------------------------------------------
# Default templates of the synthetic face world
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticExpression:
    """One template row in the synthetic FLAME's terms.

    Attributes:
        components: procedural-head expression components (:data:`facelab.data.wrinkles.HEAD_EXPRESSION_NAMES`)
            -> coefficient; the synthetic world draws these coefficients ~N(0, 1).
        jaw: FLAME jaw axis-angle (``jaw[0]`` opens the mouth, radians).
        eyelids: left, right closure in [0, 1].
    """

    components: Mapping[str, float]
    jaw: tuple[float, float, float] = (0.0, 0.0, 0.0)
    eyelids: tuple[float, float] = (0.0, 0.0)


#: The 12 FaMoS classes (:data:`FAMOS_TEMPLATE_NAMES`) as the synthetic head's named actions can act them out: an
#: approximation by hand (the head has no tongue, teeth or cheek suction), strong but within the range the
#: synthetic world renders. "jaw" parts the lips with expression components as well, since the cycle path injects
#: only a template's expression (its jaw comes from the estimate and the jaw jitter).
SYNTHETIC_FAMOS_RECIPES: dict[str, tuple[SyntheticExpression, ...]] = {
    "lips_back": (SyntheticExpression({"stretch": 2.0, "dimple_left": 0.6, "dimple_right": 0.6}),),
    "rolling_lips": (SyntheticExpression({"lips_roll_in": 2.0, "lip_press": 0.8}),),
    "mouth_side": (SyntheticExpression({"mouth_left": 2.0, "smile_left": 0.4}),
                   SyntheticExpression({"mouth_right": 2.0, "smile_right": 0.4})),
    "kissing": (SyntheticExpression({"pucker": 2.0, "upper_lip_pout": 0.6, "lower_lip_pout": 0.6}),),
    "high_smile": (SyntheticExpression({"smile_left": 2.0, "smile_right": 2.0, "left_squint": 0.8,
                                        "right_squint": 0.8, "upper_lip_up": 0.8}, jaw=(0.08, 0.0, 0.0)),),
    "mouth_up": (SyntheticExpression({"upper_lip_up": 1.5, "chin_raise": 1.5}),),
    "mouth_middle": (SyntheticExpression({"funnel": 1.5, "lip_press": 1.0}),),
    "mouth_down": (SyntheticExpression({"lip_corner_down_left": 2.0, "lip_corner_down_right": 2.0,
                                        "lower_lip_down": 1.0}),),
    "blow_cheeks": (SyntheticExpression({"cheek_puff": 2.0, "lip_press": 0.6}),),
    "cheeks_in": (SyntheticExpression({"cheek_puff": -2.0, "pucker": 0.6}),),
    "jaw": (SyntheticExpression({"lower_lip_down": 1.5, "upper_lip_up": 0.8}, jaw=(0.3, 0.0, 0.0)),),
    "lips_up": (SyntheticExpression({"upper_lip_up": 2.0, "upper_lip_pout": 0.8, "nose_wrinkle": 0.4}),),
}


def synthetic_templates(n_expression: int = 50, classes: Sequence[str] = FAMOS_TEMPLATE_NAMES,
                        recipes: Mapping[str, Sequence[SyntheticExpression]] | None = None) -> ExpressionTemplates:
    """Expression templates for the **synthetic** FLAME (``flame_path: synthetic``), no fits needed.

    The synthetic FLAME's expression components 0..27 are the procedural head's named actions
    (:data:`facelab.data.wrinkles.HEAD_EXPRESSION_NAMES`), so each class is written directly in them
    (:data:`SYNTHETIC_FAMOS_RECIPES`). Meaningless for a real FLAME, whose expression basis is an unlabelled PCA.

    Args:
        n_expression: E, the model's expression components (at least 28).
        classes: which classes of ``recipes`` to include, in this order.
        recipes: class -> rows; None: :data:`SYNTHETIC_FAMOS_RECIPES`.

    Returns:
        :class:`ExpressionTemplates` with expression (T, E), jaw (T, 3) and eyelids (T, 2).
    """
    recipes = SYNTHETIC_FAMOS_RECIPES if recipes is None else recipes
    if n_expression < len(HEAD_EXPRESSION_NAMES):
        raise ValueError(f"the synthetic FLAME's named components are 0..{len(HEAD_EXPRESSION_NAMES) - 1}: "
                         f"n_expression must be at least {len(HEAD_EXPRESSION_NAMES)}, got {n_expression}")
    missing = [c for c in classes if c not in recipes]
    if missing or not classes:
        raise ValueError(f"classes must be a non-empty subset of {list(recipes)}, got {list(classes)}")
    expressions, jaw, eyelids = {}, {}, {}
    for name in classes:
        rows = recipes[name]
        expressions[name] = torch.stack([_head_components(row.components, n_expression) for row in rows])
        jaw[name] = torch.tensor([row.jaw for row in rows])
        eyelids[name] = torch.tensor([row.eyelids for row in rows])
    return build_templates(expressions, jaw=jaw, eyelids=eyelids)


def _head_components(components: Mapping[str, float], n_expression: int) -> Tensor:
    """(n_expression,) coefficients from named procedural-head components."""
    unknown = sorted(set(components) - set(HEAD_EXPRESSION_NAMES))
    if unknown:
        raise ValueError(f"unknown head expression components {unknown}; see facelab.data.wrinkles."
                         "HEAD_EXPRESSION_NAMES")
    out = torch.zeros(n_expression)
    for name, value in components.items():
        out[HEAD_EXPRESSION_NAMES.index(name)] = value
    return out
