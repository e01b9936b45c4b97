"""The pure metric functions in distcolor/evaluate/metrics.py."""

import math

import pytest
import torch
import torch.nn.functional as F

from distcolor.evaluate import metrics

# Sharma, Wu & Dalal 2005, "The CIEDE2000 color-difference formula: implementation notes,
# supplementary test data, and mathematical observations", Table 1, as shipped by
# scikit-image (skimage/color/tests/ciede2000_test_data.txt): L1 a1 b1 L2 a2 b2 dE00.
SHARMA_PAIRS = [
    (50.0000, 2.6772, -79.7751, 50.0000, 0.0000, -82.7485, 2.0425),
    (50.0000, 3.1571, -77.2803, 50.0000, 0.0000, -82.7485, 2.8615),
    (50.0000, 2.8361, -74.0200, 50.0000, 0.0000, -82.7485, 3.4412),
    (50.0000, -1.3802, -84.2814, 50.0000, 0.0000, -82.7485, 1.0000),
    (50.0000, -1.1848, -84.8006, 50.0000, 0.0000, -82.7485, 1.0000),
    (50.0000, -0.9009, -85.5211, 50.0000, 0.0000, -82.7485, 1.0000),
    (50.0000, 0.0000, 0.0000, 50.0000, -1.0000, 2.0000, 2.3669),
    (50.0000, -1.0000, 2.0000, 50.0000, 0.0000, 0.0000, 2.3669),
    (50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0009, 7.1792),
    (50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0010, 7.1792),
    (50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0011, 7.2195),
    (50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0012, 7.2195),
    (50.0000, -0.0010, 2.4900, 50.0000, 0.0009, -2.4900, 4.8045),
    (50.0000, -0.0010, 2.4900, 50.0000, 0.0010, -2.4900, 4.8045),
    (50.0000, -0.0010, 2.4900, 50.0000, 0.0011, -2.4900, 4.7461),
    (50.0000, 2.5000, 0.0000, 50.0000, 0.0000, -2.5000, 4.3065),
    (50.0000, 2.5000, 0.0000, 73.0000, 25.0000, -18.0000, 27.1492),
    (50.0000, 2.5000, 0.0000, 61.0000, -5.0000, 29.0000, 22.8977),
    (50.0000, 2.5000, 0.0000, 56.0000, -27.0000, -3.0000, 31.9030),
    (50.0000, 2.5000, 0.0000, 58.0000, 24.0000, 15.0000, 19.4535),
    (50.0000, 2.5000, 0.0000, 50.0000, 3.1736, 0.5854, 1.0000),
    (50.0000, 2.5000, 0.0000, 50.0000, 3.2972, 0.0000, 1.0000),
    (50.0000, 2.5000, 0.0000, 50.0000, 1.8634, 0.5757, 1.0000),
    (50.0000, 2.5000, 0.0000, 50.0000, 3.2592, 0.3350, 1.0000),
    (60.2574, -34.0099, 36.2677, 60.4626, -34.1751, 39.4387, 1.2644),
    (63.0109, -31.0961, -5.8663, 62.8187, -29.7946, -4.0864, 1.2630),
    (61.2901, 3.7196, -5.3901, 61.4292, 2.2480, -4.9620, 1.8731),
    (35.0831, -44.1164, 3.7933, 35.0232, -40.0716, 1.5901, 1.8645),
    (22.7233, 20.0904, -46.6940, 23.0331, 14.9730, -42.5619, 2.0373),
    (36.4612, 47.8580, 18.3852, 36.2715, 50.5065, 21.2231, 1.4146),
    (90.8027, -2.0831, 1.4410, 91.1528, -1.6435, 0.0447, 1.4441),
    (90.9257, -0.5406, -0.9208, 88.6381, -0.8985, -0.7239, 1.5381),
    (6.7747, -0.2908, -2.4247, 5.8714, -0.0985, -2.2286, 0.6377),
    (2.0776, 0.0795, -1.1350, 0.9033, -0.0636, -0.5514, 0.9082),
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: one thread is fastest, and keeps the module well under a second
    on a loaded machine (torch's intra-op threads spin when the cores are busy)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sharma() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The table as (34, 3) Lab, (34, 3) Lab, (34,) dE00, float64."""
    table = torch.tensor(SHARMA_PAIRS, dtype=torch.float64)
    return table[:, :3], table[:, 3:6], table[:, 6]


def random_rgb(count: int = 3, size: int = 24, seed: int = 0) -> torch.Tensor:
    """Random images (count, 3, size, size) in [0, 1], smooth enough to have structure."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 6, 6, generator=g)
    smooth = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    return (smooth + 0.1 * torch.rand(count, 3, size, size, generator=g)).clamp(0, 1)


# --- psnr ---


def test_psnr_of_a_constant_offset():
    target = torch.full((2, 3, 8, 8), 0.5, dtype=torch.float64)
    expected = torch.tensor([20.0, 20.0], dtype=torch.float64)
    assert torch.allclose(metrics.psnr(target + 0.1, target), expected, atol=1e-9)
    assert torch.allclose(metrics.psnr(target - 0.01, target), expected * 2, atol=1e-9)
    # float32 in: 0.6f - 0.5f is not 0.1 exactly, so a looser check
    assert torch.allclose(metrics.psnr(target.float() + 0.1, target.float()), expected, atol=1e-5)


def test_psnr_of_identical_images_is_the_cap():
    images = random_rgb()
    value = metrics.psnr(images, images.clone())
    assert value.dtype == torch.float64
    assert torch.equal(value, torch.full((3,), metrics.PSNR_CAP, dtype=torch.float64))


def test_psnr_is_per_image():
    target = torch.full((3, 3, 8, 8), 0.5, dtype=torch.float64)
    output = target.clone()
    output[0] += 0.1  # 20 dB
    output[1, :, :4] += 0.1  # half the pixels: MSE 0.005, 10 log10(200) dB
    values = metrics.psnr(output, target)
    expected = torch.tensor([20.0, 10 * math.log10(200.0), metrics.PSNR_CAP], dtype=torch.float64)
    assert torch.allclose(values, expected, atol=1e-9)
    # image 0 alone gives the same number as within the batch
    assert torch.allclose(metrics.psnr(output[:1], target[:1]), values[:1])


def test_psnr_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="one shape"):
        metrics.psnr(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9))


# --- ssim ---


def reference_ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Wang et al. 2004 transcribed: float64, Gaussian 11 / 1.5 window, valid convolution per
    channel, K1 0.01, K2 0.03, data range 1, mean over channels and positions -> (B,)."""
    x, y = x.double(), y.double()
    channels = x.shape[1]
    coords = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-(coords**2) / (2 * 1.5**2))
    g = g / g.sum()
    window = torch.outer(g, g).expand(channels, 1, 11, 11)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, groups=channels)

    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return index.flatten(1).mean(dim=1)


