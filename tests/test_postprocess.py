"""Mask clean-up (largest region, holes filled) against hand-drawn masks, bad shapes too."""

from __future__ import annotations

import numpy as np
import pytest

from melanoma.postprocess import clean_masks, largest_region


def grid(*rows: str) -> np.ndarray:
    """A mask drawn as strings: '#' lesion, '.' background."""
    return np.array([[c == "#" for c in row] for row in rows], dtype=np.uint8)


def test_keeps_the_largest_region_and_fills_its_holes():
    mask = grid(
        "##......",
        "##......",
        "...#####",
        "...#..##",
        "...#####",
        "........",
    )
    expected = grid(
        "........",
        "........",
        "...#####",
        "...#####",
        "...#####",
        "........",
    )
    np.testing.assert_array_equal(largest_region(mask), expected)


def test_background_open_to_the_border_is_no_hole_and_diagonals_connect():
    # The bay in the right region opens to the border: not a hole. The two squares touch
    # at a corner: one 8-connected region, kept whole. The pit in the middle touches
    # the outside only at corners: 4-connected background makes it a hole.
    bay = grid(
        ".....",
        ".###.",
        ".#...",
        ".###.",
        ".....",
    )
    np.testing.assert_array_equal(largest_region(bay), bay)
    corners = grid(
        "##...",
        "##...",
        "..##.",
        "..##.",
        ".....",
    )
    np.testing.assert_array_equal(largest_region(corners), corners)
    pit = grid(
        ".#.",
        "#.#",
        ".#.",
    )
    np.testing.assert_array_equal(largest_region(pit), grid(".#.", "###", ".#."))


def test_empty_and_full_masks_stay_as_they_are():
    for mask in (np.zeros((4, 6), np.uint8), np.ones((4, 6), np.uint8)):
        np.testing.assert_array_equal(largest_region(mask), mask)


def test_equal_regions_keep_the_first_in_raster_order():
    mask = grid("##..##", "##..##")
    np.testing.assert_array_equal(largest_region(mask), grid("##....", "##...."))


@pytest.mark.parametrize("shape", [(3, 1, 8, 8), (3, 8, 8), (8, 8)])
@pytest.mark.parametrize("dtype", [np.uint8, bool])
def test_clean_masks_keeps_shape_and_dtype(shape, dtype):
    rng = np.random.default_rng(0)
    masks = (rng.random(shape) > 0.6).astype(dtype)
    out = clean_masks(masks)
    assert out.shape == masks.shape and out.dtype == masks.dtype
    flat_in = masks.reshape(-1, 8, 8)
    flat_out = out.reshape(-1, 8, 8)
    for before, after in zip(flat_in, flat_out, strict=True):
        np.testing.assert_array_equal(after, largest_region(before).astype(dtype))
    assert clean_masks(np.zeros((0, 1, 8, 8), np.uint8)).shape == (0, 1, 8, 8)


@pytest.mark.parametrize("shape", [(8,), (2, 3, 8, 8), (1, 1, 1, 8, 8)])
def test_clean_masks_refuses_other_shapes_naming_the_shape(shape):
    with pytest.raises(ValueError, match=rf"\(N, 1, H, W\).*{re_shape(shape)}"):
        clean_masks(np.zeros(shape, np.uint8))


def re_shape(shape: tuple) -> str:
    return str(shape).replace("(", r"\(").replace(")", r"\)")
