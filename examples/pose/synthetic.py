"""A deterministic, synthetic Human3.6M-like data set of images and 3D poses.

Human3.6M needs a licence, so this module generates a stand-in with the same
structure (paper Sec. 5): RGB crops centred on the subject and, for each, the
17 joints of `pose.skeleton` in millimetres, root-relative, in camera
coordinates (x right, y down, z away from the camera; pelvis at the origin).

How an example is made:

* **Subjects** have their own bone lengths (about +-15 % around adult sizes,
  e.g. a 450 mm thigh), girths and clothing colours. Left and right bones
  have exactly equal lengths, so the ground truth satisfies the six symmetry
  constraints of Eq. 15 up to rounding (below 1e-12 mm in float64).
* **Poses** come from forward kinematics of joint rotations. The
  ``"Walking"`` action is a periodic gait (hip and knee flexion, arms
  swinging against the legs, pelvis rotation, torso sway) while walking round
  a circle; ``"Posing"`` moves every joint smoothly and independently within
  anatomical limits. A pose depends only on (subject, action, frame), so
  several cameras may see the same pose, as in Human3.6M.
* **Cameras** stand a few metres away at different azimuths and elevations
  and look at the pelvis.
* **Images** are rendered with vectorised numpy: a perspective projection
  around the root, limbs as shaded tapered capsules in a z-buffer (nearer
  parts hide farther ones), left limbs in warm colours (red, orange) and right
  limbs in cool ones (blue, teal), a head with a face and hair, a cluttered
  background of blurred blobs and gradients, and pixel noise.

Everything is a function of `seed`: subjects and cameras are seeded by
(seed, id) and examples in blocks of `CHUNK_SIZE` by (seed, stream, block),
so example ``i`` does not depend on how many examples are requested, and
(`stream`, `start`) select disjoint or consecutive sets of examples.

Rendering is single-threaded numpy. Measured on a 2-core x86 CPU shared with
other jobs: 10,000 examples take 6.8 s at 64x64 and 17 s at 128x128
(0.7 and 1.7 ms per image); poses alone (``render=False``) take 17 us each.
Outputs are bit-identical for a seed on a given numpy build.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from pose import skeleton as sk

CHUNK_SIZE: int = 256
"""Examples are seeded in blocks of this many (see the module docstring)."""

FRAMES_PER_SEQUENCE: int = 2400
"""Frames in each subject's sequence of an action (48 s at 50 frames/s)."""

WALKING: int = sk.ACTIONS.index("Walking")
"""Action index of the walking sequences."""

POSING: int = sk.ACTIONS.index("Posing")
"""Action index of the random-pose sequences."""

_TAG_SUBJECT, _TAG_CAMERA, _TAG_EXAMPLES, _TAG_NOISE = 0x5B, 0xCA, 0xE8, 0x40

NOMINAL_BONE_LENGTHS: dict[str, float] = {
    "hip": 130.0,  # pelvis to hip joint
    "thigh": 450.0,
    "shin": 445.0,
    "spine": 235.0,  # pelvis to spine
    "chest": 255.0,  # spine to thorax
    "neck": 115.0,  # thorax to neck/nose
    "head": 115.0,  # neck/nose to head
    "shoulder": 150.0,  # thorax to shoulder
    "upper_arm": 280.0,
    "forearm": 250.0,
    "foot": 150.0,  # ankle to toe (drawn, not a joint)
    "hand": 90.0,  # wrist to finger tips (drawn, not a joint)
}
"""Bone lengths (mm) of the average synthetic subject, close to Human3.6M's."""

# Extra points drawn but not part of the 17 joints.
_L_TOE, _R_TOE, _L_HAND, _R_HAND, _HEAD_CENTRE, _FACE = 17, 18, 19, 20, 21, 22
_NUM_POINTS = 23

# Colour slots of a subject's palette.
(_C_LEFT_UPPER, _C_LEFT_LOWER, _C_RIGHT_UPPER, _C_RIGHT_LOWER, _C_SHIRT, _C_TROUSERS,
 _C_SKIN, _C_HAIR) = range(8)
_NUM_COLOURS = 8

LEFT_COLOURS: np.ndarray = np.array([[205, 45, 40], [240, 165, 35]], np.float64)
"""Base RGB of the left upper limbs (thigh, upper arm) and lower limbs."""
RIGHT_COLOURS: np.ndarray = np.array([[40, 75, 215], [30, 185, 165]], np.float64)
"""Base RGB of the right upper limbs and lower limbs."""
_SHIRTS = np.array([[150, 150, 150], [215, 215, 200], [115, 125, 70], [125, 90, 60],
                    [90, 90, 100], [170, 150, 120]], np.float64)
_TROUSERS = np.array([[55, 55, 65], [90, 80, 65], [40, 45, 60], [110, 110, 105]], np.float64)
_SKINS = np.array([[235, 195, 165], [200, 150, 115], [150, 105, 75], [105, 70, 50]], np.float64)
_HAIRS = np.array([[40, 30, 25], [90, 60, 35], [20, 20, 20], [150, 120, 70]], np.float64)

