import numpy as np
import pytest
import torch

from napari_segtool.models.unet import UNet, instance_targets, object_size_stats


def measured_receptive_field(net: UNet, size: int = 192) -> int:
    """Largest extent of input pixels that influence one output pixel, by back-propagation."""
    net.eval()
    for m in net.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            torch.nn.init.constant_(m.weight, 0.01)
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)
    extent = 0
    for p in range(size // 2 - net.align, size // 2 + net.align):
        x = torch.zeros(1, 1, size, size, requires_grad=True)
        net(x + 1.0)[0, 0, p, p].backward()
        ys = np.nonzero(x.grad[0, 0].abs().sum(1).numpy())[0]
        extent = max(extent, ys.max() - ys.min() + 1)
    return int(extent)


@pytest.mark.parametrize("depth", [2, 3])
def test_receptive_field_bounds_measured_extent(depth):
    net = UNet(1, 4, depth=depth, width=4)
    computed = net.receptive_field()
    measured = measured_receptive_field(net)
    assert measured <= computed
    assert computed - measured <= 2**depth  # tight: off by at most the pooling phase


@pytest.mark.parametrize("channels", [1, 3, 5])
def test_any_number_of_input_channels(channels):
    net = UNet(channels, 7, depth=2, width=4)
    out = net(torch.zeros(2, channels, 64, 48))
    assert out.shape == (2, 7, 64, 48)


def test_instance_targets_mark_boundaries_between_touching_objects():
    labels = np.zeros((20, 20), np.int32)
    labels[5:15, 2:10] = 1
    labels[5:15, 10:18] = 2  # touching along column 9/10
    classes, dist = instance_targets(labels)
    assert set(np.unique(classes)) == {0, 1, 2}
    assert (classes[7:13, 9] == 2).all() and (classes[7:13, 10] == 2).all()
    # interiors of the two objects are not connected: the boundary class separates them
    from skimage.measure import label

    assert label(classes == 1).max() == 2
    assert dist.max() == pytest.approx(1.0)
    assert (dist[labels == 0] == 0).all()


def test_object_size_stats():
    labels = np.zeros((50, 50), np.int32)
    labels[:10, :10] = 1
    labels[20:30, 20:40] = 2
    stats = object_size_stats([labels])
    assert stats["median_area"] == 150
    assert stats["n_objects"] == 2
