"""Fixtures for the plugin tests: isolated project/model folders and a tiny trained model."""
import pytest


@pytest.fixture(autouse=True)
def _isolated_folders(tmp_path, monkeypatch):
    """Never touch the user's home: project and model folders live in tmp_path; no shipped models."""
    monkeypatch.setenv("SEGTOOL_PROJECT_DIR", str(tmp_path / "project"))
    monkeypatch.setenv("SEGTOOL_MODELS_DIR", str(tmp_path / "no-models"))
    # no shipped models either: the widget tests run the seconds-trained 'tiny' model
    monkeypatch.setattr("napari_segtool.core.checkpoint.ZOO_DIR", tmp_path / "no-zoo")
    monkeypatch.setenv("SEGTOOL_NUM_THREADS", "1")  # 2 cores, shared
    monkeypatch.setenv("SEGTOOL_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A U-Net trained for 3 steps (seconds), saved as the user model 'tiny'."""
    from napari_segtool.core.checkpoint import save_model
    from napari_segtool.core.data import make_example
    from napari_segtool.core.train import TrainConfig, train
    from napari_segtool.sim import simulate_nuclei

    sim = simulate_nuclei((96, 96), seed=0)
    result = train([make_example(sim.image, sim.labels)],
                   config=TrainConfig(epochs=1, steps_per_epoch=3, batch_size=2, patch_size=64, num_threads=1))
    folder = tmp_path_factory.mktemp("models")
    save_model(result.model, folder / "tiny")
    return folder


@pytest.fixture
def user_model(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("SEGTOOL_MODELS_DIR", str(tiny_model_dir))
    return tiny_model_dir / "tiny"


@pytest.fixture
def nuclei_stack():
    from napari_segtool.sim import simulate_nuclei

    sim = simulate_nuclei((4, 96, 96), seed=3, anisotropy=2.0, snr=20.0)
    return sim.image, sim.labels


@pytest.fixture
def errors(monkeypatch):
    """Messages passed to show_error / show_warning by the plugin (instead of popping up)."""
    seen = []
    import napari_segtool.plugin._jobs as jw
    import napari_segtool.plugin.batch_widget as bw
    import napari_segtool.plugin.correct_widget as cw
    import napari_segtool.plugin.segment_widget as sw
    import napari_segtool.plugin.train_widget as tw

    for mod in (sw, tw, cw, bw, jw):
        for name in ("show_error", "show_warning", "show_info"):
            if hasattr(mod, name):
                monkeypatch.setattr(mod, name, lambda msg, _n=name: seen.append((_n, str(msg))))
    return seen
