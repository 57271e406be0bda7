#!/usr/bin/env python
"""Open napari with napari-segtool's widgets docked, a sample image open and a model selected.

    python scripts/launch_napari.py                       # nuclei stack + the shipped 'nuclei' model
    python scripts/launch_napari.py --sample galaxies     # simulated sky + 'astro-sources'
    python scripts/launch_napari.py --image my.tif --project ~/napari-segtool-projects/mine
    python scripts/launch_napari.py --screenshot docs/images/overview.png   # save the window, quit

``--steps`` runs a scripted session before the screenshot (used for the user guide):
``segment`` (Segment widget on the current slice), ``stack`` (whole stack),
``correct`` (delete one object, mark the slice reviewed), ``train`` (a short
fine-tuning run), ``correct-tab`` / ``train-tab`` / ``segment-tab`` /
``batch-tab`` (bring a widget's tab to the front). Steps wait for their
background work to finish.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

SAMPLES = {
    "nuclei": ("nuclei-3d", "nuclei"),
    "galaxies": ("galaxies", "astro-sources"),
    "hubble": ("hubble-deep-field", "astro-sources"),
    "hubble-grey": ("hubble-deep-field-grey", "astro-sources"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sample", choices=[*SAMPLES, "none"], default="nuclei", help="sample image to open")
    p.add_argument("--image", help="open this image file instead of a sample")
    p.add_argument("--model", help="model to select (name or path; default: the sample's shipped model)")
    p.add_argument("--project", help="project folder (default ~/napari-segtool-projects/default)")
    p.add_argument("--screenshot", metavar="PATH", help="save a full-window screenshot and quit")
    p.add_argument("--size", default="1400x900", help="window size WIDTHxHEIGHT (default 1400x900)")
    p.add_argument("--steps", default="", help="comma-separated scripted steps before the screenshot")
    p.add_argument("--epochs", type=int, default=3, help="epochs for the 'train' step")
    return p.parse_args(argv)


def _process(app, seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.01)


def _wait(app, condition, timeout: float = 600.0) -> None:
    end = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > end:
            raise TimeoutError("a scripted step did not finish in time")
        app.processEvents()
        time.sleep(0.02)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.project:
        os.environ["SEGTOOL_PROJECT_DIR"] = str(Path(args.project).expanduser())
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title="napari-segtool", show=True)
    width, height = (int(v) for v in args.size.lower().split("x"))
    window = viewer.window._qt_window
    window.resize(width, height)
    app = QApplication.instance()

    default_model = None
    if args.image:
        viewer.open(args.image, plugin="napari-segtool")
    elif args.sample != "none":
        key, default_model = SAMPLES[args.sample]
        viewer.open_sample("napari-segtool", key)

    _, segment = viewer.window.add_plugin_dock_widget("napari-segtool", "Segment")
    _, correct = viewer.window.add_plugin_dock_widget("napari-segtool", "Correct", tabify=True)
    _, train = viewer.window.add_plugin_dock_widget("napari-segtool", "Train", tabify=True)
    _, batch = viewer.window.add_plugin_dock_widget("napari-segtool", "Batch", tabify=True)
    _raise_tab(segment)
    from napari_segtool.plugin import _warmup

    _wait(app, _warmup.is_warm)  # torch and the model lists load in a thread; the window stays live meanwhile
    _process(app, 0.3)           # let the widgets fill their model lists from the warm-up's signal
    wanted = args.model or default_model
    if wanted:
        _select_model(segment, wanted)
    _process(app, 0.5)
    viewer.reset_view()

    for step in [s.strip() for s in args.steps.split(",") if s.strip()]:
        _run_step(step, viewer, app, segment, correct, train, batch, args)

    if args.screenshot:
        _process(app, 1.0)
        _close_toasts(window)
        out = Path(args.screenshot)
        out.parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(out), canvas_only=False)
        print(f"saved {out}")
        viewer.close()
        return 0
    napari.run()
    return 0


def _close_toasts(window) -> None:
    """Dismiss napari's notification pop-ups (e.g. its PyQt5 deprecation notice) so they don't cover the canvas."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in window.findChildren(NapariQtNotification):
        toast.close()


def _select_model(segment, wanted: str) -> None:
    combo = segment.model_combo
    for i in range(combo.count()):
        ref = combo.itemData(i)
        if isinstance(ref, str) and (ref == wanted or Path(ref).name.removesuffix(".safetensors") == wanted):
            combo.setCurrentIndex(i)
            segment._update_model_info()
            return


def _raise_tab(widget) -> None:
    dock = widget.parent()
    while dock is not None and not hasattr(dock, "raise_"):
        dock = dock.parent()
    for _ in range(3):  # the QDockWidget that holds it
        if dock is None:
            return
        if type(dock).__name__.endswith("DockWidget"):
            dock.show()
            dock.raise_()
            return
        dock = dock.parent()


def _run_step(step, viewer, app, segment, correct, train, batch, args) -> None:
    from napari_segtool.plugin import segment_widget as sw

    if step in ("segment", "stack"):
        _raise_tab(segment)
        scope = sw.SCOPE_SLICE if step == "segment" else sw.SCOPE_STACK
        if segment.run(scope=scope) is not None:
            _wait(app, lambda: not segment.running)
    elif step == "correct":
        _raise_tab(correct)
        correct.refresh_layers()
        tracker = correct.tracker
        if tracker is None:
            return
        import numpy as np

        index = tracker.current_plane()
        plane = np.asarray(tracker.labels_layer.data[index] if index else tracker.labels_layer.data)
        ids, counts = np.unique(plane[plane > 0], return_counts=True)
        if ids.size:
            tracker.delete_object(index, int(ids[np.argmin(counts)]))
        tracker.set_reviewed(index, True)
        _process(app, 2.0)
    elif step == "train":
        _raise_tab(train)
        train.epochs_spin.setValue(args.epochs)
        train.steps_spin.setValue(10)
        train.batch_spin.setValue(4)
        train.patch_spin.setValue(96)
        train.repredict_check.setChecked(False)
        if train.train() is not None:
            _wait(app, lambda: train.worker is None)
    elif step.endswith("-tab"):
        _raise_tab({"segment": segment, "correct": correct, "train": train, "batch": batch}[step[:-4]])
    elif step.startswith("slice="):
        viewer.dims.set_current_step(0, int(step.split("=", 1)[1]))
    elif step.startswith("zoom="):
        viewer.camera.zoom = float(step.split("=", 1)[1])
    else:
        raise SystemExit(f"unknown step {step!r}")
    _process(app, 0.3)


if __name__ == "__main__":
    sys.exit(main())
