"""Where the time goes: per-op-type profiles of ours (TF) and the peer (torch), same model, same input.

    python benchmarks/op_profile.py --mode inference --size 513 --batch 1
    python benchmarks/op_profile.py --mode train --size 321 --batch 2 --atrous native

TF: the forward (or forward + gradients, for --mode train) is saved as a SavedModel function, loaded with the
TF1 loader into a Session and run with FULL_TRACE; node timings are summed by op type and by the Keras layer
that created them. torch: `torch.profiler` self CPU time by operator. Each side runs in its own process with
the threads fixed to --threads. Op times overlap when the runtime runs ops in parallel, so shares are of the
summed op time, not of the wall time.
"""
import argparse
import collections
import os
import re
import sys
import tempfile
import time

from harness import Worker, emit, machine_info, markdown_table

# Keras layer name patterns -> the part of the network they belong to (for the by-layer summary).
LAYER_GROUPS = [
    (re.compile(r"aspp"), "ASPP"),
    (re.compile(r"conv[2-5]_block\d+_2_conv"), "backbone 3x3 convs"),
    (re.compile(r"conv[2-5]_block\d+_[013]_conv"), "backbone 1x1 convs"),
    (re.compile(r"_bn\b|_bn/|batch_norm|FusedBatchNorm"), "BatchNorm"),
    (re.compile(r"conv1_"), "stem"),
    (re.compile(r"head_|logits"), "head and upsampling"),
]


class TFOpProfile:
    """Profiles our torchvision-compatible model through a TF1 Session with FULL_TRACE."""

    def __init__(self, state_path, mode="inference", batch=1, size=513, atrous="auto", variant=None,
                 fold_bn=False):
        import keras

        from cases import IGNORE_LABEL, _tf, random_images, random_labels, torchvision_structure_model

        tf = _tf()
        model = torchvision_structure_model(state_path, atrous_implementation=atrous, atrous_variant=variant)
        if fold_bn:
            from keras_deeplab.fold import fold_batch_norm

            model = fold_batch_norm(model)
        archive = keras.export.ExportArchive()
        archive.track(model)
        images = random_images(batch, size)
        if mode == "inference":
            archive.add_endpoint("serving_default", lambda x: model(x, training=False),
                                 input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
            feeds = {"x": images}
        else:
            from keras_deeplab.training.recipe import segmentation_loss

            loss_fn = segmentation_loss(IGNORE_LABEL)
            variables = model.trainable_variables

            def gradients(x, y):
                with tf.GradientTape() as tape:
                    loss = loss_fn(y, model(x, training=True))
                return {f"grad_{i}": g for i, g in enumerate(tape.gradient(loss, variables))}

            archive.add_endpoint("serving_default", gradients, input_signature=[
                tf.TensorSpec([None, None, None, 3], tf.float32), tf.TensorSpec([None, None, None], tf.int32)])
            feeds = {"x": images, "y": random_labels(batch, size)}
        self.folder = tempfile.mkdtemp(prefix="deeplab_profile_")
        archive.write_out(self.folder, verbose=False)
        graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=graph, config=tf.compat.v1.ConfigProto(
            intra_op_parallelism_threads=int(os.environ["OMP_NUM_THREADS"]),
            inter_op_parallelism_threads=int(os.environ["OMP_NUM_THREADS"])))
        with graph.as_default():
            meta = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], self.folder)
        signature = meta.signature_def["serving_default"]
        self.feed = {signature.inputs[key].name: value for key, value in feeds.items()}
        self.fetches = [info.name for info in signature.outputs.values()]
        self.tf = tf
        self.meta = {"framework": "tensorflow", "mode": mode, "atrous": atrous, "variant": variant,
                     "fold_bn": fold_bn}

    def run(self):
        self.session.run(self.fetches, self.feed)

    def profile(self):
        """(wall seconds of the traced run, {op type: seconds}, {layer group: seconds}, [(node, op, seconds)])."""
        tf = self.tf
        options = tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE)
        metadata = tf.compat.v1.RunMetadata()
        start = time.perf_counter()
        self.session.run(self.fetches, self.feed, options=options, run_metadata=metadata)
        wall = time.perf_counter() - start
        by_op, by_group, nodes = collections.Counter(), collections.Counter(), []
        for device in metadata.step_stats.dev_stats:
            for node in device.node_stats:
                seconds = node.all_end_rel_micros / 1e6
                op = node.timeline_label.split("(")[0].split("=")[-1].strip() or node.node_name
                by_op[op] += seconds
                group = next((label for pattern, label in LAYER_GROUPS if pattern.search(node.node_name)), "other")
                by_group[group] += seconds
                nodes.append((node.node_name, op, seconds))
        nodes.sort(key=lambda item: -item[2])
        return wall, dict(by_op), dict(by_group), nodes[:25]


