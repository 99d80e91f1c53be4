"""Valid atrous taps (paper Figure 4) against a brute-force count over a zero-padded map, and the CLI."""
import numpy as np
import pytest
from PIL import Image

from keras_deeplab.analysis import main, parse_rates, suggest_max_rate, valid_tap_fractions


def brute_force_fractions(height, width, rate, kernel_size):
    """Pads an all-ones map with zeros and, at every output position, counts the taps that read a one."""
    pad = rate * (kernel_size // 2)
    padded = np.zeros((height + 2 * pad, width + 2 * pad), dtype=int)
    padded[pad:pad + height, pad:pad + width] = 1
    histogram = np.zeros(kernel_size ** 2 + 1)
    for y in range(height):
        for x in range(width):
            valid = sum(padded[y + i * rate, x + j * rate]
                        for i in range(kernel_size) for j in range(kernel_size))
            histogram[valid] += 1
    return histogram / (height * width)


@pytest.mark.parametrize("size", [1, 5, 13, 33])
@pytest.mark.parametrize("rate", [1, 2, 3, 6, 12, 17, 40])
@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_fractions_equal_brute_force_count(size, rate, kernel_size):
    fractions = valid_tap_fractions(size, rate, kernel_size)
    assert fractions.shape == (kernel_size ** 2 + 1,)
    np.testing.assert_allclose(fractions, brute_force_fractions(size, size, rate, kernel_size), atol=1e-12)
    assert fractions.sum() == pytest.approx(1.0)


def test_paper_map_and_rectangular_maps_equal_brute_force():
    for rate in (1, 6, 12, 18, 24, 36, 64):
        np.testing.assert_allclose(valid_tap_fractions(65, rate), brute_force_fractions(65, 65, rate, 3),
                                   atol=1e-12)
    np.testing.assert_allclose(valid_tap_fractions((9, 20), 7, 3), brute_force_fractions(9, 20, 7, 3),
                               atol=1e-12)


def test_small_rates_keep_all_taps_and_large_rates_only_the_centre():
    assert valid_tap_fractions(65, 1)[9] > 0.93  # all but the one-pixel border
    assert valid_tap_fractions(65, 1)[9] > valid_tap_fractions(65, 2)[9] > valid_tap_fractions(65, 12)[9]
    for rate in (65, 66, 100, 1000):
        np.testing.assert_array_equal(valid_tap_fractions(65, rate), np.eye(10)[1])
    assert valid_tap_fractions(65, 64)[1] > 0.9


def test_suggested_rate_follows_its_rule():
    for crop, output_stride in ((513, 16), (513, 8), (321, 8), (769, 16)):
        size = -(-crop // output_stride)
        rate = suggest_max_rate(crop, output_stride, min_valid_fraction=0.985)
        assert 1 - brute_force_fractions(size, size, rate, 3)[1] >= 0.985
        assert 1 - brute_force_fractions(size, size, rate + 1, 3)[1] < 0.985
    # The paper's largest ASPP rates for a 513 crop.
    assert suggest_max_rate(513, 16) == 18
    assert suggest_max_rate(513, 8) == 36
    assert suggest_max_rate(513, 8, min_valid_fraction=0.5) > 36


def test_bad_arguments_are_reported():
    with pytest.raises(ValueError, match="odd kernel_size"):
        valid_tap_fractions(65, 2, kernel_size=4)
    with pytest.raises(ValueError, match="rate"):
        valid_tap_fractions(65, 0)
    with pytest.raises(ValueError, match="min_valid_fraction"):
        suggest_max_rate(513, 8, min_valid_fraction=0)
    assert parse_rates("1-4,12,2") == [1, 2, 3, 4, 12]
    with pytest.raises(SystemExit):
        main(["--rates", "a-b"])


def test_cli_prints_table_and_writes_a_png(tmp_path, capsys):
    plot = tmp_path / "fig4.png"
    assert main(["--crop-size", "513", "--output-stride", "8", "--rates", "1-64", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "65x65 feature map" in out
    rows = {int(line.split()[0]): [float(v) for v in line.split()[1:]]
            for line in out.splitlines() if line.split() and line.split()[0].isdigit()}
    assert sorted(rows) == list(range(1, 65))
    for rate in (1, 18, 36, 64):
        expected = brute_force_fractions(65, 65, rate, 3)
        full, centre, mean = rows[rate]
        assert full == pytest.approx(expected[9], abs=1e-4)
        assert centre == pytest.approx(expected[1], abs=1e-4)
        assert mean == pytest.approx(np.dot(np.arange(10), expected), abs=1e-3)
    assert "suggested largest rate: 36" in out
    with Image.open(plot) as image:
        image.load()
        assert image.format == "PNG" and image.width > 100 and image.height > 100
        assert len(np.unique(np.asarray(image.convert("L")))) > 10  # not a blank canvas
