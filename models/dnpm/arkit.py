"""ARKit's 52 blendshape names, the ARKit -> FaceScape / stand-in / ICT-FaceKit expression mappings, and the
Live Link Face CSV layout (DNPM paper §IV-A: the speech network outputs a 52-dim ARKit vector per frame).

Names
-----
:data:`ARKIT_NAMES` are Apple's 52 ``ARFaceAnchor.BlendShapeLocation`` names in the order of Epic's Live Link Face
CSV, written the way ICT-FaceKit names its OBJ files (lower camel, ``_L`` / ``_R`` = the subject's left / right,
e.g. ``eyeBlink_L``). ARKit itself writes ``eyeBlinkLeft``, the Live Link CSV ``EyeBlinkLeft``
(:data:`LIVE_LINK_NAMES`); :func:`canonical_name` maps all of them to one key (case-insensitive,
``Left``/``Right`` == ``_L``/``_R``).

ARKit -> FaceScape (FaceShift names)
------------------------------------
FaceScape's bilinear model (v1.6) has 52 expressions: 0 is the neutral face and 1-51 are FaceShift-named
blendshapes (:data:`FACESCAPE_EXPRESSION_NAMES`). FaceScape's own blendshape table lists them in ARKit's grouping
(eyes, brows, jaw, mouth, cheeks/nose) without ``tongueOut``; indices **0-10 and 24-34 are as in that table**
(Neutral, Eye Close L/R, Eye Squint L/R, Eye LookDown L/R, Eye LookIn L/R, Eye Wide L/R; Mouth Left/Right, Mouth
Frown L/R, Mouth Smile L/R, Mouth Press L/R, Mouth Dimple L/R, Mouth Roll Upper); the other indices follow the
same grouping in FaceShift's order and are **inferred**: check them against the documentation of your FaceScape
release and, if they differ, pass your own table (``expression_names`` of :func:`arkit_to_facescape_matrix`,
or ``ARKIT_TO_FACESCAPE`` edited). The mapping :data:`ARKIT_TO_FACESCAPE` is then one-to-one by meaning for 51 of
ARKit's 52 names; ``tongueOut`` has no FaceScape blendshape and drives nothing (the FaceScape meshes have no
tongue). Every ARKit name has an entry (tested).

ARKit -> the synthetic stand-in
-------------------------------
The embedded default's bilinear model (:mod:`facelab.morphable.synthetic.bilinear`) has FaceScape's file layout
but its own blendshapes: component 0 opens the jaw and components 1-28 are the procedural head's named fields
(:data:`facelab.data.wrinkles.HEAD_EXPRESSION_NAMES`); the rest are unnamed. :data:`ARKIT_TO_STANDIN` maps ARKit
names onto them by meaning (split pairs share a bilateral field with weight 0.5 each); gaze, blinks, the jaw's
sideways/forward motion and the tongue have no stand-in field and drive nothing.

ARKit -> ICT-FaceKit
--------------------
ICT-FaceKit's 57 expression OBJs (:data:`ICT_EXPRESSION_NAMES`) *are* ARKit-named, with four differences:
``browInnerUp`` and ``cheekPuff`` are split into ``_L`` / ``_R`` halves, ``tongueOut`` has no OBJ (ICT's tongue
does not move), and ``cheekRaiser_L/R`` and ``PupilDilate_L/R`` have no ARKit name. :data:`ARKIT_TO_ICT` writes the
mapping out: 49 names one-to-one, ``browInnerUp`` and ``cheekPuff`` drive both halves at weight 1 (the halves sum
to the bilateral shape), ``tongueOut`` drives nothing; ``cheekRaiser_L/R`` and ``PupilDilate_L/R`` stay 0. Every
ARKit name has an entry (tested); :func:`arkit_to_ict_matrix` builds the matrix for a loaded model's expression
order (:class:`facelab.morphable.IctFaceModel`: ``vertex_indices.json``'s 53 by default) and
:func:`arkit_to_vertices` drives the model with it. Other ARKit-named models are matched by name
(:func:`arkit_to_names_matrix`, the same rule).

Live Link Face CSV
------------------
``Timecode`` (``HH:MM:SS:FF.mmm``: frame ``FF`` of the second at the take's frame rate, ``.mmm`` a sub-frame
fraction), ``BlendShapeCount`` (61), the 52 blendshapes in :data:`LIVE_LINK_NAMES` order, then 9 rotations
(:data:`LIVE_LINK_ROTATIONS`). :func:`read_live_link_csv` needs the 52 blendshape columns (any order, any case;
missing ones are a :class:`LiveLinkFormatError` naming them) and a timecode; rotations are optional.
:func:`write_live_link_csv` writes the full layout (rotations 0 unless given), so Blender / Maya / MotionBuilder
importers of Live Link takes read our output.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from facelab.data.image_io import DataError

__all__ = [
    "ARKIT_NAMES",
    "ARKIT_TO_FACESCAPE",
    "ARKIT_TO_ICT",
    "ARKIT_TO_STANDIN",
    "FACESCAPE_EXPRESSION_NAMES",
    "ICT_EXPRESSION_NAMES",
    "LIVE_LINK_NAMES",
    "LIVE_LINK_ROTATIONS",
    "LiveLinkFormatError",
    "LiveLinkTake",
    "NUM_ARKIT",
    "arkit_index",
    "arkit_to_expression_matrix",
    "arkit_to_facescape_matrix",
    "arkit_to_ict_matrix",
    "arkit_to_names_matrix",
    "arkit_to_standin_matrix",
    "arkit_to_vertices",
    "canonical_name",
    "format_timecode",
    "parse_timecode",
    "random_identity",
    "read_live_link_csv",
    "write_live_link_csv",
]

#: ARKit's 52 blendshapes in Live Link Face's column order (ICT-FaceKit spelling).
ARKIT_NAMES: tuple[str, ...] = (
    "eyeBlink_L",
    "eyeLookDown_L",
    "eyeLookIn_L",
    "eyeLookOut_L",
    "eyeLookUp_L",
    "eyeSquint_L",
    "eyeWide_L",
    "eyeBlink_R",
    "eyeLookDown_R",
    "eyeLookIn_R",
    "eyeLookOut_R",
    "eyeLookUp_R",
    "eyeSquint_R",
    "eyeWide_R",
    "jawForward",
    "jawLeft",
    "jawRight",
    "jawOpen",
    "mouthClose",
    "mouthFunnel",
    "mouthPucker",
    "mouthLeft",
    "mouthRight",
    "mouthSmile_L",
    "mouthSmile_R",
    "mouthFrown_L",
    "mouthFrown_R",
    "mouthDimple_L",
    "mouthDimple_R",
    "mouthStretch_L",
    "mouthStretch_R",
    "mouthRollLower",
    "mouthRollUpper",
    "mouthShrugLower",
    "mouthShrugUpper",
    "mouthPress_L",
    "mouthPress_R",
    "mouthLowerDown_L",
    "mouthLowerDown_R",
    "mouthUpperUp_L",
    "mouthUpperUp_R",
    "browDown_L",
    "browDown_R",
    "browInnerUp",
    "browOuterUp_L",
    "browOuterUp_R",
    "cheekPuff",
    "cheekSquint_L",
    "cheekSquint_R",
    "noseSneer_L",
    "noseSneer_R",
    "tongueOut",
)
NUM_ARKIT = len(ARKIT_NAMES)


def _live_link(name: str) -> str:
    name = re.sub(r"_L$", "Left", re.sub(r"_R$", "Right", name))
    return name[0].upper() + name[1:]


#: The same names as Live Link Face's CSV header writes them (``EyeBlinkLeft``).
LIVE_LINK_NAMES: tuple[str, ...] = tuple(_live_link(n) for n in ARKIT_NAMES)
#: Live Link Face's 9 rotation columns after the blendshapes.
LIVE_LINK_ROTATIONS: tuple[str, ...] = (
    "HeadYaw",
    "HeadPitch",
    "HeadRoll",
    "LeftEyeYaw",
    "LeftEyePitch",
    "LeftEyeRoll",
    "RightEyeYaw",
    "RightEyePitch",
    "RightEyeRoll",
)
LIVE_LINK_BLENDSHAPE_COUNT = NUM_ARKIT + len(LIVE_LINK_ROTATIONS)  # 61, the value of the BlendShapeCount column


def canonical_name(name: str) -> str:
    """One key for the spellings of a blendshape name: ``eyeBlink_L``, ``eyeBlinkLeft``, ``EyeBlinkLeft`` ->
    ``eyeblink_l``."""
    s = str(name).strip()
    s = re.sub(r"(?:_?Left|_L)$", "_l", s, flags=re.IGNORECASE)
    s = re.sub(r"(?:_?Right|_R)$", "_r", s, flags=re.IGNORECASE)
    return s.lower()


_ARKIT_INDEX = {canonical_name(n): i for i, n in enumerate(ARKIT_NAMES)}


def arkit_index(name: str) -> int:
    """Index of an ARKit name (any spelling) in :data:`ARKIT_NAMES`."""
    try:
        return _ARKIT_INDEX[canonical_name(name)]
    except KeyError:
        raise KeyError(f"{name!r} is not one of ARKit's 52 blendshape names") from None


# ------------------------------------------------------------------------------------------- FaceScape (FaceShift)
#: FaceScape's 52 bilinear expressions (0 = neutral) in FaceShift names; see the module docstring for which indices
#: come from FaceScape's table (0-10, 24-34) and which are inferred.
FACESCAPE_EXPRESSION_NAMES: tuple[str, ...] = (
    "Neutral",
    "EyeBlink_L",
    "EyeBlink_R",
    "EyeSquint_L",
    "EyeSquint_R",
    "EyeDown_L",
    "EyeDown_R",
    "EyeIn_L",
    "EyeIn_R",
    "EyeOpen_L",
    "EyeOpen_R",
    "EyeOut_L",
    "EyeOut_R",
    "EyeUp_L",
    "EyeUp_R",
    "BrowsD_L",
    "BrowsD_R",
    "BrowsU_C",
    "BrowsU_L",
    "BrowsU_R",
    "JawOpen",
    "JawLeft",
    "JawRight",
    "JawFwd",
    "MouthLeft",
    "MouthRight",
    "MouthFrown_L",
    "MouthFrown_R",
    "MouthSmile_L",
    "MouthSmile_R",
    "MouthPress_L",
    "MouthPress_R",
    "MouthDimple_L",
    "MouthDimple_R",
    "LipsUpperClose",
    "LipsLowerClose",
    "ChinUpperRaise",
    "ChinLowerRaise",
    "LipsUpperUp_L",
    "LipsUpperUp_R",
    "LipsLowerDown_L",
    "LipsLowerDown_R",
    "LipsStretch_L",
    "LipsStretch_R",
    "LipsTogether",
    "LipsFunnel",
    "LipsPucker",
    "Puff",
    "Sneer_L",
    "Sneer_R",
    "CheekSquint_L",
    "CheekSquint_R",
)

_Weights = dict[str, float]

#: ARKit name -> {FaceScape expression name: weight}; every ARKit name is a key ({} = no counterpart).
ARKIT_TO_FACESCAPE: dict[str, _Weights] = {
    "eyeBlink_L": {"EyeBlink_L": 1.0},
    "eyeBlink_R": {"EyeBlink_R": 1.0},
    "eyeLookDown_L": {"EyeDown_L": 1.0},
    "eyeLookDown_R": {"EyeDown_R": 1.0},
    "eyeLookIn_L": {"EyeIn_L": 1.0},
    "eyeLookIn_R": {"EyeIn_R": 1.0},
    "eyeLookOut_L": {"EyeOut_L": 1.0},
    "eyeLookOut_R": {"EyeOut_R": 1.0},
    "eyeLookUp_L": {"EyeUp_L": 1.0},
    "eyeLookUp_R": {"EyeUp_R": 1.0},
    "eyeSquint_L": {"EyeSquint_L": 1.0},
    "eyeSquint_R": {"EyeSquint_R": 1.0},
    "eyeWide_L": {"EyeOpen_L": 1.0},
    "eyeWide_R": {"EyeOpen_R": 1.0},
    "jawForward": {"JawFwd": 1.0},
    "jawLeft": {"JawLeft": 1.0},
    "jawRight": {"JawRight": 1.0},
    "jawOpen": {"JawOpen": 1.0},
    "mouthClose": {"LipsTogether": 1.0},
    "mouthFunnel": {"LipsFunnel": 1.0},
    "mouthPucker": {"LipsPucker": 1.0},
    "mouthLeft": {"MouthLeft": 1.0},
    "mouthRight": {"MouthRight": 1.0},
    "mouthSmile_L": {"MouthSmile_L": 1.0},
    "mouthSmile_R": {"MouthSmile_R": 1.0},
    "mouthFrown_L": {"MouthFrown_L": 1.0},
    "mouthFrown_R": {"MouthFrown_R": 1.0},
    "mouthDimple_L": {"MouthDimple_L": 1.0},
    "mouthDimple_R": {"MouthDimple_R": 1.0},
    "mouthStretch_L": {"LipsStretch_L": 1.0},
    "mouthStretch_R": {"LipsStretch_R": 1.0},
    "mouthRollLower": {"LipsLowerClose": 1.0},
    "mouthRollUpper": {"LipsUpperClose": 1.0},
    "mouthShrugLower": {"ChinLowerRaise": 1.0},
    "mouthShrugUpper": {"ChinUpperRaise": 1.0},
    "mouthPress_L": {"MouthPress_L": 1.0},
    "mouthPress_R": {"MouthPress_R": 1.0},
    "mouthLowerDown_L": {"LipsLowerDown_L": 1.0},
    "mouthLowerDown_R": {"LipsLowerDown_R": 1.0},
    "mouthUpperUp_L": {"LipsUpperUp_L": 1.0},
    "mouthUpperUp_R": {"LipsUpperUp_R": 1.0},
    "browDown_L": {"BrowsD_L": 1.0},
    "browDown_R": {"BrowsD_R": 1.0},
    "browInnerUp": {"BrowsU_C": 1.0},
    "browOuterUp_L": {"BrowsU_L": 1.0},
    "browOuterUp_R": {"BrowsU_R": 1.0},
    "cheekPuff": {"Puff": 1.0},
    "cheekSquint_L": {"CheekSquint_L": 1.0},
    "cheekSquint_R": {"CheekSquint_R": 1.0},
    "noseSneer_L": {"Sneer_L": 1.0},
    "noseSneer_R": {"Sneer_R": 1.0},
    "tongueOut": {},  # FaceScape has no tongue
}

#: ARKit name -> {stand-in component: weight}: ``jaw_open`` is the stand-in's component 0, the others the names of
#: :data:`facelab.data.wrinkles.HEAD_EXPRESSION_NAMES`; {} = nothing on the stand-in moves that way.
ARKIT_TO_STANDIN: dict[str, _Weights] = {
    "eyeBlink_L": {},
    "eyeBlink_R": {},  # the stand-in's blendshapes have no eyelid closure
    "eyeLookDown_L": {},
    "eyeLookIn_L": {},
    "eyeLookOut_L": {},
    "eyeLookUp_L": {},  # gaze: eyeball rotation
    "eyeLookDown_R": {},
    "eyeLookIn_R": {},
    "eyeLookOut_R": {},
    "eyeLookUp_R": {},
    "eyeSquint_L": {"left_squint": 1.0},
    "eyeSquint_R": {"right_squint": 1.0},
    "eyeWide_L": {"eyes_wide": 0.5},
    "eyeWide_R": {"eyes_wide": 0.5},
    "jawForward": {},
    "jawLeft": {},
    "jawRight": {},  # the stand-in's jaw only opens
    "jawOpen": {"jaw_open": 1.0},
    "mouthClose": {"lip_press": 0.5, "lips_roll_in": 0.25},  # lips meet over an open jaw: closest fields
    "mouthFunnel": {"funnel": 1.0},
    "mouthPucker": {"pucker": 1.0},
    "mouthLeft": {"mouth_left": 1.0},
    "mouthRight": {"mouth_right": 1.0},
    "mouthSmile_L": {"smile_left": 1.0},
    "mouthSmile_R": {"smile_right": 1.0},
    "mouthFrown_L": {"lip_corner_down_left": 1.0},
    "mouthFrown_R": {"lip_corner_down_right": 1.0},
    "mouthDimple_L": {"dimple_left": 1.0},
    "mouthDimple_R": {"dimple_right": 1.0},
    "mouthStretch_L": {"stretch": 0.5},
    "mouthStretch_R": {"stretch": 0.5},
    "mouthRollLower": {"lips_roll_in": 0.5},
    "mouthRollUpper": {"lips_roll_in": 0.5},
    "mouthShrugLower": {"chin_raise": 1.0},
    "mouthShrugUpper": {"upper_lip_pout": 1.0},
    "mouthPress_L": {"lip_press": 0.5},
    "mouthPress_R": {"lip_press": 0.5},
    "mouthLowerDown_L": {"lower_lip_down": 0.5},
    "mouthLowerDown_R": {"lower_lip_down": 0.5},
    "mouthUpperUp_L": {"upper_lip_up": 0.5},
    "mouthUpperUp_R": {"upper_lip_up": 0.5},
    "browDown_L": {"frown": 0.5},
    "browDown_R": {"frown": 0.5},
    "browInnerUp": {"inner_brows_up": 1.0},
    "browOuterUp_L": {"left_brow_up": 1.0},
    "browOuterUp_R": {"right_brow_up": 1.0},
    "cheekPuff": {"cheek_puff": 1.0},
    "cheekSquint_L": {"left_squint": 0.5},
    "cheekSquint_R": {"right_squint": 0.5},
    "noseSneer_L": {"nose_wrinkle": 0.5},
    "noseSneer_R": {"nose_wrinkle": 0.5},
    "tongueOut": {},
}


# --------------------------------------------------------------------------------------------------- ICT-FaceKit
#: ICT-FaceKit's 57 expression OBJs (``FaceXModel/<name>.obj``): the 53 of ``vertex_indices.json['expressions']``
#: (ICT's own loader's, :class:`facelab.morphable.IctFaceModel`'s default) in that file's order, then the 4 others.
ICT_EXPRESSION_NAMES: tuple[str, ...] = (
    "browDown_L",
    "browDown_R",
    "browInnerUp_L",
    "browInnerUp_R",
    "browOuterUp_L",
    "browOuterUp_R",
    "cheekPuff_L",
    "cheekPuff_R",
    "cheekSquint_L",
    "cheekSquint_R",
    "eyeBlink_L",
    "eyeBlink_R",
    "eyeLookDown_L",
    "eyeLookDown_R",
    "eyeLookIn_L",
    "eyeLookIn_R",
    "eyeLookOut_L",
    "eyeLookOut_R",
    "eyeLookUp_L",
    "eyeLookUp_R",
    "eyeSquint_L",
    "eyeSquint_R",
    "eyeWide_L",
    "eyeWide_R",
    "jawForward",
    "jawLeft",
    "jawOpen",
    "jawRight",
    "mouthClose",
    "mouthDimple_L",
    "mouthDimple_R",
    "mouthFrown_L",
    "mouthFrown_R",
    "mouthFunnel",
    "mouthLeft",
    "mouthLowerDown_L",
    "mouthLowerDown_R",
    "mouthPress_L",
    "mouthPress_R",
    "mouthPucker",
    "mouthRight",
    "mouthRollLower",
    "mouthRollUpper",
    "mouthShrugLower",
    "mouthShrugUpper",
    "mouthSmile_L",
    "mouthSmile_R",
    "mouthStretch_L",
    "mouthStretch_R",
    "mouthUpperUp_L",
    "mouthUpperUp_R",
    "noseSneer_L",
    "noseSneer_R",
    "cheekRaiser_L",
    "cheekRaiser_R",
    "PupilDilate_L",
    "PupilDilate_R",
)

#: ARKit name -> {ICT-FaceKit expression: weight}; every ARKit name is a key ({} = no counterpart).
ARKIT_TO_ICT: dict[str, _Weights] = {
    "eyeBlink_L": {"eyeBlink_L": 1.0},
    "eyeLookDown_L": {"eyeLookDown_L": 1.0},
    "eyeLookIn_L": {"eyeLookIn_L": 1.0},
    "eyeLookOut_L": {"eyeLookOut_L": 1.0},
    "eyeLookUp_L": {"eyeLookUp_L": 1.0},
    "eyeSquint_L": {"eyeSquint_L": 1.0},
    "eyeWide_L": {"eyeWide_L": 1.0},
    "eyeBlink_R": {"eyeBlink_R": 1.0},
    "eyeLookDown_R": {"eyeLookDown_R": 1.0},
    "eyeLookIn_R": {"eyeLookIn_R": 1.0},
    "eyeLookOut_R": {"eyeLookOut_R": 1.0},
    "eyeLookUp_R": {"eyeLookUp_R": 1.0},
    "eyeSquint_R": {"eyeSquint_R": 1.0},
    "eyeWide_R": {"eyeWide_R": 1.0},
    "jawForward": {"jawForward": 1.0},
    "jawLeft": {"jawLeft": 1.0},
    "jawRight": {"jawRight": 1.0},
    "jawOpen": {"jawOpen": 1.0},
    "mouthClose": {"mouthClose": 1.0},
    "mouthFunnel": {"mouthFunnel": 1.0},
    "mouthPucker": {"mouthPucker": 1.0},
    "mouthLeft": {"mouthLeft": 1.0},
    "mouthRight": {"mouthRight": 1.0},
    "mouthSmile_L": {"mouthSmile_L": 1.0},
    "mouthSmile_R": {"mouthSmile_R": 1.0},
    "mouthFrown_L": {"mouthFrown_L": 1.0},
    "mouthFrown_R": {"mouthFrown_R": 1.0},
    "mouthDimple_L": {"mouthDimple_L": 1.0},
    "mouthDimple_R": {"mouthDimple_R": 1.0},
    "mouthStretch_L": {"mouthStretch_L": 1.0},
    "mouthStretch_R": {"mouthStretch_R": 1.0},
    "mouthRollLower": {"mouthRollLower": 1.0},
    "mouthRollUpper": {"mouthRollUpper": 1.0},
    "mouthShrugLower": {"mouthShrugLower": 1.0},
    "mouthShrugUpper": {"mouthShrugUpper": 1.0},
    "mouthPress_L": {"mouthPress_L": 1.0},
    "mouthPress_R": {"mouthPress_R": 1.0},
    "mouthLowerDown_L": {"mouthLowerDown_L": 1.0},
    "mouthLowerDown_R": {"mouthLowerDown_R": 1.0},
    "mouthUpperUp_L": {"mouthUpperUp_L": 1.0},
    "mouthUpperUp_R": {"mouthUpperUp_R": 1.0},
    "browDown_L": {"browDown_L": 1.0},
    "browDown_R": {"browDown_R": 1.0},
    "browInnerUp": {"browInnerUp_L": 1.0, "browInnerUp_R": 1.0},  # ICT splits it: the halves sum to the whole
    "browOuterUp_L": {"browOuterUp_L": 1.0},
    "browOuterUp_R": {"browOuterUp_R": 1.0},
    "cheekPuff": {"cheekPuff_L": 1.0, "cheekPuff_R": 1.0},  # split in ICT as well
    "cheekSquint_L": {"cheekSquint_L": 1.0},
    "cheekSquint_R": {"cheekSquint_R": 1.0},
    "noseSneer_L": {"noseSneer_L": 1.0},
    "noseSneer_R": {"noseSneer_R": 1.0},
    "tongueOut": {},  # ICT-FaceKit has a tongue but no tongueOut shape
}


def _check_table(table: dict[str, _Weights], targets: dict[str, int], what: str) -> None:
    keys = {canonical_name(k) for k in table}
    missing = [n for n in ARKIT_NAMES if canonical_name(n) not in keys]
    if missing:
        raise ValueError(f"{what}: the mapping has no entry for ARKit names {missing} (give {{}} for 'no counterpart')")
    for k, weights in table.items():
        unknown = [t for t in weights if t not in targets]
        if unknown:
            raise ValueError(f"{what}: {k} maps to unknown target(s) {unknown}")


def _matrix(table: dict[str, _Weights], targets: dict[str, int], size: int, what: str) -> Tensor:
    _check_table(table, targets, what)
    m = torch.zeros(NUM_ARKIT, size)
    for k, weights in table.items():
        for t, w in weights.items():
            m[arkit_index(k), targets[t]] += float(w)
    return m


def arkit_to_facescape_matrix(
    expression_names: tuple[str, ...] | list[str] = FACESCAPE_EXPRESSION_NAMES, table: dict[str, _Weights] | None = None
) -> Tensor:
    """(52, 51) ARKit weights -> FaceScape blendshape weights (``BilinearParams.expression``: the neutral excluded).

    Args:
        expression_names: the model's 52 expression names, neutral first (default :data:`FACESCAPE_EXPRESSION_NAMES`).
        table: ARKit -> FaceScape names (default :data:`ARKIT_TO_FACESCAPE`).
    """
    names = list(expression_names)
    if len(names) != 52:
        raise ValueError(f"FaceScape has 52 expressions (neutral first), got {len(names)} names")
    return _matrix(
        ARKIT_TO_FACESCAPE if table is None else table,
        {n: i - 1 for i, n in enumerate(names) if i},
        51,
        "ARKit -> FaceScape",
    )


def arkit_to_standin_matrix(offset: int = 1, jaw_component: int = 0, num_expression: int = 51) -> Tensor:
    """(52, num_expression) ARKit weights -> the synthetic stand-in's blendshape weights (:data:`ARKIT_TO_STANDIN`;
    the head's fields start at ``offset``, the jaw opening is ``jaw_component``)."""
    from facelab.data.wrinkles import HEAD_EXPRESSION_NAMES

    targets = {name: offset + i for i, name in enumerate(HEAD_EXPRESSION_NAMES)}
    targets["jaw_open"] = jaw_component
    return _matrix(ARKIT_TO_STANDIN, targets, num_expression, "ARKit -> synthetic stand-in")


