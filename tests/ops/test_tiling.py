import numpy as np
import pytest
import torch

from napari_segtool.ops.tiling import blend_window, halo_for, make_tiles, read_padded, tiled_apply
from napari_segtool.models.unet import UNet


@pytest.mark.parametrize("shape", [(100, 70), (257, 513), (64, 64)])
def test_tiles_cover_plane_and_stay_aligned(shape):
    tiles = make_tiles(shape, size=96, halo=16, align=8)
    covered = np.zeros(shape, bool)
    for t in tiles:
        assert t.y0 % 8 == 0 and t.x0 % 8 == 0
        covered[max(0, t.y0 + 16):t.y0 + 96 - 16, max(0, t.x0 + 16):t.x0 + 96 - 16] = True
    assert covered.all()


def test_read_padded_reflects_outside_the_plane():
    plane = np.arange(20 * 30, dtype=np.float32).reshape(20, 30, 1)
    from napari_segtool.ops.tiling import Tile

    block = read_padded(plane, Tile(-4, -4, 40))
    assert block.shape == (40, 40, 1)
    np.testing.assert_array_equal(block[4:24, 4:34, 0], plane[:, :, 0])
    np.testing.assert_array_equal(block[3, 4:34, 0], plane[1, :, 0])  # reflect, not edge


def test_blend_window_is_smooth_and_full_in_core():
    w = blend_window(64, 16)
    assert (w[16:48] == 1).all()
    assert w[0] < 0.01 and np.all(np.diff(w[:16]) > 0)


def test_tiled_equals_whole_plane_prediction():
    torch.manual_seed(0)
    net = UNet(1, 3, depth=2, width=4).eval()
    rng = np.random.default_rng(0)
    plane = rng.random((150, 230, 1)).astype(np.float32)
    halo = halo_for(net.receptive_field(), net.align)
    whole = tiled_apply(net, plane, 3, tile_size=1024, halo=halo, align=net.align)
    tiled = tiled_apply(net, plane, 3, tile_size=64 + 2 * halo, halo=halo, align=net.align, batch_size=3)
    assert len(make_tiles(plane.shape[:2], 64 + 2 * halo, halo, net.align)) > 6
    np.testing.assert_allclose(tiled, whole, atol=1e-4)


def test_tiled_apply_reports_progress_and_cancels():
    from napari_segtool.kernel.events import CancelToken, Cancelled

    net = UNet(1, 2, depth=1, width=2).eval()
    plane = np.zeros((200, 200, 1), np.float32)
    calls = []
    tiled_apply(net, plane, 2, tile_size=64, halo=8, align=2, batch_size=2, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1][0] == calls[-1][1] > 1
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        tiled_apply(net, plane, 2, tile_size=64, halo=8, align=2, cancel=token)


@pytest.mark.parametrize("length,max_size,halo", [(2048, 1024, 96), (4096, 1024, 112), (500, 256, 32), (64, 512, 16)])
def test_even_tiles_need_no_more_tiles_and_fewer_pixels(length, max_size, halo):
    from napari_segtool.ops.tiling import even_tile_size, tile_overhead

    shape = (length, length - 37)
    size = even_tile_size(shape, max_size, halo, 16)
    assert size % 16 == 0 and 2 * halo < size <= max_size
    even, fixed = make_tiles(shape, size, halo, 16), make_tiles(shape, max_size, halo, 16)
    assert len(even) <= len(fixed)
    assert len(even) * size**2 <= len(fixed) * max_size**2
    covered = np.zeros(shape, bool)
    for t in even:
        covered[max(0, t.y0 + halo):t.y0 + size - halo, max(0, t.x0 + halo):t.x0 + size - halo] = True
    assert covered.all()
    assert tile_overhead(shape, size, halo, 16) == pytest.approx(len(even) * size**2 / (shape[0] * shape[1]))


@pytest.mark.parametrize("shape,size,halo", [((300, 170), 96, 16), ((64, 700), 128, 32), ((50, 40), 512, 16)])
def test_blending_weights_sum_to_one_everywhere(shape, size, halo):
    """The weights are kept as two 1D profiles (no weight plane): an identity network still gets every
    pixel back, seams, plane borders and tile overlaps included."""
    plane = np.random.default_rng(1).random(shape + (2,)).astype(np.float32) + 0.5
    out = tiled_apply(lambda x: x, plane, 2, tile_size=size, halo=halo, align=8, batch_size=3)
    assert len(make_tiles(shape, min(size, 512), halo, 8)) > 1 or size == 512
    np.testing.assert_allclose(out, plane.transpose(2, 0, 1), rtol=1e-6)


@pytest.mark.parametrize("window,wanted", [((40, 210, 96, 300), (48, 120, 40, 170)),     # inside the plane
                                           ((0, 150, 0, 180), (0, 100, 0, 130)),         # at its corner
                                           ((104, 260, 200, 330), (24, 156, 32, 130))])  # to its far border
def test_a_window_runs_the_whole_planes_tiles_on_its_wanted_pixels(window, wanted):
    """A window that says which of its pixels are wanted (a chunk: region + halo) gets the whole plane's outputs
    there, from the whole plane's tile grid cut to those pixels plus the halo: its halo is context, never output,
    so it computes fewer pixels than tiling the window as a plane of its own."""
    from napari_segtool.ops.chunked import PlacedPlane

    torch.manual_seed(0)
    net = UNet(1, 3, depth=2, width=4).eval()
    halo = halo_for(net.receptive_field(), net.align)
    plane = np.random.default_rng(2).random((260, 330, 1)).astype(np.float32)
    tile = 64 + 2 * halo
    counted = []

    def counting(x):
        counted.append(x.shape[0] * x.shape[2] * x.shape[3])
        return net(x)

    whole = tiled_apply(net, plane, 3, tile_size=tile, halo=halo, align=net.align)
    y0, y1, x0, x1 = window
    placed = PlacedPlane(plane[y0:y1, x0:x1], (y0, x0), plane.shape[:2], wanted)
    part = tiled_apply(counting, placed, 3, tile_size=tile, halo=halo, align=net.align, batch_size=3)
    wy0, wy1, wx0, wx1 = wanted
    np.testing.assert_allclose(part[:, wy0:wy1, wx0:wx1], whole[:, y0 + wy0:y0 + wy1, x0 + wx0:x0 + wx1], atol=1e-5)
    outside = np.ones(part.shape[1:], bool)
    outside[wy0:wy1, wx0:wx1] = False
    assert not part[:, outside].any()  # unwanted pixels are not outputs
    own = []
    tiled_apply(lambda x: own.append(x.shape[0] * x.shape[2] * x.shape[3]) or net(x), plane[y0:y1, x0:x1], 3,
                tile_size=tile, halo=halo, align=net.align)
    assert sum(counted) < sum(own)