# Primitives: (point a, point b, radius key, colour slot). Radii (mm) at a, b.
_PRIMITIVES: tuple[tuple[int, int, str, int], ...] = (
    (sk.R_HIP, sk.L_HIP, "hips", _C_TROUSERS),
    (sk.PELVIS, sk.SPINE, "belly", _C_SHIRT),
    (sk.SPINE, sk.THORAX, "chest", _C_SHIRT),
    (sk.R_SHOULDER, sk.L_SHOULDER, "shoulders", _C_SHIRT),
    (sk.THORAX, sk.NECK, "neck", _C_SKIN),
    (sk.L_HIP, sk.L_KNEE, "thigh", _C_LEFT_UPPER),
    (sk.L_KNEE, sk.L_FOOT, "shin", _C_LEFT_LOWER),
    (sk.L_FOOT, _L_TOE, "foot", _C_LEFT_LOWER),
    (sk.R_HIP, sk.R_KNEE, "thigh", _C_RIGHT_UPPER),
    (sk.R_KNEE, sk.R_FOOT, "shin", _C_RIGHT_LOWER),
    (sk.R_FOOT, _R_TOE, "foot", _C_RIGHT_LOWER),
    (sk.L_SHOULDER, sk.L_ELBOW, "upper_arm", _C_LEFT_UPPER),
    (sk.L_ELBOW, sk.L_WRIST, "forearm", _C_LEFT_LOWER),
    (sk.L_WRIST, _L_HAND, "hand", _C_LEFT_LOWER),
    (sk.R_SHOULDER, sk.R_ELBOW, "upper_arm", _C_RIGHT_UPPER),
    (sk.R_ELBOW, sk.R_WRIST, "forearm", _C_RIGHT_LOWER),
    (sk.R_WRIST, _R_HAND, "hand", _C_RIGHT_LOWER),
    (_HEAD_CENTRE, _HEAD_CENTRE, "head", _C_SKIN),
)
_HEAD_PRIMITIVE = len(_PRIMITIVES) - 1
_NOMINAL_RADII: dict[str, tuple[float, float]] = {
    "hips": (100.0, 100.0),
    "belly": (110.0, 120.0),
    "chest": (125.0, 115.0),
    "shoulders": (65.0, 65.0),
    "neck": (48.0, 48.0),
    "thigh": (90.0, 65.0),
    "shin": (65.0, 48.0),
    "foot": (45.0, 38.0),
    "upper_arm": (60.0, 48.0),
    "forearm": (47.0, 38.0),
    "hand": (38.0, 32.0),
    "head": (100.0, 100.0),
}

# Joint-angle channels (radians) driving the forward kinematics.
_ANGLES: tuple[str, ...] = (
    "yaw", "pitch", "roll", "spine_flex", "spine_bend", "spine_twist", "neck_flex",
    "neck_twist",
    "l_hip_flex", "l_hip_abd", "l_hip_twist", "l_knee",
    "r_hip_flex", "r_hip_abd", "r_hip_twist", "r_knee",
    "l_sh_flex", "l_sh_abd", "l_sh_twist", "l_elbow",
    "r_sh_flex", "r_sh_abd", "r_sh_twist", "r_elbow",
)
# Limits (degrees) of the "Posing" action; the heading (yaw) is unlimited.
_POSING_LIMITS: dict[str, tuple[float, float]] = {
    "pitch": (-5, 25), "roll": (-8, 8), "spine_flex": (-10, 35), "spine_bend": (-15, 15),
    "spine_twist": (-25, 25), "neck_flex": (-20, 30), "neck_twist": (-40, 40),
    "hip_flex": (-20, 85), "hip_abd": (-5, 35), "hip_twist": (-20, 30), "knee": (0, 110),
    "sh_flex": (-40, 150), "sh_abd": (0, 100), "sh_twist": (-40, 40), "elbow": (0, 130),
}
_NUM_WAVES = 3  # sinusoids summed per angle channel in "Posing"


@dataclasses.dataclass(frozen=True)
class Subjects:
    """Body, clothing and motion parameters of a batch of synthetic subjects.

    Attributes:
      lengths: bone lengths (mm), name -> (S,) float64, keys of
        `NOMINAL_BONE_LENGTHS`; shared by left and right.
      radii: limb radii (mm) at the two ends, name -> (S, 2) float64.
      colours: RGB palette in [0, 255], (S, 8, 3) float64.
      gait: walking parameters, name -> (S,) float64.
      waves: "Posing" sinusoids, (S, num_angles, 3 [amplitude, frequency,
        phase], num_waves) float64.
    """

    lengths: dict[str, np.ndarray]
    radii: dict[str, np.ndarray]
    colours: np.ndarray
    gait: dict[str, np.ndarray]
    waves: np.ndarray