def arkit_to_ict_matrix(
    expression_names: tuple[str, ...] | list[str] = ICT_EXPRESSION_NAMES[:53], table: dict[str, _Weights] | None = None
) -> Tensor:
    """(52, E) ARKit weights -> ICT-FaceKit expression weights (:class:`facelab.morphable.IctFaceModel`'s
    ``IctParams.expression``, columns in ``expression_names`` order).

    Args:
        expression_names: the loaded model's ``expression_names`` (default: ``vertex_indices.json``'s 53, ICT's own
            default); names no entry of the table targets (``cheekRaiser_L/R``, ``PupilDilate_L/R``) stay 0.
        table: ARKit -> ICT names (default :data:`ARKIT_TO_ICT`).

    Raises:
        ValueError: the table targets an expression the model was loaded without (load it with the default
            expressions or ``"all"``).
    """
    names = list(expression_names)
    return _matrix(
        ARKIT_TO_ICT if table is None else table,
        {n: i for i, n in enumerate(names)},
        len(names),
        "ARKit -> ICT-FaceKit",
    )


def arkit_to_names_matrix(names: list[str] | tuple[str, ...]) -> Tensor:
    """(52, E) ARKit weights -> the weights of a model whose E expressions carry ARKit names (ICT-FaceKit).

    Matched by :func:`canonical_name`; an ARKit name the model splits into ``_L`` / ``_R`` halves (ICT's
    ``browInnerUp``, ``cheekPuff``) drives both; model expressions no ARKit name matches stay 0.
    """
    index = {canonical_name(n): i for i, n in enumerate(names)}
    m = torch.zeros(NUM_ARKIT, len(names))
    for a, name in enumerate(ARKIT_NAMES):
        key = canonical_name(name)
        if key in index:
            m[a, index[key]] = 1.0
        else:
            for half in (key + "_l", key + "_r"):
                if half in index:
                    m[a, index[half]] = 1.0
    return m


