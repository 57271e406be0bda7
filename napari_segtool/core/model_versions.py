"""Model QC: held-out reviewed regions, AP@0.5 / F1 of every model version of a project, roll back.

A stripe of every reviewed plane (the right :data:`HOLDOUT_FRACTION` of its width) is held
out: :meth:`~napari_segtool.core.project.Project.training_mask` leaves it out of training, and
:func:`score_model` predicts the plane and scores the model on it. Each model the project
trains is recorded with :func:`record_version` (``versions.json`` in the project folder, atomic
writes under the project lock); :func:`versions` lists them with their scores, rescoring the
ones scored on another held-out set (reviewed planes changed since), so the user sees whether
the last round helped; :func:`roll_back` makes an earlier version the project's model again
(nothing is deleted).

The split is a fixed function of the plane's shape, so it never moves between rounds: a pixel
held out once is never trained on later.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from napari_segtool.core.edits import HOLDOUT_FRACTION, HOLDOUT_MIN_PX, holdout_mask
from napari_segtool.io.atomic import atomic_write_json
from napari_segtool.kernel.errors import SegtoolError

if TYPE_CHECKING:  # pragma: no cover
    from napari_segtool.core.model import SegModel
    from napari_segtool.core.project import Project

__all__ = ["HOLDOUT_FRACTION", "HOLDOUT_MIN_PX", "VERSIONS_FILE", "VersionError", "holdout_mask",
           "HeldOutPlane", "heldout_planes", "ModelScore", "score_model", "ModelVersion", "record_version",
           "versions", "current_version", "roll_back"]

VERSIONS_FILE = "versions.json"


class VersionError(SegtoolError):
    """A model version that the project does not have."""


@dataclass
class HeldOutPlane:
    """One held-out region: the plane's image, its reviewed labels and the held-out columns ``x0:``."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    x0: int

    @property
    def n_objects(self) -> int:
        return int(np.unique(self.labels[:, self.x0:]).size - (self.labels[:, self.x0:] == 0).any())


def heldout_planes(project: "Project") -> list[HeldOutPlane]:
    """The held-out stripes of every reviewed plane of the project that has labels and its image stored."""
    out = []
    for entry in project.entries():
        for index in sorted({tuple(i) for i in entry.reviewed if len(i) == entry.n_stack}):
            plane = project.load_plane(entry.key, index)
            image = project.load_image_plane(entry.key, index)
            if plane is None or image is None or image.shape[:2] != plane[0].shape:
                continue
            mask = holdout_mask(plane[0].shape)
            if not mask.any():
                continue
            x0 = int(np.flatnonzero(mask[0])[0])
            out.append(HeldOutPlane(f"{entry.name}" + (f" plane {index}" if index else ""), image, plane[0], x0))
    return out


def _signature(planes: Sequence[HeldOutPlane]) -> str:
    """Identifies a held-out set: scores are comparable only when it is the same."""
    digest = hashlib.sha1()
    for p in planes:
        digest.update(p.name.encode())
        digest.update(np.ascontiguousarray(p.labels[:, p.x0:]).tobytes())
    return digest.hexdigest()[:12]


@dataclass
class ModelScore:
    """AP@0.5 and F1 (IoU 0.5) of a model on the held-out regions (``heldout``: their signature)."""

    ap50: float
    f1: float
    mean_ap: float
    n_objects: int
    n_planes: int
    heldout: str


def score_model(model: "SegModel", planes: Sequence[HeldOutPlane]) -> ModelScore | None:
    """Predict each held-out plane whole (the training columns give context) and score its stripe.

    Returns ``None`` when there is no held-out object to score against. Scores of several
    planes are pooled by object count.
    """
    from napari_segtool.core.predict import predict
    from napari_segtool.ops.metrics import instance_scores

    planes = [p for p in planes if p.n_objects]
    if not planes:
        return None
    scores, weights = [], []
    for p in planes:
        image = np.asarray(p.image)
        image = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
        pred = predict(model, image, axes="YXC" if image.ndim == 3 else "YX").labels
        scores.append(instance_scores(pred[:, p.x0:], p.labels[:, p.x0:]))
        weights.append(p.n_objects)
    w = np.asarray(weights, float) / sum(weights)
    pooled = {k: float(sum(wi * s[k] for wi, s in zip(w, scores))) for k in ("ap50", "f1_50", "mean_ap")}
    return ModelScore(pooled["ap50"], pooled["f1_50"], pooled["mean_ap"], int(sum(weights)), len(planes),
                      _signature(planes))


