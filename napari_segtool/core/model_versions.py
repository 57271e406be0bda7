"""Model QC: held-out reviewed regions, a score for every model version of a project, roll back.

A stripe of every reviewed plane (the right :data:`HOLDOUT_FRACTION` of its width) is held
out: :meth:`~napari_segtool.core.project.Project.training_mask` leaves it out of training, and
:func:`score_model` predicts the plane and scores the model on it: instance models by
AP@0.5 / F1 of matched objects, semantic (and binary, two-class) models by per-class IoU and
their mean (mIoU) -- object matching means nothing for a class map. Each model the project
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
    """A model's score on the held-out regions (``heldout``: their signature; scores compare only when equal).

    Instance models: ``ap50``, ``f1`` (IoU 0.5) and ``mean_ap`` over the held-out objects
    (``n_objects``). Semantic models (``task == "semantic"``, binary ones included): ``miou``,
    the mean of ``class_iou`` (class name -> IoU over the labelled held-out pixels,
    ``n_pixels``); the instance fields are ``None``.
    """

    ap50: float | None
    f1: float | None
    mean_ap: float | None
    n_objects: int
    n_planes: int
    heldout: str
    task: str = "instance"
    miou: float | None = None
    class_iou: dict[str, float] = field(default_factory=dict)
    n_pixels: int = 0

    @property
    def metric(self) -> str:
        """The headline figure's name: ``"AP@0.5"`` for instance models, ``"mIoU"`` for semantic ones."""
        return "mIoU" if self.task == "semantic" else "AP@0.5"

    @property
    def value(self) -> float:
        """The headline figure (what the Train widget compares between versions)."""
        value = self.miou if self.task == "semantic" else self.ap50
        return float(value) if value is not None else float("nan")

    def figures(self) -> list[tuple[str, float]]:
        """Short name and value of each figure a versions list shows: AP50 and F1, or mIoU."""
        if self.task == "semantic":
            return [("mIoU", self.value)]
        return [("AP50", self.value), ("F1", float(self.f1) if self.f1 is not None else float("nan"))]


def _predict_heldout(model: "SegModel", plane: HeldOutPlane) -> np.ndarray:
    """The model's labels of the held-out stripe, the plane predicted whole (the training columns give context)."""
    from napari_segtool.core.predict import predict

    image = np.asarray(plane.image)
    image = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
    return predict(model, image, axes="YXC" if image.ndim == 3 else "YX").labels[:, plane.x0:]


def _instance_score(preds: Sequence[np.ndarray], planes: Sequence[HeldOutPlane]) -> ModelScore:
    """AP@0.5, F1 and mean AP of each stripe, pooled by object count."""
    from napari_segtool.ops.metrics import instance_scores

    scores = [instance_scores(pred, p.labels[:, p.x0:]) for pred, p in zip(preds, planes)]
    weights = [p.n_objects for p in planes]
    w = np.asarray(weights, float) / sum(weights)
    pooled = {k: float(sum(wi * s[k] for wi, s in zip(w, scores))) for k in ("ap50", "f1_50", "mean_ap")}
    return ModelScore(pooled["ap50"], pooled["f1_50"], pooled["mean_ap"], int(sum(weights)), len(planes),
                      _signature(planes))


def _semantic_score(model: "SegModel", preds: Sequence[np.ndarray], planes: Sequence[HeldOutPlane]) -> ModelScore:
    """Per-class IoU over the labelled pixels of every stripe together (label 0: not labelled, not scored)."""
    from napari_segtool.ops.metrics import semantic_scores

    scores = semantic_scores(np.concatenate([pred.ravel() for pred in preds]),
                             np.concatenate([p.labels[:, p.x0:].ravel() for p in planes]), ignore_index=0)
    names = list(model.meta.classes)
    class_iou = {(names[c] if 0 < c < len(names) else f"class {c}"): float(s["iou"])
                 for c, s in sorted(scores["per_class"].items())}
    return ModelScore(None, None, None, 0, len(planes), _signature(planes), task="semantic",
                      miou=float(scores["miou"]), class_iou=class_iou, n_pixels=int(scores["n_pixels"]))


def score_model(model: "SegModel", planes: Sequence[HeldOutPlane]) -> ModelScore | None:
    """Predict each held-out plane whole and score the model on its stripes, by the model's task.

    Returns ``None`` when no stripe holds a labelled object (or, for a semantic model, a
    labelled pixel) to score against.
    """
    planes = [p for p in planes if p.n_objects]
    if not planes:
        return None
    preds = [_predict_heldout(model, p) for p in planes]
    if model.meta.task == "semantic":
        return _semantic_score(model, preds, planes)
    return _instance_score(preds, planes)


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
