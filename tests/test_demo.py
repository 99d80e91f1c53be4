"""`deeplab demo` wiring (the heavy steps replaced by stubs): the export is checked on real val frames."""
from pathlib import Path

import keras_deeplab.data.prepare
import keras_deeplab.training.evaluate
import keras_deeplab.training.train
from keras_deeplab import demo, export, predict

REPO = Path(__file__).parents[1]


def test_demo_export_checks_and_warms_up_on_real_val_frames(monkeypatch, tmp_path):
    calls = {}

    def fake_export(model, **kwargs):
        calls["export"] = kwargs
        return Path(kwargs["base_dir"]) / "1"

    monkeypatch.setattr(keras_deeplab.data.prepare, "prepare",
                        lambda *a, **k: {"class_names": ["a", "b"], "colormap": "camvid"})
    monkeypatch.setattr(keras_deeplab.training.train, "train", lambda *a, **k: ("model", None))
    monkeypatch.setattr(keras_deeplab.training.evaluate, "evaluate",
                        lambda *a, **k: {"mean_iou": 0.5, "pixel_accuracy": 0.8})
    monkeypatch.setattr(keras_deeplab.training.evaluate, "format_report", lambda report: "report")
    monkeypatch.setattr(export, "export_saved_model", fake_export)
    monkeypatch.setattr(predict, "main", lambda argv: 0)
    data = REPO / "sample_data" / "camvid"
    summary = demo.run(data, REPO / "training" / "configs" / "camvid_demo.yaml", tmp_path, steps=1)
    frames = sorted((data / "val").glob("*.png"))[:2]
    assert calls["export"]["check_images"] == frames and calls["export"]["warmup_images"] == frames[:1]
    assert summary["export_check_images"] == [str(p) for p in frames]
