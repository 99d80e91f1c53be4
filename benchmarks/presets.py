"""CPU latency of the pretrained presets at torchvision's evaluation size, ours as served against torchvision's
same model: the numbers of the README's "Pretrained models" table.

    python benchmarks/presets.py --torch-python /tmp/torchenv/bin/python       # 520x520, 2 threads, 5 rounds
    python benchmarks/presets.py --size 129 --repeats 1 --presets deeplabv3_resnet50_coco_voc   # a smoke run

For each preset with torchvision weights (`PEERS`, names from `keras_deeplab.presets.PRESETS`), one after
another: ours is `DeepLabV3(num_classes=21, **preset.architecture)`, randomly initialised (latency does not depend
on the weights; nothing is downloaded), with BatchNorm folded (`keras_deeplab.fold`) and traced for any input
size, as `export_saved_model` serves it (`--static-shape`: traced for the measured size only, as in-process
`model.predict`); the peer is torchvision's builder of the same name (weights=None, weights_backbone=None, 21
classes, aux_loss=False) in eval mode under `torch.inference_mode`. Both take one [0, 255] RGB image
(1x3x520x520 for torch, NHWC for ours) and normalise it inside the timed call.

Each case runs in its own process with the threads fixed to `--threads`; ours and the peer alternate run by run
after `--warmup` warm-up runs (harness.py), and ours/torchvision is the median [min, max] of the per-round ratios.
torch need not be installed beside TF: `--torch-python` names an interpreter with torch, torchvision and NumPy
(default: the driver's), which runs the peer's worker (harness.Worker's `python`). Prints one JSON line per case
and per pair, then the context line (the peer interpreter's versions and the load average at the end included)
and a Markdown table.
"""
import argparse
import os
import sys

from harness import (add_run_arguments, case_statistics, emit, log, machine_info, markdown_table, pair_statistics,
                     run_cases, use_device)

# preset -> torchvision's deeplabv3_<backbone> of the same architecture (cases.TORCHVISION_BACKBONES)
PEERS = {"deeplabv3_resnet50_coco_voc": "resnet50",
         "deeplabv3_resnet101_coco_voc": "resnet101",
         "deeplabv3_mobilenet_v3_large_coco_voc": "mobilenet_v3_large"}
BATCH = 1


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default=",".join(PEERS),
                        help=f"comma-separated presets, from {list(PEERS)}")
    parser.add_argument("--size", type=int, default=520, help="square input side (torchvision evaluates at 520)")
    add_run_arguments(parser, repeats=5, threads=2)
    parser.add_argument("--torch-python", default=sys.executable,
                        help="Python interpreter with torch and torchvision for the peer's worker")
    parser.add_argument("--static-shape", action="store_true",
                        help="trace ours for the measured size only instead of any size (as the export does)")
    args = parser.parse_args(argv)
    args.presets = [name for name in args.presets.split(",") if name]
    unknown = [name for name in args.presets if name not in PEERS]
    if unknown or not args.presets:
        parser.error(f"--presets: expected some of {list(PEERS)}, got {unknown or 'none'}")
    return args


def case_specs(args, preset):
    """The peer (first, under --torch-python) and ours for one preset."""
    return [{"name": "torchvision", "role": "peer", "factory": "cases:TorchInference", "python": args.torch_python,
             "model": f"torchvision deeplabv3_{PEERS[preset]}",
             "kwargs": {"backbone": PEERS[preset], "batch": BATCH, "size": args.size}},
            {"name": "ours", "role": "ours", "factory": "cases:KerasInference",
             "model": "keras_deeplab, BatchNorm folded, " + ("static shape" if args.static_shape else "any size"),
             "kwargs": {"batch": BATCH, "size": args.size, "fold_bn": True, "dynamic_shape": not args.static_shape,
                        "model_kwargs": {"source": "preset", "preset": preset}}}]


def measure(args, preset, context):
    """Runs one preset's pair; emits its measurements and ratio, returns its table row."""
    specs = case_specs(args, preset)
    times, metas, _ = run_cases(specs, args.repeats, args.warmup, args.threads)
    records = {}
    for spec in specs:
        records[spec["role"]] = record = {
            "record": "measurement", "benchmark": "presets", "preset": preset, "case": spec["name"],
            "role": spec["role"], "model": spec["model"], "batch": BATCH, "input_size": args.size,
            "threads": args.threads, **case_statistics(times[spec["name"]]), **metas[spec["name"]]}
        emit(record)
    peer_versions = records["peer"].get("versions", {})
    context["versions"].update({key: peer_versions[key] for key in ("torch", "torchvision") if key in peer_versions})
    pair = {"record": "ratio", "benchmark": "presets", "preset": preset, "ours": "ours", "peer": "torchvision",
            "metric": "time ours/peer", **pair_statistics(times["ours"], times["torchvision"])}
    emit(pair)
    ours, peer = records["ours"], records["peer"]
    return {"preset": preset, "ours_parameters": ours["trainable_parameters"],
            "peer_parameters": peer["parameters"],
            "ours_time": f"{ours['median_s']:.3f} [{ours['min_s']:.3f}, {ours['max_s']:.3f}]",
            "peer_time": f"{peer['median_s']:.3f}",
            "ratio": f"{pair['ratio_median']:.2f} [{pair['ratio_min']:.2f}, {pair['ratio_max']:.2f}]"}


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    use_device(args.device)
    context = {"record": "context", "benchmark": "presets", "presets": args.presets, "input_size": args.size,
               "batch": BATCH, "repeats": args.repeats, "warmup": args.warmup, "static_shape": args.static_shape,
               "torch_python": args.torch_python, **machine_info(args.threads)}
    rows, failed = [], []
    for preset in args.presets:
        log(f"preset {preset}")
        try:
            rows.append(measure(args, preset, context))
        except (RuntimeError, TimeoutError, EOFError, OSError) as error:  # a worker failed: go on with the rest
            log(f"{preset} failed: {error}")
            emit({"record": "error", "benchmark": "presets", "preset": preset, "error": str(error)})
            failed.append(preset)
            rows.append({"preset": preset, "ours_time": "failed"})
    context["load_average_at_end"] = os.getloadavg()
    emit(context)
    print()
    print(f"Pretrained presets, CPU latency, {args.size}x{args.size}, batch {BATCH}, {args.threads} threads, "
          f"{context['cpu']} ({context['cores']} cores), load average {context['load_average_1_5_15'][0]:.1f} at "
          f"start, {context['load_average_at_end'][0]:.1f} at end; {args.repeats} alternating runs after "
          f"{args.warmup} warm-up; ours BatchNorm-folded, traced for "
          f"{'this size only' if args.static_shape else 'any size (as exported)'}; tensorflow "
          f"{context['versions'].get('tensorflow')}, keras {context['versions'].get('keras')}, torch "
          f"{context['versions'].get('torch')}, torchvision {context['versions'].get('torchvision')}; "
          f"{context['date']}")
    print()
    print(markdown_table(rows, [
        ("preset", "preset", None), ("ours_parameters", "parameters (ours)", "{:,}"),
        ("peer_parameters", "parameters (torchvision)", "{:,}"), ("ours_time", "ours median s [min, max]", None),
        ("peer_time", "torchvision median s", None), ("ratio", "ours/torchvision [min, max]", None)]))
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
