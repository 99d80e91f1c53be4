"""Inference latency and images/s, ours vs torchvision, with the achieved GFLOP/s against a matmul peak.

    python benchmarks/inference.py --backbone resnet50 --batch 1 --size 513 --repeats 5
    python benchmarks/inference.py --suite paper --repeats 3      # the paper's OS16 R101 and MobileNetV2, alone

Suite "peer" (default): torchvision's deeplabv3_<backbone> (weights=None, seeded) in eval mode, contiguous and
channels-last, against our torchvision-compatible model (the same weights, OS8) in each requested variant.
Suite "paper": our paper model (ResNet-101, OS16, MG (1, 2, 4)) and MobileNetV2 at OS16, with no peer.
Both suites time a 3072^3 fp32 matmul in TF, torch and NumPy in the same rounds: the achievable FMA rate
(the fastest of the three; GFLOP/s count 2 FLOP per MAC of the model's nominal, dense convolutions).

Every case runs in its own process with the threads fixed to `--threads`; the cases alternate run by run after
`--warmup` warm-up runs. Each run records wall time and the process's CPU time (all its threads). A case's peak
RSS is read right after its runs, before the checks (MAC count, which runs our model eagerly; logits against the
peer's), so it is what a process that only builds and runs the model pays. The torch workers run under
`--torch-python` (default: the driver's interpreter). Prints one JSON line per case and per ours/peer pair, then
Markdown tables.
"""
import argparse
import importlib.util
import os
import sys

import numpy as np

from harness import (PEER_VARIANTS, add_run_arguments, add_suite_arguments, case_specs as harness_case_specs,
                     case_statistics, emit, log, machine_info, markdown_table, pair_statistics, run_suite, use_device)

# Our variants: name -> (KerasInference kwargs, model kwargs, extra environment).
OUR_VARIANTS = {
    "ours": ({}, {"atrous_implementation": "auto"}, {}),
    "ours_folded": ({"fold_bn": True}, {"atrous_implementation": "auto"}, {}),
    "ours_folded_direct": ({"fold_bn": True}, {"atrous_implementation": "auto", "winograd": False}, {}),
    "ours_folded_dynamic": ({"fold_bn": True, "dynamic_shape": True}, {"atrous_implementation": "auto"}, {}),
    "ours_folded_inter_op_1": ({"fold_bn": True}, {"atrous_implementation": "auto"},
                               {"BENCH_TF_INTER_OP_THREADS": "1"}),
    "ours_native": ({}, {"atrous_implementation": "native"}, {}),
    "ours_shifted": ({}, {"atrous_variant": "shifted"}, {}),
    "ours_rows": ({}, {"atrous_variant": "rows"}, {}),
    "ours_per_tap": ({}, {"atrous_variant": "per_tap"}, {}),
    "ours_tf_dilated": ({}, {"atrous_variant": "tf_dilated"}, {}),
    "ours_dynamic": ({"dynamic_shape": True}, {"atrous_implementation": "auto"}, {}),
    "ours_direct": ({}, {"atrous_implementation": "auto", "winograd": False}, {}),
    "ours_xla": ({"jit_compile": True}, {"atrous_implementation": "auto"}, {}),
    "ours_no_onednn": ({}, {"atrous_implementation": "auto"}, {"TF_ENABLE_ONEDNN_OPTS": "0"}),
    # glibc's malloc per tensor (KERAS_DEEPLAB_CPU_ALLOCATOR=system) instead of the pool `import keras_deeplab` selects
    "ours_malloc": ({}, {"atrous_implementation": "auto"}, {"KERAS_DEEPLAB_CPU_ALLOCATOR": "system"}),
}
PEAK_CASES = {"matmul_tf": "tensorflow", "matmul_torch": "torch", "matmul_numpy": "numpy"}
PAPER_MODELS = {"paper_r101_os16": {"backbone": "resnet101", "output_stride": 16},
                "paper_r101_os16_folded": {"backbone": "resnet101", "output_stride": 16,
                                           "case_kwargs": {"fold_bn": True}},
                "paper_r101_os16_folded_direct": {"backbone": "resnet101", "output_stride": 16, "winograd": False,
                                                  "case_kwargs": {"fold_bn": True}},
                "cascade_r50_block7_os16": {"backbone": "resnet50", "output_stride": 16, "last_block": 7},
                "deeplabv3_plus_r101_os16": {"backbone": "resnet101", "output_stride": 16, "decoder": True},
                "deeplabv3_plus_r101_os16_folded": {"backbone": "resnet101", "output_stride": 16, "decoder": True,
                                                    "case_kwargs": {"fold_bn": True}},
                "mobilenet_v2_os16": {"backbone": "mobilenet_v2", "output_stride": 16},
                "mobilenet_v2_os16_folded": {"backbone": "mobilenet_v2", "output_stride": 16,
                                             "case_kwargs": {"fold_bn": True}}}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_suite_arguments(parser, our_variants=OUR_VARIANTS, paper_models=PAPER_MODELS, ours="ours,ours_folded",
                        peers="torchvision,torchvision_cl", paper_default=",".join(PAPER_MODELS))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=513)
    add_run_arguments(parser, repeats=5)
    parser.add_argument("--no-peak", action="store_true", help="skip the matmul peak")
    return parser.parse_args(argv)