def arkit_to_expression_matrix(model) -> Tensor:
    """(52, E) ARKit -> expression weights of a morphable model: ICT-FaceKit by :data:`ARKIT_TO_ICT`, other
    ARKit-named models by name, the synthetic bilinear stand-in by :data:`ARKIT_TO_STANDIN`, FaceScape's bilinear
    model by :data:`ARKIT_TO_FACESCAPE`.

    ``expression = arkit @ M`` gives the model's (B, E) expression coefficients (for the bilinear model the 51
    blendshape weights of :class:`facelab.morphable.BilinearParams`).
    """
    from facelab.morphable.ict import IctFaceModel

    if isinstance(model, IctFaceModel):
        return arkit_to_ict_matrix(model.expression_names)
    names = getattr(model, "expression_names", None)
    if names is not None:
        return arkit_to_names_matrix(list(names))
    n = int(model.num_expression)
    if getattr(model, "is_synthetic", False):
        from facelab.data.wrinkles import head_expression_offset

        jaw = model.jaw_open_component
        return arkit_to_standin_matrix(head_expression_offset(model), 0 if jaw is None else jaw[0], n)
    if n != 51:
        raise ValueError(
            f"{type(model).__name__}: {n} expression coefficients and no expression names; the ARKit "
            "mapping covers FaceScape's bilinear model (51 blendshapes) and ARKit-named models"
        )
    return arkit_to_facescape_matrix()


