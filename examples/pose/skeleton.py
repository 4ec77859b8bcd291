"""The 17-joint Human3.6M skeleton and the symmetry constraints of Table 2.

The joint order is the one used by most 3D-pose code for Human3.6M (the 17
joints kept from the 32 of the motion-capture skeleton). Left and right are
the subject's own left and right.

References:
  Márquez-Neila, Salzmann, Fua (2017), "Imposing Hard Constraints on Deep
  Networks: Promises and Limitations", Sec. 5, Eq. 15 and Table 2.
  Ionescu, Papava, Olaru, Sminchisescu (2014), "Human3.6M: Large Scale
  Datasets and Predictive Methods for 3D Human Sensing in Natural
  Environments", IEEE TPAMI 36(7).
"""

from __future__ import annotations

NUM_JOINTS: int = 17
"""Number of joints of the skeleton."""

PELVIS, R_HIP, R_KNEE, R_FOOT, L_HIP, L_KNEE, L_FOOT = 0, 1, 2, 3, 4, 5, 6
SPINE, THORAX, NECK, HEAD = 7, 8, 9, 10
L_SHOULDER, L_ELBOW, L_WRIST = 11, 12, 13
R_SHOULDER, R_ELBOW, R_WRIST = 14, 15, 16

JOINT_NAMES: tuple[str, ...] = (
    "pelvis",
    "right_hip",
    "right_knee",
    "right_foot",
    "left_hip",
    "left_knee",
    "left_foot",
    "spine",
    "thorax",
    "neck",
    "head",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
    "right_shoulder",
    "right_elbow",
    "right_wrist",
)
"""Joint names in index order. Joint 0 (pelvis) is the root; "foot" is the
paper's "heel", "thorax" its "chest", "wrist" its "hand", "neck" is the
Human3.6M neck/nose joint."""

PARENTS: tuple[int, ...] = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15)
"""Parent of every joint in the kinematic tree; -1 for the root."""

BONES: tuple[tuple[int, int], ...] = tuple(
    (parent, child) for child, parent in enumerate(PARENTS) if parent >= 0
)
"""The 16 bones as (parent, child) joint pairs, in order of the child joint."""

LEFT_JOINTS: tuple[int, ...] = (L_HIP, L_KNEE, L_FOOT, L_SHOULDER, L_ELBOW, L_WRIST)
"""Joints on the subject's left side."""

RIGHT_JOINTS: tuple[int, ...] = (R_HIP, R_KNEE, R_FOOT, R_SHOULDER, R_ELBOW, R_WRIST)
"""Joints on the subject's right side, mirroring `LEFT_JOINTS` entry by entry."""

FLIP_PERMUTATION: tuple[int, ...] = tuple(
    {**dict(zip(LEFT_JOINTS, RIGHT_JOINTS)), **dict(zip(RIGHT_JOINTS, LEFT_JOINTS))}.get(j, j)
    for j in range(NUM_JOINTS)
)
"""Joint permutation that swaps left and right (for mirroring a pose)."""

SYMMETRIC_BONE_PAIRS: tuple[tuple[tuple[int, int], tuple[int, int]], ...] = (
    ((L_SHOULDER, L_ELBOW), (R_SHOULDER, R_ELBOW)),  # upper arms
    ((L_ELBOW, L_WRIST), (R_ELBOW, R_WRIST)),  # forearms
    ((L_HIP, L_KNEE), (R_HIP, R_KNEE)),  # thighs
    ((L_KNEE, L_FOOT), (R_KNEE, R_FOOT)),  # calves
    ((THORAX, L_SHOULDER), (THORAX, R_SHOULDER)),  # chest to shoulders
    ((PELVIS, L_HIP), (PELVIS, R_HIP)),  # pelvis to hips
)
"""Left/right bone pairs ((a, b), (c, d)) that have equal lengths on a real body."""

SYMMETRY_CONSTRAINTS: tuple[tuple[int, int, int, int], ...] = tuple(
    (a, b, c, d) for (a, b), (c, d) in SYMMETRIC_BONE_PAIRS
)
"""The six (a_j, b_j, c_j, d_j) quadruples of the paper's Table 2, j = 1..6.

Constraint j is ||y[a_j] - y[b_j]|| - ||y[c_j] - y[d_j]|| = 0 (Eq. 15):

  | j | a              | b              | c              | d              |
  |---|----------------|----------------|----------------|----------------|
  | 1 | left shoulder  | left elbow     | right shoulder | right elbow    |
  | 2 | left elbow     | left hand      | right elbow    | right hand     |
  | 3 | left hip       | left knee      | right hip      | right knee     |
  | 4 | left knee      | left heel      | right knee     | right heel     |
  | 5 | chest          | left shoulder  | chest          | right shoulder |
  | 6 | pelvis         | left hip       | pelvis         | right hip      |
"""

NUM_CONSTRAINTS: int = len(SYMMETRY_CONSTRAINTS)
"""Number of symmetry constraints per sample (6)."""

H36M_32_TO_17: tuple[int, ...] = (0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 15, 17, 18, 19, 25, 26, 27)
"""Indices of the 17 joints in the 32-joint Human3.6M motion-capture skeleton."""

ACTIONS: tuple[str, ...] = (
    "Directions",
    "Discussion",
    "Eating",
    "Greeting",
    "Phoning",
    "Photo",
    "Posing",
    "Purchases",
    "Sitting",
    "SittingDown",
    "Smoking",
    "Waiting",
    "WalkDog",
    "Walking",
    "WalkTogether",
)
"""The 15 Human3.6M action names; an example's ``action`` is an index into it."""


def action_index(name: str) -> int:
    """Index in `ACTIONS` of a Human3.6M action or sequence name.

    Args:
      name: an action name such as ``"Walking"``, a sequence name with a take
        number such as ``"Walking 1"`` or ``"WalkingDog"``; case and spaces do
        not matter, and ``"TakingPhoto"``/``"WalkingDog"`` are accepted aliases.

    Returns:
      The index of the action in `ACTIONS`.

    Raises:
      ValueError: if the name is not a Human3.6M action.
    """
    key = "".join(ch for ch in name.split(" ")[0] if ch.isalpha()).lower()
    aliases = {"takingphoto": "photo", "walkingdog": "walkdog"}
    key = aliases.get(key, key)
    for i, action in enumerate(ACTIONS):
        if action.lower() == key:
            return i
    raise ValueError(
        f"Unknown Human3.6M action {name!r}; expected one of {', '.join(ACTIONS)} "
        "(optionally followed by a space and a take number)."
    )
