"""Cost curves: inference time and peak memory against input size and batch, ours as served vs torchvision.

    python benchmarks/cost_curves.py --torch-python /tmp/torchenv/bin/python          # R50 OS8, the full set
    python benchmarks/cost_curves.py --torch-python /tmp/torchenv/bin/python --backbone resnet101 \\
        --sizes 1024x2048 --batches "" --repeats 1                                     # Cityscapes full frame
    python benchmarks/cost_curves.py --replot results/cost_curves_r50_os8_t2.txt results/cost_curves_r101_os8_t2.txt

Points: batch 1 at each of --sizes (a side, or HxW: 1024x2048 is a Cityscapes frame), then each of --batches at
--batch-size. At each point ours (`--ours`, a variant of inference.py; default `ours_folded`: the
torchvision-compatible DeepLabV3 with the peer's weights, BatchNorm folded as the export serves it, traced for the
input's shape) and the peer (`--peer`, default torchvision's deeplabv3_<backbone> in eval mode) run one after
another, each in a fresh worker process (harness.run_alone) that builds the model, runs --warmup times, then
--repeats timed runs: time is their median, peak RSS the worker's VmHWM (interpreter, libraries, model, runs),
what a user's process that only does this pays. A point past --time-limit-s or --rss-limit-gib is killed and
reported as such. The weights are written once by a small torch worker before the points.

Prints one JSON line per point and side (ours, peer), Markdown tables (size sweep, batch sweep), and writes a PNG
(time and peak RSS against pixels and against batch) to --plot (default
results/cost_curves_<r50|r101>_os<OS>_t<threads>.png). --replot FILES draws the PNG from earlier runs' JSON
lines (several backbones in one figure) without measuring.
"""
import argparse
import json
import os
import sys
import tempfile
from argparse import Namespace

from harness import (BENCH_DIR, PEER_VARIANTS, Worker, add_torch_python_argument, case_specs, case_statistics,
                     emit, log, machine_info, markdown_table, run_alone, use_device)
from inference import OUR_VARIANTS

ROLES = ("ours", "peer")


def parse_size(text):
    """"513" -> (513, 513); "1024x2048" -> (1024, 2048) (H x W)."""
    height, _, width = text.lower().partition("x")
    return int(height), int(width or height)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", choices=("resnet50", "resnet101"), default="resnet50")
    parser.add_argument("--output-stride", type=int, choices=(8, 16), default=8)
    parser.add_argument("--sizes", default="257,513,769,1025,1024x2048",
                        help="comma-separated input sizes at batch 1: a side or HxW")
    parser.add_argument("--batches", default="1,2,4,8", help="comma-separated batches at --batch-size")
    parser.add_argument("--batch-size", default="513", help="the input size of the batch sweep")
    parser.add_argument("--ours", choices=sorted(OUR_VARIANTS), default="ours_folded")
    parser.add_argument("--peer", choices=sorted(PEER_VARIANTS), default="torchvision")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--time-limit-s", type=float, default=1800, help="per point and side, build included")
    parser.add_argument("--rss-limit-gib", type=float, default=16, help="per point and side")
    add_torch_python_argument(parser)
    parser.add_argument("--plot", help="PNG path (default results/cost_curves_<backbone>_os<OS>_t<threads>.png); "
                                       "'' for none")
    parser.add_argument("--replot", nargs="+", metavar="FILE", help="plot the JSON lines of earlier runs only")
    args = parser.parse_args(argv)
    args.sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    args.batches = [int(b) for b in args.batches.split(",") if b]
    args.batch_size = parse_size(args.batch_size)
    if args.plot is None:
        tag = "r50" if args.backbone == "resnet50" else "r101"
        args.plot = os.path.join(BENCH_DIR, "results", f"cost_curves_{tag}_os{args.output_stride}_t{args.threads}.png")
    return args


def points(args):
    """[(sweep, (H, W), batch)]: the size sweep at batch 1, then the batch sweep; each (size, batch) once."""
    result, seen = [], set()
    for sweep, size, batch in ([("size", s, 1) for s in args.sizes]
                               + [("batch", args.batch_size, b) for b in args.batches]):
        if (size, batch) not in seen:
            seen.add((size, batch))
            result.append((sweep, size, batch))
    return result


