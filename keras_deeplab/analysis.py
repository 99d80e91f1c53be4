"""How many taps of an atrous convolution fall inside the feature map (DeepLabv3, Sec. 3.3 and Figure 4).

With 'same' zero padding, a k x k filter with atrous rate r on an S x S map reads padding for every tap whose
offset leaves the map; as r approaches S only the centre tap is left and the filter degenerates to a 1x1 conv.
`deeplab analyze-rates` tabulates and plots this, and suggests the largest useful ASPP rate; with
`--cascade-last-block` it lists the rates of the cascaded model's blocks (Sec. 3.2) and their valid-tap shares.
"""
import argparse
import math

import numpy as np

# Calibrated on the paper: the largest rate whose centre-only share is at most 1.5 % is 18 on the 33x33 map
# of a 513 crop at OS16 and 36 on the 65x65 map at OS8, the largest ASPP rates DeepLabv3 uses.
DEFAULT_MIN_VALID_FRACTION = 0.985


def _axis_tap_counts(size, rate, kernel_size):
    """Per position along one axis of length `size`, how many of the `kernel_size` taps fall inside."""
    offsets = (np.arange(kernel_size) - kernel_size // 2) * rate
    positions = np.arange(size)[:, None] + offsets[None, :]
    return ((positions >= 0) & (positions < size)).sum(axis=1)


def valid_tap_fractions(feature_size, rate, kernel_size=3):
    """Fractions f of output positions of a 'same'-padded `kernel_size` x `kernel_size` conv with atrous
    `rate` on a `feature_size` map (an int S for S x S, or (height, width)) at which exactly n taps fall
    inside the map, for n = 0 .. kernel_size**2 (f[0] is always 0: the centre tap is always inside). Exact.

    A tap (i, j) is inside iff its row and its column offsets both are, so the count at (y, x) is the product
    of the per-axis counts; the distribution is combined from the two per-axis histograms.
    """
    height, width = (feature_size, feature_size) if np.isscalar(feature_size) else feature_size
    if min(height, width) < 1 or rate < 1 or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"need feature_size >= 1, rate >= 1 and an odd kernel_size, got feature_size="
                         f"{feature_size}, rate={rate}, kernel_size={kernel_size}")
    rows = np.bincount(_axis_tap_counts(height, rate, kernel_size), minlength=kernel_size + 1) / height
    cols = np.bincount(_axis_tap_counts(width, rate, kernel_size), minlength=kernel_size + 1) / width
    counts = np.multiply.outer(np.arange(kernel_size + 1), np.arange(kernel_size + 1))
    return np.bincount(counts.ravel(), weights=np.multiply.outer(rows, cols).ravel(),
                       minlength=kernel_size ** 2 + 1)


def feature_size(crop_size, output_stride):
    """The backbone's feature-map size for a crop: ceil(crop / OS) (65 for 513 at OS8, 33 at OS16)."""
    return math.ceil(crop_size / output_stride)


def suggest_max_rate(crop_size, output_stride, kernel_size=3, min_valid_fraction=DEFAULT_MIN_VALID_FRACTION):
    """The largest atrous rate at which at least `min_valid_fraction` of the output positions still see more
    than the centre tap (i.e. the filter has not degenerated to a 1x1 conv there).

    The share of centre-only positions is 0 while 2 * rate <= S - 1 and then grows with the rate; the default
    threshold (centre-only at most 1.5 %) gives the paper's largest ASPP rates for a 513 crop: 18 at OS16 and
    36 at OS8. Larger rates mostly add 1x1 behaviour, which ASPP's image pooling branch covers better.
    """
    if not 0 < min_valid_fraction <= 1:
        raise ValueError(f"min_valid_fraction must be in (0, 1], got {min_valid_fraction}")
    size = feature_size(crop_size, output_stride)
    rate = 1
    # Beyond rate S every non-centre tap is outside, so the search ends there.
    while rate < size and 1.0 - valid_tap_fractions(size, rate + 1, kernel_size)[1] >= min_valid_fraction:
        rate += 1
    return rate


