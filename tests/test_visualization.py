"""Pictures: outlined masks (contrast, absent), LAVIS-style heatmaps, side-by-side text results, PNG and matplotlib."""

import numpy as np
import pytest
import torch
from PIL import Image

from transformers_esam_blip.visualization import (
    PALETTE,
    contrast_colour,
    draw_heatmap,
    draw_masks,
    draw_text_result,
    heatmap_to_image_size,
    jet_colormap,
    plot_heatmap,
    plot_masks,
    plot_text_result,
    save_heatmap_png,
    save_masks_png,
    save_text_result_png,
)

HEIGHT, WIDTH = 48, 64


@pytest.fixture
def image() -> Image.Image:
    return Image.fromarray((np.random.default_rng(0).random((HEIGHT, WIDTH, 3)) * 255).astype(np.uint8))


@pytest.fixture
def mask() -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[10:30, 5:25] = True
    return mask


def test_draw_masks_marks_only_the_mask(image, mask):
    picture = np.asarray(draw_masks(image, mask, alpha=0.5)).astype(int)
    original = np.asarray(image).astype(int)
    assert picture.shape == original.shape
    changed = np.abs(picture - original).sum(-1) > 0
    assert 0.3 < changed[mask].mean() < 0.8  # the outline and the fill's stripes; the object shows between them
    assert np.array_equal(picture[~mask], original[~mask])


def _scene(colour, background, size=96):
    """A flat `colour` square (rows and columns 24..71) on a flat `background`."""
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[:] = background
    mask = np.zeros((size, size), dtype=bool)
    mask[24:72, 24:72] = True
    image[mask] = colour
    return image, mask


def test_fill_keeps_the_objects_colour():
    """A red square still looks red: red stays the dominant channel of its mean colour and of most of its pixels."""
    image, mask = _scene((220, 30, 30), (128, 128, 128))
    picture = np.asarray(draw_masks(image, mask)).astype(int)
    inside = picture[mask]
    assert inside.mean(axis=0).argmax() == 0
    assert (inside.argmax(axis=-1) == 0).mean() > 0.6
    assert (inside == (220, 30, 30)).all(-1).mean() > 0.5  # most of the object shows its own colour untouched


@pytest.mark.parametrize(
    ("colour", "background"),
    [((220, 30, 30), (128, 128, 128)), ((40, 70, 210), (70, 110, 200)), ((230, 210, 30), (250, 250, 250))],
    ids=["red-on-gray", "blue-on-blue-sky", "yellow-on-white"],
)
def test_outline_contrasts_with_the_object(colour, background):
    image, mask = _scene(colour, background)
    picture = np.asarray(draw_masks(image, mask))
    outline = picture[24, 48].astype(int)  # the top edge of the square
    assert tuple(outline) in PALETTE
    assert np.abs(outline - np.array(colour)).sum() > 250  # far from the object's colour, channel by channel
    assert np.array_equal(picture[23, 48], background)  # drawn inside the mask only


def test_contrast_colour_is_deterministic_and_distinct_per_mask():
    red = (220, 30, 30)
    first = contrast_colour(red)
    assert first == contrast_colour(red) and PALETTE[first] != red
    second = contrast_colour(red, taken=[first])
    assert second != first  # a second red object gets another colour
    assert contrast_colour(red, palette=[(230, 25, 50), (0, 215, 255)]) == 1

    image, mask = _scene(red, (128, 128, 128))
    twin = np.zeros_like(mask)
    twin[80:90, 5:15] = True
    image[twin] = red
    picture = np.asarray(draw_masks(image, np.stack([mask, twin])))
    assert tuple(picture[24, 48]) == PALETTE[first] and tuple(picture[80, 10]) == PALETTE[second]


def test_outline_width_scales_with_the_image():
    image, mask = _scene((220, 30, 30), (128, 128, 128))
    colour = PALETTE[contrast_colour((220, 30, 30))]
    thin = np.asarray(draw_masks(image, mask, alpha=0.0))
    assert (thin[:, 48] == colour).all(-1).sum() == 2 * 2  # 2 px at the top and at the bottom edge
    thick = np.asarray(draw_masks(image, mask, alpha=0.0, outline_width=5))
    assert (thick[:, 48] == colour).all(-1).sum() == 2 * 5
    large = np.asarray(
        draw_masks(np.kron(image, np.ones((10, 10, 1), np.uint8)), np.kron(mask, np.ones((10, 10), bool)), alpha=0.0)
    )
    assert (large[:, 480] == colour).all(-1).sum() == 2 * 5  # 1/200 of a 960 px side


