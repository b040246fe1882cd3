"""The paper's random-data check (He et al., CVPR-W 2019, Sec. 4.1: "single layer 9x acceleration
with random data"), run by ``tools/decompose_net.py --sanity-check``."""
import torch
from torch import nn

from .sampling import extract_patches, sample_positions
from .solvers import channel_decomposition, depthwise_decomposition, flat_responses, relative_error

__all__ = ["PAPER_RANDOM_DATA_ERRORS", "format_random_data_experiment", "random_data_experiment"]

PAPER_RANDOM_DATA_ERRORS = {
    "channel decomposition": 0.887,
    "depth-wise decomposition": 0.914,
    "depth-wise decomposition with compensation": 0.906,
}


def random_data_experiment(channels=256, kernel_size=3, num_images=300, patches_per_image=10, feature_size=14,
                           trials=3, seed=0):
    """Sec. 4.1's "single layer 9x acceleration with random data" experiment.

    A c -> c k x k conv with i.i.d. N(0, 1) weights reads i.i.d. N(0, 1) feature maps (``num_images``
    maps of ``feature_size`` squared, zero padding); ``patches_per_image`` positions per map are
    sampled exactly as for a real network (N = 3000 by default). It is replaced by (a) a depthwise
    separable conv with Algorithm 1, (b) the same with Algorithm 2, and (c) a channel decomposition
    whose width r is the largest with no more multiply-adds than (a) (c = 256, k = 3: a 8.7x, c r = 26,
    8.9x fewer). Reported: mean and std over ``trials`` draws of ||Y - Y_hat||_F / ||Y||_F on the N
    fitted samples (what the algorithms minimize, as in the paper) and on N fresh held-out samples.

    Interpretation: random responses have no redundancy to exploit. Y_i = X_i W_i has k^2 almost
    equally strong directions (a 9 x n Gaussian matrix), so any rank-1 D_i P_i^T keeps only the top
    singular value's share of the energy, ~16% for n = 256, and the error is ~sqrt(1 - 0.16) ~ 0.92;
    channel decomposition keeps r of n directions of an almost isotropic Y, with the same kind of
    result. All errors therefore sit near 0.9, as the paper's 0.887 / 0.914 / 0.906 do: the check is
    that the implementation reaches the level the dimensions allow, not a statement about real
    networks (whose responses are redundant; the paper's ImageNet results). The paper gives neither
    c, n nor N, and the figures depend on them.
    On the fitted samples compensation lowers the error (as the paper reports), but on held-out
    samples it raises it: with independent channels the residual of the other channels is
    uncorrelated with X_i, so what channel i fits of it is the sampling noise of a finite N (k^2
    regressors per channel, c of them); the same happens, less, to channel decomposition. On real
    networks, whose channels are correlated, compensation has real signal to fit; use enough
    samples (N >> c k^2 / n) and judge a decomposition on held-out data or by fine-tuned accuracy.

    Returns:
        dict method -> (mean, std) on the fitted samples, keys as :data:`PAPER_RANDOM_DATA_ERRORS`;
        ``"held_out"``: the same dict on held-out samples; ``"settings"``.
    """
    g = torch.Generator().manual_seed(seed)
    k2 = kernel_size * kernel_size
    dw_macs = channels * k2 + channels * channels
    rank = dw_macs // (channels * k2 + channels)
    errors = {key: [] for key in PAPER_RANDOM_DATA_ERRORS}
    held_out = {key: [] for key in PAPER_RANDOM_DATA_ERRORS}
    for _ in range(trials):
        conv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, bias=False)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
        fit_x, test_x = [], []
        for out in (fit_x, test_x):
            maps = torch.randn(num_images, channels, feature_size, feature_size, generator=g)
            positions = sample_positions((num_images, feature_size, feature_size), num_images, patches_per_image, g)
            out.append(extract_patches(maps, conv, *positions))
            del maps
        x, x_test = fit_x[0], test_x[0]
        w2 = conv.weight.detach().double().reshape(channels, -1)
        y_test = flat_responses(x_test, w2)
        fits = {
            "channel decomposition": channel_decomposition(conv.weight, x, rank),
            "depth-wise decomposition": depthwise_decomposition(conv.weight, x, compensate=False),
            "depth-wise decomposition with compensation": depthwise_decomposition(conv.weight, x, compensate=True),
        }
        for key, fit in fits.items():
            errors[key].append(fit["relative_error"])
            if "reduce" in fit:
                approx = flat_responses(x_test, fit["expand"].flatten(1) @ fit["reduce"].flatten(1))
            else:
                approx = flat_responses(x_test, (fit["pointwise"].flatten(1)[:, :, None]
                                                  * fit["depthwise"].flatten(1)[None]).flatten(1))
            held_out[key].append(relative_error(y_test, approx + fit["bias_delta"]))

    def mean_std(values):
        t = torch.tensor(values, dtype=torch.float64)
        return float(t.mean()), float(t.std()) if len(values) > 1 else 0.0

    result = {key: mean_std(values) for key, values in errors.items()}
    result["held_out"] = {key: mean_std(values) for key, values in held_out.items()}
    result["settings"] = {
        "channels": channels, "kernel_size": kernel_size, "num_samples": num_images * patches_per_image,
        "trials": trials, "channel_rank": rank,
        "depthwise_speedup": channels * channels * k2 / dw_macs,
        "channel_speedup": channels * channels * k2 / (rank * (channels * k2 + channels)),
    }
    return result


def format_random_data_experiment(result):
    """Our figures next to the paper's, one line per method."""
    s = result["settings"]
    lines = [
        f"Random data, one {s['channels']} -> {s['channels']} {s['kernel_size']}x{s['kernel_size']} conv, "
        f"N = {s['num_samples']} samples, {s['trials']} trials; depth-wise {s['depthwise_speedup']:.2f}x, "
        f"channel (r = {s['channel_rank']}) {s['channel_speedup']:.2f}x fewer multiply-adds",
        f"{'relative error':<46}{'ours, fitted':>20}{'ours, held-out':>20}{'paper':>8}",
    ]
    for key, paper in PAPER_RANDOM_DATA_ERRORS.items():
        (mean, std), (h_mean, h_std) = result[key], result["held_out"][key]
        lines.append(f"{key:<46}{mean:>11.4f} +- {std:.0e}{h_mean:>11.4f} +- {h_std:.0e}{paper:>8.3f}")
    return "\n".join(lines)
