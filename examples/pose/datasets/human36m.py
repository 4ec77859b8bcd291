"""TFDS builder of Human3.6M crops, from a manual download.

Human3.6M (Ionescu et al., TPAMI 2014) is licensed; users with access crop
the videos themselves and place the crops and poses in ``manual_dir``
(``~/tensorflow_datasets/downloads/manual/`` unless given) as follows::

    manual_dir/
      S1/
        Walking.54138969/          one folder per sequence and camera:
          000001.jpg               "<action>[ <take>].<camera id>"
          000002.jpg               square crops centred on the subject,
          ...                      file name = frame number (1-based)
        Walking.54138969.npz       poses of that folder (or .npy, see below)
        Walking 1.55011271/
        Walking 1.55011271.npy
        ...
      S5/ ...

* Subjects are folders ``S<number>``. The action (before the first dot, take
  number optional) must be a Human3.6M action (`pose.skeleton.ACTIONS`;
  ``TakingPhoto`` and ``WalkingDog`` are accepted). The camera id is one of
  ``54138969, 55011271, 58860488, 60457274`` (cameras 0-3) or a digit 0-3.
* Images are ``.jpg``, ``.jpeg`` or ``.png`` RGB crops of any size; they are
  resized to the config's ``image_size`` when needed.
* Poses are in millimetres, in the camera's coordinates. A ``.npy`` holds an
  array ``(F, 17, 3)`` (this package's joint order, `pose.skeleton`) or
  ``(F, 32, 3)`` (the full motion-capture skeleton, reduced with
  ``H36M_32_TO_17``); flat ``(F, 51)`` / ``(F, 96)`` are accepted. Row ``i``
  belongs to the image whose frame number is ``i + 1``. A ``.npz`` holds the
  same array under ``joints3d`` and may add ``frames`` ``(F,)``, the frame
  number of every row. Rows without an image are skipped (so full-rate poses
  fit subsampled crops); an image without a row is an error. Poses are made
  root-relative (pelvis subtracted) while building.

Splits: ``test`` holds the test subjects (default S9, S11). Frames of the
training subjects (default S1, S5, S6, S7, S8) are cut into blocks of
``block_frames`` consecutive frames, and each block (all cameras together)
goes to ``train``, ``validation`` or ``pool`` with probabilities
``train_fraction``, ``validation_fraction`` and the rest, from a hash of
(seed, subject, sequence, block); so the labeled set D, the constraint set C
and the validation set never share a moment of a sequence.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import zlib
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from pose import skeleton as sk
from pose.datasets._features import SPLITS, encode_image, pose_features

CAMERA_IDS: tuple[str, ...] = ("54138969", "55011271", "58860488", "60457274")
"""Human3.6M camera ids; camera ``c`` of an example is the index in this tuple."""

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Human3.6M requires a licence (http://vision.imar.ro/human3.6m). Crop the
videos around the subject and put the crops and the 3D poses (mm, camera
coordinates) in manual_dir as S<subject>/<Action>[ <take>].<camera>/<frame>.jpg
plus S<subject>/<Action>[ <take>].<camera>.npy (F, 17 or 32, 3) or .npz
(joints3d, optional frames). See the docstring of
pose.datasets.human36m for the details.
"""


@dataclasses.dataclass(eq=False)
class Human36mConfig(tfds.core.BuilderConfig):
    """Which part of Human3.6M to build, and how to split it.

    Attributes:
      image_size: side of the stored square images.
      actions: actions to keep (names in `pose.skeleton.ACTIONS`), or
        an empty tuple for all.
      train_subjects: subjects of train, pool and validation.
      test_subjects: subjects of test.
      train_fraction: share of training-subject blocks labeled (``train``).
      validation_fraction: share of training-subject blocks in ``validation``;
        the rest form the unlabeled ``pool``.
      block_frames: consecutive frames kept together in one split.
      frame_step: keep every `frame_step`-th frame (by frame number).
      seed: seed of the block assignment.
    """

    image_size: int = 128
    actions: tuple[str, ...] = ("Walking",)
    train_subjects: tuple[int, ...] = (1, 5, 6, 7, 8)
    test_subjects: tuple[int, ...] = (9, 11)
    train_fraction: float = 0.25
    validation_fraction: float = 0.05
    block_frames: int = 50
    frame_step: int = 1
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class _Sequence:
    subject: int
    name: str  # folder name, e.g. "Walking 1.54138969"
    action: int
    camera: int
    images: dict[int, str]  # frame number -> path
    joints: np.ndarray  # (F, 17, 3) mm
    frames: np.ndarray  # (F,) frame number of each row


