"""The typed architecture contract: parameter schemas, capabilities, one split of core and per-plane settings."""
from __future__ import annotations

import numpy as np
import pytest

from napari_segtool.kernel.params import Param, ProbabilityLayout, check_settings
from napari_segtool.models.base import split_postprocess
from napari_segtool.models.registry import available_architectures, get_architecture
from napari_segtool.ops.postprocess import CORE_PARAMS, CORE_POSTPROCESS


def test_param_checks_type_range_choices_and_null():
    p = Param("t", float, 0.5, 0.0, 1.0)
    for ok in (0, 0.5, 1, 1.0):
        p.check(ok)
    for bad, why in ((1.5, "0..1"), (-0.1, "0..1"), ("0.5", "a number"), (True, "a number"), (None, "null"),
                     (float("nan"), "a number")):
        with pytest.raises(ValueError, match=why):
            p.check(bad)
    n = Param("n", int, 3, 1, 6)
    with pytest.raises(ValueError, match="an integer"):
        n.check(2.0)
    c = Param("mode", str, "a", choices=("a", "b"))
    c.check("b")
    with pytest.raises(ValueError, match="one of a, b"):
        c.check("c")
    Param("maybe", dict, None).check(None)  # None where the default is None
    assert Param("min_size", int, 1).text == "Min size" and Param("x", int, 1, label="X!").text == "X!"
    with pytest.raises(ValueError, match="unknown setting 'pp.zz'"):
        check_settings({"t": 0.1, "zz": 1}, [p], "pp.")
    with pytest.raises(ValueError, match="must be an object"):
        check_settings([1], [p], "pp.")


def test_every_architecture_declares_a_valid_schema():
    for name in available_architectures():
        arch = get_architecture(name)
        assert arch.name == name and arch.tasks and set(arch.tasks) <= {"instance", "semantic"}
        names = [p.name for p in arch.postprocess_params]
        assert len(names) == len(set(names)) and not set(names) & set(CORE_POSTPROCESS)
        for p in arch.postprocess_params + arch.arch_params:
            assert p.help, (name, p.name)
            p.check(p.default)  # each default is valid
        meta = arch.default_meta("instance", 1, ["background", "object"])
        arch.check_postprocess(meta.postprocess)  # a fresh model's settings are in its schema
        assert {k for k in meta.arch_kwargs if k != "out_channels"} >= {p.name for p in arch.arch_params}


def test_shipped_models_fit_their_schema_and_capabilities_match_the_networks():
    from napari_segtool.core.checkpoint import load_model

    for name in ("nuclei", "astro-sources", "nuclei-maskrcnn"):
        model = load_model(name)  # load_model checks postprocess against the schema
        arch, meta, net = model.architecture, model.meta, model.net
        # the typed accessors give what the core used to duck-type from the network
        assert arch.align(meta) == int(getattr(net, "align", 1) or 1)
        assert arch.receptive_field(meta) == (meta.receptive_field or
                                              (net.receptive_field() if hasattr(net, "receptive_field") else 0))
        layout = arch.probability_layout(meta)
        assert layout.has_foreground


def test_unet_layout_is_interior_plus_boundary_and_gives_the_stack_maps():
    unet = get_architecture("unet")
    meta = unet.default_meta("instance", 1, ["background", "object"], depth=1, width=4)
    probs = np.random.default_rng(0).random((4, 8, 8), dtype=np.float32)
    layout = unet.probability_layout(meta)
    np.testing.assert_array_equal(layout.foreground(probs), probs[1] + probs[2])
    fg, dist = unet.stack_maps(probs, meta)
    np.testing.assert_array_equal(fg, probs[1] + probs[2])
    np.testing.assert_array_equal(dist, probs[3])
    semantic = unet.default_meta("semantic", 1, ["unlabelled", "a", "b"], depth=1, width=4)
    assert not unet.probability_layout(semantic).has_foreground
    assert unet.stack_maps(probs[:2], semantic) is None
    assert unet.align(meta) == 2 and unet.params_for("semantic") == ()
    with pytest.raises(ValueError, match="no object probability"):
        unet.probability_layout(semantic).foreground(probs)
    assert ProbabilityLayout(("object",), (0,)).foreground(probs[:1]) is not None


def test_core_settings_are_split_off_in_one_place():
    assert [p.name for p in CORE_PARAMS] == list(CORE_POSTPROCESS)
    assert {"z_mode", "z_scale", "z_split_dip", "source_table", "star_classifier", "after_fine_tuning",
            "diameter"} == set(CORE_POSTPROCESS)
    s = split_postprocess({"fg_threshold": 0.5, "z_mode": "watershed", "source_table": True},
                          {"fg_threshold": 0.3, "diameter": 12.0, "min_size": None})
    assert s.plane == {"fg_threshold": 0.3}
    assert s.core == {"z_mode": "watershed", "source_table": True, "diameter": 12.0}


def test_after_fine_tuning_settings_are_checked_too():
    unet = get_architecture("unet")
    unet.check_postprocess({"seed_mode": "shape", "after_fine_tuning": {"seed_mode": "interior"}})
    with pytest.raises(ValueError, match="after_fine_tuning.seed_mode"):
        unet.check_postprocess({"after_fine_tuning": {"seed_mode": "sideways"}})
    with pytest.raises(ValueError, match="unknown setting 'postprocess.score_threshold'"):
        unet.check_postprocess({"score_threshold": 0.5})  # Mask R-CNN's, not the U-Net's


def test_training_limits_are_the_architectures():
    unet, rcnn = get_architecture("unet"), get_architecture("maskrcnn")
    meta = unet.default_meta("instance", 1, ["background", "object"], depth=2, width=4)
    assert unet.training_problem(meta, 64, 1) is None
    assert unet.training_problem(meta, 62, 4) == "patch_size 62 must be a multiple of 4 for this unet (e.g. 64)"
    rmeta = rcnn.default_meta("instance", 1, ["background", "object"])
    assert rcnn.training_problem(rmeta, 64, 1) is None and rcnn.training_problem(rmeta, 32, 2) is None
    assert "cannot train on batches of one 32-pixel patch" in rcnn.training_problem(rmeta, 32, 1)
