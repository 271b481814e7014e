"""Reconstruction metrics against skimage / numpy / the lpips package; pairing; floors; correlation."""

from __future__ import annotations

import itertools
import json
import math
import socket

import numpy as np
import pytest
import torch
from dglbench.errors import ShapeError
from dglbench.metrics import LpipsScorer, correlation, pair_reconstructions, reconstruction_metrics
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

torch.set_num_threads(1)  # the test machines are small and shared: more threads only contend

MEAN = torch.tensor([0.5, 0.4, 0.3]).view(3, 1, 1)
STD = torch.tensor([0.2, 0.25, 0.3]).view(3, 1, 1)


def denormalize(x):
    return x * STD.to(x) + MEAN.to(x)


def normalize(x):
    return (x - MEAN.to(x)) / STD.to(x)


def private_batch(batch=3, size=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.rand(batch, 3, size, size, generator=gen, dtype=torch.float64)
    noisy = pixels + 0.15 * torch.randn(pixels.shape, generator=gen, dtype=torch.float64)  # leaves [0, 1] in places
    return normalize(pixels), normalize(noisy)


@pytest.fixture()
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_psnr_and_ssim_equal_skimage_on_denormalized_clamped_images():
    target, reconstruction = private_batch(size=12)
    m = reconstruction_metrics(reconstruction, target, denormalize=denormalize)
    assert m.assignment == (0, 1, 2)
    for i in range(3):
        a = denormalize(target[i]).clamp(0, 1).numpy()
        b = denormalize(reconstruction[i]).clamp(0, 1).numpy()
        assert m.per_image["psnr"][i] == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1.0), rel=1e-6)
        expected = structural_similarity(
            a, b, data_range=1.0, channel_axis=0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
        )
        assert m.per_image["ssim"][i] == pytest.approx(expected, abs=1e-7)
    assert m.psnr == pytest.approx(np.mean(m.per_image["psnr"]))


@pytest.mark.parametrize("size", [8, 5])
def test_ssim_on_images_smaller_than_the_window_matches_skimage_with_the_same_window(size):
    target, reconstruction = private_batch(batch=1, size=size)
    m = reconstruction_metrics(reconstruction, target, denormalize=denormalize)
    radius = (size - 1) // 2
    a, b = (denormalize(t[0]).clamp(0, 1).numpy() for t in (target, reconstruction))
    expected = structural_similarity(
        a, b, data_range=1.0, channel_axis=0, gaussian_weights=True, sigma=1.5 * (2 * radius + 1) / 11,
        use_sample_covariance=False,
    )  # fmt: skip
    assert m.ssim == pytest.approx(expected, abs=1e-7)


def test_normalized_space_errors():
    target, reconstruction = private_batch()
    m = reconstruction_metrics(reconstruction, target, denormalize=denormalize)
    d = target[0].numel()
    l2 = (reconstruction - target).flatten(1).norm(dim=1)
    assert m.per_image["l2_error"] == pytest.approx(l2.tolist())
    assert m.per_image["rmse"] == pytest.approx((l2 / math.sqrt(d)).tolist())
    assert m.per_image["mse"] == pytest.approx((l2**2 / d).tolist())
    assert m.l2_error == pytest.approx(float(l2.mean()))


def test_hungarian_pairing_recovers_a_shuffled_copy():
    target, _ = private_batch(batch=5)
    perm = torch.tensor([3, 0, 4, 1, 2])
    m = reconstruction_metrics(target[perm], target, denormalize=denormalize)
    assert torch.equal(target[perm][torch.tensor(m.assignment)], target)
    assert m.mse == 0 and m.psnr == math.inf and m.ssim == pytest.approx(1.0)
    assert json.loads(json.dumps(m.to_dict()))["assignment"] == list(m.assignment)


def test_pairing_is_one_to_one_not_best_match():
    # Both reconstructions are closest to target 0; best-match would use target 0 twice.
    target = torch.tensor([0.0, 10.0]).view(2, 1, 1, 1)
    reconstruction = torch.tensor([1.0, 2.0]).view(2, 1, 1, 1)
    distances = (reconstruction.view(2, 1) - target.view(1, 2)) ** 2  # [reconstruction, target]
    assert distances.argmin(1).tolist() == [0, 0]
    assignment = pair_reconstructions(reconstruction, target).tolist()
    assert sorted(assignment) == [0, 1]
    best = min(itertools.permutations(range(2)), key=lambda p: sum(distances[p[i], i] for i in range(2)))
    assert assignment == list(best) == [0, 1]