def make_subjects(subject_ids: Sequence[int], seed: int = 0) -> Subjects:
    """Draws the parameters of synthetic subjects, each seeded by (seed, id).

    Args:
      subject_ids: non-negative subject numbers.
      seed: the data set seed.

    Returns:
      A `Subjects` with one row per entry of `subject_ids`.
    """
    rows = []
    for sid in subject_ids:
        if int(sid) < 0:
            raise ValueError(f"subject ids must be non-negative integers, got {sid}.")
        rng = np.random.default_rng([int(seed), _TAG_SUBJECT, int(sid)])
        scale = rng.uniform(0.9, 1.1)
        lengths = {k: v * scale * rng.uniform(0.94, 1.06) for k, v in NOMINAL_BONE_LENGTHS.items()}
        girth = rng.uniform(0.85, 1.2)
        radii = {k: np.array(v) * girth * scale * rng.uniform(0.92, 1.08)
                 for k, v in _NOMINAL_RADII.items()}
        colours = np.empty((_NUM_COLOURS, 3))
        colours[_C_LEFT_UPPER], colours[_C_LEFT_LOWER] = LEFT_COLOURS
        colours[_C_RIGHT_UPPER], colours[_C_RIGHT_LOWER] = RIGHT_COLOURS
        colours[:4] += rng.uniform(-20, 20, (4, 3))
        colours[_C_SHIRT] = _SHIRTS[rng.integers(len(_SHIRTS))] + rng.uniform(-15, 15, 3)
        colours[_C_TROUSERS] = _TROUSERS[rng.integers(len(_TROUSERS))] + rng.uniform(-10, 10, 3)
        colours[_C_SKIN] = _SKINS[rng.integers(len(_SKINS))] + rng.uniform(-10, 10, 3)
        colours[_C_HAIR] = _HAIRS[rng.integers(len(_HAIRS))] + rng.uniform(-10, 10, 3)
        gait = {
            "period": rng.uniform(50.0, 62.0),  # frames per gait cycle
            "phase": rng.uniform(0.0, 1.0),
            "stride": np.deg2rad(rng.uniform(20.0, 30.0)),
            "knee": np.deg2rad(rng.uniform(50.0, 65.0)),
            "arm": np.deg2rad(rng.uniform(12.0, 28.0)),
            "elbow": np.deg2rad(rng.uniform(10.0, 25.0)),
            "lean": np.deg2rad(rng.uniform(0.0, 8.0)),
            "loop": rng.uniform(500.0, 900.0) * rng.choice([-1.0, 1.0]),  # frames per circle
            "heading": rng.uniform(0.0, 2 * np.pi),
        }
        waves = np.stack(
            [
                rng.uniform(0.3, 1.0, (len(_ANGLES), _NUM_WAVES)),
                2 * np.pi / rng.uniform(30.0, 300.0, (len(_ANGLES), _NUM_WAVES)),
                rng.uniform(0.0, 2 * np.pi, (len(_ANGLES), _NUM_WAVES)),
            ],
            axis=1,
        )
        rows.append((lengths, radii, np.clip(colours, 0, 255), gait, waves))
    if not rows:
        raise ValueError("subject_ids is empty; pass at least one subject id.")
    return Subjects(
        lengths={k: np.array([r[0][k] for r in rows]) for k in NOMINAL_BONE_LENGTHS},
        radii={k: np.stack([r[1][k] for r in rows]) for k in _NOMINAL_RADII},
        colours=np.stack([r[2] for r in rows]),
        gait={k: np.array([r[3][k] for r in rows]) for k in rows[0][3]},
        waves=np.stack([r[4] for r in rows]),
    )


def _rot(axis: int, angle: np.ndarray) -> np.ndarray:
    """Rotation matrices (N, 3, 3) about a coordinate axis by `angle` (N,)."""
    c, s = np.cos(angle), np.sin(angle)
    one, zero = np.ones_like(angle), np.zeros_like(angle)
    if axis == 0:
        rows = ((one, zero, zero), (zero, c, -s), (zero, s, c))
    elif axis == 1:
        rows = ((c, zero, s), (zero, one, zero), (-s, zero, c))
    else:
        rows = ((c, -s, zero), (s, c, zero), (zero, zero, one))
    return np.stack([np.stack(r, axis=-1) for r in rows], axis=-2)


def _unit(*v: float) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


def _apply(rot: np.ndarray, vec: np.ndarray, length: np.ndarray) -> np.ndarray:
    """rot (N,3,3) @ vec (3,) scaled by length (N,) -> (N, 3)."""
    return (rot @ vec) * length[:, None]


