"""bfloat16 against float32 inference, ours and torchvision's: time per image and label agreement.

    python precision.py --torch-python /tmp/torchenv/bin/python --model runs/camvid_r50/model.keras \\
        --images ../sample_data/camvid/val /work/shared/data/camvid/val --resize 0.5

Timing (harness.py: one worker process per case, `--repeats` alternating rounds after `--warmup`): the
torchvision-compatible DeepLabV3 ResNet-50 at OS8 (`keras_deeplab.convert.TORCHVISION_CONFIG`), batch 1,
`--size` 513, randomly initialised with torchvision's seeded weights (cases.py), in four cases:
`torch_fp32` (torchvision, eval, `inference_mode`), `torch_bf16` (the same under
`torch.autocast("cpu", dtype=torch.bfloat16)`), `ours_fp32` (BatchNorm folded and traced for any size, as the
export serves it) and `ours_bf16` (that model copied under Keras' `mixed_bfloat16` policy,
`keras_deeplab.export.with_precision`, what `deeplab export --precision bfloat16` serves). `--channels-last` runs
torch's cases in channels-last (its fastest CPU layout). After the runs, each case labels the timing image and
the bf16 cases' agreement with their float32 case is printed (random weights: near-ties, for contrast only).

Agreement on a trained model (`--model`, a .keras DeepLabV3 in torchvision's structure, e.g. trained on CamVid
with `deeplab train`; it is evaluated at OS8, `with_output_stride(8)`): on every image of the `--images` folders
(files of the same name counted once), resized by `--resize`, the percent of pixels whose label is the same in
bf16 as in float32: ours (bf16 served form against the float32 model as trained, BatchNorm unfolded, which is
what the export checks) and torch (the same weights in torchvision's model, autocast against float32).

`--onednn-verbose` runs two forwards of ours in bf16 and fp32 and of torch under autocast (at 129x129, random
weights) in a process with ONEDNN_VERBOSE=1 and tallies the oneDNN primitives of the second (kind, implementation,
source dtype): it shows whether oneDNN's bf16 kernels (`avx512_core_bf16`) run.

Prints JSON lines (measurements, ratios, agreement, oneDNN tallies, context), then Markdown tables.
"""
import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile

from harness import (add_run_arguments, add_torch_python_argument, case_statistics, emit, log, machine_info,
                     markdown_table, pair_statistics, run_cases, use_device)

NUM_CLASSES = 21
PROBE_SIZE = 129
PROBE_MARK = "-- second call --"
PAIRS = (("ours_bf16", "ours_fp32"), ("torch_bf16", "torch_fp32"), ("ours_fp32", "torch_fp32"),
         ("ours_bf16", "torch_bf16"))
PRECISION_NAMES = (("fp32", "float32"), ("bf16", "bfloat16"))


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=513)
    parser.add_argument("--channels-last", action="store_true", help="torch's cases in channels-last")
    parser.add_argument("--model", help="a trained .keras model (torchvision structure) for the label agreement")
    parser.add_argument("--images", nargs="*", default=(), help="folders of images for the label agreement")
    parser.add_argument("--resize", type=float, default=1.0, help="scale of the agreement images")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--onednn-verbose", action="store_true")
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # internal: one forward of a case, for --onednn-verbose
    add_run_arguments(parser, repeats=5, threads=2)
    add_torch_python_argument(parser)
    args = parser.parse_args(argv)
    if args.device != "cpu":
        parser.error("--device: CPU only (torch's autocast here is the CPU's; bf16 on GPUs is another question)")
    return args


# ----------------------------------------------------------------------------------------------------------
# cases (built in the workers)

def _torch_labels(torch, forward, images):
    """int32 labels [N, H, W] of `forward` (NCHW float in [0, 255] -> logits) for NHWC uint8/float images."""
    pixels = torch.from_numpy(images.astype("float32")).permute(0, 3, 1, 2).contiguous()
    with torch.inference_mode():
        return forward(pixels).argmax(1).int().numpy()


