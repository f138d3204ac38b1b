"""Amplitude-phase recombination: the phase of each image, the Fourier amplitude of another, the phase's label."""

import autonorm_plugins.amplitude_phase as ap
import pytest
import torch
from autonorm_plugins.amplitude_phase import AmplitudePhaseRecombination, recombine

import autonorm
from autonorm import load_spec
from tests.helpers import registry_with_test_components

DIMS = {"all": (1, 2, 3), "spatial": (2, 3)}


def assert_phase_and_amplitude(mixed, phase, amplitude, dims):
    f, fp, fa = (torch.fft.fftn(t.double(), dim=dims) for t in (mixed, phase, amplitude))
    torch.testing.assert_close(f.abs(), fa.abs(), rtol=0, atol=1e-4)
    keep = (fp.abs() > 1e-3) & (fa.abs() > 1e-3)
    unit, unit_p = f / f.abs(), fp / fp.abs()  # angles as unit complex numbers: no 2 pi wrap-around
    torch.testing.assert_close(unit[keep], unit_p[keep], rtol=0, atol=1e-3)


@pytest.mark.parametrize("fft", ["all", "spatial"])
def test_recombined_image_has_the_phase_of_x_and_the_amplitude_of_the_partner(fft):
    torch.manual_seed(0)
    x, other = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8) * 3 + 1
    mixed = recombine(x, other, fft)
    assert mixed.dtype == x.dtype and mixed.shape == x.shape
    assert_phase_and_amplitude(mixed, x, other, DIMS[fft])
    assert not torch.allclose(mixed, x, atol=1e-2) and not torch.allclose(mixed, other, atol=1e-2)


def test_the_all_axes_transform_mixes_channels_and_the_spatial_one_does_not():
    torch.manual_seed(0)
    x, other = torch.randn(2, 3, 6, 6), torch.randn(2, 3, 6, 6)
    changed = other.clone()
    changed[:, 1:] = torch.randn(2, 2, 6, 6)  # only channels 1 and 2 of the amplitude source change
    assert torch.equal(recombine(x, other, "spatial")[:, 0], recombine(x, changed, "spatial")[:, 0])
    assert not torch.allclose(recombine(x, other, "all")[:, 0], recombine(x, changed, "all")[:, 0], atol=1e-3)


@pytest.mark.parametrize("fft", ["all", "spatial"])
@pytest.mark.parametrize("shape", [(5, 3, 8, 8), (5, 2, 16)])
def test_recombining_an_image_with_itself_is_the_identity(fft, shape):
    torch.manual_seed(0)
    x = torch.randn(shape)
    torch.testing.assert_close(recombine(x, x, fft), x, rtol=0, atol=1e-5)


def test_mean_comes_from_the_amplitude_source_for_non_negative_images():
    torch.manual_seed(0)
    x, other = torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8) * 2
    torch.testing.assert_close(recombine(x, other).mean((1, 2, 3)), other.mean((1, 2, 3)), rtol=0, atol=1e-5)


def test_batch_is_doubled_with_a_permuted_partner_and_the_phase_sources_labels():
    torch.manual_seed(0)
    x, y = torch.randn(6, 3, 8, 8), torch.arange(6) % 3
    xb, yb = AmplitudePhaseRecombination(prob=1.0).transform_batch(x, y)
    assert xb.shape == (12, 3, 8, 8) and torch.equal(xb[:6], x)
    assert torch.equal(yb, torch.cat([y, y]))  # label of the phase source, no mixing
    amp = torch.fft.fftn(x, dim=(1, 2, 3)).abs().flatten(1)
    mixed_amp = torch.fft.fftn(xb[6:], dim=(1, 2, 3)).abs().flatten(1)
    partner = torch.cdist(mixed_amp, amp).argmin(1)
    assert sorted(partner.tolist()) == list(range(6))  # a permutation of the batch
    assert_phase_and_amplitude(xb[6:], x, x[partner], (1, 2, 3))


def test_probability_zero_is_a_no_op_and_the_mixed_fraction_is_the_probability():
    x, y = torch.randn(4, 1, 2, 2), torch.arange(4)
    plain = AmplitudePhaseRecombination(prob=0.0)
    assert all(plain.transform_batch(x, y)[0] is x for _ in range(50))
    torch.manual_seed(0)
    apr = AmplitudePhaseRecombination(prob=0.6)
    mixed = sum(len(apr.transform_batch(x, y)[0]) == 8 for _ in range(2000))
    assert abs(mixed / 2000 - 0.6) < 0.04


def test_search_with_apr():
    registry = registry_with_test_components()
    spec = load_spec(
        {
            "name": "apr",
            "model": {"backbone": "small_cnn", "depth": 1, "width": 4},
            "space": {"augmentation": {"apr": {"prob": 0.5, "fft": "spatial", "variant": "sp"}}},
            "train": {"epochs": 1},
            "search": {"trials": 1, "pruner": "none"},
        },
        registry,
    )
    (trial,) = autonorm.search(spec, registry=registry).trials
    assert trial.state == "complete" and trial.config.components["augmentation"].name == "apr"
    assert trial.config.components["augmentation"].params == {"prob": 0.5, "fft": "spatial", "variant": "sp"}


# ---------------------------------------------------------------- APR-S