def parse_rates(text):
    """'1-64' or '6,12,18' (or a mix, '1-4,8') -> sorted list of rates."""
    rates = set()
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                low, high = (int(v) for v in part.split("-", 1))
                rates.update(range(low, high + 1))
            else:
                rates.add(int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--rates: expected '1-64' or a list like '6,12,18', got {text!r}") from None
    if not rates or min(rates) < 1:
        raise argparse.ArgumentTypeError(f"--rates: rates must be positive integers, got {text!r}")
    return sorted(rates)


def parse_multi_grid(text):
    """'1,2,1' -> (1, 2, 1): one positive rate multiplier per unit of a three-unit block."""
    try:
        grid = tuple(int(v) for v in text.split(","))
    except ValueError:
        grid = ()
    if len(grid) != 3 or min(grid) < 1:
        raise argparse.ArgumentTypeError(f"--multi-grid: expected three positive integers like '1,2,1', got {text!r}")
    return grid


def rate_table(size, rates, kernel_size=3):
    """Rows (rate, fraction with all taps valid, fraction with only the centre tap, mean valid taps)."""
    rows = []
    for rate in rates:
        fractions = valid_tap_fractions(size, rate, kernel_size)
        mean = float(np.dot(np.arange(fractions.size), fractions))
        rows.append((rate, float(fractions[-1]), float(fractions[1]), mean))
    return rows


def cascade_rate_table(crop_size, output_stride, last_block=7, multi_grid=(1, 1, 1), kernel_size=3):
    """Rows (block, its output stride, feature size, unit rates, rate_table rows of those rates) of
    `DeepLabV3Cascade`'s block1..last_block for a crop (one rate for block1..3, one per unit from block4 on)."""
    from keras_deeplab.backbones.resnet import stage_rates

    stride, rows = 4, []
    plan = [(1, 1, 1)] + stage_rates(output_stride, stage_strides=(2,) * (last_block - 1))
    for block, (block_stride, _, rate) in enumerate(plan, start=1):
        stride *= block_stride
        size = feature_size(crop_size, stride)
        rates = [rate * m for m in multi_grid] if block >= 4 else [rate]
        rows.append((block, stride, size, rates, rate_table(size, rates, kernel_size)))
    return rows


def print_cascade_table(args):
    print(f"cascaded model to block{args.cascade_last_block}, MG {args.multi_grid}, crop {args.crop_size}, "
          f"output stride {args.output_stride}: {args.kernel_size}x{args.kernel_size} convs per block")
    print(f"{'block':>5}  {'stride':>6}  {'map':>7}  {'unit rates':>10}  {'all valid':>17}  {'centre only':>17}")
    for block, stride, size, rates, table in cascade_rate_table(args.crop_size, args.output_stride,
                                                                args.cascade_last_block, args.multi_grid,
                                                                args.kernel_size):
        full, centre = ("/".join(f"{row[k]:.2f}" for row in table) for k in (1, 2))
        print(f"{block:>5}  {stride:>6}  {f'{size}x{size}':>7}  {'/'.join(map(str, rates)):>10}  {full:>17}  "
              f"{centre:>17}")


def plot_fractions(size, rates, kernel_size, path):
    """Writes a PNG like the paper's Figure 4: the share of positions with n valid taps against the rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = np.array([valid_tap_fractions(size, rate, kernel_size) for rate in rates])
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for n in range(1, kernel_size ** 2 + 1):
        if table[:, n].any():
            ax.plot(rates, table[:, n], label=f"{n} valid weight{'s' if n > 1 else ''}",
                    linewidth=2.5 if n in (1, kernel_size ** 2) else 1.2)
    ax.set_xlabel("atrous rate")
    ax.set_ylabel("normalized count")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{kernel_size}x{kernel_size} filter on a {size}x{size} feature map")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv):
    parser = argparse.ArgumentParser(
        prog="deeplab analyze-rates",
        description="Share of a 'same'-padded atrous filter's taps that fall inside the feature map, per "
                    "rate (DeepLabv3 Figure 4), and the largest useful ASPP rate.")
    parser.add_argument("--crop-size", type=int, default=513, help="input crop size in pixels (default 513)")
    parser.add_argument("--output-stride", type=int, default=8, help="backbone output stride (default 8)")
    parser.add_argument("--rates", type=parse_rates, default=list(range(1, 65)),
                        help="rates as a range '1-64' (default) or a list '6,12,18'")
    parser.add_argument("--kernel-size", type=int, default=3, help="odd filter size (default 3)")
    parser.add_argument("--min-valid-fraction", type=float, default=DEFAULT_MIN_VALID_FRACTION,
                        help="share of positions that must see more than the centre tap, for the suggestion "
                             f"(default {DEFAULT_MIN_VALID_FRACTION})")
    parser.add_argument("--plot", metavar="PNG", help="write a plot like the paper's Figure 4 to this file")
    parser.add_argument("--cascade-last-block", type=int, choices=(4, 5, 6, 7),
                        help="instead, list the rates of the cascaded model's blocks up to this one (Sec. 3.2)")
    parser.add_argument("--multi-grid", type=parse_multi_grid,
                        default=(1, 1, 1), help="multi-grid of block4 on, for --cascade-last-block (default 1,1,1)")
    args = parser.parse_args(argv)
    if args.crop_size < 1 or args.output_stride < 1:
        parser.error("--crop-size and --output-stride must be positive")
    if args.kernel_size < 1 or args.kernel_size % 2 == 0:
        parser.error(f"--kernel-size must be a positive odd number, got {args.kernel_size}")
    if not 0 < args.min_valid_fraction <= 1:
        parser.error(f"--min-valid-fraction must be in (0, 1], got {args.min_valid_fraction}")

    if args.cascade_last_block:
        try:
            print_cascade_table(args)
        except ValueError as error:
            parser.error(str(error))
        return 0
    size = feature_size(args.crop_size, args.output_stride)
    taps = args.kernel_size ** 2
    print(f"{args.kernel_size}x{args.kernel_size} atrous filter, crop {args.crop_size}, output stride "
          f"{args.output_stride}: {size}x{size} feature map")
    print(f"{'rate':>5}  {f'all {taps} valid':>12}  {'centre only':>11}  {'mean valid':>10}")
    for rate, full, centre, mean in rate_table(size, args.rates, args.kernel_size):
        print(f"{rate:>5}  {full:>12.4f}  {centre:>11.4f}  {mean:>10.3f}")
    if args.plot:
        plot_fractions(size, args.rates, args.kernel_size, args.plot)
        print(f"plot written to {args.plot}")
    best = suggest_max_rate(args.crop_size, args.output_stride, args.kernel_size, args.min_valid_fraction)
    print(f"suggested largest rate: {best} (at least {args.min_valid_fraction:.1%} of positions see more "
          f"than the centre tap)")
    return 0
