"""S4 / S4D kernels and the S4 layer: kernel vs recurrence, causality, lengths, gradients."""

import pytest
import torch

from s4m.ssm import DiagKernel, DPLRKernel, S4Layer, fft_len, hippo_legs_dplr

KERNELS = {
    "s4": lambda ch: DPLRKernel(3, 8, channels=ch, dt_min=1e-2, dt_max=0.5),
    "s4d-lin": lambda ch: DiagKernel(3, 8, channels=ch, init="lin", dt_min=1e-2, dt_max=0.5),
    "s4d-inv": lambda ch: DiagKernel(3, 8, channels=ch, init="inv", dt_min=1e-2, dt_max=0.5),
}


def recurrence(kernel, u):
    """Unrolled x_k = dA x_{k-1} + dB u_k, y_k = Re(C^T x_k) on u (H, L) -> (channels, H, L)."""
    d_a, d_b, c = (t.to(torch.complex128) for t in kernel.discretize())
    x = torch.zeros_like(d_b)
    ys = []
    for k in range(u.shape[-1]):
        x = torch.einsum("hnm,hm->hn", d_a, x) + d_b * u[:, k, None]
        ys.append(torch.einsum("chn,hn->ch", c, x).real)
    return torch.stack(ys, -1)


@pytest.mark.parametrize("name", KERNELS)
def test_fft_kernel_matches_recurrence(name):
    kernel = KERNELS[name](2)
    length = 37
    impulse = torch.zeros(3, length, dtype=torch.float64)
    impulse[:, 0] = 1
    with torch.no_grad():
        k = kernel(length).double()
        expected = recurrence(kernel, impulse)
    assert k.shape == (2, 3, length)
    assert torch.allclose(k, expected, atol=1e-5, rtol=1e-4)
    assert expected.abs().max() > 1e-2  # a non-trivial kernel


@pytest.mark.parametrize("ssm", ["s4", "s4d"])
def test_layer_ssm_equals_recurrence_on_random_sequence(ssm):
    layer = S4Layer(3, 8, ssm=ssm, bidirectional=False, dt_min=1e-2, dt_max=0.5)
    u = torch.randn(2, 3, 29)
    with torch.no_grad():
        y = layer.ssm(u).double()
        expected = torch.stack([recurrence(layer.kernel, ub.double())[0] for ub in u])
    expected = expected + layer.D.detach().double()[:, None] * u.double()
    assert torch.allclose(y, expected, atol=1e-5, rtol=1e-4)


def test_bidirectional_layer_is_two_sided_convolution():
    layer = S4Layer(3, 8, bidirectional=True, dt_min=1e-2, dt_max=0.5)
    u = torch.randn(1, 3, 23, dtype=torch.float64)
    length = u.shape[-1]
    with torch.no_grad():
        y = layer.ssm(u.float()).double()
        k = layer.kernel(length).double()  # (2, H, L): causal and strictly-future kernels
    expected = layer.D.detach().double()[:, None] * u[0]
    for t in range(length):
        for s in range(length):
            tap = k[0, :, t - s] if s <= t else k[1, :, s - t - 1]
            expected[:, t] += tap * u[0, :, s]
    assert torch.allclose(y[0], expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("ssm", ["s4", "s4d"])
def test_unidirectional_layer_is_causal(ssm):
    layer = S4Layer(8, 8, ssm=ssm, bidirectional=False)
    u = torch.randn(1, 8, 50)
    v = u.clone()
    v[..., 30:] += torch.randn(1, 8, 20)
    with torch.no_grad():
        yu, yv = layer(u), layer(v)
    assert torch.allclose(yu[..., :30], yv[..., :30], atol=1e-6)
    assert not torch.allclose(yu[..., 30:], yv[..., 30:], atol=1e-3)
    bidir = S4Layer(8, 8, ssm=ssm, bidirectional=True)
    with torch.no_grad():
        assert not torch.allclose(bidir(u)[..., :30], bidir(v)[..., :30], atol=1e-4)


@pytest.mark.parametrize("ssm", ["s4", "s4d"])
@pytest.mark.parametrize("length", [1, 2, 7, 64, 101])
def test_any_length_and_finite_gradients(ssm, length):
    layer = S4Layer(6, 4, ssm=ssm)
    u = torch.randn(2, 6, length, requires_grad=True)
    y = layer(u)
    assert y.shape == u.shape and torch.isfinite(y).all()
    y.square().mean().backward()
    assert torch.isfinite(u.grad).all()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_forward_does_not_change_parameters():
    layer = S4Layer(4, 8)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    with torch.no_grad():
        layer(torch.randn(1, 4, 10))
        layer(torch.randn(1, 4, 300))  # a longer input must not rewrite C (released-code bug)
    after = layer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_hippo_legs_dplr_has_the_legs_spectrum():
    n = 8
    q = torch.arange(n, dtype=torch.float64)
    r = (2 * q + 1).sqrt()
    legs = -(torch.tril(torch.outer(r, r), -1) + torch.diag(q + 1))
    lam, p, _ = hippo_legs_dplr(n)
    lam_f, p_f = (torch.cat([x, x.conj()]).to(torch.complex128) for x in (lam, p))
    dplr = torch.diag(lam_f) - torch.outer(p_f, p_f.conj())
    got = torch.linalg.eigvals(dplr)
    want = torch.linalg.eigvals(legs.to(torch.complex128))
    key = lambda z: (round(z.real.item(), 3), round(z.imag.item(), 3))  # noqa: E731
    # LegS is far from normal: its eigenvalues move ~1e-3 under the complex64 rounding of p
    assert torch.allclose(torch.stack(sorted(got, key=key)), torch.stack(sorted(want, key=key)),
                          atol=2e-2)


def test_ssm_parameters_tagged_and_dt_range():
    layer = S4Layer(64, 8, lr=1e-3)
    for name, p in layer.kernel.named_parameters():
        assert p._optim == {"weight_decay": 0.0, "lr": 1e-3}, name
    dt = layer.kernel.log_dt.exp()
    assert dt.min() >= 1e-3 and dt.max() <= 1e-1


def test_fft_len():
    for length in [1, 3, 7, 500, 501, 1009]:
        n = fft_len(length)
        assert n >= 2 * length and n <= 2.5 * length + 2
        for f in (2, 3, 5):
            while n % f == 0:
                n //= f
        assert n == 1


@pytest.mark.parametrize("kwargs", [dict(d_state=7), dict(ssm="s5"), dict(ssm="s4", init="inv"),
                                    dict(dt_min=0.2, dt_max=0.1)])
def test_bad_layer_arguments(kwargs):
    with pytest.raises(ValueError):
        S4Layer(4, **{"d_state": 8, **kwargs})