def _parse_camera(text: str, path: str) -> int:
    if text in CAMERA_IDS:
        return CAMERA_IDS.index(text)
    if text.isdigit() and int(text) < len(CAMERA_IDS):
        return int(text)
    raise ValueError(f"{path}: camera {text!r} is not a Human3.6M camera id "
                     f"({', '.join(CAMERA_IDS)}) or a digit 0-3; rename the folder "
                     "'<Action>[ <take>].<camera>'.")


def _load_joints(stem: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Reads ``stem.npz`` or ``stem.npy``; returns (joints (F, 17, 3) mm, frames or None)."""
    frames = None
    if os.path.exists(stem + ".npz"):
        with np.load(stem + ".npz") as f:
            if "joints3d" not in f:
                raise ValueError(f"{stem}.npz has no 'joints3d' array (keys: {list(f.keys())}).")
            joints = np.asarray(f["joints3d"], np.float64)
            if "frames" in f:
                frames = np.asarray(f["frames"]).astype(np.int64).reshape(-1)
    elif os.path.exists(stem + ".npy"):
        joints = np.asarray(np.load(stem + ".npy"), np.float64)
    else:
        raise ValueError(f"No poses for the images in {stem}/: expected {stem}.npz or {stem}.npy.")
    if joints.ndim == 2 and joints.shape[1] in (3 * sk.NUM_JOINTS, 96):
        joints = joints.reshape(len(joints), -1, 3)
    if joints.ndim != 3 or joints.shape[1:] not in ((sk.NUM_JOINTS, 3), (32, 3)):
        raise ValueError(f"Poses of {stem} have shape {joints.shape}; expected (F, 17, 3) or "
                         "(F, 32, 3) (or flat (F, 51) / (F, 96)).")
    if joints.shape[1] == 32:
        joints = joints[:, list(sk.H36M_32_TO_17)]
    if frames is not None and len(frames) != len(joints):
        raise ValueError(f"{stem}.npz: 'frames' has {len(frames)} entries for {len(joints)} poses.")
    joints = joints - joints[:, :1]  # root-relative
    bones = np.linalg.norm(joints[:, 1:] - joints[:, [p for p in sk.PARENTS[1:]]], axis=-1)
    if len(joints) and np.median(bones) < 10.0:
        raise ValueError(f"Poses of {stem} look like metres (median bone {np.median(bones):.3g}); "
                         "store millimetres.")
    return joints, frames


def scan_manual_dir(manual_dir: str, config: Human36mConfig) -> list[_Sequence]:
    """Finds the sequences of `config`'s subjects and actions under `manual_dir`.

    Args:
      manual_dir: the folder laid out as in the module docstring.
      config: the builder config (subjects, actions).

    Returns:
      The sequences sorted by (subject, folder name).
    """
    if not os.path.isdir(manual_dir):
        raise ValueError(
            f"manual_dir {manual_dir!r} is not a folder.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}")
    wanted_subjects = set(config.train_subjects) | set(config.test_subjects)
    wanted_actions = {sk.action_index(a) for a in config.actions}
    out = []
    for entry in sorted(os.listdir(manual_dir)):
        match = re.fullmatch(r"S(\d+)", entry)
        if not match or int(match.group(1)) not in wanted_subjects:
            continue
        subject_dir = os.path.join(manual_dir, entry)
        for name in sorted(os.listdir(subject_dir)):
            seq_dir = os.path.join(subject_dir, name)
            if not os.path.isdir(seq_dir):
                continue
            action_text, _, camera_text = name.rpartition(".")
            if not action_text:
                raise ValueError(f"{seq_dir}: folder names must read '<Action>[ <take>].<camera>'.")
            action = sk.action_index(action_text)
            if wanted_actions and action not in wanted_actions:
                continue
            camera = _parse_camera(camera_text, seq_dir)
            images = {}
            for file in os.listdir(seq_dir):
                stem, suffix = os.path.splitext(file)
                if suffix.lower() in _IMAGE_SUFFIXES and stem.isdigit():
                    images[int(stem)] = os.path.join(seq_dir, file)
            if not images:
                continue
            joints, frames = _load_joints(seq_dir)
            if frames is None:
                frames = np.arange(1, len(joints) + 1)
            missing = sorted(set(images) - set(frames.tolist()))
            if missing:
                raise ValueError(f"{seq_dir}: images of frames {missing[:5]} have no pose row; "
                                 "add them to the poses or give 'frames' in the .npz.")
            out.append(_Sequence(int(match.group(1)), name, action, camera, images,
                                 joints, frames))
    if not out:
        raise ValueError(f"No sequences of subjects {sorted(wanted_subjects)} and actions "
                         f"{list(config.actions) or 'all'} under {manual_dir!r}.\n"
                         f"{MANUAL_DOWNLOAD_INSTRUCTIONS}")
    return out


def assign_split(config: Human36mConfig, subject: int, sequence: str, frame: int) -> str | None:
    """Split of a frame (see the module docstring); None if it is not kept.

    Args:
      config: the builder config.
      subject: subject number.
      sequence: sequence folder name; its camera part is ignored so all views
        of a moment share a split.
      frame: frame number.

    Returns:
      ``"train"``, ``"pool"``, ``"validation"``, ``"test"`` or None.
    """
    if (frame - 1) % config.frame_step:
        return None
    if subject in config.test_subjects:
        return "test"
    if subject not in config.train_subjects:
        return None
    take = sequence.rpartition(".")[0]
    block = (frame - 1) // config.block_frames
    u = zlib.crc32(f"{config.seed}/{subject}/{take}/{block}".encode()) / 2.0**32
    if u < config.train_fraction:
        return "train"
    if u < config.train_fraction + config.validation_fraction:
        return "validation"
    return "pool"


class Human36m(tfds.core.GeneratorBasedBuilder):
    """Human3.6M crops with 17 root-relative 3D joints (mm), from a manual download."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First version."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [
        Human36mConfig(name="walking_128", description="Walking, 128x128 (the paper's data).",
                       image_size=128),
        Human36mConfig(name="walking_64", description="Walking, 64x64.", image_size=64),
        Human36mConfig(name="all_128", description="All actions, 128x128.", image_size=128,
                       actions=()),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Human3.6M crops with 17 root-relative 3D joints in camera "
                        "coordinates (mm).",
            features=pose_features(self.builder_config.image_size, "jpeg"),
            supervised_keys=("image", "joints3d"),
            homepage="http://vision.imar.ro/human3.6m",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        config: Human36mConfig = self.builder_config
        sequences = scan_manual_dir(os.fspath(dl_manager.manual_dir), config)
        items: dict[str, list[tuple[_Sequence, int, int]]] = {s: [] for s in SPLITS}
        for seq in sequences:
            row_of = {int(f): i for i, f in enumerate(seq.frames)}
            for frame in sorted(seq.images):
                split = assign_split(config, seq.subject, seq.name, frame)
                if split is not None:
                    items[split].append((seq, frame, row_of[frame]))
        return {split: self._generate_examples(items[split]) for split in SPLITS if items[split]}

    def _generate_examples(self, items: list[tuple[_Sequence, int, int]]) -> Iterator:
        size = self.builder_config.image_size
        for index, (seq, frame, row) in enumerate(items):
            yield f"S{seq.subject}/{seq.name}/{frame}", {
                "image": _read_image(seq.images[frame], size),
                "joints3d": seq.joints[row].astype(np.float32),
                "subject": seq.subject,
                "camera": seq.camera,
                "action": seq.action,
                "frame": frame,
                "index": index,
            }


def _read_image(path: str, size: int) -> bytes:
    """JPEG bytes of the image at `path`, resized to size x size if needed."""
    from PIL import Image

    with open(path, "rb") as f:
        raw = f.read()
    image = Image.open(io.BytesIO(raw))
    if image.format == "JPEG" and image.mode == "RGB" and image.size == (size, size):
        return raw
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return encode_image(np.asarray(image), "jpeg")