def _autocast(torch, precision):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16")


class TorchPrecisionInference:
    """cases.TorchInference (torchvision, eval mode, normalisation inside the call) in float32 or under bf16
    autocast; `labels(images)` for the agreement."""

    def __init__(self, precision="float32", **kwargs):
        from cases import TorchInference

        self.case = TorchInference(**kwargs)
        self.torch, self.precision = self.case.torch, precision
        self.meta = {**self.case.meta, "precision": precision}

    def save_state(self, path):
        return self.case.save_state(path)

    def _forward(self, pixels):
        case = self.case
        case.pixels = pixels
        with _autocast(self.torch, self.precision):
            return case._forward().float()

    def run(self):
        with _autocast(self.torch, self.precision):
            self.case._forward()

    def labels(self, images):
        return _torch_labels(self.torch, self._forward, images)


class KerasPrecisionInference:
    """Our torchvision-structure model (cases.torchvision_structure_model), BatchNorm folded, in `precision`
    (`keras_deeplab.export.with_precision`), traced for any image size as the export serves it."""

    def __init__(self, state_path, precision="float32", batch=1, size=513):
        import time

        from cases import _tf, random_images, torchvision_structure_model

        tf = _tf()
        from keras_deeplab.export import with_precision
        from keras_deeplab.fold import fold_batch_norm

        model = with_precision(fold_batch_norm(torchvision_structure_model(state_path)), precision)
        self.forward = tf.function(lambda x: model(x, training=False),
                                   input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
        self.images = tf.constant(random_images(batch, size))
        start = time.perf_counter()
        self.forward(self.images)
        self.meta = {"framework": "tensorflow", "precision": precision, "fold_bn": True, "dynamic_shape": True,
                     "first_call_s": time.perf_counter() - start}

    def run(self):
        self.forward(self.images)

    def labels(self, images):
        return self.forward(images.astype("float32")).numpy().argmax(-1).astype("int32")


def load_images(paths, resize):
    """uint8 RGB arrays of `paths`, each resized by `resize` (bilinear, sides rounded)."""
    import numpy as np
    from PIL import Image

    images = []
    for path in paths:
        image = Image.open(path).convert("RGB")
        if resize != 1:
            image = image.resize((round(image.width * resize), round(image.height * resize)), Image.BILINEAR)
        images.append(np.asarray(image))
    return images


def _counts(labels, expected):
    return [int((labels == expected).sum()), int(expected.size)]


class KerasAgreement:
    """A trained .keras model at OS8: per image, (pixels whose bf16 served label equals the float32 model's,
    pixels); `save_torch_state` writes its weights for torchvision's model."""

    def __init__(self, model_path):
        import keras

        from cases import _tf

        self.tf = _tf()
        import keras_deeplab  # noqa: F401 - registers the custom layers
        from keras_deeplab.export import with_precision
        from keras_deeplab.fold import fold_batch_norm

        model = keras.saving.load_model(model_path, compile=False)
        self.model = model.with_output_stride(8) if model.output_stride != 8 else model
        self.bf16 = with_precision(fold_batch_norm(self.model), "bfloat16")
        self.meta = {"framework": "tensorflow", "model": model_path}

    def run(self):
        raise NotImplementedError("an agreement worker is not timed")

    def save_torch_state(self, path):
        """Writes the model's weights as torchvision's state dict (.npz, torch layout); returns its classes."""
        import numpy as np

        from keras_deeplab.convert import _torchvision_variables

        state = {}
        for key, variable, axes in _torchvision_variables(self.model):
            value = np.asarray(variable)
            state[key] = np.transpose(value, np.argsort(axes)) if axes and value.ndim == 4 else value
        np.savez(path, **state)
        return int(self.model.output.shape[-1])

    def counts(self, paths, resize):
        result = []
        for image in load_images(paths, resize):
            x = self.tf.constant(image[None].astype("float32"))
            expected = self.model(x, training=False).numpy().argmax(-1)
            result.append(_counts(self.bf16(x, training=False).numpy().argmax(-1), expected))
        return result


class TorchAgreement:
    """torchvision's deeplabv3_<backbone> with the weights of an .npz state dict: per image, (pixels whose label
    under bf16 autocast equals float32's, pixels)."""

    def __init__(self, state_path, num_classes, backbone="resnet50"):
        import numpy as np
        from cases import IMAGENET_MEAN, IMAGENET_STD, _torch
        from torchvision.models import segmentation

        torch = self.torch = _torch()
        self.model = getattr(segmentation, f"deeplabv3_{backbone}")(
            weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False).eval()
        state = {key: torch.from_numpy(value) for key, value in np.load(state_path).items()}
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if unexpected or any(not key.endswith("num_batches_tracked") for key in missing):
            raise ValueError(f"state dict does not fit: missing {missing}, unexpected {unexpected}")
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        self.meta = {"framework": "torch"}

    def run(self):
        raise NotImplementedError("an agreement worker is not timed")

    def _logits(self, precision):
        def forward(pixels):
            with _autocast(self.torch, precision):
                return self.model((pixels - self.mean) / self.std)["out"].float()
        return forward

    def counts(self, paths, resize):
        import numpy as np

        result = []
        for image in load_images(paths, resize):
            images = np.asarray(image)[None]
            expected = _torch_labels(self.torch, self._logits("float32"), images)
            result.append(_counts(_torch_labels(self.torch, self._logits("bfloat16"), images), expected))
        return result


# ----------------------------------------------------------------------------------------------------------
# driver

def case_specs(args, state_path):
    """torch_fp32 first (it writes the weights the others load), then torch_bf16, ours_fp32, ours_bf16."""
    torch_kwargs = {"backbone": "resnet50", "batch": 1, "size": args.size, "channels_last": args.channels_last}
    specs = [{"name": f"torch_{short}", "role": "peer" if short == "fp32" else "peer_bf16",
              "factory": "precision:TorchPrecisionInference", "python": args.torch_python,
              "kwargs": {"precision": precision, **torch_kwargs}} for short, precision in PRECISION_NAMES]
    specs += [{"name": f"ours_{short}", "role": "ours", "factory": "precision:KerasPrecisionInference",
               "kwargs": {"state_path": state_path, "precision": precision, "size": args.size}}
              for short, precision in PRECISION_NAMES]
    return specs


def timing(args, context):
    """Runs the four cases alternating; emits measurements, ratios and the random-weight agreement; returns the
    table rows."""
    import numpy as np

    from cases import random_images

    image = random_images(1, args.size).astype(np.uint8)

    with tempfile.TemporaryDirectory(prefix="deeplab_precision_") as folder:
        state_path = os.path.join(folder, "torchvision_state.npz")

        def save_state(spec, worker):
            if spec["role"] == "peer":
                worker.call("save_state", state_path)

        specs = case_specs(args, state_path)
        times, metas, labels = run_cases(specs, args.repeats, args.warmup, args.threads, after_start=save_state,
                                         checks=lambda workers: {w.name: w.call("labels", image) for w in workers})
    rows = {}
    for spec in specs:
        name = spec["name"]
        record = {"record": "measurement", "benchmark": "precision", "case": name, "size": args.size,
                  "threads": args.threads, **case_statistics(times[name]), **metas[name]}
        emit(record)
        rows[name] = {"case": name, "median": record["median_s"], "min": record["min_s"], "max": record["max_s"],
                      "cpu": record["cpu_median_s"], "rss": record["peak_rss_mb"]}
        if name.startswith("torch"):
            context["versions"].update({k: v for k, v in record.get("versions", {}).items()
                                        if k in ("torch", "torchvision")})
    for a, b in PAIRS:
        pair = {"record": "ratio", "benchmark": "precision", "a": a, "b": b, **pair_statistics(times[a], times[b]),
                "random_weights_label_agreement_percent": 100.0 * float((labels[a] == labels[b]).mean())}
        emit(pair)
        agree = pair["random_weights_label_agreement_percent"]
        rows[a][f"vs_{b}"] = (f"{pair['ratio_median']:.2f} [{pair['ratio_min']:.2f}, {pair['ratio_max']:.2f}]; "
                              f"cpu {pair['cpu_ratio_median']:.2f}; labels {agree:.1f} %")
    return list(rows.values())


def agreement_paths(folders):
    """Every image file of `folders`, a name met twice counted once (sample_data's val is a subset)."""
    paths = {}
    for folder in folders:
        for name in sorted(os.listdir(folder)):
            if name.lower().endswith((".png", ".jpg", ".jpeg")):
                paths.setdefault(name, os.path.join(folder, name))
    return [paths[name] for name in sorted(paths)]


def _worker_counts(name, factory, kwargs, args, paths, python=None, before=None):
    """(what `before` calls on the worker returns, the worker's per-image counts on `paths`)."""
    from harness import Worker

    log(f"agreement: {name} on {len(paths)} images")
    worker = Worker(f"{name}_agreement", factory, kwargs, args.threads, python=python)
    try:
        first = worker.call(*before) if before else None
        return first, worker.call("counts", paths, args.resize)
    finally:
        worker.stop()


def agreement(args):
    """Label agreement of bf16 with float32 on the trained model, ours then torch; emits and returns rows."""
    paths = agreement_paths(args.images)
    with tempfile.TemporaryDirectory(prefix="deeplab_precision_") as folder:
        state_path = os.path.join(folder, "trained_state.npz")
        num_classes, ours = _worker_counts("ours", "precision:KerasAgreement", {"model_path": args.model}, args,
                                           paths, before=("save_torch_state", state_path))
        _, torch = _worker_counts("torch", "precision:TorchAgreement",
                                  {"state_path": state_path, "num_classes": num_classes}, args, paths,
                                  python=args.torch_python)
    rows = []
    for name, counts in (("ours", ours), ("torch", torch)):
        per_image = [100.0 * equal / total for equal, total in counts]
        record = {"record": "agreement", "benchmark": "precision", "framework": name, "model": args.model,
                  "images": len(paths), "resize": args.resize, "num_classes": num_classes,
                  "percent": 100.0 * sum(e for e, _ in counts) / sum(t for _, t in counts),
                  "min_image_percent": min(per_image), "per_image_percent": per_image,
                  "files": [os.path.basename(p) for p in paths]}
        emit(record)
        rows.append({"framework": name, "images": len(paths), "percent": record["percent"],
                     "min": record["min_image_percent"]})
    return rows


def probe(case):
    """Two forwards of `case` (ours_fp32, ours_bf16 or torch_bf16) at PROBE_SIZE with random weights, a marker
    line between them."""
    import numpy as np

    images = np.zeros((1, PROBE_SIZE, PROBE_SIZE, 3), np.float32) + 100
    if case.startswith("torch"):
        forward = TorchPrecisionInference("bfloat16", size=PROBE_SIZE).labels
    else:
        forward = _keras_probe_forward(case)
    forward(images)  # the first call's one-time work (tracing, weight reorders) is not tallied
    print(PROBE_MARK, flush=True)
    forward(images)


def _keras_probe_forward(case):
    from cases import _tf

    tf = _tf()
    from keras_deeplab import DeepLabV3
    from keras_deeplab.convert import TORCHVISION_CONFIG
    from keras_deeplab.export import with_precision
    from keras_deeplab.fold import fold_batch_norm

    model = DeepLabV3(num_classes=NUM_CLASSES, backbone="resnet50_v1.5", preprocessing="torch", **TORCHVISION_CONFIG)
    model = with_precision(fold_batch_norm(model), "bfloat16" if case == "ours_bf16" else "float32")
    return tf.function(lambda x: model(x, training=False))


def onednn_tally(args, case):
    """{"kind impl src-dtype": [primitive executions, ms]} of one forward of `case` under ONEDNN_VERBOSE=1."""
    python = args.torch_python if case.startswith("torch") else sys.executable
    env = {**os.environ, "ONEDNN_VERBOSE": "1", "OMP_NUM_THREADS": str(args.threads)}
    output = subprocess.run([python, os.path.abspath(__file__), "--probe", case], capture_output=True, text=True,
                            env=env, check=True, cwd=os.path.dirname(os.path.abspath(__file__)))
    tally = collections.defaultdict(lambda: [0, 0.0])
    for line in output.stdout.split(PROBE_MARK, 1)[1].splitlines():
        fields = line.split(",")
        if len(fields) > 10 and fields[0] == "onednn_verbose" and fields[2:4] == ["primitive", "exec"]:
            src = next((f.split(":")[1] for f in fields[8].split() if f.startswith("src")), "?")
            entry = tally[f"{fields[5]} {fields[6]} {src}"]
            entry[0] += 1
            entry[1] += float(fields[-1])
    emit({"record": "onednn", "benchmark": "precision", "case": case, "size": PROBE_SIZE, "tally": tally})
    return [{"case": case, "primitive": key, "count": count, "ms": ms}
            for key, (count, ms) in sorted(tally.items(), key=lambda item: -item[1][1])]


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.probe:
        probe(args.probe)
        return
    use_device(args.device)
    context = {"record": "context", "benchmark": "precision", "size": args.size, "repeats": args.repeats,
               "warmup": args.warmup, "channels_last": args.channels_last, "torch_python": args.torch_python,
               **machine_info(args.threads)}
    rows = [] if args.skip_timing else timing(args, context)
    agreement_rows = agreement(args) if args.model else []
    onednn_rows = [row for case in ("ours_bf16", "ours_fp32", "torch_bf16") for row in onednn_tally(args, case)] \
        if args.onednn_verbose else []
    context["load_average_at_end"] = os.getloadavg()
    emit(context)
    print(f"\nDeepLabV3 R50 OS8 (torchvision structure), batch 1, {args.size}x{args.size}, {args.threads} threads, "
          f"{context['cpu']}, load average {context['load_average_1_5_15'][0]:.1f} at start, "
          f"{context['load_average_at_end'][0]:.1f} at end; {args.repeats} alternating rounds after {args.warmup} "
          f"warm-up; torch {'channels-last' if args.channels_last else 'contiguous'}; {context['date']}; "
          f"versions {json.dumps(context['versions'])}\n")
    if rows:
        print(markdown_table(rows, [("case", "case", None), ("median", "median s", "{:.3f}"), ("min", "min", "{:.3f}"),
                                    ("max", "max", "{:.3f}"), ("cpu", "CPU s", "{:.3f}"), ("rss", "peak RSS MiB",
                                                                                           "{:.0f}")]
                             + [(f"vs_{b}", f"/ {b} (wall [min, max]; cpu; labels, random weights)", None)
                                for b in ("ours_fp32", "torch_fp32", "torch_bf16")]))
    if agreement_rows:
        print(f"\nLabel agreement bf16 vs float32, {args.model} at OS8, images x{args.resize}\n")
        print(markdown_table(agreement_rows, [("framework", "framework", None), ("images", "images", None),
                                              ("percent", "pixels agreeing %", "{:.3f}"),
                                              ("min", "worst image %", "{:.3f}")]))
    if onednn_rows:
        print(f"\noneDNN primitives executed in one forward at {PROBE_SIZE}x{PROBE_SIZE} (ONEDNN_VERBOSE=1)\n")
        print(markdown_table(onednn_rows, [("case", "case", None), ("primitive", "kind implementation src", None),
                                           ("count", "count", None), ("ms", "ms", "{:.1f}")]))


if __name__ == "__main__":
    main()
