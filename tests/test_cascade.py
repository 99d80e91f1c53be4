"""DeepLabv3's cascaded model (Sec. 3.2, Fig. 3): every shipped cascade_*.yaml builds the paper's strides and
rates (tables written by hand from the paper), and the model serializes, changes stride, folds and exports."""
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml

from helpers.models import random_images, randomize_weights
from keras_deeplab import DeepLabV3Cascade, analysis, complexity, export
from keras_deeplab.fold import fold_batch_norm

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"
SIZE = 65
# The paper's Table 1 (ResNet-50 + block7): output stride after block1..block7 and the atrous rate of each block.
BLOCK_STRIDES = {8: (4, 8, 8, 8, 8, 8, 8), 16: (4, 8, 16, 16, 16, 16, 16), 32: (4, 8, 16, 32, 32, 32, 32),
                 64: (4, 8, 16, 32, 64, 64, 64), 128: (4, 8, 16, 32, 64, 128, 128),
                 256: (4, 8, 16, 32, 64, 128, 256)}
BLOCK_RATES = {8: (1, 1, 2, 4, 8, 16, 32), 16: (1, 1, 1, 2, 4, 8, 16), 32: (1, 1, 1, 1, 2, 4, 8),
               64: (1, 1, 1, 1, 1, 2, 4), 128: (1, 1, 1, 1, 1, 1, 2), 256: (1, 1, 1, 1, 1, 1, 1)}
# ceil(65 / stride): the feature map of a 65x65 input at strides 4, 8, ..., 256.
FEATURE_SIZES = {4: 17, 8: 9, 16: 5, 32: 3, 64: 2, 128: 1, 256: 1}
UNITS = {"resnet50": (3, 4, 6, 3, 3, 3, 3), "resnet101": (3, 4, 23, 3, 3, 3, 3)}
# Every row of Tables 1-4: config -> (backbone, last_block, output_stride, multi_grid).
PAPER_ROWS = {
    **{f"cascade_r50_block7_os{os}": ("resnet50", 7, os, (1, 1, 1)) for os in BLOCK_STRIDES},
    **{f"cascade_r{depth}_block{block}_os16": (f"resnet{depth}", block, 16, (1, 1, 1))
       for depth in (50, 101) for block in (4, 5, 6, 7)},
    **{f"cascade_r101_block7_os16_mg{''.join(map(str, mg))}": ("resnet101", 7, 16, mg)
       for mg in ((1, 2, 1), (1, 2, 3), (1, 2, 4), (2, 2, 2))},
}


def model_section(path):
    """The config's model section with its `base:` chain resolved."""
    content = yaml.safe_load(path.read_text())
    inherited = model_section(path.parent / content["base"]) if "base" in content else {}
    return {**inherited, **content.get("model", {})}


def check_strides_and_rates(model, backbone, last_block, output_stride, multi_grid):
    """Each unit's striding 1x1 conv, each 3x3 conv's stride and rate, and each block's feature map size."""
    strides, rates = BLOCK_STRIDES[output_stride], BLOCK_RATES[output_stride]
    for block in range(last_block):
        stage = f"conv{block + 2}"
        for unit in range(UNITS[backbone][block]):
            grid = multi_grid[unit] if block >= 3 else 1
            conv3x3 = model.get_layer(f"{stage}_block{unit + 1}_2_conv")
            assert conv3x3.strides == (1, 1) and conv3x3.dilation_rate == (rates[block] * grid,) * 2, conv3x3.name
            halves = unit == 0 and block > 0 and strides[block] == 2 * strides[block - 1]
            assert model.get_layer(f"{stage}_block{unit + 1}_1_conv").strides == (1 + halves,) * 2
        with pytest.raises(ValueError):
            model.get_layer(f"{stage}_block{UNITS[backbone][block] + 1}_1_conv")
        size = FEATURE_SIZES[strides[block]]
        assert tuple(model.get_layer(f"{stage}_block1_out").output.shape[1:3]) == (size, size)
    with pytest.raises(ValueError):
        model.get_layer(f"conv{last_block + 2}_block1_1_conv")


