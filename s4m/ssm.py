"""State-space kernels and the S4 layer.

Two kernel generators, both producing the real convolution kernel K_k = C^T Abar^k Bbar
(k < L) of a discretised SSM whose complex state comes in conjugate pairs (only one half of
each pair is stored):

* `DPLRKernel` (S4): A = Lambda - p p^H initialised from HiPPO-LegS, bilinear discretisation,
  kernel from its truncated generating function at the L-th roots of unity via a Cauchy
  product and a rank-1 Woodbury correction, then an inverse FFT.
* `DiagKernel` (S4D): diagonal A (S4D-Lin or S4D-Inv init), zero-order hold, Vandermonde product.

Both are pure functions of their parameters: nothing is cached or rewritten in a forward, so a
forward never changes the module. SSM parameters carry `_optim = {"weight_decay": 0.0, ...}`
(the state-spaces convention) and are collected by `s4m.optim.ssm_param_groups`.

Devices and precision. Every tensor a kernel or layer makes takes the device (and dtype) of its
parameters or inputs, so a layer runs wherever `.to(device)` put it. Under autocast (mixed
precision, e.g. Lightning's `bf16-mixed` / `16-mixed`) the SSM kernel generation and the FFT
convolution run in float32, as in the state-spaces code: autocast is switched off there
(`float32_region`), the input is cast with `.float()`, and the result is cast back to the
input's dtype. Half-precision FFTs would lose the kernel's long, slowly decaying tails (bf16
keeps 8 significant bits), and cuFFT does half precision only for power-of-two sizes, while
`fft_len` picks 5-smooth ones. Everything around the SSM convolution follows autocast.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SSM_KINDS = ("s4", "s4d")
INITS = {"s4": ("legs",), "s4d": ("lin", "inv")}


def hippo_legs_dplr(d_state: int) -> tuple[Tensor, Tensor, Tensor]:
    """HiPPO-LegS in diagonal-plus-low-rank form, one half of each conjugate pair.

    Returns (Lambda, p, B), each (d_state // 2,) complex64, with A = V (Lambda - p p^H) V^H and
    B = V B_half over the full conjugate-symmetric basis V.
    """
    n = torch.arange(d_state, dtype=torch.float64)
    r = (2 * n + 1).sqrt()
    a = -(torch.tril(torch.outer(r, r), -1) + torch.diag(n + 1))  # LegS transition
    p = (n + 0.5).sqrt()
    skew = a + torch.outer(p, p) + 0.5 * torch.eye(d_state, dtype=torch.float64)
    freq, vecs = torch.linalg.eigh(-1j * skew.to(torch.complex128))  # skew = V diag(i freq) V^H
    keep = freq > 0
    vecs_h = vecs[:, keep].conj().T  # (N/2, N)
    lam = -0.5 + 1j * freq[keep]
    return (
        lam.to(torch.complex64),
        (vecs_h @ p.to(vecs_h)).to(torch.complex64),
        (vecs_h @ r.to(vecs_h)).to(torch.complex64),
    )


def s4d_init(d_state: int, init: str) -> Tensor:
    """Diagonal A, (d_state // 2,) complex64: S4D-Lin (-1/2 + i pi n) or S4D-Inv."""
    n = torch.arange(d_state // 2, dtype=torch.float64)
    if init == "lin":
        imag = math.pi * n
    elif init == "inv":
        imag = d_state / math.pi * (d_state / (2 * n + 1) - 1)
    else:
        raise ValueError(f"S4D init must be one of {INITS['s4d']}, got {init!r}")
    return torch.complex(torch.full_like(n, -0.5), imag).to(torch.complex64)


def float32_region(device: torch.device) -> AbstractContextManager:
    """Autocast switched off on `device` (a no-op where autocast does not exist, e.g. meta)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return nullcontext()


def _conj_full(x: Tensor) -> Tensor:
    return torch.cat([x, x.conj()], dim=-1)


class SSMKernel(nn.Module):
    """Base: dt, complex-as-real parameter storage and optimizer tags."""

    def __init__(self, d_model: int, channels: int, dt_min: float, dt_max: float, lr: float | None):
        super().__init__()
        self.d_model, self.channels, self._lr = d_model, channels, lr
        log_dt = torch.rand(d_model) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self._register("log_dt", log_dt)

    def _register(self, name: str, value: Tensor) -> None:
        if value.is_complex():
            value = torch.view_as_real(value.resolve_conj()).contiguous()
        param = nn.Parameter(value)
        param._optim = {"weight_decay": 0.0} | ({} if self._lr is None else {"lr": self._lr})
        self.register_parameter(name, param)

    def _complex(self, name: str) -> Tensor:
        return torch.view_as_complex(getattr(self, name))

    def discretize(self) -> tuple[Tensor, Tensor, Tensor]:
        """Dense full-state (dA (H, N, N), dB (H, N), C (channels, H, N)); y_k = Re(C^T x_k)."""
        raise NotImplementedError

    def forward(self, length: int) -> Tensor:
        """Real kernel (channels, H, length)."""
        raise NotImplementedError


class DPLRKernel(SSMKernel):
    """S4 kernel: A = Lambda - p p^H (HiPPO-LegS init), bilinear discretisation."""

    def __init__(self, d_model: int, d_state: int = 16, channels: int = 1, dt_min: float = 1e-3,
                 dt_max: float = 1e-1, lr: float | None = None):
        super().__init__(d_model, channels, dt_min, dt_max, lr)
        lam, p, b = (t.expand(d_model, -1) for t in hippo_legs_dplr(d_state))
        self._register("log_neg_re", (-lam.real).log())  # keeps Re(Lambda) < 0: stable
        self._register("im", lam.imag.clone())
        self._register("P", p.clone())
        self._register("B", b.clone())
        self._register("C", torch.randn(channels, d_model, d_state // 2, dtype=torch.complex64))

    def _full(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        lam = torch.complex(-self.log_neg_re.exp(), self.im)
        full = [_conj_full(x) for x in (lam, self._complex("P"), self._complex("B"),
                                         self._complex("C"))]
        return self.log_dt.exp(), *full

    def _bilinear(self, dt: Tensor, lam: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        a = torch.diag_embed(lam) - p.unsqueeze(-1) * p.conj().unsqueeze(-2)  # (H, N, N)
        eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        half = (dt / 2)[:, None, None].to(a.dtype) * a
        return eye - half, eye + half

    def discretize(self) -> tuple[Tensor, Tensor, Tensor]:
        dt, lam, p, b, c = self._full()
        minus, plus = self._bilinear(dt, lam, p)
        d_a = torch.linalg.solve(minus, plus)
        d_b = torch.linalg.solve(minus, (dt[:, None] * b).unsqueeze(-1)).squeeze(-1)
        return d_a, d_b, c

    def forward(self, length: int) -> Tensor:
        dt, lam, p, b, c = self._full()
        minus, plus = self._bilinear(dt, lam, p)
        d_a_pow = torch.linalg.matrix_power(torch.linalg.solve(minus, plus), length)
        # The generating function at the roots of unity sums the infinite response; folding
        # (I - dA^L) into C truncates it to exactly L taps.
        c = c - torch.einsum("chn,hnm->chm", c, d_a_pow)
        j = torch.arange(length // 2 + 1, dtype=torch.float64, device=lam.device)
        z = torch.polar(torch.ones_like(j), -2 * math.pi * j / length).to(lam.dtype)  # (F,)
        # 2 / ((1+z)(g - lam)) with g = 2/dt (1-z)/(1+z): the bilinear map, finite at z = -1
        cauchy = 2 / ((2 / dt)[:, None, None] * (1 - z) - (1 + z) * lam.unsqueeze(-1))  # (H,N,F)
        left = torch.cat([c, p.conj().unsqueeze(0)], 0)  # (channels+1, H, N)
        right = torch.stack([b, p], 0)  # (2, H, N)
        num = (left.unsqueeze(1) * right.unsqueeze(0)).flatten(0, 1).transpose(0, 1)  # (H,2c+2,N)
        k = torch.bmm(num, cauchy).unflatten(1, (-1, 2))  # (H, channels+1, 2, F)
        k00, k01 = k[:, :-1, 0], k[:, :-1, 1]
        k10, k11 = k[:, -1:, 0], k[:, -1:, 1]
        zp = 1 + z
        k_hat = k00 - zp * k01 * k10 / (2 + zp * k11)  # Woodbury, rank 1
        return torch.fft.irfft(k_hat, n=length).transpose(0, 1)  # (channels, H, L)


class DiagKernel(SSMKernel):
    """S4D kernel: diagonal A (S4D-Lin / S4D-Inv init), zero-order hold."""

    def __init__(self, d_model: int, d_state: int = 16, channels: int = 1, init: str = "lin",
                 dt_min: float = 1e-3, dt_max: float = 1e-1, lr: float | None = None):
        super().__init__(d_model, channels, dt_min, dt_max, lr)
        lam = s4d_init(d_state, init).expand(d_model, -1)
        self._register("log_neg_re", (-lam.real).log())
        self._register("im", lam.imag.clone())
        self._register("B", torch.ones(d_model, d_state // 2, dtype=torch.complex64))
        self._register("C", torch.randn(channels, d_model, d_state // 2, dtype=torch.complex64))

    def _zoh(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        lam = torch.complex(-self.log_neg_re.exp(), self.im)
        dt_lam = self.log_dt.exp()[:, None] * lam
        d_b = (dt_lam.exp() - 1) / lam * self._complex("B")
        return dt_lam, dt_lam.exp(), d_b, self._complex("C")

    def discretize(self) -> tuple[Tensor, Tensor, Tensor]:
        _, d_a, d_b, c = self._zoh()
        return torch.diag_embed(_conj_full(d_a)), _conj_full(d_b), _conj_full(c)

    def forward(self, length: int) -> Tensor:
        dt_lam, _, d_b, c = self._zoh()
        steps = torch.arange(length, dtype=dt_lam.real.dtype, device=dt_lam.device)
        vander = (dt_lam.unsqueeze(-1) * steps).exp()  # (H, N/2, L)
        k = torch.bmm((c * d_b).transpose(0, 1), vander)  # (H, channels, L)
        return 2 * k.real.transpose(0, 1)


def fft_len(length: int) -> int:
    """Smallest 5-smooth size >= 2 * length: room for a two-sided kernel without wrap-around.
    Under torch.export exactly 2 * length, so that the exported graph keeps the length symbolic
    (same result: the zero padding only changes the transform size)."""
    if torch.compiler.is_exporting():
        return 2 * length
    n = 2 * int(length)  # int(): under tracing `length` is a 0-d tensor, which `//=` would alias
    while True:
        rest = n
        for factor in (2, 3, 5):
            while rest % factor == 0:
                rest //= factor
        if rest == 1:
            return n
        n += 1


class S4Layer(nn.Module):
    """S4 / S4D layer on (B, H, L): SSM convolution by FFT + D skip, GELU, 1x1 to 2H, GLU.

    Bidirectional: a second kernel runs over the strictly-future samples (as in the released
    S4M / state-spaces code). `kernel_fft(L)` can be built once and reused across calls that
    share the layer's weights and length (the 16 weight-shared S4M passes).
    """

    def __init__(self, d_model: int, d_state: int = 16, ssm: str = "s4",
                 bidirectional: bool = True, init: str | None = None, dt_min: float = 1e-3,
                 dt_max: float = 1e-1, lr: float | None = None):
        super().__init__()
        if ssm not in SSM_KINDS:
            raise ValueError(f"ssm must be one of {SSM_KINDS}, got {ssm!r}")
        if d_state < 2 or d_state % 2:
            raise ValueError(f"d_state must be an even integer >= 2, got {d_state}")
        init = init or INITS[ssm][0]
        if init not in INITS[ssm]:
            raise ValueError(f"init for ssm={ssm!r} must be one of {INITS[ssm]}, got {init!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        channels = 2 if bidirectional else 1
        kw = dict(d_state=d_state, channels=channels, dt_min=dt_min, dt_max=dt_max, lr=lr)
        self.kernel = DPLRKernel(d_model, **kw) if ssm == "s4" else DiagKernel(d_model, init=init,
                                                                              **kw)
        self.bidirectional = bidirectional
        self.D = nn.Parameter(torch.randn(d_model))
        self.output_linear = nn.Conv1d(d_model, 2 * d_model, 1)

    def kernel_fft(self, length: int) -> Tensor:
        """rfft of the (two-sided) kernel at length `fft_len(length)`: (H, n // 2 + 1)."""
        n = fft_len(length)
        with float32_region(self.D.device):  # float32 under autocast (module docstring)
            k = self.kernel(length)  # (channels, H, L)
            parts = [k[0], k.new_zeros(k.shape[1], n - length * (1 + self.bidirectional))]
            if self.bidirectional:
                parts.append(k[1].flip(-1))  # lag d > 0 into the future sits at index n - d
            return torch.fft.rfft(torch.cat(parts, -1), n=n)

    def ssm(self, u: Tensor, k_f: Tensor | None = None) -> Tensor:
        """The linear SSM part y = K * u + D u on (B, H, L), computed in float32 (at least) and
        returned in u's dtype."""
        length = u.shape[-1]
        n = fft_len(length)
        k_f = self.kernel_fft(length) if k_f is None else k_f
        with float32_region(u.device):
            u_f = u.to(torch.promote_types(u.dtype, torch.float32))  # float64 stays
            y = torch.fft.irfft(torch.fft.rfft(u_f, n=n) * k_f, n=n)[..., :length]
            return torch.addcmul(y, u_f, self.D[:, None]).to(u.dtype)

    def forward(self, u: Tensor, k_f: Tensor | None = None) -> Tensor:
        # 1x1 conv + GLU as a GEMM on (B, L, H), time-major from the GELU on, so that its
        # backward sees the gradient in its input's layout (mixed layouts: ~10x slower on CPU);
        # returns (B, 2H -> H, L) time-major
        act = F.gelu(self.ssm(u, k_f).transpose(1, 2).contiguous())
        w, b = self.output_linear.weight.squeeze(-1), self.output_linear.bias
        return F.glu(F.linear(act, w, b), dim=-1).transpose(1, 2)