def test_ssim_of_identical_images_is_one():
    images = random_rgb()
    assert torch.allclose(metrics.ssim(images, images.clone()), torch.ones(3, dtype=torch.float64))


def test_ssim_matches_a_transcription_of_wang_et_al():
    x = random_rgb(count=3, size=29, seed=1)
    g = torch.Generator().manual_seed(2)
    y = (x + 0.15 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    z = random_rgb(count=3, size=29, seed=3)  # unrelated images
    for other in (y, z):
        ours = metrics.ssim(x, other)
        assert ours.shape == (3,) and ours.dtype == torch.float64
        assert torch.allclose(ours, reference_ssim(x, other), atol=1e-5, rtol=0)
    # not square either
    assert torch.allclose(
        metrics.ssim(x[..., :17], y[..., :17]), reference_ssim(x[..., :17], y[..., :17]), atol=1e-5
    )


def test_ssim_falls_as_noise_grows():
    x = random_rgb(count=2, size=32, seed=4)
    g = torch.Generator().manual_seed(5)
    noise = torch.randn(x.shape, generator=g)
    values = [metrics.ssim(x, (x + s * noise).clamp(0, 1)) for s in (0.0, 0.02, 0.1, 0.3)]
    for before, after in zip(values, values[1:], strict=False):
        assert (after < before).all()


def test_ssim_rejects_images_smaller_than_its_window():
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(torch.rand(1, 3, 10, 32), torch.rand(1, 3, 10, 32))
    assert metrics.ssim(torch.rand(1, 3, 11, 11), torch.rand(1, 3, 11, 11)).shape == (1,)


# --- ciede2000 ---


def test_ciede2000_matches_sharmas_table_both_ways():
    lab1, lab2, expected = sharma()
    forward = metrics.ciede2000(lab1, lab2)
    backward = metrics.ciede2000(lab2, lab1)
    assert forward.shape == (34,) and forward.dtype == torch.float64
    assert (forward - expected).abs().max() < 1e-4, (forward - expected).abs().argmax()
    assert (backward - expected).abs().max() < 1e-4, (backward - expected).abs().argmax()


def test_ciede2000_of_grays_is_the_weighted_lightness_difference():
    # Between grays (C' = 0, hue 0 by Sharma's rule, also for -0.0 where atan2 gives 180)
    # dE00 = |dL| / S_L; here L-bar = 55, S_L = 1 + 0.015 * 25 / sqrt(20 + 25).
    expected = 10.0 / (1.0 + 0.015 * 25.0 / math.sqrt(45.0))
    dark = torch.tensor([[50.0, 0.0, 0.0], [50.0, -0.0, -0.0]], dtype=torch.float64)
    light = torch.tensor([[60.0, -0.0, 0.0], [60.0, 0.0, -0.0]], dtype=torch.float64)
    values = metrics.ciede2000(dark, light)
    assert torch.allclose(values, torch.full((2,), expected, dtype=torch.float64), atol=1e-12)
    # and a gray's hue never enters dE: pair 7 with signed zeros
    gray = torch.tensor([[50.0, -0.0, -0.0]], dtype=torch.float64)
    colour = torch.tensor([[50.0, -1.0, 2.0]], dtype=torch.float64)
    assert abs(metrics.ciede2000(gray, colour).item() - 2.3669) < 1e-4


def test_ciede2000_of_identical_colours_is_zero():
    lab1, lab2, _ = sharma()
    both = torch.cat([lab1, lab2, torch.zeros(1, 3, dtype=torch.float64)])
    assert torch.equal(metrics.ciede2000(both, both.clone()), torch.zeros(69, dtype=torch.float64))


def test_ciede2000_works_per_pixel_on_images():
    lab1, lab2, expected = sharma()
    # 34 pairs as 2 images of 17 x 1 pixels, (B, 3, H, W), float32 in
    as_images = [t.view(2, 17, 1, 3).permute(0, 3, 1, 2).float() for t in (lab1, lab2)]
    values = metrics.ciede2000(*as_images)
    assert values.shape == (2, 17, 1) and values.dtype == torch.float64
    assert (values.flatten() - expected).abs().max() < 1e-3  # float32 inputs


def test_ciede2000_rejects_non_lab_shapes():
    with pytest.raises(ValueError, match=r"\(B, 3, \.\.\.\)"):
        metrics.ciede2000(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4))


