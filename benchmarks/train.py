"""Training-step throughput (images/s), ours vs torchvision, with the paper's loss.

    python benchmarks/train.py --backbone resnet50 --batch 2 --size 321 --repeats 3
    python benchmarks/train.py --suite paper --batch 2 --size 321     # the paper's OS16 R101 and MobileNetV2

One step = forward in training mode (BatchNorm on batch statistics, dropout on), per-pixel softmax
cross-entropy ignoring label 255, backward, SGD with momentum 0.9 and weight decay 1e-4 (ours: the recipe of
keras_deeplab.training.recipe through the compiled Keras train function, as `fit` runs it; torch: the loop a
torch user writes). Synthetic images and labels (5 % ignored), the same on both sides; the torchvision-compatible
model of ours starts from the peer's weights. Cases alternate run by run after warm-up (the warm-up of ours
includes tracing); wall and CPU time per step are recorded. Peak RSS is each worker's VmHWM over its whole life
(build, first step, warm-up, steps): what a process that only trains pays. The torch workers run under
`--torch-python` (default: the driver's interpreter).
"""
import argparse
import os
import sys

from harness import (PEER_VARIANTS, add_run_arguments, add_suite_arguments, case_specs as harness_case_specs,
                     case_statistics, emit, machine_info, markdown_table, pair_statistics, run_suite, use_device)

# Our variants: name -> (KerasTrainStep kwargs, model kwargs, extra environment).
OUR_VARIANTS = {
    "ours": ({}, {"atrous_implementation": "auto"}, {}),
    "ours_direct": ({}, {"atrous_implementation": "auto", "winograd": False}, {}),
    "ours_native": ({}, {"atrous_implementation": "native"}, {}),
    "ours_shifted": ({}, {"atrous_variant": "shifted"}, {}),
    "ours_rows": ({}, {"atrous_variant": "rows"}, {}),
    "ours_per_tap": ({}, {"atrous_variant": "per_tap"}, {}),
    "ours_keras_bn": ({}, {"keras_bn": True}, {}),
    "ours_xla": ({"jit_compile": True}, {"atrous_implementation": "auto"}, {}),
    "ours_bf16": ({"mixed_precision": "mixed_bfloat16"}, {"atrous_implementation": "auto"}, {}),
    "ours_no_onednn": ({}, {"atrous_implementation": "auto"}, {"TF_ENABLE_ONEDNN_OPTS": "0"}),
    # glibc's malloc per tensor (KERAS_DEEPLAB_CPU_ALLOCATOR=system) instead of the pool `import keras_deeplab` selects
    "ours_malloc": ({}, {"atrous_implementation": "auto"}, {"KERAS_DEEPLAB_CPU_ALLOCATOR": "system"}),
    "ours_inter_op_1": ({}, {"atrous_implementation": "auto"}, {"BENCH_TF_INTER_OP_THREADS": "1"}),
}
PAPER_MODELS = {"paper_r101_os16": {"backbone": "resnet101", "output_stride": 16},
                "paper_r50_os16": {"backbone": "resnet50", "output_stride": 16},
                "mobilenet_v2_os16": {"backbone": "mobilenet_v2", "output_stride": 16}}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_suite_arguments(parser, our_variants=OUR_VARIANTS, paper_models=PAPER_MODELS, ours="ours,ours_per_tap",
                        peers="torchvision", paper_default="paper_r101_os16,mobilenet_v2_os16")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=321, help="crop size")
    add_run_arguments(parser, repeats=3)
    parser.add_argument("--one-at-a-time", action="store_true",
                        help="run each case alone, one after another, for cases that do not fit in memory "
                             "together (crop 513, batch 8 on 24 GiB); the per-round ratios then pair runs "
                             "that were not adjacent in time")
    return parser.parse_args(argv)


def case_specs(args, state_path):
    return harness_case_specs(args, state_path, workload="TrainStep", our_variants=OUR_VARIANTS,
                              peer_variants=PEER_VARIANTS, paper_models=PAPER_MODELS)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    use_device(args.device)
    context = {"record": "context", "benchmark": "train", "suite": args.suite, "input_size": args.size,
               "batch": args.batch, "repeats": args.repeats, "warmup": args.warmup,
               "one_at_a_time": args.one_at_a_time, **machine_info(args.threads)}
    emit(context)
    specs, times, metas, _ = run_suite(args, case_specs, one_at_a_time=args.one_at_a_time)
    context["load_average_at_end"] = os.getloadavg()
    records = []
    for spec in specs:
        stats = case_statistics(times[spec["name"]])
        record = {"record": "measurement", "benchmark": "train", "case": spec["name"], "role": spec["role"],
                  "backbone": spec["backbone"], "output_stride": spec["output_stride"], "batch": args.batch,
                  "input_size": args.size, "threads": args.threads, **stats, **metas[spec["name"]],
                  "images_per_s": args.batch / stats["median_s"]}
        emit(record)
        records.append(record)
    pairs = []
    for ours in (s["name"] for s in specs if s["role"] == "ours"):
        for peer in (s["name"] for s in specs if s["role"] == "peer"):
            pair = {"record": "ratio", "benchmark": "train", "ours": ours, "peer": peer,
                    "metric": "step time ours/peer (images/s ours/peer is its inverse)",
                    **pair_statistics(times[ours], times[peer])}
            pair["images_per_s_ratio_median"] = 1.0 / pair["ratio_median"]
            emit(pair)
            pairs.append(pair)
    print()
    print(f"Training step ({args.suite} suite), crop {args.size}, batch {args.batch}, {args.threads} threads, "
          f"{context['cpu']} ({context['cores']} cores), load average {context['load_average_1_5_15'][0]:.1f} "
          f"at start, {context['load_average_at_end'][0]:.1f} at end; {args.repeats} "
          f"{'steps of each case alone, one case after another,' if args.one_at_a_time else 'alternating steps'} after "
          f"{args.warmup} warm-up; {context['date']}")
    print()
    print(markdown_table(records, [
        ("case", "case", None), ("backbone", "backbone", None), ("output_stride", "OS", None),
        ("median_s", "step wall median s", "{:.2f}"), ("min_s", "min", "{:.2f}"), ("max_s", "max", "{:.2f}"),
        ("cpu_median_s", "CPU s", "{:.2f}"), ("images_per_s", "img/s", "{:.3f}"),
        ("first_step_s", "first step s", "{:.1f}"), ("peak_rss_mb", "peak RSS MiB", "{:.0f}")]))
    if pairs:
        print()
        print(markdown_table(pairs, [
            ("ours", "ours", None), ("peer", "peer", None), ("ratio_median", "step time ours/peer", "{:.2f}"),
            ("ratio_min", "min", "{:.2f}"), ("ratio_max", "max", "{:.2f}"),
            ("images_per_s_ratio_median", "img/s ours/peer", "{:.2f}"),
            ("cpu_ratio_median", "CPU ours/peer", "{:.2f}")]))


if __name__ == "__main__":
    main()