def random_identity(k: int, seed: int = 0) -> np.ndarray:
    """(k,) float32 identity coefficients drawn from N(0, I) (the identity prior of every morphable model family;
    ICT-FaceKit's ``randomize_identity``), deterministic given ``seed``."""
    return np.random.default_rng(seed).standard_normal(int(k)).astype(np.float32)


def arkit_to_vertices(
    model, arkit: Tensor, identity: Tensor | np.ndarray | None = None, seed: int = 0, matrix: Tensor | None = None
) -> Tensor:
    """Per-frame ARKit weights through a morphable model: (T, 52) -> (T, V, 3) vertices (the model's units).

    ``expression = arkit @ M`` (M: :func:`arkit_to_expression_matrix`, e.g. :data:`ARKIT_TO_ICT` for
    :class:`facelab.morphable.IctFaceModel`, whose vertices are centimetres), one identity for every frame.

    Args:
        model: a :class:`facelab.morphable.base.MorphableModel` (ICT-FaceKit, the FaceScape bilinear model or its
            stand-in).
        arkit: (T, 52) weights in :data:`ARKIT_NAMES` order.
        identity: (K,) identity coefficients of the model; None: :func:`random_identity` with ``seed``.
        seed: seed of the random identity.
        matrix: a precomputed (52, E) M (None: computed from the model).
    """
    from facelab.morphable.base import MorphableParams

    if arkit.dim() != 2 or arkit.shape[1] != NUM_ARKIT:
        raise ValueError(f"arkit must be (T, {NUM_ARKIT}) ARKit weights, got {tuple(arkit.shape)}")
    k = int(model.num_identity)
    ident = random_identity(k, seed) if identity is None else identity
    ident = torch.as_tensor(ident).to(arkit).reshape(-1)
    if ident.numel() != k:
        raise ValueError(f"identity must have the model's {k} coefficients, got {ident.numel()}")
    m = (arkit_to_expression_matrix(model) if matrix is None else matrix).to(arkit)
    params = MorphableParams(identity=ident.expand(len(arkit), k), expression=arkit @ m)
    return model(params).verts


