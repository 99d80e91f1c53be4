"""Parameter and MAC counts against hand formulas and torchvision's published figures."""
import keras
import pytest

from keras_deeplab import complexity
from keras_deeplab.complexity import count_macs, count_parameters
from keras_deeplab.convert import TORCHVISION_CONFIG
from keras_deeplab.layers import ASPP, AtrousConv2D
from keras_deeplab.model import DeepLabV3


def test_single_conv_model_macs_and_parameters():
    inputs = keras.Input((None, None, 5))
    model = keras.Model(inputs, keras.layers.Conv2D(7, 3, strides=2, padding="same")(inputs))
    # 'same' with stride 2: ceil(33 / 2) x ceil(20 / 2) outputs, each 3 * 3 * 5 MACs per output channel.
    assert count_macs(model, (33, 20)) == 17 * 10 * 7 * 3 * 3 * 5
    assert count_parameters(model) == (3 * 3 * 5 * 7 + 7,) * 2
    with pytest.raises(ValueError, match="static input size"):
        count_macs(model)


def test_depthwise_grouped_and_atrous_convs():
    inputs = keras.Input((12, 10, 8))
    x = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2)(inputs)  # 16 channels
    x = keras.layers.Conv2D(4, 1, groups=4)(x)  # each output reads 16 / 4 channels
    x = AtrousConv2D(6, 3, dilation_rate=20)(x)  # every tap counted, even those off the 12x10 map
    model = keras.Model(inputs, x)
    assert count_macs(model) == 12 * 10 * (8 * 2 * 9 + 4 * 4 + 6 * 9 * 4)


@pytest.mark.parametrize("rates,pooling", [((6, 12, 18), True), ((2,), False)])
def test_aspp_macs_equal_hand_formula(rates, pooling):
    height, width, channels, filters = 9, 13, 32, 16
    inputs = keras.Input((height, width, channels))
    model = keras.Model(inputs, ASPP(filters, rates, image_pooling=pooling)(inputs))
    branches = 1 + len(rates) + pooling
    expected = (height * width * channels * filters  # 1x1 branch
                + len(rates) * height * width * 9 * channels * filters  # 3x3 atrous branches
                + pooling * channels * filters  # 1x1 conv on the pooled 1x1 map
                + height * width * branches * filters * filters)  # projection of the concatenation
    assert count_macs(model) == expected


@pytest.mark.parametrize("depth,params,gflops", [(50, 42_004_074, 178.7), (101, 60_996_202, 258.7)])
def test_torchvision_structure_matches_published_figures(depth, params, gflops, capsys):
    """torchvision's documented deeplabv3_resnet{50,101} (with aux head): parameters and "GFLOPS" at 520."""
    model = DeepLabV3(21, backbone=f"resnet{depth}_v1.5", aux_head=True, **TORCHVISION_CONFIG)
    macs = count_macs(model, (520, 520))
    with capsys.disabled():
        print(f"\ntorchvision-structure R{depth} at 520: {macs / 1e9:.2f} GMACs "
              f"= {2 * macs / 1e9:.2f} GFLOPs")
    assert count_parameters(model)[0] == params
    # torchvision's "GFLOPS" are multiply-accumulates: within 1 % of the MAC count, far from 2 * MACs.
    assert macs / 1e9 == pytest.approx(gflops, rel=0.01)
    assert 2 * macs / 1e9 != pytest.approx(gflops, rel=0.5)


def test_static_copy_and_output_stride_costs():
    """Dilating block4 (OS32 -> OS16) changes no weight; every conv after block3 then runs on 9x9 instead of
    5x5 positions at 129x129 (ASPP's pooling conv stays on 1x1), so its cost grows by exactly 81 / 25."""
    os32 = DeepLabV3(5, backbone="resnet50", output_stride=32, aspp_filters=8)
    size = (129, 129)
    copy = complexity.static_copy(os32, size)
    assert tuple(copy.input.shape) == (None, 129, 129, 3) and copy.get_config()["output_stride"] == 32
    assert complexity.static_copy(copy, size) is copy
    os16 = DeepLabV3(5, backbone="resnet50", output_stride=16, aspp_filters=8, input_shape=(129, 129, 3))
    assert count_parameters(copy) == count_parameters(os16)
    up_to_block3 = count_macs(keras.Model(copy.input, copy.get_layer("conv4_block6_out").output))
    pooling_conv = 2048 * 8
    tail_os32 = count_macs(copy) - up_to_block3 - pooling_conv
    tail_os16 = count_macs(os16) - up_to_block3 - pooling_conv
    assert tail_os32 > 0
    assert tail_os16 * 25 == tail_os32 * 81


def test_summary_prints_a_markdown_table(monkeypatch, capsys):
    variants = [("mobilenet_v2 OS16", {"backbone": "mobilenet_v2", "output_stride": 16}),
                ("mobilenet_v2 OS8", {"backbone": "mobilenet_v2", "output_stride": 8})]
    monkeypatch.setattr(complexity, "summary_variants", lambda: variants)
    assert complexity.main(["--size", "65"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("| Model (21 classes) |") and lines[1].startswith("|---")
    assert len(lines) == 2 + len(variants)
    for line, (label, kwargs) in zip(lines[2:], variants):
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        model = DeepLabV3(21, **kwargs)
        macs = count_macs(model, (65, 65))
        assert cells[0] == label
        assert float(cells[2]) == pytest.approx(count_parameters(model)[0] / 1e6, abs=0.005)
        assert float(cells[3]) == pytest.approx(macs / 1e9, abs=0.05)
        assert float(cells[4]) == pytest.approx(2 * macs / 1e9, abs=0.05)