def test_pairing_minimizes_the_total_error_over_all_permutations():
    gen = torch.Generator().manual_seed(3)
    target, reconstruction = torch.randn(5, 1, 3, 3, generator=gen), torch.randn(5, 1, 3, 3, generator=gen)
    cost = ((target[:, None] - reconstruction[None]) ** 2).flatten(2).mean(2)
    best = min(itertools.permutations(range(5)), key=lambda p: float(sum(cost[i, p[i]] for i in range(5))))
    assert pair_reconstructions(reconstruction, target).tolist() == list(best)


def test_floors_mean_image_and_random_image():
    target, reconstruction = private_batch()
    mean_image = target.mean(0)
    m = reconstruction_metrics(
        reconstruction,
        target,
        denormalize=denormalize,
        mean_image=mean_image,
        generator=torch.Generator().manual_seed(1),
    )
    a = denormalize(mean_image).clamp(0, 1).numpy()
    psnrs = [10 * np.log10(1.0 / np.mean((a - denormalize(t).clamp(0, 1).numpy()) ** 2)) for t in target]
    assert m.floors["mean_image"]["psnr"] == pytest.approx(np.mean(psnrs), rel=1e-6)
    l2 = (mean_image - target).flatten(1).norm(dim=1)
    assert m.floors["mean_image"]["l2_error"] == pytest.approx(float(l2.mean()))
    # Random floor: uniform pixels; E[(u - p)^2] >= 1/12 per pixel, so PSNR stays near 10·log10(12) or below.
    random_psnr = m.floors["random_image"]["psnr"]
    assert 5.0 < random_psnr < 10 * math.log10(12) + 1.0
    again = reconstruction_metrics(
        reconstruction, target, denormalize=denormalize, generator=torch.Generator().manual_seed(1)
    )
    assert again.floors["random_image"] == m.floors["random_image"]
    assert again.floors["mean_image"] is None and "floors.mean_image" in again.unavailable


def test_random_floor_with_an_explicit_normalize_matches_the_inferred_one():
    target, reconstruction = private_batch()
    kwargs = {"denormalize": denormalize, "generator": None}
    inferred = reconstruction_metrics(reconstruction, target, **kwargs).floors["random_image"]
    explicit = reconstruction_metrics(reconstruction, target, normalize=normalize, **kwargs).floors["random_image"]
    assert inferred == pytest.approx(explicit)


def test_label_accuracy_as_multisets_and_after_pairing():
    target, _ = private_batch(batch=4)
    perm = torch.tensor([1, 0, 3, 2])  # reconstruction j shows private image perm[j]
    labels = torch.tensor([0, 1, 1, 2])
    labels_hat = labels[perm].clone()  # aligned with the reconstructions
    labels_hat[0] = 2  # one wrong label
    m = reconstruction_metrics(target[perm], target, denormalize=denormalize, labels_hat=labels_hat, labels=labels)
    assert m.assignment == (1, 0, 3, 2)
    assert m.label_accuracy == pytest.approx(3 / 4)  # multisets {0, 1, 2, 2} vs {0, 1, 1, 2}
    assert m.label_accuracy_paired == pytest.approx(3 / 4)
    # Right multiset, wrong images: multiset accuracy 1, paired accuracy 0.
    m = reconstruction_metrics(target[perm], target, denormalize=denormalize, labels_hat=labels, labels=labels)
    assert m.label_accuracy == 1.0 and m.label_accuracy_paired == 0.0
    m = reconstruction_metrics(target, target, denormalize=denormalize)
    assert m.label_accuracy is None and "label_accuracy" in m.unavailable


def test_lpips_without_weights_is_unavailable_and_touches_no_network(tmp_path, monkeypatch, no_network):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    scorers = [LpipsScorer("alex"), LpipsScorer("vgg")]
    assert not any(s.available for s in scorers)
    assert str(tmp_path / "checkpoints") in scorers[0].reason
    target, reconstruction = private_batch()
    m = reconstruction_metrics(
        reconstruction, target, denormalize=denormalize, mean_image=target.mean(0), lpips=scorers
    )
    assert m.lpips_alex is None and m.lpips_vgg is None and m.per_image["lpips_alex"] is None
    assert "not on disk" in m.unavailable["lpips_alex"] and "not on disk" in m.unavailable["lpips_vgg"]
    assert m.floors["mean_image"]["lpips_alex"] is None
    assert m.to_dict()["lpips_alex"] is None


