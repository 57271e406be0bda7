"""A second window on one project: the plugin says so once, with the other session named."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

_HOLDER = """
import sys, time
from napari_segtool.core.project import Project
Project(sys.argv[1])
print("open", flush=True)
time.sleep(120)
"""


@pytest.mark.gui
def test_opening_a_project_held_by_another_session_warns_once(make_napari_viewer, tmp_path, monkeypatch):
    import napari_segtool.plugin.state as state

    warnings: list[str] = []
    monkeypatch.setattr(state, "show_warning", warnings.append)
    root = Path(os.environ["SEGTOOL_PROJECT_DIR"])
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(root)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "open"
        viewer1 = make_napari_viewer()
        state.get_session(viewer1)  # another process holds the project
        assert len(warnings) == 1 and f"-{holder.pid}" in warnings[0] and str(root) in warnings[0], warnings
    finally:
        holder.kill()
        holder.wait()

    state.drop_session(viewer1)
    viewer2 = make_napari_viewer()
    session2 = state.get_session(viewer2)  # the holder died, the first window let go: nothing to say
    assert len(warnings) == 1, warnings

    viewer3 = make_napari_viewer()
    state.get_session(viewer3)  # a second viewer of this process on the same project
    assert len(warnings) == 2 and "another viewer of this process" in warnings[1], warnings

    session2.set_project(tmp_path / "elsewhere")  # a project nobody else holds
    assert len(warnings) == 2
    session2.set_project(root)  # ... and back to the shared one
    assert len(warnings) == 3 and "another viewer" in warnings[2]
    for viewer in (viewer2, viewer3):
        state.drop_session(viewer)