def test_absent_masks_are_dashed_unfilled_and_labelled():
    image, mask = _scene((30, 180, 30), (128, 128, 128))
    present = np.asarray(draw_masks(image, mask))
    picture = np.asarray(draw_masks(image, mask, absent=[True]))
    colour = PALETTE[contrast_colour((30, 180, 30))]
    top_edge = (picture[24, 24:72] == colour).all(-1)
    assert (present[24, 24:72] == colour).all()  # a present mask's outline is solid
    assert 0.3 < top_edge.mean() < 0.7  # dashes and gaps alternate along the edge
    assert np.count_nonzero(np.diff(top_edge.astype(int))) >= 4
    assert (picture[30:66, 30:66] == (30, 180, 30)).all()  # no fill
    label = picture[:24, 24:72]  # the label sits just above the mask: its box and its letters
    assert (label == colour).all(-1).sum() > 50 and (np.abs(label.astype(int) - colour).sum(-1) > 200).sum() > 10
    assert draw_masks(image, mask, absent=True) == draw_masks(image, mask, absent=np.array([True]))
    assert draw_masks(image, mask, absent=[False]) == draw_masks(image, mask)


def test_absent_empty_mask_is_labelled_in_the_corner():
    image = np.full((96, 96, 3), 128, dtype=np.uint8)
    picture = np.asarray(draw_masks(image, np.zeros((2, 96, 96), dtype=bool), absent=True))
    labelled = (picture != 128).any(-1)
    assert labelled[:12, :30].mean() > 0.5 and labelled[12:24, :30].mean() > 0.5  # two labels, one under the other
    assert not labelled[30:].any() and not labelled[:, 50:].any()


def test_text_result_marks_an_absent_text(image, mask):
    heatmap = torch.rand(7, 7)
    absent = draw_text_result(image, mask, heatmap, absent=True)
    left = absent.crop((0, 0, WIDTH, HEIGHT))
    assert left == draw_masks(image, mask, absent=[True])
    assert absent.crop((WIDTH, 0, 2 * WIDTH, HEIGHT)) == draw_text_result(image, mask, heatmap).crop(
        (WIDTH, 0, 2 * WIDTH, HEIGHT)
    )


def test_draw_masks_points_boxes_and_padding(image):
    empty = np.zeros((HEIGHT, WIDTH), dtype=bool)
    picture = np.asarray(
        draw_masks(image, empty, points=[[40, 20], [5, 5]], labels=[1, -1], boxes=[[30, 10, 60, 40]])
    ).astype(int)
    original = np.asarray(image).astype(int)
    assert tuple(picture[20, 40]) == (0, 200, 0)  # the foreground point's centre
    assert np.array_equal(picture[5, 5], original[5, 5])  # padding points are not drawn
    assert not np.array_equal(picture[10, 45], original[10, 45])  # the box outline


def test_jet_colormap_matches_matplotlib():
    matplotlib = pytest.importorskip("matplotlib")
    values = np.linspace(0, 1, 1001)
    expected = matplotlib.colormaps["jet"](values)[:, :3]
    # matplotlib looks the colour up in a 256-entry table; the breakpoints are the same.
    assert np.abs(jet_colormap(values) - expected).max() < 0.02
    assert jet_colormap(np.zeros((2, 3))).shape == (2, 3, 3)
    np.testing.assert_allclose(jet_colormap([-1.0, 2.0]), jet_colormap([0.0, 1.0]))


def test_heatmap_blur_matches_scipy_gaussian_filter():
    """LAVIS `getAttMap` order: resize, blur with sigma 0.02 * max(H, W) (scipy defaults), normalise."""
    ndimage = pytest.importorskip("scipy.ndimage")
    heatmap = torch.rand(7, 7)
    upsampled = torch.nn.functional.interpolate(heatmap[None, None], size=(HEIGHT, WIDTH), mode="bicubic")[0, 0]
    upsampled = (upsampled - upsampled.min()) / (upsampled.max() - upsampled.min())
    expected = ndimage.gaussian_filter(upsampled.numpy(), 0.02 * WIDTH)
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    result = heatmap_to_image_size(heatmap, (HEIGHT, WIDTH))
    assert result.shape == (HEIGHT, WIDTH) and result.dtype == np.float32
    np.testing.assert_allclose(result, expected, atol=1e-5)
    assert result.min() == 0 and result.max() == pytest.approx(1.0)


