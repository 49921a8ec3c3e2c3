"""The depth modality prepared as UniMMAD's official loader does: hand-computed values on tiny point
clouds (foreground-mean fill, x100, bilinear resize, three identical channels; the unmasked switch),
refusals that name the file, and the MVTec 3D-AD fixture read through the mvtec_3d loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from harness.data import load_dataset
from harness.data.depth import depth_tensor
from harness.data.fixtures import write_fixture
from harness.data.images import ImageReadError


def _write_cloud(path: Path, xyz: np.ndarray) -> Path:
    tifffile.imwrite(path, np.asarray(xyz, dtype=np.float32), photometric="rgb", planarconfig="contig")
    return path


@pytest.fixture
def two_by_two(tmp_path) -> Path:
    """z = [[invalid, 0.70], [0.72, 0.74]]: the foreground mean is 0.72, the mean of every pixel 0.54."""
    xyz = np.array([[[0, 0, 0], [0.01, -0.01, 0.70]],
                    [[-0.01, 0.01, 0.72], [0.01, 0.01, 0.74]]])
    return _write_cloud(tmp_path / "000.tiff", xyz)


def test_foreground_mean_fills_the_background_and_the_depth_is_centred_and_scaled(two_by_two):
    depth = depth_tensor(two_by_two, 2)
    assert depth.dtype == torch.float32 and depth.shape == (3, 2, 2)
    # (z - 0.72) * 100; the invalid point holds the foreground mean, so it becomes 0
    np.testing.assert_allclose(depth[0].numpy(), [[0.0, -2.0], [0.0, 2.0]], atol=1e-5)
    assert torch.equal(depth[0], depth[1]) and torch.equal(depth[0], depth[2])


def test_the_resize_is_bilinear_without_corner_alignment(two_by_two):
    # 2 -> 4 px with align_corners=False: output rows/cols sample the input at -0.25, 0.25, 0.75, 1.25,
    # clamped at the borders, so the weights are (1, 0), (.75, .25), (.25, .75), (0, 1)
    expected = [[0.0, -0.5, -1.5, -2.0],
                [0.0, -0.25, -0.75, -1.0],
                [0.0, 0.25, 0.75, 1.0],
                [0.0, 0.5, 1.5, 2.0]]
    depth = depth_tensor(two_by_two, 4)
    assert depth.shape == (3, 4, 4)
    for channel in depth:
        np.testing.assert_allclose(channel.numpy(), expected, atol=1e-5)


def test_the_unmasked_switch_centres_on_every_pixel_and_keeps_the_background(two_by_two):
    depth = depth_tensor(two_by_two, 2, foreground_mask=False)
    # "wofg_depth": (z - 0.54) * 100 with the invalid point's z = 0 left as it is
    np.testing.assert_allclose(depth[0].numpy(), [[-54.0, 16.0], [18.0, 20.0]], atol=1e-4)
    assert not torch.allclose(depth, depth_tensor(two_by_two, 2))


@pytest.mark.parametrize("cloud, says", [
    (np.zeros((4, 4, 3)), "no valid point"),
    (np.full((4, 4, 3), np.nan), "NaN"),
])
def test_a_cloud_without_usable_points_is_refused_naming_the_file(tmp_path, cloud, says):
    path = _write_cloud(tmp_path / "bad.tiff", cloud)
    for foreground_mask in (True, False):
        with pytest.raises(ImageReadError, match=says) as caught:
            depth_tensor(path, 4, foreground_mask=foreground_mask)
        assert str(path) in str(caught.value)


def test_a_file_that_is_not_a_point_cloud_or_is_damaged_is_refused_naming_it(tmp_path):
    two_channels = tmp_path / "two.tiff"
    tifffile.imwrite(two_channels, np.ones((4, 4, 2), dtype=np.float32), planarconfig="contig")
    truncated = _write_cloud(tmp_path / "cut.tiff", np.ones((16, 16, 3)))
    truncated.write_bytes(truncated.read_bytes()[:100])
    for path in (two_channels, truncated):
        with pytest.raises(ImageReadError) as caught:
            depth_tensor(path, 4)
        assert str(path) in str(caught.value)


def test_the_3d_ad_fixture_yields_rgb_and_the_official_depth(tmp_path):
    info = write_fixture("mvtec_3d", tmp_path / "mvtec_3d", size=32)
    index = load_dataset("mvtec_3d", info.root, expected=info.card())
    assert index.samples and all(set(s.images) == {"rgb", "xyz"} for s in index.samples)
    for sample in index.samples:
        xyz = tifffile.imread(sample.images["xyz"]).astype(np.float64)
        valid = np.any(xyz != 0, axis=2)
        assert not valid[:, :3].any() and valid[:, 3:].all()  # the fixture leaves three invalid columns
        z = xyz[..., 2]
        expected = (np.where(valid, z, z[valid].mean()) - z[valid].mean()) * 100
        masked = depth_tensor(sample.images["xyz"], 32)  # same size: bilinear is the identity
        np.testing.assert_allclose(masked[0].numpy(), expected, atol=1e-4)
        assert torch.equal(masked[1], masked[0]) and torch.equal(masked[2], masked[0])
        unmasked = depth_tensor(sample.images["xyz"], 32, foreground_mask=False)
        np.testing.assert_allclose(unmasked[0].numpy(), (z - z.mean()) * 100, atol=1e-4)
        assert (unmasked[0, :, :3] < -20).all() and (masked[0, :, :3] == 0).all()