class TorchOpProfile:
    """Profiles torchvision's DeepLabV3 with torch.profiler (self CPU time by operator)."""

    def __init__(self, mode="inference", backbone="resnet50", batch=1, size=513, channels_last=False):
        from cases import TorchInference, TorchTrainStep

        case = TorchInference if mode == "inference" else TorchTrainStep
        self.case = case(backbone=backbone, batch=batch, size=size, channels_last=channels_last)
        self.meta = {"framework": "torch", "mode": mode, "channels_last": channels_last}

    def save_state(self, path):
        return self.case.save_state(path)

    def run(self):
        self.case.run()

    def profile(self):
        import torch

        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            self.case.run()
            wall = time.perf_counter() - start
        by_op = {event.key: event.self_cpu_time_total / 1e6 for event in prof.key_averages()}
        return wall, by_op, {}, []


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("inference", "train"), default="inference")
    parser.add_argument("--backbone", choices=("resnet50", "resnet101"), default="resnet50")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=513)
    parser.add_argument("--atrous", choices=("auto", "native", "shifted"), default="auto")
    parser.add_argument("--variant", choices=("per_tap", "rows", "shifted", "tf_dilated"), default=None,
                        help="a prototype AtrousConv2D from atrous_variants.py")
    parser.add_argument("--fold-bn", action="store_true")
    parser.add_argument("--skip-torch", action="store_true", help="profile ours only")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--top", type=int, default=12)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    emit({"record": "context", "benchmark": "op_profile", "mode": args.mode, "input_size": args.size,
          "batch": args.batch, **machine_info(args.threads)})
    results = {}
    with tempfile.TemporaryDirectory(prefix="deeplab_bench_") as folder:
        state_path = os.path.join(folder, "torchvision_state.npz")
        torch_worker = Worker("torchvision", "op_profile:TorchOpProfile",
                              {"mode": args.mode, "backbone": args.backbone, "batch": args.batch,
                               "size": args.size}, args.threads)
        try:
            torch_worker.call("save_state", state_path)
            if not args.skip_torch:
                torch_worker.run()
                results["torchvision"] = torch_worker.call("profile")
        finally:
            torch_worker.stop()
        tf_worker = Worker("ours", "op_profile:TFOpProfile",
                           {"state_path": state_path, "mode": args.mode, "batch": args.batch, "size": args.size,
                            "atrous": args.atrous, "variant": args.variant, "fold_bn": args.fold_bn},
                           args.threads)
        try:
            tf_worker.run()
            results["ours"] = tf_worker.call("profile")
        finally:
            tf_worker.stop()
    for name, (wall, by_op, by_group, nodes) in results.items():
        total = sum(by_op.values())
        emit({"record": "profile", "case": name, "mode": args.mode, "wall_s": wall, "op_time_sum_s": total,
              "by_op_s": by_op, "by_layer_group_s": by_group, "top_nodes": nodes})
        print(f"\n{name} ({args.mode}, {args.size}x{args.size}, batch {args.batch}, atrous {args.atrous}): "
              f"wall {wall:.2f} s, summed op time {total:.2f} s\n")
        rows = [{"op": op, "s": s, "share": s / total} for op, s in sorted(by_op.items(), key=lambda kv: -kv[1])]
        print(markdown_table(rows[:args.top], [("op", "op", None), ("s", "seconds", "{:.3f}"),
                                               ("share", "share", "{:.1%}")]))
        if by_group:
            print()
            rows = [{"group": group, "s": s, "share": s / total}
                    for group, s in sorted(by_group.items(), key=lambda kv: -kv[1])]
            print(markdown_table(rows, [("group", "layers", None), ("s", "seconds", "{:.3f}"),
                                        ("share", "share", "{:.1%}")]))


if __name__ == "__main__":
    main()