def test_geometric_ops_follow_pils_pixel_convention(monkeypatch):
    torch.manual_seed(0)
    u = torch.rand(2, 3, 6, 8)
    moved = ap.affine(u, ap._matrix(u, c=2.0))  # output (x, y) samples the input at (x + 2, y)
    torch.testing.assert_close(moved[..., :6], u[..., 2:], rtol=0, atol=1e-6)
    assert torch.equal(moved[..., 6:], torch.zeros(2, 3, 6, 2))
    monkeypatch.setattr(ap, "_signed", lambda level: -level)
    monkeypatch.setattr(ap, "_level", lambda u, maxval, integer: torch.ones(len(u)))
    torch.testing.assert_close(ap.translate_y(u)[:, :, 1:], u[:, :, :5], rtol=0, atol=1e-6)
    monkeypatch.setattr(ap, "_level", lambda u, maxval, integer: torch.full((len(u),), 90.0))
    square = torch.rand(2, 3, 5, 5)
    torch.testing.assert_close(ap.rotate(square), torch.rot90(square, 1, (2, 3)), rtol=0, atol=1e-6)


def test_op_strengths_are_augmix_levels_at_severity_3():
    torch.manual_seed(0)
    u = torch.zeros(4000, 1, 1, 1)
    degrees = ap._level(u, 30, integer=True)
    assert set(degrees.tolist()) == set(range(9))  # int(U(0.1, 3) * 30 / 10)
    shear = ap._level(u, 0.3, integer=False)
    assert 0.003 <= shear.min() and shear.max() < 0.09
    assert 0.4 < (ap._signed(shear) < 0).float().mean() < 0.6


def test_equalize_is_pils_lookup_table():
    levels = torch.tensor([10, 40, 41, 200]).repeat_interleave(256)[torch.randperm(1024)]
    u = (levels.float() / 255).view(1, 1, 32, 32)
    out = (ap.equalize(u) * 255).round().long().view(-1)
    expected = {10: 0, 40: 85, 41: 171, 200: 255}  # step = (1024 - 256) // 255 = 3, lut = (cdf_below + 1) // 3
    assert all(int(o) == expected[int(v)] for o, v in zip(out, levels, strict=True))
    flat = torch.full((1, 2, 4, 4), 0.3)
    assert torch.equal(ap.equalize(flat), flat)  # one level: unchanged


def test_pixel_ops_keep_the_unit_range_and_follow_their_definitions():
    torch.manual_seed(0)
    u = torch.rand(16, 3, 8, 8)
    for op in ap.OPS:
        out = op(u)
        assert out.shape == u.shape and out.min() >= 0 and out.max() <= 1, op.__name__
    stretched = ap.autocontrast(u * 0.5 + 0.2)
    assert torch.allclose(stretched.amin((2, 3)), torch.zeros(16, 3)) and torch.allclose(
        stretched.amax((2, 3)), torch.ones(16, 3)
    )
    poster = ap.posterize(u) * 255
    assert torch.allclose(poster, (poster / 16).round() * 16, atol=1e-3) and (poster <= u * 255 + 1e-3).all()
    solar = ap.solarize(u)
    low, high = u * 255 < 180, u * 255 >= 254  # thresholds lie in [180, 254] at severity 3
    assert torch.equal(solar[low], u[low]) and torch.equal(solar[high], 1 - u[high])


def test_apr_s_with_an_identity_op_is_the_identity(monkeypatch):
    monkeypatch.setattr(ap, "OPS", (lambda u: u,))
    torch.manual_seed(0)
    x = torch.randn(8, 3, 6, 6)
    torch.testing.assert_close(AmplitudePhaseRecombination(variant="s").single(x), x, rtol=0, atol=1e-5)


def test_apr_s_keeps_the_op_result_or_recombines_it_with_a_second_op(monkeypatch):
    monkeypatch.setattr(ap, "OPS", (lambda u: u.flip(-1),))
    torch.manual_seed(0)
    x = torch.randn(64, 3, 6, 6) * 2 + 1
    lo, hi = x.amin((1, 2, 3), keepdim=True), x.amax((1, 2, 3), keepdim=True)
    xn = (x - lo) / (hi - lo)
    once = xn.flip(-1)  # the first op; the second one brings back xn
    candidates = [once, recombine(once, xn).clamp(0, 1), recombine(xn, once).clamp(0, 1)]
    candidates = torch.stack([c * (hi - lo) + lo for c in candidates])
    out = AmplitudePhaseRecombination(variant="s").single(x)
    distance = (out - candidates).abs().flatten(2).amax(2)  # (3, 64)
    assert (distance.amin(0) < 1e-5).all()
    kind = distance.argmin(0)
    assert 16 < (kind == 0).sum() < 48 and (kind == 1).any() and (kind == 2).any()


def test_variants_s_and_sp():
    torch.manual_seed(0)
    x, y = torch.randn(6, 3, 8, 8), torch.arange(6)
    xs, ys = AmplitudePhaseRecombination(variant="s").transform_batch(x, y)
    assert xs.shape == x.shape and ys is y and not torch.allclose(xs, x)
    xsp, ysp = AmplitudePhaseRecombination(prob=1.0, variant="sp").transform_batch(x, y)
    assert xsp.shape == (12, 3, 8, 8) and torch.equal(ysp, torch.cat([y, y])) and not torch.allclose(xsp[:6], x)
    with pytest.raises(ValueError, match="needs images"):
        AmplitudePhaseRecombination(variant="sp").setup_data(torch.randn(4, 2, 16), y[:4], 1)
