"""`deeplab demo`: the whole job end to end on the bundled CamVid sample, sized for a CPU.

prepare TFRecords -> train the demo config briefly -> evaluate mIoU -> export a SavedModel (checked the way
TF Serving loads it) -> segment a validation image from the SavedModel and write the label map and overlay.
"""
import argparse
import json
import os
import time
from pathlib import Path


def _step(title):
    print(f"\n=== {title} ===", flush=True)
    return time.time()


def run(data, config_path, out, steps=None):
    """Runs the demo; returns a summary dict (also written to <out>/demo_summary.json)."""
    import yaml

    from keras_deeplab import export, predict
    from keras_deeplab.data.prepare import prepare
    from keras_deeplab.training.evaluate import evaluate
    from keras_deeplab.training.train import train

    data, out = Path(data), Path(out)
    if not data.is_dir():
        raise FileNotFoundError(f"demo data folder {data} not found (run from the repository root, or pass --data)")
    with open(config_path) as f:
        config = yaml.safe_load(f)
    if steps:
        config["steps"] = int(steps)
    out.mkdir(parents=True, exist_ok=True)
    summary, started = {}, time.time()

    t = _step(f"1/5 prepare: {data} -> TFRecords")
    records = out / "tfrecords"
    prepare(str(data), str(records), format="folder", preset="camvid", splits=("train", "val"), num_shards=2,
            overwrite=True)
    summary["prepare_s"] = round(time.time() - t, 1)

    t = _step(f"2/5 train: {config_path} ({config.get('steps')} steps)")
    model, _ = train(config, data_dir=str(records), model_dir=str(out / "model"))
    summary["train_s"] = round(time.time() - t, 1)

    t = _step("3/5 evaluate on the sample's val split")
    report = evaluate(model, str(records), split="val", resize=config.get("resize"),
                      output_json=str(out / "eval_val.json"))
    summary["val_miou"] = report["miou"]
    summary["evaluate_s"] = round(time.time() - t, 1)

    t = _step("4/5 export a SavedModel for TensorFlow Serving")
    version_dir = export.export_saved_model(model, base_dir=str(out / "saved_models" / "deeplabv3"),
                                            max_long_side=config.get("export_max_long_side"), overwrite=True,
                                            version=1, colormap="camvid")
    summary["saved_model"] = str(version_dir)
    summary["export_s"] = round(time.time() - t, 1)

    t = _step("5/5 predict a validation image from the SavedModel")
    image = sorted((data / "val").glob("*.png"))[0]
    predict.main([str(image), "--model", str(out / "saved_models" / "deeplabv3"), "--colormap", "camvid",
                  "--out", str(out / "predictions")])
    summary["predictions"] = str(out / "predictions")
    summary["predict_s"] = round(time.time() - t, 1)
    summary["total_s"] = round(time.time() - started, 1)
    with open(out / "demo_summary.json", "w") as f:
        json.dump(summary, f, indent=2)
    print("\n" + json.dumps(summary, indent=2))
    print(f"val mIoU {summary['val_miou']:.3f} after {config.get('steps')} steps; pictures in {out / 'predictions'}")
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(prog="deeplab demo", description=__doc__)
    parser.add_argument("--data", default="sample_data/camvid", help="CamVid-layout folder (default: the bundled sample)")
    parser.add_argument("--config", default=os.path.join("training", "configs", "camvid_demo.yaml"))
    parser.add_argument("--out", default="demo_output", help="output folder")
    parser.add_argument("--steps", type=int, default=None, help="override the config's training steps")
    args = parser.parse_args(argv)
    run(args.data, args.config, args.out, steps=args.steps)
    return 0
