"""tools/example_gif.py, which makes the README's picture: one row per frame, source | driving | result."""
import shlex
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from conftest import REPO, load_fixture, readme_commands

import example_gif  # tools/, on sys.path through conftest
import media


def test_rows_hold_source_driving_and_result_panels(tmp_path):
    fx = load_fixture("zero_order")
    shape = fx.config().frame_shape
    with media.open_driving_clip(fx.dir / "driving.mp4", shape) as clip:
        driving = list(clip)
    result = tmp_path / "result.mp4"
    with media.FrameWriter(result, 10) as writer:  # a stand-in result: the driving frames upside down
        for frame in driving:
            writer.write(media.to_uint8(frame[::-1]))
    output = tmp_path / "example.gif"
    size = shape[0]  # panels at the model's own size, so each must equal its input
    assert example_gif.main(["--config", str(fx.config_path), "--source_image", str(fx.dir / "source.png"),
                             "--driving_video", str(fx.dir / "driving.mp4"), "--result", str(result),
                             "--output", str(output), "--size", str(size)]) == 0
    rows = iio.imread(output, index=None)[..., :3].astype(int)
    assert rows.shape == (len(driving), size, 3 * shape[1], 3)
    source = media.to_uint8(media.read_image(fx.dir / "source.png", shape)).astype(int)
    with media.open_video(result) as video:
        written = [frame[..., :3].astype(int) for frame in video]
    # every colour is one of the source's 256 median-cut ones: panels match their inputs to within that palette
    palette = example_gif.median_cut_palette(source.astype(np.uint8))
    assert {tuple(c) for c in np.unique(rows.reshape(-1, 3), axis=0)} <= {tuple(c) for c in palette.astype(int)}
    for row, frame, result_frame in zip(rows, driving, written):
        panels = np.split(row, 3, axis=1)
        for panel, expected in zip(panels, (source, media.to_uint8(frame).astype(int), result_frame)):
            assert np.abs(panel - expected).mean() < 4
    assert np.abs(np.split(rows[0], 3, axis=1)[2] - np.split(rows[0], 3, axis=1)[1]).mean() > 10  # flipped


def test_missing_result_is_one_line_error(tmp_path, capsys):
    assert example_gif.main(["--result", str(tmp_path / "none.mp4"), "--output", str(tmp_path / "x.gif")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "none.mp4" in err
    assert not (tmp_path / "x.gif").exists()


def test_each_pixel_becomes_its_nearest_palette_colour_alone():
    palette = np.array([[0, 0, 0], [100, 100, 100], [255, 0, 0]], np.uint8)
    image = np.array([[[10, 10, 10], [60, 60, 60], [200, 30, 20]], [[49, 50, 50], [51, 50, 50], [255, 255, 255]]],
                     np.uint8)
    expected = palette[[[0, 1, 2], [0, 1, 1]]]
    np.testing.assert_array_equal(example_gif.to_palette(image, palette), expected)
    image[0, 0] = [250, 5, 5]  # another pixel's change moves no other pixel (the palette is fixed)
    expected[0, 0] = palette[2]
    np.testing.assert_array_equal(example_gif.to_palette(image, palette), expected)


# The result video differs a little between CPUs: TensorFlow with and without oneDNN
# (TF_ENABLE_ONEDNN_OPTS=1/0) predicts 725 of the 7.9 M values of README command 1's frames one level
# apart, and H.264 spreads that over half the pixels of example.mp4, by up to 20 levels. The GIF's
# result panels then differ in ~21% of pixels, by 0.90 levels at most on a frame's mean; its source and
# driving panels not at all. Result frames one step out of order differ by 4.2 levels or more on a frame's mean.
MAX_MEAN_DIFFERENCE = 2.0  # levels, mean over one panel of one frame
MAX_CHANGED_INPUT_PIXELS = 0.01  # fraction of the source and driving panels' pixels that may differ


def test_committed_gif_is_what_readme_command_1_and_the_tool_make(tmp_path, monkeypatch):
    import run

    words = shlex.split(readme_commands("Quick start")[0].split("&&")[-1])
    assert words[:2] == ["python", "run.py"]
    output = words.index("--output") + 1
    assert (REPO / words[output]).resolve() == (REPO / "output" / "example.mp4").resolve() \
        == Path(example_gif.parse_args([]).result).resolve()  # the tool's default input
    words[output] = str(tmp_path / "example.mp4")
    monkeypatch.chdir(REPO)
    assert run.main(words[2:]) == 0
    assert example_gif.main(["--result", words[output], "--output", str(tmp_path / "example.gif")]) == 0

    made, committed = (iio.imread(path, index=None)[..., :3].astype(int)
                       for path in (tmp_path / "example.gif", REPO / "docs" / "example.gif"))
    assert made.shape == committed.shape
    assert iio.immeta(tmp_path / "example.gif")["duration"] == iio.immeta(REPO / "docs" / "example.gif")["duration"]
    for name, made_panel, committed_panel in zip(("source", "driving", "result"), np.split(made, 3, axis=2),
                                                 np.split(committed, 3, axis=2)):
        difference = np.abs(made_panel - committed_panel)
        worst = difference.mean(axis=(1, 2, 3)).max()
        assert worst <= MAX_MEAN_DIFFERENCE, f"{name} panel: a frame differs by {worst:.2f} levels on the mean"
        if name != "result":
            changed = difference.max(axis=-1).astype(bool).mean()
            assert changed <= MAX_CHANGED_INPUT_PIXELS, f"{name} panel: {changed:.1%} of its pixels differ"