def forward_kinematics(lengths: dict[str, np.ndarray], angles: dict[str, np.ndarray]) -> np.ndarray:
    """Joint positions from bone lengths and joint rotations.

    The body frame has x to the subject's left, y up and z forward; the pelvis
    is the origin. Every bone is a fixed unit direction, rotated by the chain
    of joint rotations above it and scaled by its length, and left and right
    use mirrored directions with the same length, so the pose has exactly
    symmetric bone lengths.

    Args:
      lengths: bone lengths (mm), keys of `NOMINAL_BONE_LENGTHS`, each (N,).
      angles: joint angles (radians), each (N,): yaw, pitch, roll (root),
        spine_flex/bend/twist, neck_flex/twist and, for side s in {l, r},
        s_hip_flex/abd/twist, s_knee, s_sh_flex/abd/twist, s_elbow. Flexion
        moves a limb forward; the knee bends backwards and the elbow forwards.

    Returns:
      Points (N, 23, 3) float64 in mm: the 17 joints followed by the left and
      right toe tips, the left and right hand tips, the head centre and a
      point in front of the face.
    """
    a = angles
    n = a["yaw"].shape[0]
    p = np.zeros((n, _NUM_POINTS, 3))
    rx, ry, rz = (lambda t: _rot(0, t)), (lambda t: _rot(1, t)), (lambda t: _rot(2, t))
    root = ry(a["yaw"]) @ rx(a["pitch"]) @ rz(a["roll"])
    spine = root @ rx(a["spine_flex"]) @ rz(a["spine_bend"]) @ ry(a["spine_twist"])
    chest = spine @ rx(0.5 * a["spine_flex"]) @ ry(0.5 * a["spine_twist"])
    neck = chest @ rx(a["neck_flex"]) @ ry(a["neck_twist"])
    p[:, sk.SPINE] = _apply(spine, _unit(0, 1, 0.06), lengths["spine"])
    p[:, sk.THORAX] = p[:, sk.SPINE] + _apply(chest, _unit(0, 1, -0.04), lengths["chest"])
    p[:, sk.NECK] = p[:, sk.THORAX] + _apply(neck, _unit(0, 1, 0.3), lengths["neck"])
    p[:, sk.HEAD] = p[:, sk.NECK] + _apply(neck, _unit(0, 1, -0.15), lengths["head"])
    p[:, _HEAD_CENTRE] = p[:, sk.NECK] + _apply(neck, _unit(0, 0.55, -0.35), lengths["head"])
    p[:, _FACE] = p[:, _HEAD_CENTRE] + _apply(neck, _unit(0, 0, 1), lengths["head"])
    for side, sign in (("l", 1.0), ("r", -1.0)):
        hip, knee, foot, toe = (
            (sk.L_HIP, sk.L_KNEE, sk.L_FOOT, _L_TOE) if side == "l"
            else (sk.R_HIP, sk.R_KNEE, sk.R_FOOT, _R_TOE))
        shoulder, elbow, wrist, hand = (
            (sk.L_SHOULDER, sk.L_ELBOW, sk.L_WRIST, _L_HAND) if side == "l"
            else (sk.R_SHOULDER, sk.R_ELBOW, sk.R_WRIST, _R_HAND))
        p[:, hip] = _apply(root, _unit(sign, -0.12, 0), lengths["hip"])
        thigh = (root @ rz(sign * a[f"{side}_hip_abd"]) @ rx(-a[f"{side}_hip_flex"])
                 @ ry(sign * a[f"{side}_hip_twist"]))
        p[:, knee] = p[:, hip] + _apply(thigh, _unit(0, -1, 0), lengths["thigh"])
        shin = thigh @ rx(a[f"{side}_knee"])
        p[:, foot] = p[:, knee] + _apply(shin, _unit(0, -1, 0), lengths["shin"])
        p[:, toe] = p[:, foot] + _apply(shin, _unit(0.1 * sign, -0.3, 1), lengths["foot"])
        p[:, shoulder] = p[:, sk.THORAX] + _apply(chest, _unit(sign, -0.1, -0.05),
                                                  lengths["shoulder"])
        upper = (chest @ rz(sign * a[f"{side}_sh_abd"]) @ rx(-a[f"{side}_sh_flex"])
                 @ ry(sign * a[f"{side}_sh_twist"]))
        p[:, elbow] = p[:, shoulder] + _apply(upper, _unit(0, -1, 0), lengths["upper_arm"])
        lower = upper @ rx(-a[f"{side}_elbow"])
        p[:, wrist] = p[:, elbow] + _apply(lower, _unit(0, -1, 0), lengths["forearm"])
        p[:, hand] = p[:, wrist] + _apply(lower, _unit(0, -1, 0.1), lengths["hand"])
    return p


def _walking_angles(gait: dict[str, np.ndarray], frame: np.ndarray) -> dict[str, np.ndarray]:
    """Joint angles of a walking gait at integer `frame`s (per-example gait rows)."""
    phi = 2 * np.pi * (frame / gait["period"] + gait["phase"])
    zero = np.zeros_like(phi)
    deg = np.deg2rad
    out = {
        "yaw": gait["heading"] + 2 * np.pi * frame / gait["loop"] + deg(5) * np.sin(phi),
        "pitch": gait["lean"] + deg(2) * np.sin(2 * phi),
        "roll": deg(3) * np.sin(phi),
        "spine_flex": deg(3) + zero,
        "spine_bend": -deg(2) * np.sin(phi),
        "spine_twist": -deg(9) * np.sin(phi),
        "neck_flex": deg(5) + zero,
        "neck_twist": deg(6) * np.sin(phi),
    }
    for side, shift in (("r", 0.0), ("l", np.pi)):
        ph = phi + shift
        out[f"{side}_hip_flex"] = gait["stride"] * np.sin(ph) + deg(4)
        out[f"{side}_hip_abd"] = deg(3) + zero
        out[f"{side}_hip_twist"] = deg(4) * np.sin(ph)
        swing = np.maximum(0.0, np.cos(ph + 0.5)) ** 2
        stance = np.maximum(0.0, np.cos(ph - 2.2)) ** 4
        out[f"{side}_knee"] = deg(5) + gait["knee"] * swing + deg(12) * stance
        # Arms swing against the leg of the same side.
        out[f"{side}_sh_flex"] = -gait["arm"] * np.sin(ph)
        out[f"{side}_sh_abd"] = deg(9) + zero
        out[f"{side}_sh_twist"] = deg(10) + zero
        out[f"{side}_elbow"] = gait["elbow"] + deg(20) * np.maximum(0.0, -np.sin(ph))
    return out