@dataclass
class ModelVersion:
    """One model the project trained: its folder name in ``models/``, what it was fine-tuned from, its score."""

    name: str
    created: str
    parent: str | None = None
    score: ModelScore | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelVersion":
        score = data.get("score")
        return cls(str(data["name"]), str(data.get("created", "")), data.get("parent"),
                   ModelScore(**score) if isinstance(score, dict) else None, dict(data.get("extra", {})))


def _read(project: "Project") -> list[ModelVersion]:
    import json

    path = project.root / VERSIONS_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    out = []
    for item in data if isinstance(data, list) else []:
        try:
            out.append(ModelVersion.from_dict(item))
        except (KeyError, TypeError):
            continue
    return out


def _write(project: "Project", items: Sequence[ModelVersion]) -> None:
    atomic_write_json(project.root / VERSIONS_FILE, [v.to_dict() for v in items])


def _load(project: "Project", name: str) -> "SegModel":
    from napari_segtool.core.checkpoint import load_model

    return load_model(project.model_path(name))


def record_version(project: "Project", name: str, model: "SegModel | None" = None, parent: str | None = None,
                   **extra: Any) -> ModelVersion:
    """Record the project model ``name`` (saved in ``models/``) as a new version, scored on the held-out regions.

    ``model`` saves loading it again; ``parent`` is what it was fine-tuned from. Recording
    a name again replaces its entry.
    """
    if not project.model_path(name).exists():
        raise VersionError(f"the project has no model '{name}'")
    model = model if model is not None else _load(project, name)
    score = score_model(model, heldout_planes(project))
    version = ModelVersion(name, time.strftime("%Y-%m-%dT%H:%M:%S"), parent, score, extra)
    with project.locked():
        items = [v for v in _read(project) if v.name != name]
        _write(project, items + [version])
    return version


def versions(project: "Project", rescore: bool = True,
             load: Callable[[str], "SegModel"] | None = None) -> list[ModelVersion]:
    """Every recorded version still in ``models/``, oldest first.

    With ``rescore``, a version scored on another held-out set than today's (reviewed planes
    were added or changed since) is scored again, so all scores in the list compare.
    """
    items = [v for v in _read(project) if project.model_path(v.name).exists()]
    if not rescore or not items:
        return items
    planes = heldout_planes(project)
    planes = [p for p in planes if p.n_objects]
    now = _signature(planes) if planes else None
    stale = [v for v in items if (v.score.heldout if v.score else None) != now]
    if not stale:
        return items
    for v in stale:
        v.score = score_model((load or (lambda n: _load(project, n)))(v.name), planes)
    with project.locked():
        fresh = {v.name: v for v in items}
        _write(project, [fresh.get(v.name, v) for v in _read(project)])
    return items


def current_version(project: "Project") -> str | None:
    """The project model the project is set to use (its ``model`` setting), when it is one of its versions."""
    value = project.settings.get("model")
    if not isinstance(value, str):
        return None
    name = value.replace("\\", "/").rstrip("/").split("/")[-1]
    return name if any(v.name == name for v in _read(project)) else None


def roll_back(project: "Project", name: str) -> ModelVersion:
    """Make the earlier version ``name`` the project's model again; later versions stay on disk."""
    found = next((v for v in _read(project) if v.name == name), None)
    if found is None or not project.model_path(name).exists():
        raise VersionError(f"no model version '{name}' in {project.root}")
    project.update_settings(model=project.model_path(name).relative_to(project.root).as_posix())
    return found
