"""Fine-tuning keeps what the starting model knows (core.finetune through core.train.iter_train)."""

import numpy as np
import pytest
import torch

from napari_segtool.core.data import make_example
from napari_segtool.core.finetune import Anchor, FineTuneConfig
from napari_segtool.core.train import TrainConfig, new_model, train
from tests.conftest import draw_objects


def _few_objects_example():
    image, labels = draw_objects((96, 96), n=6, seed=3, touching=False)
    annotated = np.zeros(labels.shape, bool)
    annotated[:48] = True
    return make_example(image, labels, annotated)


def _cfg(**fine_tune):
    return TrainConfig(epochs=1, steps_per_epoch=4, patch_size=64, batch_size=2, val_fraction=0.0, num_threads=1,
                       fine_tune=FineTuneConfig(**fine_tune))


@pytest.mark.parametrize("freeze_norm", [True, False])
def test_batch_norm_statistics_stay_frozen_only_when_asked(freeze_norm):
    model = new_model("unet", "instance", 1, depth=2, width=8)
    tuned = train([_few_objects_example()], init=model, config=_cfg(freeze_norm=freeze_norm)).model
    before, after = model.net.state_dict(), tuned.net.state_dict()
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert stats
    same = all(torch.equal(before[k], after[k]) for k in stats)
    assert same is freeze_norm
    # the weights did train either way
    assert not all(torch.equal(before[k], after[k]) for k in before if k.endswith("weight"))


def test_distillation_counts_only_unannotated_pixels_and_vanishes_at_the_start():
    torch.manual_seed(0)
    model = new_model("unet", "instance", 1, depth=2, width=8)
    net = model.net.eval()
    anchor = Anchor(net, FineTuneConfig(freeze_norm=True, distill=1.0))
    x = torch.randn(2, 1, 32, 32)
    annotated = [np.zeros((32, 32), bool), np.zeros((32, 32), bool)]
    with anchor.watch(net):
        net(x)
    assert float(anchor.distill_loss(annotated).detach()) == pytest.approx(0.0, abs=1e-10)  # the student is the teacher
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    with anchor.watch(net):
        net(x)
    free = float(anchor.distill_loss(annotated).detach())
    assert free > 0
    with anchor.watch(net):
        net(x)
    assert anchor.distill_loss([np.ones((32, 32), bool)] * 2) == 0  # every pixel annotated: nothing to distill
    # a network whose output is not a per-pixel tensor gets no term (no copy of any architecture's loss)
    with anchor.watch(net):
        pass
    assert anchor.distill_loss(annotated) is None


def test_l2sp_pulls_the_weights_back_towards_the_start():
    model = new_model("unet", "instance", 1, depth=2, width=8)
    start = [p.detach().clone() for p in model.net.parameters()]
    anchor = Anchor(model.net, FineTuneConfig(l2sp=10.0))
    with torch.no_grad():
        for p in model.net.parameters():
            p.add_(1.0)
    anchor.pull(model.net, lr=0.05)  # each weight moves half-way back
    for p, p0 in zip(model.net.parameters(), start):
        torch.testing.assert_close(p.detach(), p0 + 0.5)


def test_fine_tuning_with_distillation_stays_closer_to_the_start():
    """Same data, same seed: the distilled run's outputs on unannotated image parts stay nearer the start's."""
    model = new_model("unet", "instance", 1, depth=2, width=8)
    example = _few_objects_example()
    x = torch.from_numpy(example.image[48:, :, :]).permute(2, 0, 1)[None].float()  # the unannotated half
    with torch.no_grad():
        ref = model.net.eval()(x)
    drift = {}
    for distill in (0.0, 5.0):
        cfg = _cfg(freeze_norm=True, distill=distill)
        cfg.steps_per_epoch, cfg.lr = 8, 1e-2
        tuned = train([example], init=model, config=cfg).model
        with torch.no_grad():
            drift[distill] = float(((tuned.net.eval()(x) - ref) ** 2).mean())
    assert drift[5.0] < drift[0.0]


def test_training_from_scratch_ignores_the_fine_tuning_settings():
    cfg = _cfg(distill=1.0, l2sp=1.0)
    res = train([_few_objects_example()], config=cfg, arch_kwargs={"depth": 2, "width": 8})
    assert res.steps == 4 and res.model.meta.history[-1]["config"]["fine_tune"]["distill"] == 1.0


def test_weight_averaging_ends_on_the_moving_average_of_the_steps():
    """``average=d``: after steps with weights w1, w2 the run ends on d*w1 + (1-d)*w2, batch-norm statistics too."""
    model = new_model("unet", "instance", 1, depth=2, width=8)
    net = model.net
    anchor = Anchor(net, FineTuneConfig(average=0.75))
    states = []
    for shift in (1.0, 3.0):
        with torch.no_grad():
            for t in list(net.parameters()) + [b for b in net.buffers() if b.is_floating_point()]:
                t.add_(shift)
        anchor.pull(net, lr=0.0)
        states.append({k: v.clone() for k, v in net.state_dict().items()})
    anchor.finish(net)
    for key, value in net.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.75 * states[0][key] + 0.25 * states[1][key])
    # without averaging the run keeps its last weights
    plain = Anchor(net, FineTuneConfig())
    last = {k: v.clone() for k, v in net.state_dict().items()}
    plain.pull(net, lr=0.0)
    plain.finish(net)
    assert all(torch.equal(v, last[k]) for k, v in net.state_dict().items())


def test_fine_tuning_ends_on_its_last_weights_whatever_the_validation_scores():
    """``keep_best=False`` (fine-tuning's default): an early epoch that a small held-out region happened to rate
    highest does not replace the annealed last weights; the scores are still reported and stop the run."""
    import time

    from napari_segtool.core.train_loop import iter_optimise
    from napari_segtool.kernel.events import TrainEpoch, run_job

    net = torch.nn.Linear(1, 1, bias=False)
    x = torch.ones(4, 1)
    weights = []

    def lucky_first(_losses, scores=iter([0.6, 0.45, 0.52, 0.48])):
        return "ap50", next(scores)

    def record(event):
        if isinstance(event, TrainEpoch):
            weights.append(float(net.weight.detach()))

    config = TrainConfig(epochs=4, steps_per_epoch=3, lr=0.3, patience=10)
    run = run_job(iter_optimise(net, config, lambda: ((net(x) - 3.0) ** 2).mean(), start=time.perf_counter(),
                                score=lucky_first, keep_best=False), record)
    assert [e.is_best for e in run.epochs] == [True, False, False, False] and run.best_score == 0.6
    assert float(net.weight.detach()) == weights[-1] != weights[0]
    assert TrainConfig().fine_tune.keep_best is False