def test_heatmap_peak_lands_where_the_hot_cell_is():
    heatmap = np.zeros((4, 4), dtype=np.float32)
    heatmap[1, 3] = 1.0  # row 1, column 3: top right
    for blur in (True, False):
        result = heatmap_to_image_size(heatmap, (HEIGHT, WIDTH), blur=blur)
        row, col = np.unravel_index(result.argmax(), result.shape)
        assert HEIGHT / 4 <= row < HEIGHT / 2 and col >= WIDTH * 3 / 4 - 1


def test_large_images_blur_at_a_reduced_size():
    result = heatmap_to_image_size(torch.rand(5, 5), (1500, 2000))
    assert result.shape == (1500, 2000)
    assert 0.0 <= result.min() and result.max() <= 1.0 + 1e-6


def test_constant_heatmap_gives_the_lowest_colour(image):
    assert not heatmap_to_image_size(np.full((3, 3), 0.25), (HEIGHT, WIDTH)).any()
    picture = np.asarray(draw_heatmap(image, np.ones((3, 3)), alpha=1.0))
    assert (picture == np.round(jet_colormap(0.0) * 255).astype(np.uint8)).all()


def test_draw_heatmap_blends_over_the_image(image):
    heatmap = torch.rand(7, 7)
    assert np.array_equal(np.asarray(draw_heatmap(image, heatmap, alpha=0.0)), np.asarray(image))
    half = np.asarray(draw_heatmap(image, heatmap, alpha=0.5)).astype(float)
    full = np.asarray(draw_heatmap(image, heatmap, alpha=1.0)).astype(float)
    assert np.abs(half - (np.asarray(image) + full) / 2).max() <= 1.0
    assert draw_heatmap(np.asarray(image), heatmap.numpy()).size == (WIDTH, HEIGHT)


def test_draw_text_result_layout(image, mask):
    heatmap = torch.rand(7, 7)
    points, labels = [[15.0, 20.0], [50.0, 40.0]], [1, 0]
    plain = draw_text_result(image, mask, heatmap, points, labels)
    assert plain.size == (2 * WIDTH, HEIGHT)
    assert np.array_equal(
        np.asarray(plain.crop((0, 0, WIDTH, HEIGHT))), np.asarray(draw_masks(image, mask, points, labels))
    )
    right = np.asarray(plain.crop((WIDTH, 0, 2 * WIDTH, HEIGHT)))
    heat = np.asarray(draw_heatmap(image, heatmap))
    assert tuple(right[40, 50]) == (220, 0, 0)  # the background point, drawn on the heatmap too
    assert np.array_equal(right[:5, :5], heat[:5, :5])

    titled = draw_text_result(image, torch.from_numpy(mask), heatmap, points, labels, title="a dog: match 0.93")
    band = titled.height - HEIGHT
    assert titled.width == 2 * WIDTH and band > 0
    assert np.array_equal(np.asarray(titled)[band:], np.asarray(plain))
    assert (np.asarray(titled)[:band] < 128).any()  # the title text