# ---------------------------------------------------------------------------------------------- Live Link Face CSV
class LiveLinkFormatError(DataError):
    """A Live Link Face CSV that cannot be used (``reason``: ``not_found``, ``empty``, ``missing_columns``,
    ``bad_timecode``, ``bad_value``, ``non_finite``)."""


@dataclass
class LiveLinkTake:
    """A Live Link Face take.

    Attributes:
        times: (N,) seconds from the first frame's timecode.
        coefficients: (N, 52) float32 blendshape weights in :data:`ARKIT_NAMES` order.
        rotations: (N, 9) float32 :data:`LIVE_LINK_ROTATIONS` or None when the file has none.
        fps: the take's frame rate (given, or inferred from the timecodes).
        timecodes: the raw timecode strings.
    """

    times: np.ndarray
    coefficients: np.ndarray
    rotations: np.ndarray | None
    fps: float
    timecodes: list[str]


_TIMECODE = re.compile(r"^\s*(\d+):(\d{1,2}):(\d{1,2})[:;](\d+)(?:\.(\d+))?\s*$")


def parse_timecode(text: str) -> tuple[int, int]:
    """``HH:MM:SS:FF[.mmm]`` -> (whole seconds, frame) and raises ValueError on anything else; the fraction is
    returned by :func:`_timecode_fraction`."""
    m = _TIMECODE.match(text)
    if m is None:
        raise ValueError(f"not a Live Link timecode HH:MM:SS:FF.mmm: {text!r}")
    h, mi, s, f = (int(m.group(i)) for i in range(1, 5))
    return h * 3600 + mi * 60 + s, f