def test_the_configs_are_the_papers_rows_with_its_strides_and_rates():
    """ResNet-101 rows are built as ResNet-50 (same strides and rates; only block3 is longer), once per distinct
    model, but for Table 4's model, built in full."""
    assert {path.stem for path in CONFIGS.glob("cascade_*.yaml")} == set(PAPER_ROWS)
    built = set()
    for name, (backbone, last_block, output_stride, multi_grid) in PAPER_ROWS.items():
        config = model_section(CONFIGS / f"{name}.yaml")
        assert config.pop("architecture") == "deeplabv3_cascade"
        assert (config["backbone"], config["last_block"], config["output_stride"], tuple(config["multi_grid"])) == (
            backbone, last_block, output_stride, multi_grid), name
        assert config.pop("backbone_weights") == "imagenet"
        if name != "cascade_r101_block7_os16_mg121":
            config["backbone"] = backbone = "resnet50"
        if repr(config) in built:
            continue
        built.add(repr(config))
        model = DeepLabV3Cascade(3, input_shape=(SIZE, SIZE, 3), **config)
        check_strides_and_rates(model, backbone, last_block, output_stride, multi_grid)
        assert tuple(model.output.shape) == (None, SIZE, SIZE, 3)
        keras.backend.clear_session()


def test_output_size_config_round_trip_saving_and_output_stride_change(tmp_path):
    model = randomize_weights(DeepLabV3Cascade(4, last_block=5, output_stride=32, multi_grid=(1, 2, 1)))
    images = random_images(1, 47, 61)
    logits = np.asarray(model(images))
    assert logits.shape == (1, 47, 61, 4)
    config = model.get_config()
    assert DeepLabV3Cascade.from_config(config).get_config() == config
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert isinstance(loaded, DeepLabV3Cascade) and loaded.last_block == 5
    np.testing.assert_allclose(np.asarray(loaded(images)), logits, rtol=1e-5, atol=1e-5)
    os8 = model.with_output_stride(8)
    assert (os8.output_stride, os8.num_classes, os8.multi_grid, os8.backbone) == (8, 4, (1, 2, 1), "resnet50")
    assert os8.get_layer("conv6_block2_2_conv").dilation_rate == (16, 16)
    for want, got in zip(model.get_weights(), os8.get_weights()):
        np.testing.assert_array_equal(want, got)


@pytest.mark.parametrize("kwargs, message", [
    ({"last_block": 4, "output_stride": 64}, r"output_stride must be one of \(8, 16, 32\) with last_block 4"),
    ({"output_stride": 4}, "output_stride must be one of"),
    ({"last_block": 8}, "last_block must be one of"),
    ({"backbone": "mobilenet_v2"}, "needs one of"),
])
def test_refuses_unreachable_strides_and_other_backbones(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DeepLabV3Cascade(3, **kwargs)


def test_folded_and_exported_model_computes_the_same(tmp_path):
    model = randomize_weights(DeepLabV3Cascade(3, last_block=5, output_stride=16))
    images = random_images(2, 33, 41)
    want = np.asarray(model(images, training=False))
    got = np.asarray(fold_batch_norm(model)(images, training=False))
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max(), rtol=1e-4)
    pixels = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    path = export.export_saved_model(model, tmp_path / "cascade", check_images=[pixels])
    assert (path / "saved_model.pb").is_file()


def test_analyze_rates_lists_the_cascaded_blocks_rates(capsys):
    assert analysis.main(["--crop-size", "513", "--output-stride", "16", "--cascade-last-block", "7",
                          "--multi-grid", "1,2,1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = [line.split()[:4] for line in lines[2:]]
    assert rows == [["1", "4", "129x129", "1"], ["2", "8", "65x65", "1"], ["3", "16", "33x33", "1"],
                    ["4", "16", "33x33", "2/4/2"], ["5", "16", "33x33", "4/8/4"], ["6", "16", "33x33", "8/16/8"],
                    ["7", "16", "33x33", "16/32/16"]]
    assert lines[-1].split()[-1] == "0.00/0.88/0.00"  # rate 32 on 33x33: mostly the centre tap alone


def test_summary_tabulates_cascaded_models(monkeypatch, capsys):
    variants = [label_kwargs for label_kwargs in complexity.summary_variants() if "architecture" in label_kwargs[1]]
    assert [label for label, _ in variants] == ["cascaded R50 block7 OS16 MG(1, 1, 1) (no ASPP)",
                                                "cascaded R50 block7 OS8 MG(1, 1, 1) (no ASPP)",
                                                "cascaded R101 block7 OS16 MG(1, 2, 1) (no ASPP)"]
    monkeypatch.setattr(complexity, "summary_variants", lambda: variants[:1])
    assert complexity.main(["--size", "65"]) == 0
    cells = [cell.strip() for cell in capsys.readouterr().out.strip().splitlines()[-1].strip("|").split("|")]
    model = DeepLabV3Cascade(21, input_shape=(65, 65, 3))
    assert cells[1] == "none"
    assert float(cells[2]) == pytest.approx(complexity.count_parameters(model)[0] / 1e6, abs=0.005)
    assert float(cells[3]) == pytest.approx(complexity.count_macs(model) / 1e9, abs=0.05)
