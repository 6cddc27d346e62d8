"""tools/example_gif.py, which makes the README's picture: one row per frame, source | driving | result."""
import sys

import imageio.v3 as iio
import numpy as np

from conftest import REPO, load_fixture

import utils

sys.path.insert(0, str(REPO / "tools"))
import example_gif  # noqa: E402


def test_rows_hold_source_driving_and_result_panels(tmp_path):
    fx = load_fixture("zero_order")
    shape = fx.config().frame_shape
    with utils.open_driving_clip(fx.dir / "driving.mp4", shape) as clip:
        driving = list(clip)
    result = tmp_path / "result.mp4"
    with utils.FrameWriter(result, 10) as writer:  # a stand-in result: the driving frames upside down
        for frame in driving:
            writer.write(utils.to_uint8(frame[::-1]))
    output = tmp_path / "example.gif"
    size = shape[0]  # panels at the model's own size, so each must equal its input
    assert example_gif.main(["--config", str(fx.config_path), "--source_image", str(fx.dir / "source.png"),
                             "--driving_video", str(fx.dir / "driving.mp4"), "--result", str(result),
                             "--output", str(output), "--size", str(size)]) == 0
    rows = iio.imread(output, index=None)[..., :3].astype(int)
    assert rows.shape == (len(driving), size, 3 * shape[1], 3)
    source = utils.to_uint8(utils.read_image(fx.dir / "source.png", shape)).astype(int)
    with utils.open_video(result) as video:
        written = [frame[..., :3].astype(int) for frame in video]
    # GIF keeps 256 colours per frame: panels match their inputs to within that quantisation
    for row, frame, result_frame in zip(rows, driving, written):
        panels = np.split(row, 3, axis=1)
        for panel, expected in zip(panels, (source, utils.to_uint8(frame).astype(int), result_frame)):
            assert np.abs(panel - expected).mean() < 4
    assert np.abs(np.split(rows[0], 3, axis=1)[2] - np.split(rows[0], 3, axis=1)[1]).mean() > 10  # flipped


def test_missing_result_is_one_line_error(tmp_path, capsys):
    assert example_gif.main(["--result", str(tmp_path / "none.mp4"), "--output", str(tmp_path / "x.gif")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "none.mp4" in err
    assert not (tmp_path / "x.gif").exists()
