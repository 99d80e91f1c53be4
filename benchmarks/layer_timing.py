"""Forward and forward+backward time of single convolution layers, for choosing a layer's implementation.

    python benchmarks/layer_timing.py --size 65 --batch 2 --repeats 5

Atrous 3x3 convolutions at the R50 OS8 shapes (backbone rates 2 and 4, ASPP rates 12/24/36) in each form of
`atrous_variants.py` plus the library's "auto", Winograd and Keras' native dilated conv; and 1x1 convolutions as Keras'
`Conv2D`, the library's `Conv2D` (wide outputs in parts) and a MatMul (AtrousConv2D's shifted path, one tap).
One process, 2 threads by default, forms alternating within each round. Prints a JSON line per measurement and
a Markdown table (median ms).
"""
import argparse
import os
import statistics
import sys
import time

from harness import emit, machine_info, tensorflow_in_process

ATROUS_CASES = [(256, 256, 2), (512, 512, 4), (2048, 256, 12), (2048, 256, 24), (2048, 256, 36)]
POINTWISE_CASES = [(1024, 256), (256, 1024), (2048, 512), (512, 2048), (1024, 2048), (512, 1024)]


def atrous_forms(trim_ratios=()):
    """Name -> constructor (filters, rate); `trim_ratios` adds the library's form at other COLUMN_TRIM_RATIOs."""
    from atrous_variants import VARIANTS, ShiftedAtrousConv2D
    from keras_deeplab.layers import AtrousConv2D

    forms = {"library_auto": lambda f, r: AtrousConv2D(f, 3, dilation_rate=r, use_bias=False),
             "keras_native": lambda f, r: AtrousConv2D(f, 3, dilation_rate=r, use_bias=False, implementation="native"),
             "winograd": lambda f, r: AtrousConv2D(f, 3, dilation_rate=r, use_bias=False, implementation="winograd")}
    for name in ("per_tap", "rows", "shifted"):
        forms[name] = lambda f, r, cls=VARIANTS[name]: cls(f, 3, dilation_rate=r, use_bias=False)
    for ratio in trim_ratios:
        cls = type(f"AtrousConv2DTrim{ratio}", (ShiftedAtrousConv2D,), {"column_trim_ratio": ratio})
        forms[f"library_trim_ratio_{ratio}"] = lambda f, r, cls=cls: cls(f, 3, dilation_rate=r, use_bias=False)
    return forms


def pointwise_forms():
    import keras

    from keras_deeplab.layers import AtrousConv2D, Conv2D

    return {"conv2d": lambda f: keras.layers.Conv2D(f, 1, use_bias=False),
            "library_conv2d": lambda f: Conv2D(f, 1, use_bias=False),
            "matmul": lambda f: AtrousConv2D(f, 1, use_bias=False, implementation="shifted")}


def time_layers(layers, x, repeats):
    """{name: (forward ms list, forward+backward ms list)}, the layers alternating within each round."""
    import tensorflow as tf

    functions = {}
    for name, layer in layers.items():
        layer.build(x.shape)

        def forward(x, layer=layer):
            return layer(x)

        def forward_backward(x, layer=layer):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x)
                loss = tf.reduce_sum(y * y)
            return tape.gradient(loss, [x, layer.kernel])

        functions[name] = (tf.function(forward), tf.function(forward_backward))
        for function in functions[name]:
            function(x)  # trace and warm up
    times = {name: ([], []) for name in layers}
    for _ in range(repeats):
        for name, (forward, forward_backward) in functions.items():
            start = time.perf_counter()
            forward(x).numpy()
            times[name][0].append(1e3 * (time.perf_counter() - start))
            start = time.perf_counter()
            [g.numpy() for g in forward_backward(x)]
            times[name][1].append(1e3 * (time.perf_counter() - start))
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=65, help="feature map side (65: crop 513 at OS8)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--atrous-cases", default=",".join(f"{i}:{o}:{r}" for i, o, r in ATROUS_CASES),
                        help="comma-separated in:out:rate atrous layers")
    parser.add_argument("--pointwise-cases", default=",".join(f"{i}:{o}" for i, o in POINTWISE_CASES),
                        help="comma-separated in:out 1x1 convolutions ('' for none)")
    parser.add_argument("--trim-ratios", default="",
                        help="comma-separated column trim ratios (layers.shifted.COLUMN_TRIM_RATIO) to time "
                        "beside the library's")
    parser.add_argument("--forms", default="", help="comma-separated atrous forms to time (default: all)")
    args = parser.parse_args(argv)
    tf = tensorflow_in_process(args.threads)
    emit({"record": "context", "benchmark": "layer_timing", "size": args.size, "batch": args.batch,
          "repeats": args.repeats, **machine_info(args.threads)})
    rows = []
    cases = [("atrous", *map(int, case.split(":"))) for case in args.atrous_cases.split(",") if case]
    cases += [("pointwise", *map(int, case.split(":")), None) for case in args.pointwise_cases.split(",") if case]
    trim_ratios = [int(r) for r in args.trim_ratios.split(",") if r]
    for kind, cin, cout, rate in cases:
        x = tf.random.normal([args.batch, args.size, args.size, cin], seed=0)
        if kind == "atrous":
            layers = {name: make(cout, rate) for name, make in atrous_forms(trim_ratios).items()
                      if not args.forms or name in args.forms.split(",") or name.startswith("library_trim")}
        else:
            layers = {name: make(cout) for name, make in pointwise_forms().items()}
        for name, (forward, forward_backward) in time_layers(layers, x, args.repeats).items():
            record = {"record": "measurement", "benchmark": "layer_timing", "kind": kind, "in": cin, "out": cout,
                      "rate": rate, "form": name, "forward_ms": forward, "forward_backward_ms": forward_backward,
                      "forward_median_ms": statistics.median(forward),
                      "forward_backward_median_ms": statistics.median(forward_backward)}
            emit(record)
            rows.append(record)
    print(f"\nLayer timing, {args.size}x{args.size}, batch {args.batch}, {args.threads} threads, median of "
          f"{args.repeats} (ms, forward / forward+backward)\n")
    for kind in ("atrous", "pointwise"):
        forms = list(dict.fromkeys(r["form"] for r in rows if r["kind"] == kind))
        if not forms:
            continue
        print("| layer | " + " | ".join(forms) + " |")
        print("|---|" + "---|" * len(forms))
        for key in dict.fromkeys((r["in"], r["out"], r["rate"]) for r in rows if r["kind"] == kind):
            cells = {r["form"]: f"{r['forward_median_ms']:.0f} / {r['forward_backward_median_ms']:.0f}"
                     for r in rows if r["kind"] == kind and (r["in"], r["out"], r["rate"]) == key}
            label = f"{key[0]}->{key[1]}" + (f" rate {key[2]}" if key[2] else " 1x1")
            print(f"| {label} | " + " | ".join(cells[f] for f in forms) + " |")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