def _posing_angles(waves: np.ndarray, gait: dict[str, np.ndarray],
                   frame: np.ndarray) -> dict[str, np.ndarray]:
    """Joint angles of the "Posing" action: smooth, independent, within limits."""
    amp, freq, phase = waves[:, :, 0], waves[:, :, 1], waves[:, :, 2]  # (N, angles, waves)
    s = np.sum(amp * np.sin(freq * frame[:, None, None] + phase), axis=-1) / amp.sum(-1)
    out = {}
    for i, name in enumerate(_ANGLES):
        if name == "yaw":
            out[name] = gait["heading"] + 2 * np.pi * frame / (0.5 * gait["loop"]) + 1.5 * s[:, i]
            continue
        key = name[2:] if name[:2] in ("l_", "r_") else name
        lo, hi = np.deg2rad(_POSING_LIMITS[key])
        out[name] = lo + (hi - lo) * (0.5 + 0.5 * s[:, i])
    return out


def camera_rotations(num_cameras: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera rotations and distances of the synthetic cameras.

    Camera c stands at azimuth 2 pi c / num_cameras + pi / 4 (plus up to
    17 degrees of jitter), 5 to 25 degrees above the pelvis and 4 to 5.5 m
    from it, looking at it with a slight roll. Camera c's jitter, elevation,
    roll and distance are seeded by (seed, c); its base azimuth depends on
    `num_cameras`.

    Args:
      num_cameras: number of cameras (>= 1).
      seed: the data set seed.

    Returns:
      ``(rotations, distances)``: (C, 3, 3) world-to-camera rotations (rows:
      camera x right, y down, z forward in world coordinates, with world y up)
      and (C,) distances in mm.
    """
    if num_cameras < 1:
        raise ValueError(f"num_cameras must be at least 1, got {num_cameras}.")
    rots, dists = [], []
    for c in range(num_cameras):
        rng = np.random.default_rng([int(seed), _TAG_CAMERA, c])
        azimuth = 2 * np.pi * c / num_cameras + np.pi / 4 + rng.uniform(-0.3, 0.3)
        elevation = np.deg2rad(rng.uniform(5.0, 25.0))
        roll = np.deg2rad(rng.uniform(-3.0, 3.0))
        distance = rng.uniform(4000.0, 5500.0)
        position = np.array([np.cos(elevation) * np.sin(azimuth), np.sin(elevation),
                             np.cos(elevation) * np.cos(azimuth)])
        forward = -position
        right = np.cross(forward, [0.0, 1.0, 0.0])
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        rot = np.stack([right, down, forward])
        rots.append(_rot(2, np.array([roll]))[0] @ rot)
        dists.append(distance)
    return np.stack(rots), np.array(dists)


_NUM_BLOBS = 6
_BG_RES = 16  # the background is drawn at this resolution, then upsampled
_LIGHT = _unit(-0.4, -0.6, -0.7)  # direction towards the light, camera frame
_PIXEL_NOISE = 5.0  # standard deviation, in 0..255 units
_FAR, _RIM = 1e9, 1e6  # depth keys of empty pixels and of anti-aliased rims (mm)
_RENDER_PIXELS = 1 << 18  # pixels per rendering batch (keeps the buffers in cache)


def _muted(rng: np.random.Generator, shape: tuple[int, ...], saturation: float) -> np.ndarray:
    """Random RGB colours pulled towards their grey level by 1 - `saturation`."""
    colour = rng.uniform(20.0, 235.0, (*shape, 3))
    grey = colour.mean(axis=-1, keepdims=True)
    return grey + saturation * (colour - grey)


def _examples_block(block: int, *, seed: int, stream: int, subjects: Sequence[int],
                    num_cameras: int, walking_fraction: float) -> dict[str, np.ndarray]:
    """Per-example random draws of one block of `CHUNK_SIZE` examples."""
    rng = np.random.default_rng([int(seed), _TAG_EXAMPLES, int(stream), int(block)])
    n = CHUNK_SIZE
    u = rng.random((n, 4))
    return {
        "subject": np.asarray(subjects)[np.minimum((u[:, 0] * len(subjects)).astype(int),
                                                   len(subjects) - 1)],
        "camera": np.minimum((u[:, 1] * num_cameras).astype(int), num_cameras - 1),
        "action": np.where(u[:, 2] < walking_fraction, WALKING, POSING),
        "frame": np.minimum((u[:, 3] * FRAMES_PER_SEQUENCE).astype(int), FRAMES_PER_SEQUENCE - 1),
        "zoom": rng.uniform(0.92, 1.06, n),
        "shift": rng.uniform(-0.03, 0.03, (n, 2)),
        "bg_colours": _muted(rng, (n, 2), 0.45),
        "bg_angle": rng.uniform(0, 2 * np.pi, n),
        "blob_centre": rng.uniform(-0.1, 1.1, (n, _NUM_BLOBS, 2)),
        "blob_radius": rng.uniform(0.06, 0.3, (n, _NUM_BLOBS, 2)),
        "blob_colour": _muted(rng, (n, _NUM_BLOBS), 0.6),
        "blob_opacity": rng.uniform(0.3, 0.9, (n, _NUM_BLOBS)),
    }


def _upsample_matrix(src: int, dst: int) -> np.ndarray:
    """(dst, src) matrix of linear interpolation between pixel centres."""
    pos = np.clip((np.arange(dst) + 0.5) * src / dst - 0.5, 0, src - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, src - 1)
    w = pos - lo
    m = np.zeros((dst, src))
    m[np.arange(dst), lo] += 1 - w
    m[np.arange(dst), hi] += w
    return m


def _background(draws: dict[str, np.ndarray], image_size: int) -> np.ndarray:
    """Cluttered backgrounds (N, H, W, 3) float32 in 0..255: gradient + soft blobs."""
    r = _BG_RES
    g = (np.arange(r, dtype=np.float32) + 0.5) / r
    y, x = g[None, :, None], g[None, None, :]
    draws = {k: v.astype(np.float32) for k, v in draws.items() if k.startswith(("bg_", "blob_"))}
    ang = draws["bg_angle"][:, None, None]
    ramp = 0.5 + (np.cos(ang) * (x - 0.5) + np.sin(ang) * (y - 0.5))  # (N, r, r)
    c0, c1 = draws["bg_colours"][:, 0], draws["bg_colours"][:, 1]
    img = c0[:, None, None] + ramp[..., None] * (c1 - c0)[:, None, None]
    for k in range(_NUM_BLOBS):
        cx, cy = draws["blob_centre"][:, k, 0], draws["blob_centre"][:, k, 1]
        rx, ry = draws["blob_radius"][:, k, 0], draws["blob_radius"][:, k, 1]
        q = (((x - cx[:, None, None]) / rx[:, None, None]) ** 2
             + ((y - cy[:, None, None]) / ry[:, None, None]) ** 2)
        alpha = np.clip(2.0 * (1.0 - q), 0.0, 1.0) * draws["blob_opacity"][:, k, None, None]
        img += alpha[..., None] * (draws["blob_colour"][:, k, None, None] - img)
    n = img.shape[0]
    up = _upsample_matrix(r, image_size).astype(np.float32)  # (H, r)
    img = np.matmul(up, img.reshape(n, r, r * 3)).reshape(n, image_size, r, 3)  # rows
    img = np.matmul(up, img.transpose(0, 1, 3, 2).reshape(n * image_size, 3, r).transpose(0, 2, 1))
    return img.reshape(n, image_size, image_size, 3)


def _project(points: np.ndarray, distance: np.ndarray, zoom: np.ndarray, shift: np.ndarray,
             image_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Perspective projection of root-relative camera-frame points into the crop.

    The camera is `distance` mm from the root and the crop is centred on the
    root's image (plus `shift`, a fraction of the image size), with a focal
    length that makes 900 mm span 0.43 `zoom` of the image at the root's depth.

    Returns:
      ``(uv, depth, px_per_mm)``: pixel coordinates (N, P, 2) (x right, y down,
      pixel centres at half-integers), depths (N, P) in mm and the scale
      (N, P) in pixels per mm at each point.
    """
    depth = points[..., 2] + distance[:, None]
    focal = zoom * 0.43 * image_size * distance / 900.0  # pixels
    centre = image_size * (0.5 + shift)  # (N, 2)
    uv = focal[:, None, None] * points[..., :2] / depth[..., None] + centre[:, None, :]
    return uv, depth, focal[:, None] / depth


def _render(points: np.ndarray, facing: np.ndarray, radii_mm: np.ndarray,
            colours: np.ndarray, distance: np.ndarray, draws: dict[str, np.ndarray],
            noise: np.ndarray, image_size: int) -> np.ndarray:
    """Renders bodies over backgrounds.

    Args:
      points: (N, 23, 3) root-relative camera-frame points, mm.
      facing: (N, 3) unit forward direction of the head, camera frame.
      radii_mm: (N, P, 2) capsule radii at both ends.
      colours: (N, 8, 3) palettes.
      distance: (N,) camera-to-root distance, mm.
      draws: per-example draws (zoom, shift, background).
      noise: (N, H, W, 3) uint8 uniformly random bytes.
      image_size: H = W.

    Returns:
      Images (N, H, W, 3) uint8.
    """
    n, size = points.shape[0], image_size
    uv, depth, px_per_mm = _project(points, distance, draws["zoom"], draws["shift"], size)

    f32 = np.float32
    col = lambda v: np.asarray(v, f32)[:, None, None]  # noqa: E731  (N,) -> (N, 1, 1)
    # Per-pixel buffer: depth key, shade, colour slot, coverage. Gathering and
    # scattering whole rows of it is much cheaper than four separate buffers.
    buf = np.zeros((n * size * size, 4), f32)
    buf[:, 0] = _FAR
    rows16 = buf.view(np.complex128).reshape(-1)  # one 16-byte item per pixel
    base = (np.arange(n) * size * size)[:, None, None]
    for p, (ia, ib, _, cslot) in enumerate(_PRIMITIVES):
        a, b = uv[:, ia], uv[:, ib]  # (N, 2)
        ra_mm, rb_mm = radii_mm[:, p, 0], radii_mm[:, p, 1]
        ra, rb = ra_mm * px_per_mm[:, ia], rb_mm * px_per_mm[:, ib]
        # A window of pixels that holds the capsule in every image of the batch.
        rmax = np.maximum(ra, rb) + 1.5
        lo = np.floor(np.minimum(a, b) - rmax[:, None]).astype(int)
        hi = np.ceil(np.maximum(a, b) + rmax[:, None]).astype(int)
        win = np.clip(np.max(hi - lo, axis=0), 1, size)  # (2,) width, height
        origin = np.clip(lo, 0, size - win[None, :])  # (N, 2)
        xs = origin[:, 0, None] + np.arange(win[0])[None, :]  # (N, ww)
        ys = origin[:, 1, None] + np.arange(win[1])[None, :]  # (N, wh)
        flat = (base + ys[:, :, None] * size + xs[:, None, :]).ravel()
        x = (xs + 0.5).astype(f32)[:, None, :] - col(a[:, 0])  # (N, 1, ww), relative to a
        y = (ys + 0.5).astype(f32)[:, :, None] - col(a[:, 1])  # (N, wh, 1)
        ab = b - a
        inv_len2 = 1.0 / np.maximum(np.sum(ab * ab, axis=1), 1e-6)
        abx, aby = col(ab[:, 0]), col(ab[:, 1])
        t = x * col(ab[:, 0] * inv_len2) + y * col(ab[:, 1] * inv_len2)
        np.clip(t, 0.0, 1.0, out=t)
        dx = x - t * abx
        dy = y - t * aby
        d2 = dx * dx + dy * dy
        r = col(ra) + t * col(rb - ra)
        inv_r = 1.0 / np.maximum(r, f32(1e-3))
        d = np.sqrt(d2)
        cov = np.clip(r - d + f32(0.5), 0.0, 1.0)
        nz = np.sqrt(np.maximum(f32(0.0), 1.0 - d2 * inv_r * inv_r))
        # Depth of the capsule's front surface; pixels only partly covered
        # (anti-aliased rim) lose against any fully covered one.
        z = (col(depth[:, ia]) + t * col(depth[:, ib] - depth[:, ia])
             - (col(ra_mm) + t * col(rb_mm - ra_mm)) * nz)
        z += _RIM * (d >= r) + _FAR * (cov <= 0)
        lam = (dx * f32(_LIGHT[0]) + dy * f32(_LIGHT[1])) * inv_r - nz * f32(_LIGHT[2])
        s = f32(0.35) + f32(0.65) * np.maximum(lam, f32(0.0))
        if p == _HEAD_PRIMITIVE:
            # Face where the sphere's normal points the way the head faces.
            towards = ((dx * col(facing[:, 0]) + dy * col(facing[:, 1])) * inv_r
                       - nz * col(facing[:, 2]))
            this_slot = np.where(towards > -0.1, f32(_C_SKIN), f32(_C_HAIR)).ravel()
        else:
            this_slot = f32(cslot)
        old = rows16[flat].view(f32).reshape(-1, 4)
        z, s, cov = z.ravel(), s.ravel(), cov.ravel()
        wins = (z < old[:, 0]).astype(f32)
        new = np.empty_like(old)
        new[:, 0] = np.minimum(z, old[:, 0])
        new[:, 1] = old[:, 1] + wins * (s - old[:, 1])
        new[:, 2] = old[:, 2] + wins * (this_slot - old[:, 2])
        new[:, 3] = np.maximum(cov, old[:, 3])
        rows16[flat] = new.view(np.complex128).reshape(-1)
    which = (np.arange(n) * _NUM_COLOURS)[:, None] + buf[:, 2].reshape(n, -1).astype(np.intp)
    palette = colours.astype(f32).reshape(-1, 3)
    body = np.stack([palette[:, c][which] for c in range(3)], axis=-1)  # (N, HW, 3)
    body *= buf[:, 1].reshape(n, -1, 1)
    img = _background(draws, size).reshape(n, size * size, 3)
    img += buf[:, 3].reshape(n, -1, 1) * (body - img)
    img = img.reshape(n, size, size, 3)
    # Uniform pixel noise with standard deviation _PIXEL_NOISE.
    img += (noise.astype(f32) - f32(127.5)) * f32(_PIXEL_NOISE * np.sqrt(12.0) / 256.0)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def generate(
    num_examples: int,
    *,
    image_size: int = 64,
    seed: int = 0,
    subjects: Sequence[int] | None = None,
    num_subjects: int = 5,
    num_cameras: int = 4,
    walking_fraction: float = 0.75,
    stream: int = 0,
    start: int = 0,
    render: bool = True,
    joints_dtype: type = np.float32,
) -> dict[str, np.ndarray]:
    """Generates examples ``start .. start + num_examples - 1`` of a synthetic set.

    Args:
      num_examples: how many examples to return (>= 0).
      image_size: side of the square images in pixels (>= 16); 64 for CPU
        experiments, 128 as in the paper.
      seed: the data set seed; it fixes subjects, cameras and examples.
      subjects: ids of the subjects to draw from (e.g. ``(0, 1, 2, 3, 4)`` for
        training and ``(5, 6)`` for testing); default ``range(num_subjects)``.
      num_subjects: number of subjects when `subjects` is None.
      num_cameras: number of cameras around the subject.
      walking_fraction: probability that an example is from the walking
        sequence; the others are random poses (action ``"Posing"``).
      stream: selects an independent sequence of examples for the same seed
        (use one stream per split).
      start: index of the first example in the stream.
      render: if False, skip the images (``image`` is then absent), for
        cheap access to the poses.
      joints_dtype: dtype of ``joints3d``; float64 keeps the exact symmetry.

    Returns:
      A dict of numpy arrays with leading dimension N = num_examples:
      ``image`` (N, H, W, 3) uint8 RGB; ``joints3d`` (N, 17, 3) mm,
      root-relative, camera coordinates (x right, y down, z forward);
      ``joints2d`` (N, 17, 2) float32, the joints' pixel coordinates (x, y)
      in the image (not stored by the TFDS builder);
      ``subject``, ``camera``, ``action`` (index into
      `pose.skeleton.ACTIONS`), ``frame`` (frame in the subject's
      sequence) int32; ``index`` (position in the stream) int64.

    Example:
      >>> from pose import synthetic
      >>> data = synthetic.generate(4, image_size=32)
      >>> data["image"].shape, data["joints3d"].shape
      ((4, 32, 32, 3), (4, 17, 3))
    """
    if num_examples < 0 or start < 0:
        raise ValueError(f"num_examples and start must be >= 0, got {num_examples}, {start}.")
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16 pixels, got {image_size}.")
    if not 0.0 <= walking_fraction <= 1.0:
        raise ValueError(f"walking_fraction must lie in [0, 1], got {walking_fraction}.")
    if subjects is None:
        subjects = range(num_subjects)
    subject_ids = tuple(int(s) for s in subjects)
    if not subject_ids:
        raise ValueError("subjects is empty; pass at least one subject id.")
    first, last = start // CHUNK_SIZE, (start + num_examples - 1) // CHUNK_SIZE
    blocks = [
        _examples_block(k, seed=seed, stream=stream, subjects=subject_ids,
                        num_cameras=num_cameras, walking_fraction=walking_fraction)
        for k in range(first, last + 1)
    ] if num_examples else []
    offset = start - first * CHUNK_SIZE
    draws = {k: np.concatenate([b[k] for b in blocks])[offset:offset + num_examples]
             for k in (blocks[0] if blocks else {})}
    index = np.arange(start, start + num_examples, dtype=np.int64)
    if num_examples == 0:
        out = {"joints3d": np.zeros((0, sk.NUM_JOINTS, 3), joints_dtype),
               "joints2d": np.zeros((0, sk.NUM_JOINTS, 2), np.float32)}
        if render:
            out["image"] = np.zeros((0, image_size, image_size, 3), np.uint8)
        for k in ("subject", "camera", "action", "frame"):
            out[k] = np.zeros((0,), np.int32)
        out["index"] = index
        return out

    uniq, row = np.unique(draws["subject"], return_inverse=True)
    body = make_subjects(uniq, seed)
    lengths = {k: v[row] for k, v in body.lengths.items()}
    gait = {k: v[row] for k, v in body.gait.items()}
    frame = draws["frame"].astype(np.float64)
    walking = draws["action"] == WALKING
    angles_walk = _walking_angles(gait, frame)
    angles_pose = _posing_angles(body.waves[row], gait, frame)
    angles = {k: np.where(walking, angles_walk[k], angles_pose[k]) for k in _ANGLES}
    points = forward_kinematics(lengths, angles)  # body frame, pelvis at 0

    rotations, distances = camera_rotations(num_cameras, seed)
    cam_rot = rotations[draws["camera"]]  # (N, 3, 3)
    points_cam = np.einsum("nij,npj->npi", cam_rot, points)
    out: dict[str, np.ndarray] = {"joints3d": points_cam[:, : sk.NUM_JOINTS].astype(joints_dtype)}
    distance = distances[draws["camera"]]
    uv, _, _ = _project(points_cam[:, : sk.NUM_JOINTS], distance, draws["zoom"], draws["shift"],
                        image_size)
    out["joints2d"] = uv.astype(np.float32)
    if render:
        facing = points_cam[:, _FACE] - points_cam[:, _HEAD_CENTRE]
        facing /= np.linalg.norm(facing, axis=-1, keepdims=True)
        radii = np.stack([body.radii[key][row] for _, _, key, _ in _PRIMITIVES], axis=1)
        colours = body.colours[row]
        images = np.empty((num_examples, image_size, image_size, 3), np.uint8)
        for k in range(first, last + 1):
            # Noise is drawn per block of CHUNK_SIZE, like the other draws.
            lo = max(k * CHUNK_SIZE, start) - start
            hi = min((k + 1) * CHUNK_SIZE, start + num_examples) - start
            noise = np.frombuffer(
                np.random.default_rng([int(seed), _TAG_NOISE, int(stream), k]).bytes(
                    CHUNK_SIZE * image_size * image_size * 3), np.uint8
            ).reshape(CHUNK_SIZE, image_size, image_size, 3)
            skip = lo + start - k * CHUNK_SIZE
            batch = max(1, _RENDER_PIXELS // (image_size * image_size))
            for i in range(lo, hi, batch):
                j = min(i + batch, hi)
                images[i:j] = _render(
                    points_cam[i:j], facing[i:j], radii[i:j], colours[i:j], distance[i:j],
                    {key: v[i:j] for key, v in draws.items()},
                    noise[skip + i - lo: skip + j - lo], image_size)
        out["image"] = images
    out["subject"] = draws["subject"].astype(np.int32)
    out["camera"] = draws["camera"].astype(np.int32)
    out["action"] = draws["action"].astype(np.int32)
    out["frame"] = draws["frame"].astype(np.int32)
    out["index"] = index
    return out