def _timecode_fraction(text: str) -> float:
    m = _TIMECODE.match(text)
    return float("0." + m.group(5)) if m and m.group(5) else 0.0


def format_timecode(frame: int, fps: int, start_seconds: int = 0) -> str:
    """Frame ``frame`` of a take at integer ``fps`` as ``HH:MM:SS:FF.000``."""
    sec, ff = divmod(int(frame), int(fps))
    sec += int(start_seconds)
    return f"{sec // 3600:02d}:{sec // 60 % 60:02d}:{sec % 60:02d}:{ff:02d}.000"


_COMMON_RATES = (24, 25, 30, 48, 50, 60, 120)


def read_live_link_csv(path: str | os.PathLike, fps: float | None = None) -> LiveLinkTake:
    """Read a Live Link Face CSV (module docstring).

    Args:
        path: the CSV.
        fps: the take's frame rate; None infers it from the timecodes' frame field (the highest frame number + 1,
            rounded to a common rate; needs at least one second of take).

    Raises:
        LiveLinkFormatError: see its reasons; ``missing_columns`` names every missing blendshape column.
    """
    path = Path(path)
    if not path.is_file():
        raise LiveLinkFormatError("not_found", "no such file (a Live Link Face take CSV)", path)
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    rows = [r for r in rows if any(c.strip() for c in r)]
    if len(rows) < 2:
        raise LiveLinkFormatError("empty", "no header and frame rows", path)
    header = [h.strip() for h in rows[0]]
    keys = [canonical_name(h) for h in header]
    col = {k: i for i, k in enumerate(keys)}
    missing = [LIVE_LINK_NAMES[i] for i, n in enumerate(ARKIT_NAMES) if canonical_name(n) not in col]
    if "timecode" not in col:
        missing = ["Timecode", *missing]
    if missing:
        raise LiveLinkFormatError(
            "missing_columns",
            f"missing column(s) {missing}: a Live Link Face CSV has "
            f"Timecode, BlendShapeCount and the 52 ARKit blendshapes ({LIVE_LINK_NAMES[0]}, "
            f"...)",
            path,
        )
    blend_cols = [col[canonical_name(n)] for n in ARKIT_NAMES]
    rot_cols = [col.get(canonical_name(n)) for n in LIVE_LINK_ROTATIONS]
    has_rot = all(c is not None for c in rot_cols)
    coeffs, rots, codes, secs, frames, fracs = [], [], [], [], [], []
    for line, r in enumerate(rows[1:], start=2):
        code = r[col["timecode"]] if col["timecode"] < len(r) else ""
        try:
            s, ff = parse_timecode(code)
        except ValueError as err:
            raise LiveLinkFormatError("bad_timecode", f"line {line}: {err}", path) from err
        try:
            coeffs.append([float(r[c]) for c in blend_cols])
            if has_rot:
                rots.append([float(r[c]) for c in rot_cols])
        except (ValueError, IndexError) as err:
            raise LiveLinkFormatError(
                "bad_value", f"line {line}: a blendshape/rotation value is missing or not a number ({err})", path
            ) from err
        codes.append(code.strip())
        secs.append(s)
        frames.append(ff)
        fracs.append(_timecode_fraction(code))
    c = np.asarray(coeffs, dtype=np.float32)
    if not np.isfinite(c).all():
        raise LiveLinkFormatError("non_finite", "NaN or infinite blendshape values", path)
    if fps is None:
        span = secs[-1] - secs[0]
        if span < 1:
            raise LiveLinkFormatError(
                "bad_timecode",
                "the take is shorter than one second: its frame rate cannot be inferred from the timecodes; pass fps",
                path,
            )
        top = max(frames) + 1
        fps = float(min(_COMMON_RATES, key=lambda r: abs(r - top)))
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be positive, got {fps}")
    t = np.asarray(secs, dtype=np.float64) + (np.asarray(frames) + np.asarray(fracs)) / fps
    t = t - t[0]
    if np.any(np.diff(t) < 0):
        raise LiveLinkFormatError(
            "bad_timecode", "timecodes go backwards (a take spanning midnight, or rows out of order)", path
        )
    return LiveLinkTake(
        times=t,
        coefficients=c,
        rotations=np.asarray(rots, dtype=np.float32) if has_rot else None,
        fps=float(fps),
        timecodes=codes,
    )