def point_specs(args, size, batch, state_path):
    """{"ours": spec, "peer": spec} at one point (harness.case_specs of the peer suite)."""
    suite = Namespace(suite="peer", peers=args.peer, ours=args.ours, backbone=args.backbone, batch=batch,
                      size=size, output_stride=args.output_stride, torch_python=args.torch_python)
    peer, ours = case_specs(suite, state_path, workload="Inference", our_variants=OUR_VARIANTS,
                            peer_variants=PEER_VARIANTS, paper_models={})
    return {"ours": ours, "peer": peer}


def write_peer_state(args, state_path):
    """The peer's seeded weights, written by a small torch worker for every point of ours to load."""
    spec = point_specs(args, (33, 33), 1, state_path)["peer"]
    worker = Worker("weights", spec["factory"], spec["kwargs"], args.threads, spec.get("env"), spec.get("python"))
    try:
        worker.call("save_state", state_path)
    finally:
        worker.stop()


def measure(args, context):
    """Measures every point; emits and returns their records."""
    records = []
    with tempfile.TemporaryDirectory(prefix="deeplab_cost_curves_") as folder:
        state_path = os.path.join(folder, "torchvision_state.npz")
        write_peer_state(args, state_path)
        for sweep, (height, width), batch in points(args):
            specs = point_specs(args, (height, width), batch, state_path)
            for role in ROLES:
                spec = specs[role]
                log(f"{spec['name']} {height}x{width} batch {batch}")
                result = run_alone(spec, args.repeats, args.warmup, args.threads, args.time_limit_s,
                                   args.rss_limit_gib * 1024)
                record = {"record": "measurement", "benchmark": "cost_curves", "sweep": sweep,
                          "role": role, "case": spec["name"], "backbone": args.backbone,
                          "output_stride": args.output_stride, "height": height, "width": width, "batch": batch,
                          "threads": args.threads, "status": result["status"], "error": result.get("error")}
                if result["status"] == "ok":
                    record.update(result["meta"], **case_statistics(result["times"]))
                    record.update(images_per_s=batch / record["median_s"],
                                  peak_rss_gib=record["peak_rss_mb"] / 1024)
                log(f"  {record['status']}: {record.get('median_s')} s, {record.get('peak_rss_gib')} GiB")
                emit(record)
                records.append(record)
    context["load_average_at_end"] = os.getloadavg()
    return records


def size_label(height, width):
    return str(height) if height == width else f"{height}x{width}"


def cell(record, key, fmt):
    """A table cell: the formatted value, or the point's status where it did not run to the end."""
    if record is None:
        return ""
    return fmt.format(record[key]) if record["status"] == "ok" else f"**{record['status']}**"


def comparison_rows(records, sweep_points):
    """Table rows (ours and peer side by side, with ratios) at `sweep_points` [((H, W), batch)]."""
    by_point = {(r["height"], r["width"], r["batch"], r["role"]): r for r in records}
    rows = []
    for (height, width), batch in sweep_points:
        ours, peer = (by_point.get((height, width, batch, f)) for f in ROLES)
        both = ours and peer and ours["status"] == peer["status"] == "ok"
        rows.append({"input": size_label(height, width), "batch": batch,
                     "ours_s": cell(ours, "median_s", "{:.3f}"), "peer_s": cell(peer, "median_s", "{:.3f}"),
                     "time_ratio": f"{ours['median_s'] / peer['median_s']:.2f}" if both else "",
                     "ours_gib": cell(ours, "peak_rss_gib", "{:.2f}"), "peer_gib": cell(peer, "peak_rss_gib", "{:.2f}"),
                     "rss_ratio": f"{ours['peak_rss_mb'] / peer['peak_rss_mb']:.2f}" if both else ""})
    return rows


