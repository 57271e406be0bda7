"""Training on a project folder's corrections: the Train widget's job, runnable in a child process.

:func:`iter_train_project` collects every correction of the project as training examples
(deletions included), records the run in the project's history as it goes, trains (or
fine-tunes) with :func:`napari_segtool.core.train.iter_train`, saves the model into
the project and records it as a model version scored on the held-out reviewed regions
(:mod:`napari_segtool.core.model_versions`), next to the score of the model it started
from. It takes and returns only small, picklable values (a :class:`ProjectTrainJob` naming
the project folder and the model by path, a :class:`ProjectTrainResult` naming the saved
model folder and its scores), so the plugin runs it in a separate process
(:func:`napari_segtool.kernel.subprocess_jobs.iter_in_process`) and the viewer never
shares a GIL with the training loop.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generator

import numpy as np

from napari_segtool.core.data import DataError, Example
from napari_segtool.core.model_versions import ModelScore, heldout_planes, record_version, score_model, versions
from napari_segtool.core.project import Project
from napari_segtool.core.model import SegModel
from napari_segtool.core.train import TrainConfig, TrainResult
from napari_segtool.core.tune_decoding import settle_switch
from napari_segtool.kernel.device import pick_device
from napari_segtool.kernel.events import CancelToken, Progress, TrainEpoch, TrainStep, tap


@dataclass
class ProjectTrainJob:
    """What one training run on a project starts from."""

    project_root: Path               # the project folder whose corrections are the training data
    init_ref: str | None             # the model to fine-tune (path or name), or None to train a new one
    task: str                        # of a new model (fine-tuning keeps the model's)
    config: TrainConfig
    name: str                        # the trained model's name in the project (made unique)
    arch: str = "unet"               # of a new model (fine-tuning keeps the model's)
    arch_kwargs: dict[str, Any] = field(default_factory=dict)  # of a new model: the settings changed


@dataclass
class ProjectTrainResult:
    """How a training run on a project ended (the model itself is on disk at ``path``)."""

    path: Path | None                # the saved model folder, None when no epoch finished
    name: str
    n_examples: int
    notes: list[str]
    epochs: list[TrainEpoch]
    stop_reason: str
    seconds: float
    steps: int
    keep_when_cancelled: bool = True  # cancelling keeps the best weights so far
    score: ModelScore | None = None  # the saved model's on the project's held-out reviewed regions
    parent: str | None = None        # the model it was fine-tuned from (a name), None from scratch
    parent_score: ModelScore | None = None  # the parent's, on the same held-out regions


def same_channels(examples: list[Example], channels: int | None) -> list[Example]:
    """Average channels where they do not match (a 1-channel model on RGB corrections...)."""
    if channels is None:
        counts = {ex.image.shape[-1] for ex in examples}
        if len(counts) == 1:
            return examples
        channels = 1
    out = []
    for ex in examples:
        if ex.image.shape[-1] != channels and channels == 1:
            ex = Example(ex.image.mean(axis=-1, keepdims=True).astype(np.float32), ex.labels, ex.annotated, ex.name)
        out.append(ex)
    return out


def project_examples(project: Project, task: str = "instance",
                     normalization: dict | None = None) -> tuple[list[Example], list[str]]:
    """Every correction of the project as training examples, deletions included.

    A plane whose annotated pixels hold no object is what the user said by deleting false
    objects: "there is nothing here". For an instance model it is kept as a background
    example (``background_only``: the loss only sees its annotated pixels), so a correction
    that only deletes objects trains the model too; held-out stripes stay out as everywhere.
    """
    return project.training_examples(task=task, normalization=normalization, background_only=True)


def parent_score(project: Project, parent: str | None, init: Any | None, score: ModelScore) -> ModelScore | None:
    """The score of the model fine-tuned from, comparable with ``score`` (the same held-out regions).

    Every recorded version scored on other held-out regions (reviewed slices changed since) is
    scored again on today's, so the whole list compares (``init`` stands in for the parent
    version: no reload); a parent that is not a version of the project (a shipped or user
    model) is scored here.
    """
    from napari_segtool.core.checkpoint import load_model

    listed = versions(project, load=lambda name: init if name == parent and init is not None
                      else load_model(project.model_path(name)))
    recorded = next((v.score for v in listed if v.name == parent), None)
    if recorded is not None and recorded.heldout == score.heldout:
        return recorded
    return score_model(init, heldout_planes(project)) if init is not None else None


def iter_fit(examples: list[Example], init: SegModel | None, config: TrainConfig, cancel: CancelToken | None = None,
             *, task: str = "instance", arch: str = "unet", arch_kwargs: dict[str, Any] | None = None
             ) -> Generator[TrainStep | TrainEpoch, None, TrainResult]:
    """The training of a project run: channels matched to the model, then :func:`~napari_segtool.core.train.iter_train`.

    Fine-tuning ``init`` (``config.fine_tune`` keeps what it knows: frozen norm statistics,
    self-distillation, L2-SP; :mod:`napari_segtool.core.finetune`), or a new ``arch`` model for
    ``task`` when ``init`` is None. A fine-tuned model takes the decoding its start switches to once fine-tuned
    (``after_fine_tuning``) unless at least 30 annotated objects decode better without it
    (:func:`~napari_segtool.core.tune_decoding.settle_switch`). The Train widget (through :func:`iter_train_project`) and the
    effort benchmark (:func:`napari_segtool.core.hitl.iter_effort`) both train through here.
    """
    from napari_segtool.core.train import iter_train

    examples = same_channels(examples, init.meta.in_channels if init is not None else None)
    if init is not None:
        result = yield from iter_train(examples, arch=init.meta.arch, task=init.meta.task, init=init, config=config,
                                       cancel=cancel)
        switch = settle_switch(result.model, init.meta.postprocess, examples, pick_device(config.device))
        if switch is not None and result.model.meta.history:
            result.model.meta.history[-1]["decoding_switch"] = switch.record()
        return result
    return (yield from iter_train(examples, arch=arch, task=task, config=config, cancel=cancel,
                                  arch_kwargs=arch_kwargs))


def iter_train_project(job: ProjectTrainJob, cancel: CancelToken | None = None
                       ) -> Generator[Progress | TrainStep | TrainEpoch, None, ProjectTrainResult]:
    """Train on every correction of ``job.project_root``; yields progress, returns where the model went.

    Raises :class:`~napari_segtool.core.data.DataError` when the project holds no usable
    correction yet. Every finished epoch is written to the project's history at once.
    """
    from napari_segtool.core.checkpoint import load_model

    project = Project(job.project_root, create=False)
    yield Progress("data", 0, 1, "collecting corrections")
    finetune = job.init_ref is not None
    init = load_model(job.init_ref) if finetune else None
    task = init.meta.task if init is not None else job.task
    norm = init.meta.normalization if init is not None else None
    examples, notes = project_examples(project, task=task, normalization=norm)
    if not examples:
        why = f" ({notes[0]})" if notes else ""
        raise DataError("no training data yet: correct some objects or mark slices reviewed (R) "
                        "in the Correct widget" + why)
    yield Progress("data", 1, 1, f"{len(examples)} annotated plane(s)")
    run_id = project.record_run({
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "init": job.init_ref, "task": task,
        "examples": len(examples), "config": job.config.to_dict(), "epochs": []})
    epochs: list[dict[str, Any]] = []

    def record(event: Any) -> None:
        if isinstance(event, TrainEpoch):
            epochs.append(event.as_dict())
            project.record_run({"id": run_id, "epochs": epochs})  # history autosave

    result = yield from tap(iter_fit(examples, init, job.config, cancel, task=task, arch=job.arch,
                                     arch_kwargs=job.arch_kwargs), record)
    outcome = ProjectTrainResult(None, "", len(examples), notes, result.epochs, result.stop_reason,
                                 result.seconds, result.steps)
    if not result.epochs:
        project.record_run({"id": run_id, "stop_reason": result.stop_reason, "saved": None})
        return outcome
    outcome.name = project.unique_model_name(job.name)
    origin = f"Fine-tuned from {Path(job.init_ref).name}" if finetune else "Trained from scratch"
    result.model.meta.description = f"{origin} on {len(examples)} corrected plane(s) in {project.root.name}"
    outcome.path = project.save_model(result.model, outcome.name)
    yield Progress("score", 0, 1, "scoring on the held-out reviewed regions")
    outcome.parent = Path(job.init_ref).name.removesuffix(".safetensors") if finetune else None
    version = record_version(project, outcome.name, result.model, parent=outcome.parent)
    outcome.score = version.score
    if version.score is not None:
        outcome.parent_score = parent_score(project, outcome.parent, init, version.score)
    yield Progress("score", 1, 1, "scored")
    project.record_run({"id": run_id, "model": outcome.name, "stop_reason": result.stop_reason,
                        "seconds": round(result.seconds, 1), "steps": result.steps,
                        "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return outcome