def test_lpips_with_weights_on_disk_matches_the_lpips_package(tmp_path, monkeypatch, no_network):
    import lpips
    import torchvision

    torch.manual_seed(0)
    backbone = torchvision.models.squeezenet1_1(weights=None)
    (tmp_path / "checkpoints").mkdir()
    torch.save(backbone.state_dict(), tmp_path / "checkpoints" / "squeezenet1_1-b8a52dc0.pth")
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    scorer = LpipsScorer("squeeze")
    assert scorer.available and scorer.reason is None

    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 3, 64, 64, generator=gen), torch.rand(2, 3, 64, 64, generator=gen)
    reference = lpips.LPIPS(net="squeeze", pnet_rand=True, verbose=False).eval()
    features = dict(backbone.features.named_parameters())
    with torch.no_grad():
        for name, p in reference.net.named_parameters():  # slice<k>.<index>.<...> -> features.<index>.<...>
            p.copy_(features[name.split(".", 1)[1]])
        expected = reference(a, b, normalize=True).flatten()
    torch.testing.assert_close(scorer(a, b), expected, rtol=1e-4, atol=1e-6)
    assert float(scorer(a, a).abs().max()) < 1e-6

    grey = torch.rand(2, 1, 8, 8, generator=gen)  # grey and tiny: repeated to RGB and upsampled
    m = reconstruction_metrics(grey.flip(0), grey, denormalize=lambda t: t, lpips=scorer)
    assert m.lpips_squeeze == pytest.approx(0.0, abs=1e-6) and "lpips_squeeze" not in m.unavailable
    m = reconstruction_metrics(grey.flip(0) * 0.5, grey, denormalize=lambda t: t, lpips=scorer)
    assert m.lpips_squeeze > 0


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ShapeError):
        reconstruction_metrics(torch.zeros(2, 1, 4, 4), torch.zeros(3, 1, 4, 4), denormalize=lambda t: t)


# ------------------------------------------------------------------------------------------- correlation
def test_strictly_monotone_relation_has_rank_correlations_one():
    x = np.geomspace(1e-3, 1e3, 30)
    c = correlation(x, x**3 * 5, bootstrap=200)
    assert c["spearman"] == pytest.approx(1.0) and c["kendall"] == pytest.approx(1.0)
    assert c["pearson"] == pytest.approx(1.0)  # log-log linear
    assert c["n"] == 30 and c["n_dropped"] == 0 and c["reason"] is None


def test_independent_columns_have_small_correlations_and_cis_contain_estimates():
    rng = np.random.default_rng(0)
    x, y = rng.lognormal(size=500), rng.lognormal(size=500)
    c = correlation(x, y, bootstrap=300, seed=1)
    for key in ("spearman", "kendall", "pearson"):
        assert abs(c[key]) < 0.1
        lo, hi = c[f"{key}_ci"]
        assert lo <= c[key] <= hi and lo < 0 < hi


def test_correlated_columns_cis_contain_the_estimate():
    rng = np.random.default_rng(2)
    x = rng.lognormal(size=60)
    c = correlation(x, x * rng.lognormal(sigma=0.5, size=60), bootstrap=300)
    for key in ("spearman", "kendall", "pearson"):
        lo, hi = c[f"{key}_ci"]
        assert lo <= c[key] <= hi and c[key] > 0.3


def test_nonfinite_and_nonpositive_rows_are_dropped_and_counted():
    x = [1.0, 2.0, float("nan"), 4.0, 5.0, float("inf"), -1.0, 8.0]
    y = [1.0, 3.0, 2.0, 5.0, float("-inf"), 1.0, 2.0, 9.0]
    c = correlation(x, y, bootstrap=50)
    assert c["n"] == 4 and c["n_dropped"] == 4
    c = correlation(x, y, log=False, bootstrap=50)
    assert c["n"] == 5 and c["n_dropped"] == 3


def test_fewer_than_three_pairs_give_none_with_a_reason():
    c = correlation([1.0, 2.0, float("nan")], [1.0, 2.0, 3.0])
    assert c["n"] == 2 and c["spearman"] is None and c["kendall_ci"] is None and "at least 3" in c["reason"]