def print_tables(args, records, context):
    ours_name, peer_name = args.ours, args.peer
    print()
    print(f"Cost curves, {args.backbone} OS{args.output_stride}, {args.threads} threads, {context['cpu']} "
          f"({context['cores']} cores, {context['memory_gib']} GiB), load average "
          f"{context['load_average_1_5_15'][0]:.1f} at start, {context['load_average_at_end'][0]:.1f} at end; "
          f"median of {args.repeats} runs after {args.warmup} warm-up, peak RSS of a fresh process per point; "
          f"{context['date']}")
    columns = [("input", "input (H x W)", None), ("batch", "batch", None),
               ("ours_s", f"{ours_name} s", None), ("peer_s", f"{peer_name} s", None),
               ("time_ratio", "time ours/peer", None), ("ours_gib", f"{ours_name} peak RSS GiB", None),
               ("peer_gib", f"{peer_name} peak RSS GiB", None), ("rss_ratio", "peak RSS ours/peer", None)]
    for title, sweep_points in (("By input size, batch 1", [(s, 1) for s in args.sizes]),
                                (f"By batch, {size_label(*args.batch_size)}", [(args.batch_size, b)
                                                                               for b in args.batches])):
        if sweep_points:
            print()
            print(f"{title}:")
            print()
            print(markdown_table(comparison_rows(records, sweep_points), columns))


def read_records(paths):
    """The cost-curve measurements among the JSON lines of earlier runs' output files."""
    records = []
    for path in paths:
        with open(path) as f:
            for line in f:
                if line.startswith("{"):
                    record = json.loads(line)
                    if record.get("record") == "measurement" and record.get("benchmark") == "cost_curves":
                        records.append(record)
    return records


def plot(records, path):
    """Time and peak RSS against pixels (batch 1) and against batch, one line per backbone and case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(12, 9))
    failures = []

    def line_of(record):
        return record["backbone"], record["output_stride"], record["case"]

    for index, (backbone, output_stride, case) in enumerate(sorted({line_of(r) for r in records})):
        group = [r for r in records if line_of(r) == (backbone, output_stride, case)]
        failures += [f"{case} {backbone} OS{output_stride} {size_label(r['height'], r['width'])} batch "
                     f"{r['batch']}: {r['status']}" for r in group if r["status"] != "ok"]
        done = [r for r in group if r["status"] == "ok"]
        style = {"label": f"{case} ({backbone.replace('resnet', 'R')} OS{output_stride})",
                 "marker": "o" if "ours" in case else "s", "linestyle": "-" if backbone == "resnet50" else "--",
                 "color": f"C{index}"}
        by_size = sorted((r for r in done if r["batch"] == 1), key=lambda r: r["height"] * r["width"])
        batch_sizes = {(r["height"], r["width"]) for r in done if r["sweep"] == "batch"}
        by_batch = sorted((r for r in done if (r["height"], r["width"]) in batch_sizes), key=lambda r: r["batch"])
        for row, key in enumerate(("median_s", "peak_rss_gib")):
            for column, (rows, x) in enumerate(((by_size, lambda r: r["height"] * r["width"] / 1e6),
                                                (by_batch, lambda r: r["batch"]))):
                if rows:
                    axes[row][column].plot([x(r) for r in rows], [r[key] for r in rows], **style)
    sized = sorted({(r["height"], r["width"]) for r in records}, key=lambda hw: hw[0] * hw[1])
    for row, ylabel in enumerate(("time per call, s (median)", "peak RSS of the process, GiB")):
        axes[row][0].set_xticks([h * w / 1e6 for h, w in sized], [size_label(h, w) for h, w in sized], rotation=30)
        axes[row][0].set_xlabel("input (H x W), batch 1; x axis in pixels")
        axes[row][1].set_xlabel("batch")
        axes[row][1].set_xticks(sorted({r["batch"] for r in records}))
        for axis in axes[row]:
            axis.set_ylabel(ylabel)
            axis.grid(alpha=0.3)
            axis.set_ylim(bottom=0)
            if axis.lines:
                axis.legend(fontsize=8)
    threads = sorted({r["threads"] for r in records})
    figure.suptitle(f"DeepLabV3 inference cost, CPU, {'/'.join(map(str, threads))} threads: fresh process per point"
                    + (("\nnot measured: " + "; ".join(failures)) if failures else ""), fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    log(f"wrote {path}")


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.replot:
        plot(read_records(args.replot), args.plot)
        return
    use_device("cpu")
    context = {"record": "context", "benchmark": "cost_curves", "backbone": args.backbone,
               "output_stride": args.output_stride, "repeats": args.repeats, "warmup": args.warmup,
               "time_limit_s": args.time_limit_s, "rss_limit_gib": args.rss_limit_gib, **machine_info(args.threads)}
    emit(context)
    records = measure(args, context)
    print_tables(args, records, context)
    if args.plot:
        plot(records, args.plot)


if __name__ == "__main__":
    main()