# --- ab_histogram ---


def test_ab_histogram_counts_every_pixel_once():
    g = torch.Generator().manual_seed(6)
    ab = (torch.rand(3, 2, 7, 5, generator=g) * 2 - 1) * 100
    histogram = metrics.ab_histogram(ab)
    assert histogram.shape == (metrics.AB_BINS, metrics.AB_BINS)
    assert histogram.dtype == torch.float64
    assert histogram.sum().item() == 3 * 7 * 5


def test_ab_histogram_puts_values_in_their_cell():
    ab = torch.zeros(1, 2, 1, 4)
    ab[0, :, 0, 0] = torch.tensor([5.0, -15.0])  # a in [0, 10): cell 11; b in [-20, -10): 9
    ab[0, :, 0, 1] = torch.tensor([-110.0, 109.9])  # lowest a cell, highest b cell
    ab[0, :, 0, 2] = torch.tensor([0.0, -0.01])  # 0 opens cell 11; just below it is cell 10
    ab[0, :, 0, 3] = torch.tensor([5.0, -15.0])
    histogram = metrics.ab_histogram(ab)
    assert histogram[11, 9] == 2
    assert histogram[0, 21] == 1
    assert histogram[11, 10] == 1
    assert histogram.sum() == 4


def test_ab_histogram_clamps_outliers_into_edge_cells():
    ab = torch.tensor([[500.0, -500.0], [110.0, -110.01], [-1e9, 1e9]]).T.reshape(1, 2, 1, 3)
    histogram = metrics.ab_histogram(ab)
    assert histogram[21, 0] == 2
    assert histogram[0, 21] == 1
    assert histogram.sum() == 3


def test_ab_histogram_rejects_nan():
    ab = torch.zeros(1, 2, 2, 2)
    ab[0, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        metrics.ab_histogram(ab)


# --- js_divergence ---


def test_js_divergence_of_identical_distributions_is_zero():
    g = torch.Generator().manual_seed(7)
    counts = torch.randint(0, 50, (22, 22), generator=g).double()
    assert metrics.js_divergence(counts, counts.clone()) == 0.0
    assert metrics.js_divergence(counts, 3 * counts) == pytest.approx(0.0, abs=1e-12)


def test_js_divergence_of_disjoint_histograms_is_one_bit():
    assert metrics.js_divergence(torch.tensor([5.0, 0.0]), torch.tensor([0.0, 2.0])) == 1.0


def test_js_divergence_by_hand_and_symmetric():
    p, q = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])
    # M = (3/4, 1/4): KL(P||M) = log2(4/3), KL(Q||M) = log2(2/3)/2 + log2(2)/2
    expected = 0.5 * math.log2(4 / 3) + 0.25 * math.log2(2 / 3) + 0.25
    assert metrics.js_divergence(p, q) == pytest.approx(expected, abs=1e-12)
    g = torch.Generator().manual_seed(8)
    a, b = torch.rand(30, generator=g), torch.rand(30, generator=g)
    a[:5] = 0  # empty cells in one only
    value = metrics.js_divergence(a, b)
    assert 0 < value < 1
    assert value == pytest.approx(metrics.js_divergence(b, a), abs=1e-15)