def write_live_link_csv(
    path: str | os.PathLike,
    coefficients: np.ndarray | Tensor,
    fps: int,
    rotations: np.ndarray | None = None,
    start_seconds: int = 0,
) -> Path:
    """Write (N, 52) ARKit weights (:data:`ARKIT_NAMES` order) as a Live Link Face CSV at integer ``fps``
    (atomically: a temporary file renamed into place).

    Args:
        path: destination.
        coefficients: (N, 52) weights.
        fps: frames per second (integer: the timecode's frame field).
        rotations: optional (N, 9) :data:`LIVE_LINK_ROTATIONS` (zeros when None).
        start_seconds: timecode of frame 0, in whole seconds.
    """
    c = np.asarray(coefficients.detach().cpu() if isinstance(coefficients, Tensor) else coefficients, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] != NUM_ARKIT:
        raise ValueError(f"coefficients must be (N, {NUM_ARKIT}) ARKit weights, got {c.shape}")
    if not np.isfinite(c).all():
        raise ValueError("coefficients contain NaN or infinite values")
    if int(fps) != fps or fps <= 0:
        raise ValueError(f"fps must be a positive integer (the timecode's frame field), got {fps}")
    rot = np.zeros((len(c), len(LIVE_LINK_ROTATIONS))) if rotations is None else np.asarray(rotations, np.float64)
    if rot.shape != (len(c), len(LIVE_LINK_ROTATIONS)):
        raise ValueError(f"rotations must be ({len(c)}, {len(LIVE_LINK_ROTATIONS)}), got {rot.shape}")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["Timecode", "BlendShapeCount", *LIVE_LINK_NAMES, *LIVE_LINK_ROTATIONS])
    for i in range(len(c)):
        w.writerow(
            [
                format_timecode(i, int(fps), start_seconds),
                LIVE_LINK_BLENDSHAPE_COUNT,
                *(f"{v:.8g}" for v in c[i]),
                *(f"{v:.8g}" for v in rot[i]),
            ]
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(buf.getvalue(), encoding="utf-8")
    os.replace(tmp, path)
    return path
