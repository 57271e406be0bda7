"""napari-segtool as napari's reader for the files it claims, unless the user chose another.

napari's builtin reader also claims ``*.tif`` / ``*.fits`` / ``*.zarr``; with two
readers and no preference, every File ▸ Open asks "Choose reader". napari's own
answer is a reader preference (``settings.plugins.extension2reader``, what the
dialog's "remember this choice" writes). The plugin sets it for its patterns
when it is activated (npe2 ``on_activate``: the first time any of its widgets,
samples or readers is used) and when a widget opens, but never over a choice the
user made for a pattern that matches the same files.
"""
from __future__ import annotations

import logging
from fnmatch import fnmatch
from pathlib import Path

log = logging.getLogger(__name__)

PLUGIN = "napari-segtool"
MANIFEST = Path(__file__).resolve().parent.parent / "napari.yaml"


def reader_patterns() -> list[str]:
    """The filename patterns of the plugin's reader, as the manifest declares them.

    npe2 has parsed the manifest already when napari runs (parsing the YAML again cost the
    GUI thread 0.1-0.5 s at the first widget opening); the file is read only without it.
    """
    from npe2 import PluginManager, PluginManifest

    try:
        manifest = PluginManager.instance().get_manifest(PLUGIN)
    except KeyError:
        manifest = PluginManifest.from_file(MANIFEST)
    return [p for reader in manifest.contributions.readers or [] for p in reader.filename_patterns]


def prefer_our_reader(settings: object | None = None) -> list[str]:
    """Make napari-segtool the preferred reader of each of its patterns the user has no preference for.

    A pattern counts as chosen when any existing preference matches a file of that
    pattern (``*.TIF`` or ``/data/*.tif`` for ``*.tif``...). Returns the patterns added.
    """
    try:
        if settings is None:
            from napari.settings import get_settings

            settings = get_settings()
        current = dict(settings.plugins.extension2reader)  # type: ignore[attr-defined]
        added = []
        for pattern in reader_patterns():
            example = "/any/folder/file" + pattern.lstrip("*")
            if any(fnmatch(example, key) or fnmatch(example.lower(), key.lower()) for key in current):
                continue
            current[pattern] = PLUGIN
            added.append(pattern)
        if added:
            settings.plugins.extension2reader = current  # type: ignore[attr-defined]
        return added
    except Exception as exc:  # never let a preference break the plugin
        log.debug("cannot set the reader preference: %s", exc)
        return []


def activate(context: object = None) -> None:
    """npe2 ``on_activate``: runs the first time one of the plugin's contributions is used."""
    prefer_our_reader()