def case_specs(args, state_path):
    """The shared cases, plus the matmul peak unless --no-peak."""
    specs = harness_case_specs(args, state_path, workload="Inference", our_variants=OUR_VARIANTS,
                               peer_variants=PEER_VARIANTS, paper_models=PAPER_MODELS)
    if not args.no_peak:
        torch_elsewhere = args.torch_python != sys.executable
        specs += [{"name": name, "factory": "cases:MatmulPeak", "role": "peak", "kwargs": {"framework": framework},
                   "python": args.torch_python if framework == "torch" else None}
                  for name, framework in PEAK_CASES.items()
                  if (args.device == "cpu" or framework != "numpy")
                  and (framework == "torch" and torch_elsewhere or importlib.util.find_spec(framework))]
    return specs


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    use_device(args.device)
    context = {"record": "context", "benchmark": "inference", "suite": args.suite, "input_size": args.size,
               "batch": args.batch, "repeats": args.repeats, "warmup": args.warmup, **machine_info(args.threads)}
    emit(context)
    specs, times, metas, checks = run_suite(args, case_specs, checks=model_checks)
    context["load_average_at_end"] = os.getloadavg()
    report(args, specs, times, metas, checks, context)


def model_checks(workers, specs):
    """The MAC count of each model and, in the peer suite, the largest difference of ours from the peer's
    logits on the same pixels; run after the peak RSS readings (harness.run_cases)."""
    by_name = {w.name: w for w in workers}
    peers = [s["name"] for s in specs if s["role"] == "peer"]
    reference = by_name[peers[0]].call("output") if peers else None
    checks = {}
    for spec in specs:
        if spec["role"] == "peak":
            continue
        worker = by_name[spec["name"]]
        macs = worker.call("count_macs")
        entry = {"macs": macs, "gmacs": macs / 1e9}
        if reference is not None and spec["role"] == "ours":
            entry["max_abs_diff_vs_peer"] = float(np.max(np.abs(worker.call("output") - reference)))
            entry["peer_logit_scale"] = float(np.max(np.abs(reference)))
            entry["max_rel_diff_vs_peer"] = entry["max_abs_diff_vs_peer"] / entry["peer_logit_scale"]
        checks[spec["name"]] = entry
        log(f"{spec['name']}: {entry}")
    return checks


def report(args, specs, times, metas, checks, context):
    records = {spec["name"]: {"record": "measurement", "benchmark": "inference", "case": spec["name"],
                              "role": spec["role"], "backbone": spec.get("backbone"),
                              "output_stride": spec.get("output_stride"), "batch": args.batch,
                              "input_size": args.size, "threads": args.threads, **case_statistics(times[spec["name"]]),
                              **metas[spec["name"]], **checks.get(spec["name"], {})}
               for spec in specs}
    # The achievable rate: the faster framework's matmul, by wall time and by CPU time (per thread busy).
    peaks = [r for r in records.values() if r["role"] == "peak"]
    for record in peaks:
        record["gflop_per_s"] = record["flop"] / record["median_s"] / 1e9
        record["cpu_gflop_per_s"] = record["flop"] / record["cpu_median_s"] / 1e9
    peak = max((r["gflop_per_s"] for r in peaks), default=None)
    cpu_peak = max((r["cpu_gflop_per_s"] for r in peaks), default=None)
    for record in records.values():
        if record["role"] == "peak":
            continue
        record["images_per_s"] = args.batch / record["median_s"]
        record["gflop_per_s"] = 2 * record["macs"] / record["median_s"] / 1e9
        record["cpu_gflop_per_s"] = 2 * record["macs"] / record["cpu_median_s"] / 1e9
        if peak:
            record["fraction_of_matmul_peak"] = record["gflop_per_s"] / peak
            record["cpu_fraction_of_matmul_peak"] = record["cpu_gflop_per_s"] / cpu_peak
    for record in records.values():
        emit(record)
    pairs = []
    for ours in (s["name"] for s in specs if s["role"] == "ours"):
        for peer in (s["name"] for s in specs if s["role"] == "peer"):
            pair = {"record": "ratio", "benchmark": "inference", "ours": ours, "peer": peer,
                    "metric": "time ours/peer", **pair_statistics(times[ours], times[peer])}
            emit(pair)
            pairs.append(pair)
    print()
    print(f"Inference ({args.suite} suite), {args.size}x{args.size}, batch {args.batch}, {args.threads} threads, "
          f"{context['cpu']} ({context['cores']} cores), load average {context['load_average_1_5_15'][0]:.1f} "
          f"at start, {context['load_average_at_end'][0]:.1f} at end; {args.repeats} alternating runs after "
          f"{args.warmup} warm-up; {context['date']}")
    print()
    print(markdown_table(list(records.values()), [
        ("case", "case", None), ("backbone", "backbone", None), ("output_stride", "OS", None),
        ("median_s", "wall median s", "{:.3f}"), ("min_s", "min", "{:.3f}"), ("max_s", "max", "{:.3f}"),
        ("cpu_median_s", "CPU s", "{:.3f}"), ("images_per_s", "img/s", "{:.2f}"), ("gmacs", "GMAC", "{:.1f}"),
        ("gflop_per_s", "GFLOP/s (wall)", "{:.1f}"), ("fraction_of_matmul_peak", "of peak", "{:.0%}"),
        ("cpu_gflop_per_s", "GFLOP/s (CPU)", "{:.1f}"), ("cpu_fraction_of_matmul_peak", "of peak", "{:.0%}"),
        ("peak_rss_mb", "peak RSS MiB", "{:.0f}"), ("max_rel_diff_vs_peer", "max diff / max logit vs peer", "{:.1e}")]))
    if pairs:
        print()
        print(markdown_table(pairs, [
            ("ours", "ours", None), ("peer", "peer", None), ("ratio_median", "wall ours/peer", "{:.2f}"),
            ("ratio_min", "min", "{:.2f}"), ("ratio_max", "max", "{:.2f}"),
            ("cpu_ratio_median", "CPU ours/peer", "{:.2f}"), ("cpu_ratio_min", "min", "{:.2f}"),
            ("cpu_ratio_max", "max", "{:.2f}")]))


if __name__ == "__main__":
    main()