def test_js_divergence_rejects_empty_histograms():
    with pytest.raises(ValueError, match="no counts"):
        metrics.js_divergence(torch.zeros(4), torch.ones(4))
    with pytest.raises(ValueError, match="one shape"):
        metrics.js_divergence(torch.ones(4), torch.ones(5))


def test_js_divergence_of_ab_histograms():
    g = torch.Generator().manual_seed(9)
    real = torch.randn(2, 2, 16, 16, generator=g) * 30
    grayish = real * 0.1  # drift to grey: everything in the middle cells
    same = metrics.js_divergence(metrics.ab_histogram(real), metrics.ab_histogram(real))
    drift = metrics.js_divergence(metrics.ab_histogram(real), metrics.ab_histogram(grayish))
    assert same == 0.0 and drift > 0.3


# --- ab_error_histogram, auc ---


def test_auc_of_a_perfect_prediction_is_one():
    ab = torch.randn(2, 2, 8, 8) * 40
    counts = metrics.ab_error_histogram(ab, ab.clone())
    assert counts.shape == (metrics.AUC_MAX + 2,) and counts.dtype == torch.float64
    assert counts[0] == 2 * 8 * 8 and counts.sum() == counts[0]
    assert metrics.auc(counts) == 1.0


def test_auc_of_a_constant_error_by_hand():
    true = torch.randn(2, 2, 4, 4) * 30
    for error in (75.0, 74.5, 1.0):
        pred = true.double().clone()
        pred[:, 0] += error  # the error vector is (error, 0): its length is exactly `error`
        counts = metrics.ab_error_histogram(pred, true.double())
        assert counts[math.ceil(error)] == counts.sum() == 32
        # acc(t) = 0 below ceil(error), 1 from there: trapezoids leave half a step
        expected = (metrics.AUC_MAX - math.ceil(error) + 0.5) / metrics.AUC_MAX
        assert metrics.auc(counts) == pytest.approx(expected, abs=1e-12)


def test_auc_of_errors_beyond_the_range_is_zero():
    true = torch.zeros(1, 2, 3, 3)
    pred = torch.full((1, 2, 3, 3), 120.0)  # error 120 * sqrt(2) > 150
    pred[0, 0, 0, 0] = float("nan")  # a NaN prediction counts as wrong
    counts = metrics.ab_error_histogram(pred, true)
    assert counts[-1] == 9 and counts.sum() == 9
    assert metrics.auc(counts) == 0.0


def test_auc_counts_sum_across_shards():
    g = torch.Generator().manual_seed(10)
    true = torch.randn(6, 2, 10, 10, generator=g) * 40
    pred = true + torch.randn(6, 2, 10, 10, generator=g) * 30
    whole = metrics.ab_error_histogram(pred, true)
    halves = metrics.ab_error_histogram(pred[:2], true[:2]) + metrics.ab_error_histogram(
        pred[2:], true[2:]
    )
    assert torch.equal(whole, halves)
    value = metrics.auc(whole)
    assert value == metrics.auc(halves)
    assert 0.5 < value < 1.0


def test_auc_matches_a_direct_threshold_sweep():
    g = torch.Generator().manual_seed(11)
    true = torch.randn(2, 2, 12, 12, generator=g) * 40
    pred = true + torch.randn(2, 2, 12, 12, generator=g) * 50
    error = (pred.double() - true.double()).norm(dim=1).flatten()
    acc = torch.stack([(error <= t).double().mean() for t in range(metrics.AUC_MAX + 1)])
    expected = torch.trapezoid(acc).item() / metrics.AUC_MAX
    assert metrics.auc(metrics.ab_error_histogram(pred, true)) == pytest.approx(expected, abs=1e-12)


def test_auc_rejects_empty_or_misshapen_counts():
    with pytest.raises(ValueError, match="empty"):
        metrics.auc(torch.zeros(metrics.AUC_MAX + 2))
    with pytest.raises(ValueError, match="error counts"):
        metrics.auc(torch.ones(10))
