"""Where the served model's forward time goes, layer by layer: every convolution (and ASPP as a whole) of our
R50 OS8 in torchvision's structure, BatchNorm folded as exported, timed alone on the input it gets in the
network, with its nominal GFLOP/s; their sum against the whole forward.

    python benchmarks/layer_survey.py --size 513 --repeats 5
    python benchmarks/layer_survey.py --size 513 --repeats 5 --direct    # no Winograd: the direct 3x3 forms

Random weights (timing does not depend on them). One process, the threads fixed to --threads. Prints one JSON
line per layer and a summary line, then a Markdown table.
"""
import argparse
import os
import statistics
import time

from harness import emit, machine_info, tensorflow_in_process


def median_ms(function, x, repeats):
    function(x)  # trace and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function(x).numpy()
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=513)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--direct", action="store_true", help="layers.convolution.WINOGRAD_MAX_RATE = 0")
    args = parser.parse_args(argv)
    tf = tensorflow_in_process(args.threads)
    import keras
    import numpy as np

    from flops import keras_macs
    from keras_deeplab.convert import TORCHVISION_CONFIG
    from keras_deeplab.fold import fold_batch_norm
    from keras_deeplab.layers import ASPP, convolution
    from keras_deeplab.model import DeepLabV3

    if args.direct:
        convolution.WINOGRAD_MAX_RATE = 0
    emit({"record": "context", "benchmark": "layer_survey", "size": args.size,
          "direct": args.direct, "repeats": args.repeats, **machine_info(args.threads)})
    keras.utils.set_random_seed(0)
    model = DeepLabV3(num_classes=21, backbone="resnet50_v1.5", preprocessing="torch", **TORCHVISION_CONFIG)
    served = fold_batch_norm(model)
    timed = [layer for layer in served.layers if isinstance(layer, (keras.layers.Conv2D, ASPP))]
    # the unfolded model has the same graph and layer names, and exposes each layer's input
    inputs_of = keras.Model(model.inputs, [model.get_layer(layer.name).input for layer in timed])
    images = np.random.default_rng(0).uniform(0, 255, (1, args.size, args.size, 3)).astype("float32")
    rows = []
    for layer, x in zip(timed, inputs_of.predict(images, verbose=0)):
        wrapper = keras.Sequential([keras.Input(x.shape[1:]), layer])
        # Keras passes `training` on only to layers whose call takes it (ASPP; the convolutions drop it)
        ms = median_ms(tf.function(lambda x, layer=layer: layer(x, training=False)), tf.constant(x), args.repeats)
        macs = keras_macs(wrapper, x.shape)
        row = {"record": "measurement", "benchmark": "layer_survey", "layer": layer.name,
               "kind": type(layer).__name__, "input": list(x.shape[1:]),
               "kernel": list(layer.kernel.shape) if hasattr(layer, "kernel") else None,
               "rate": list(layer.dilation_rate) if hasattr(layer, "dilation_rate") else None,
               "ms": ms, "gmacs": macs / 1e9, "gflops_per_s": 2 * macs / ms / 1e6}
        emit(row)
        rows.append(row)
    whole = median_ms(tf.function(lambda x: served(x, training=False)), tf.constant(images), args.repeats)
    total = sum(row["ms"] for row in rows)
    emit({"record": "summary", "benchmark": "layer_survey", "layers_ms": total, "forward_ms": whole})
    print(f"\nLayer survey, R50 OS8 (torchvision structure, BN folded), {args.size}x{args.size}, batch 1, "
          f"{args.threads} threads, median of {args.repeats}\n")
    print("| layer | kind | input | kernel | rate | ms | nominal GMAC | GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['layer']} | {row['kind']} | {row['input']} | {row['kernel'] or ''} | "
              f"{row['rate'] or ''} | {row['ms']:.1f} | {row['gmacs']:.2f} | {row['gflops_per_s']:.0f} |")
    print(f"\nSum of the layers alone: {total:.0f} ms; the whole forward: {whole:.0f} ms.")


if __name__ == "__main__":
    main()
