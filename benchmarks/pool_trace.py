"""Where TF's CPU pool peaks during one inference of ours, from TF's profiler: what is alive at the peak, the pool's
peak while each layer runs, and how much of the pool's memory the process has touched (its resident pages).

    python benchmarks/pool_trace.py --size 1025
    python benchmarks/pool_trace.py --size 1024x2048 --call function --no-jax

The model is memory_probe.py's (R50 OS8, folded, as served). One call warms up, the next is profiled: TF's pooled
allocator (keras_deeplab.allocator) records every allocation and deallocation with the op that made it. The pool
hands out whole chunks (a request may get a chunk up to twice its size), and its resident memory can exceed its
peak in use (chunks spread over its regions); "resident" counts the anonymous mappings of 64 MiB or more, which
on this kind of machine are the pool's regions and large NumPy arrays (benchmarks/memory.md, "Tenth session").
"""
import argparse
import glob
import os
import re
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
MIB = 2 ** 20


def allocation_events(logdir):
    """[(time ns, "MemoryAllocation" | "MemoryDeallocation", {stat: value})] of the profile in `logdir`, by time."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(sorted(glob.glob(os.path.join(logdir, "plugins/profile/*/*.xplane.pb")))[-1], "rb") as file:
        space.ParseFromString(file.read())
    events = []
    for plane in space.planes:
        stat_names = {key: value.name for key, value in plane.stat_metadata.items()}
        event_names = {key: value.name for key, value in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                name = event_names.get(event.metadata_id)
                if name not in ("MemoryAllocation", "MemoryDeallocation"):
                    continue
                stats = {}
                for stat in event.stats:
                    value = stat.str_value or stat.int64_value or stat.uint64_value or stat.double_value
                    stats[stat_names.get(stat.metadata_id)] = stat_names.get(stat.ref_value, value) \
                        if stat.ref_value else value
                events.append((line.timestamp_ns + event.offset_ps // 1000, name, stats))
    return sorted(events, key=lambda event: event[0])


def layer_of(op_name, layer_names):
    """The layers an op belongs to ("aspp/aspp_rate36_conv") from its name in the model's graph, where TF adds
    "_1" to each name scope."""
    layers = []
    for part in (op_name or "").split("/")[1:]:
        name = re.sub(r"_\d+$", "", part)
        if name not in layer_names:
            break
        layers.append(name)
    return "/".join(layers) or op_name or "(no op named)"


def large_anonymous_mb():
    """Resident MiB of the anonymous mappings of at least 64 MiB, each as (resident, size)."""
    mappings, current = [], None
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and not fields[0].endswith(":"):
                start, end = (int(address, 16) for address in fields[0].split("-"))
                current = {"size": (end - start) / MIB, "anonymous": len(fields) < 6}
                mappings.append(current)
            elif fields[0] == "Rss:":
                current["resident"] = int(fields[1]) / 1024
    return [(m["resident"], m["size"]) for m in mappings if m["anonymous"] and m["size"] >= 64]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1025", help="image side, or HxW")
    parser.add_argument("--call", choices=("predict", "function"), default="predict")
    parser.add_argument("--top", type=int, default=15, help="rows of each table")
    parser.add_argument("--no-jax", action="store_true", help="make JAX unimportable, as where it is not installed")
    args = parser.parse_args(argv)
    if args.no_jax:
        sys.modules["jax"] = None
    sys.path.insert(0, HERE)
    import keras_deeplab  # noqa: F401 - first: selects the pooled allocator
    import tensorflow as tf
    from memory_probe import our_inference

    size = tuple(int(side) for side in args.size.split("x")) if "x" in args.size else int(args.size)
    run, model = our_inference(size, args.call)
    run()
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        run()
        tf.profiler.experimental.stop()
        events = allocation_events(logdir)
    if not events:
        sys.exit("the profile has no allocation events: is TF's pooled CPU allocator in use?")

    peak_index = max(range(len(events)), key=lambda i: events[i][2].get("bytes_allocated", 0))
    live = {}
    for _, name, stats in events[:peak_index + 1]:
        if name == "MemoryAllocation":
            live[stats.get("addr")] = stats
        else:
            live.pop(stats.get("addr"), None)
    pool = tf.config.experimental.get_memory_info("CPU:0")
    peak_mb = events[peak_index][2]["bytes_allocated"] / MIB
    print(f"{args.call} at {args.size}: the pool's peak in this call {peak_mb:.0f} MiB in use (its peak since "
          f"the start {pool['peak'] / MIB:.0f}, now {pool['current'] / MIB:.0f}); "
          f"{sum(s.get('allocation_bytes', 0) for s in live.values()) / MIB:.0f} MiB of it allocated in this call")
    print("\nallocated in this call and alive at the peak (chunk MiB, requested MiB, op):")
    for stats in sorted(live.values(), key=lambda s: -s.get("allocation_bytes", 0))[:args.top]:
        print(f"  {stats.get('allocation_bytes', 0) / MIB:7.1f} {stats.get('requested_bytes', 0) / MIB:7.1f}  "
              f"{stats.get('tf_op')}")
    by_layer, layer_names = {}, {layer.name for layer in model._flatten_layers()}
    for _, name, stats in events:
        if name == "MemoryAllocation":
            layer = layer_of(stats.get("tf_op"), layer_names)
            by_layer[layer] = max(by_layer.get(layer, 0), stats.get("bytes_allocated", 0))
    print("\nthe pool's peak in use while each layer allocates (MiB):")
    for layer, in_use in sorted(by_layer.items(), key=lambda item: -item[1])[:args.top]:
        print(f"  {in_use / MIB:7.1f}  {layer}")
    regions = large_anonymous_mb()
    print(f"\nanonymous mappings of 64 MiB or more (resident / size MiB): "
          f"{', '.join(f'{resident:.0f} / {size:.0f}' for resident, size in regions)}; "
          f"{sum(resident for resident, _ in regions):.0f} MiB resident against the pool's peak of "
          f"{pool['peak'] / MIB:.0f}")


if __name__ == "__main__":
    main()