def test_long_titles_wrap_within_the_picture(image, mask):
    heatmap = torch.rand(7, 7)
    short = draw_text_result(image, mask, heatmap, title="a dog")
    long = draw_text_result(image, mask, heatmap, title="a small brown dog running on the beach " * 3)
    assert long.width == short.width == 2 * WIDTH and long.height > short.height


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda image, mask: draw_heatmap(image, torch.rand(7)), "heatmap"),
        (lambda image, mask: draw_heatmap(image, np.array([[0.0, np.nan]])), "heatmap"),
        (lambda image, mask: draw_heatmap(image, np.zeros((0, 3))), "heatmap"),
        (lambda image, mask: draw_heatmap(image, torch.rand(7, 7), alpha=1.5), "alpha"),
        (lambda image, mask: draw_heatmap(np.zeros((4, 4, 5)), torch.rand(7, 7)), "image"),
        (lambda image, mask: draw_text_result(image, mask[:-1], torch.rand(7, 7)), "mask"),
        (lambda image, mask: draw_text_result(image, mask, torch.rand(2, 7, 7)), "heatmap"),
        (lambda image, mask: draw_text_result(image, mask, torch.rand(7, 7), points=[1, 2, 3]), "points"),
        (lambda image, mask: draw_text_result(image, mask, torch.rand(7, 7), [[1, 2]], labels=[1, 0]), "labels"),
        (lambda image, mask: draw_text_result(image, mask, torch.rand(7, 7), title=3), "title"),
        (lambda image, mask: draw_masks(image, mask, boxes=[[1, 2, 3]]), "boxes"),
        (lambda image, mask: draw_masks(image, mask[None, :, :-1]), "masks"),
        (lambda image, mask: draw_masks(image, np.stack([mask, mask]), absent=[True]), "absent"),
        (lambda image, mask: draw_masks(image, mask, outline_width=0), "outline_width"),
        (lambda image, mask: draw_masks(image, mask, outline_width=2.5), "outline_width"),
        (lambda image, mask: draw_text_result(image, mask, torch.rand(7, 7), heatmap_alpha=2.0), "heatmap_alpha"),
    ],
)
def test_bad_input_names_the_argument(image, mask, call, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        call(image, mask)


@pytest.mark.parametrize("absent", [[1], ["yes"], "yes", [0.0]])
def test_absent_must_be_booleans(image, mask, absent):
    with pytest.raises(TypeError, match="`absent` must be booleans"):
        draw_masks(image, mask, absent=absent)
    with pytest.raises(TypeError, match="`absent` must be booleans"):
        draw_text_result(image, mask, torch.rand(7, 7), absent=absent)


def test_save_pngs(tmp_path, image, mask):
    heatmap = torch.rand(7, 7)
    for path, save, args in (
        (tmp_path / "a" / "masks.png", save_masks_png, (image, mask)),
        (tmp_path / "heat.png", save_heatmap_png, (image, heatmap)),
        (tmp_path / "text.png", save_text_result_png, (image, mask, heatmap)),
    ):
        assert save(path, *args) == path
        with Image.open(path) as written:
            assert written.format == "PNG" and written.height == HEIGHT


def test_plots(image, mask):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, axes = plt.subplots(1, 3)
    assert plot_masks(image, mask, ax=axes[0], title="masks") is axes[0]
    assert plot_heatmap(image, torch.rand(7, 7), ax=axes[1]) is axes[1]
    assert plot_text_result(image, mask, torch.rand(7, 7), ax=axes[2], title="a dog") is axes[2]
    assert axes[2].get_title() == "a dog"
    plt.close("all")


def test_draw_panels_grid_and_errors():
    from transformers_esam_blip.visualization import draw_panels

    red = Image.new("RGB", (40, 30), (255, 0, 0))
    blue = Image.new("RGB", (20, 30), (0, 0, 255))
    grid = draw_panels([red, blue, red], ["a", "b", "c"], columns=2)
    width, height = grid.size
    assert width == 80 and height > 60  # 2 columns of the widest picture, 2 rows of picture + title band
    band = (height - 60) // 2
    assert grid.getpixel((5, band + 5)) == (255, 0, 0)
    assert grid.getpixel((45, band + 5)) == (0, 0, 255)
    assert grid.getpixel((65, band + 5)) == (255, 255, 255)  # the narrow picture leaves the rest of its cell white
    assert grid.getpixel((5, 2 * band + 30 + 5)) == (255, 0, 0)
    assert draw_panels([red]).size == (40, 30)  # no titles: no bands
    with pytest.raises(ValueError, match="2 titles for 1 pictures"):
        draw_panels([red], ["a", "b"])
    with pytest.raises(ValueError, match="at least one"):
        draw_panels([])
    with pytest.raises(ValueError, match="columns"):
        draw_panels([red], columns=0)


def test_draw_masks_custom_colours():
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    mask = np.zeros((4, 4), dtype=bool)
    mask[0, 0] = True
    picture = draw_masks(image, mask, alpha=1.0, colours=[(255, 0, 255)])
    assert picture.getpixel((0, 0)) == (255, 0, 255) and picture.getpixel((1, 1)) == (0, 0, 0)
    with pytest.raises(ValueError, match="colours"):
        draw_masks(image, mask, colours=[(300, 0, 0)])
    with pytest.raises(ValueError, match="colours"):
        draw_masks(image, mask, colours=[])
