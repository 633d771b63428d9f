"""Every sampler x every schedule type against AUTOMATIC1111's conventions, rebuilt here from its documented
behaviour (not from its code): the k-diffusion CompVis wrapper's noise table and sigma <-> timestep map,
each schedule type's definition, the schedule "Automatic" picks per sampler, the discarded next-to-last
sigma, and per-image noise (batch of 2 with a variation seed; Brownian trees for the SDE samplers).

What AUTOMATIC1111 does, as these references model it:

- table: alphas_cumprod made in float64 (linspace of sqrt(beta), squared, cumulative product), stored as
  float32 (the checkpoint's buffer); sigma = sqrt((1 - a) / a) and log(sigma) computed in float32 from those;
- the model is called at the fractional timestep t = (1 - w) * k + w * (k + 1), k the last level whose
  log-sigma is <= log(sigma) (kept below the top level), w the position of log(sigma) between levels k and
  k + 1, clamped to [0, 1]; its input is x / sqrt(sigma^2 + 1) and x0 = x - sigma * eps;
- schedules (float32 torch, sigma_min/sigma_max = the first/last table entry):
  Uniform = the wrapper's own: timesteps linspace(999, 0, n); Normal / SGM Uniform: linspace between the
  timesteps of sigma_max and sigma_min (n, or n + 1 without the last); Karras rho 7; Exponential;
  Polyexponential rho 1; KL Optimal: n + 1 tangents of angles from atan(sigma_max) to atan(sigma_min), no 0
  appended; Align Your Steps: NVIDIA's 11 sigmas as they are for 11 steps, else log-linear to n; Simple:
  table[-(1 + int(i * 1000 / n))]; DDIM: table[1::1000 // n] from the top (as many as that gives); Beta:
  sigma_min + ppf_Beta(alpha, beta)(1 - i / (n - 1)) * (sigma_max - sigma_min), alpha and beta the settings
  beta_dist_alpha/beta (0.6, 0.6); all but KL Optimal then 0;
- "Automatic": Karras for DPM++ 2M, DPM++ SDE, DPM++ 2S a, DPM2, DPM2 a, Restart; Exponential for the
  2M SDE, 2M SDE Heun and 3M SDE; the wrapper's own (Uniform) for Euler, Euler a, LMS, Heun;
- DPM2, DPM2 a and DPM++ 3M SDE build n + 1 sigmas and drop the next-to-last;
- eta 1 and s_noise 1 by default, churn 0 (Euler, Heun, DPM2), s_tmax infinity;
- LCM: the same loop on the 50 LCM levels (timesteps 19, 39, ..., 999; every schedule type built on them),
  the model at the nearest LCM timestep, the consistency boundary condition, fresh noise at the next sigma;
- DDIM / PLMS (1.6 on): grid 1, 1 + 1000//n, ... below 1000, one update from each point but the lowest;
- UniPC: the authors' discrete schedule and time grids (skip types), with AUTOMATIC1111's settings.

The images are compared as decoded pixels (PSNR over [0, 1]); the bar is the issue's: >= 40 dB for a
stochastic sampler, >= 55 dB for a deterministic one, for every schedule type.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from tests.conftest import make_easel
from tests.test_samplers_a1111 import (A1111Noise, A1111Tree, BROWNIAN, DETERMINISTIC, STOCHASTIC, SUBSEED, ancestral,
                                       STRENGTH, heun_step)
from webui.core import k_samplers, samplers
from webui.core.request import GenerationRequest
from webui.core.seeds import ImageRNG

pytestmark = pytest.mark.filterwarnings("ignore:Should have t")

SEEDS, STEPS = [21, 22], 4
SD_AYS = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]
AUTOMATIC = {"DPM++ 2M": "Karras", "DPM++ SDE": "Karras", "DPM++ 2S a": "Karras", "DPM2": "Karras",
             "DPM2 a": "Karras", "Restart": "Karras", "DPM++ 2M SDE": "Exponential",
             "DPM++ 2M SDE Heun": "Exponential", "DPM++ 3M SDE": "Exponential"}
DISCARD_PENULTIMATE = {"DPM2", "DPM2 a", "DPM++ 3M SDE"}


# ---- AUTOMATIC1111's table and schedules ----------------------------------------------------------------

class A1111Table:
    def __init__(self, config: dict):
        n = int(config.get("num_train_timesteps", 1000))
        start, end = float(config.get("beta_start", 0.00085)), float(config.get("beta_end", 0.012))
        betas = torch.linspace(start ** 0.5, end ** 0.5, n, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1 - betas, 0).float()
        self.sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.log_sigmas = self.sigmas.log()

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        log_sigma = sigma.float().log().reshape(-1)
        at_or_below = (self.log_sigmas[:, None] <= log_sigma[None]).sum(0) - 1
        k = at_or_below.clamp(0, len(self.sigmas) - 2)
        lo, hi = self.log_sigmas[k], self.log_sigmas[k + 1]
        w = ((lo - log_sigma) / (lo - hi)).clamp(0, 1)
        return ((1 - w) * k + w * (k + 1)).reshape(sigma.shape)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = t.float()
        w = t.frac()
        return ((1 - w) * self.log_sigmas[t.floor().long()] + w * self.log_sigmas[t.ceil().long()]).exp()


def _zero(values) -> list[float]:
    return [float(v) for v in values] + [0.0]


def a1111_sigmas(table: A1111Table, label: str, n: int, alpha: float = 0.6, beta: float = 0.6) -> list[float]:
    lo, hi = float(table.sigmas[0]), float(table.sigmas[-1])
    between = lambda count: torch.linspace(float(table.sigma_to_t(torch.tensor(hi))),  # noqa: E731
                                           float(table.sigma_to_t(torch.tensor(lo))), count)
    if label == "Uniform":
        return _zero(table.t_to_sigma(torch.linspace(len(table.sigmas) - 1, 0, n)))
    if label == "Normal":
        return _zero(table.t_to_sigma(between(n)))
    if label == "SGM Uniform":
        return _zero(table.t_to_sigma(between(n + 1)[:-1]))
    if label == "Karras":
        ramp = torch.linspace(0, 1, n)
        return _zero((hi ** (1 / 7) + ramp * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7)
    if label == "Exponential":
        return _zero(torch.linspace(math.log(hi), math.log(lo), n).exp())
    if label == "Polyexponential":
        ramp = torch.linspace(1, 0, n)
        return _zero(torch.exp(ramp * (math.log(hi) - math.log(lo)) + math.log(lo)))
    if label == "KL Optimal":
        i = torch.arange(n + 1) / n
        return [float(v) for v in torch.tan(i * torch.arctan(torch.tensor(lo)) + (1 - i) * torch.arctan(torch.tensor(hi)))]
    if label == "Align Your Steps":
        if n == len(SD_AYS):
            return SD_AYS + [0.0]
        logs = np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(SD_AYS)), np.log(SD_AYS[::-1]))
        return _zero(torch.tensor(np.exp(logs)[::-1].copy()).float())
    if label == "Simple":
        return _zero([table.sigmas[-(1 + int(i * len(table.sigmas) / n))] for i in range(n)])
    if label == "DDIM":
        return _zero(table.sigmas[1::max(1, len(table.sigmas) // n)].flip(0))
    if label == "Beta":
        q = [stats.beta.ppf(v, alpha, beta) for v in 1 - np.linspace(0, 1, n)]
        return _zero(torch.tensor([lo + v * (hi - lo) for v in q]).float())
    raise KeyError(label)


def a1111_schedule(table: A1111Table, sampler: str, label: str, steps: int) -> list[float]:
    if label == "Automatic":
        label = AUTOMATIC.get(sampler, "Uniform")
    if sampler in DISCARD_PENULTIMATE:
        sigmas = a1111_sigmas(table, label, steps + 1)
        return sigmas[:-2] + sigmas[-1:]
    return a1111_sigmas(table, label, steps)


# ---- references for the samplers the other module leaves out (Karras et al. 2022, Alg. 2; LMS) -----------

def _churned(x, s, n, noise, o):
    gamma = min(o.get("s_churn", 0.0) / n, 2 ** 0.5 - 1) if o.get("s_tmin", 0.0) <= s <= o.get("s_tmax", math.inf) else 0
    hat = s * (gamma + 1)
    if gamma > 0:
        x = x + noise(None, None) * o.get("s_noise", 1.0) * math.sqrt(hat ** 2 - s ** 2)
    return x, hat


def ref_heun(x, sig, D, noise, **o):
    for s, t in zip(sig[:-1], sig[1:]):
        x, s = _churned(x, s, len(sig) - 1, noise, o)
        x = heun_step(x, s, t, D)
    return x


def ref_dpm2(x, sig, D, noise, **o):
    for s, t in zip(sig[:-1], sig[1:]):
        x, s = _churned(x, s, len(sig) - 1, noise, o)
        slope = (x - D(x, s)) / s
        if t == 0:
            x = x + (t - s) * slope
        else:
            mid = math.sqrt(s * t)  # the log-sigma midpoint
            x_mid = x + (mid - s) * slope
            x = x + (t - s) * (x_mid - D(x_mid, mid)) / mid
    return x


def ref_euler_churn(x, sig, D, noise, **o):
    for s, t in zip(sig[:-1], sig[1:]):
        x, s = _churned(x, s, len(sig) - 1, noise, o)
        x = x + (t - s) * (x - D(x, s)) / s
    return x


def ref_lms(x, sig, D, noise, order=4, **_):
    slopes = []
    for i in range(len(sig) - 1):
        slopes.insert(0, (x - D(x, sig[i])) / sig[i])
        del slopes[order:]
        used = len(slopes)

        def basis(tau, j):
            prod = 1.0
            for k in range(used):
                if k != j:
                    prod *= (tau - sig[i - k]) / (sig[i - j] - sig[i - k])
            return prod

        coefficients = [integrate.quad(basis, sig[i], sig[i + 1], epsrel=1e-4, args=(j,))[0] for j in range(used)]
        x = x + sum(c * d for c, d in zip(coefficients, slopes))
    return x


def _ddim_transfer(x, e, a, a_prev):
    """Song et al. 2021 (eta 0): the clean estimate from eps, moved to the level a_prev along eps."""
    x0 = (x - math.sqrt(1 - a) * e) / math.sqrt(a)
    return math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * e


def ref_ddim(x, timesteps, eps, alphas_cumprod):
    """DDIM with eta 0 as AUTOMATIC1111 (1.6 on) runs it: on its grid 1, 1 + 1000//n, ... (ascending), an update
    from every point but the lowest to the next lower one, so it ends on timestep 1's level after n - 1 model
    calls. x in VP space (the first x is the plain noise, taken as being at the highest point)."""
    for i in reversed(range(1, len(timesteps))):
        a, a_prev = alphas_cumprod[timesteps[i]], alphas_cumprod[timesteps[i - 1]]
        x = _ddim_transfer(x, eps(x, timesteps[i]), a, a_prev)
    return x


def ref_plms(x, timesteps, eps, alphas_cumprod):
    """PLMS (Liu et al. 2022, pseudo linear multistep) on the same grid and updates as ref_ddim: the first
    update is the pseudo improved Euler step (eps averaged with the one at the next point), then Adams-Bashforth
    of order 2, 3, 4 on the model's eps history (the extra call's eps is not kept)."""
    history = []
    for i in reversed(range(1, len(timesteps))):
        a, a_prev = alphas_cumprod[timesteps[i]], alphas_cumprod[timesteps[i - 1]]
        e = eps(x, timesteps[i])
        if not history:
            e_next = eps(_ddim_transfer(x, e, a, a_prev), timesteps[i - 1])
            e_used = (e + e_next) / 2
        elif len(history) == 1:
            e_used = (3 * e - history[-1]) / 2
        elif len(history) == 2:
            e_used = (23 * e - 16 * history[-1] + 5 * history[-2]) / 12
        else:
            e_used = (55 * e - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24
        x = _ddim_transfer(x, e_used, a, a_prev)
        history = (history + [e])[-3:]
    return x


class LCMTable(A1111Table):
    """AUTOMATIC1111's LCM levels: the 50 timesteps 19, 39, ..., 999 the consistency model was distilled on;
    every schedule type is built on them (sigma min is timestep 19's) and Uniform ("Automatic") walks them."""

    def __init__(self, config: dict):
        super().__init__(config)
        self.sigmas = self.sigmas[19::20].clone()
        self.log_sigmas = self.sigmas.log()

    def timestep(self, sigma: float) -> int:  # the nearest level in log sigma, as a trained timestep
        return int((self.log_sigmas - math.log(sigma)).abs().argmin()) * 20 + 19


def ref_lcm(x, sig, D, noise, **_):
    """Luo et al. 2023, multistep consistency sampling: the estimate, then fresh noise at the next sigma."""
    for s, t in zip(sig[:-1], sig[1:]):
        x = D(x, s)
        if t > 0:
            x = x + t * noise(s, t)
    return x


def ref_dpm_fast(x, sig, D, noise, span, eta=1.0, s_noise=1.0):
    """DPM-Solver-fast (Lu et al. 2022): `calls` model calls between the span's sigmas, steps evenly spaced in
    lambda = -log sigma, orders 3, ..., 3 then (2, 1) / 2 / 1 so they add up; DPM-Solver-2 (r1 = 1/2) and -3
    (r1 = 1/3, r2 = 2/3) in their noise-prediction form; with eta each step aims at the ancestral sigma_down
    (not below the span) and adds noise up to the step's sigma (a draw every step, as k-diffusion)."""
    sigma_min, sigma_max, calls = span
    k = calls // 3 + 1
    orders = [3] * (k - 2) + [2, 1] if calls % 3 == 0 else [3] * (k - 1) + [calls % 3]
    lams = np.linspace(-math.log(sigma_max), -math.log(sigma_min), len(orders) + 1)
    sg = lambda lam: math.exp(-lam)  # noqa: E731
    eps = lambda x, lam: (x - D(x, sg(lam))) / sg(lam)  # noqa: E731
    for order, lam, lam_next in zip(orders, lams[:-1], lams[1:]):
        down, up = ancestral(sg(lam), sg(lam_next), eta)
        target = min(-math.log(sigma_min), -math.log(down)) if eta else lam_next
        up = math.sqrt(max(sg(lam_next) ** 2 - sg(target) ** 2, 0.0)) if eta else 0.0
        h, to = target - lam, sg(target)
        e0 = eps(x, lam)
        x_next = x - to * math.expm1(h) * e0
        if order == 2:
            e1 = eps(x - sg(lam + h / 2) * math.expm1(h / 2) * e0, lam + h / 2)
            x_next = x_next - to * math.expm1(h) * (e1 - e0)
        elif order == 3:
            s1, s2 = lam + h / 3, lam + 2 * h / 3
            e1 = eps(x - sg(s1) * math.expm1(h / 3) * e0, s1)
            u2 = x - sg(s2) * math.expm1(2 * h / 3) * e0 - sg(s2) * 2 * (math.expm1(2 * h / 3) / (2 * h / 3) - 1) * (e1 - e0)
            e2 = eps(u2, s2)
            x_next = x_next - to * 1.5 * (math.expm1(h) / h - 1) * (e2 - e0)
        x = x_next + noise(None, None) * up * s_noise
    return x


def _dpm_step(x, e0, s, t, order, eps, r1=0.5):
    """DPM-Solver-1/2/3 from lambda s to t (noise prediction; third order at r1 = 1/3, r2 = 2/3)."""
    sg = lambda lam: math.exp(-lam)  # noqa: E731
    h, to = t - s, sg(t)
    out = x - to * math.expm1(h) * e0
    if order == 1:
        return out
    r1 = 1 / 3 if order == 3 else r1
    e1 = eps(x - sg(s + r1 * h) * math.expm1(r1 * h) * e0, s + r1 * h)
    if order == 2:
        return out - to / (2 * r1) * math.expm1(h) * (e1 - e0)
    s2 = s + 2 * h / 3
    u2 = x - sg(s2) * math.expm1(2 * h / 3) * e0 - sg(s2) * 2 * (math.expm1(2 * h / 3) / (2 * h / 3) - 1) * (e1 - e0)
    return out - to * 1.5 * (math.expm1(h) / h - 1) * (eps(u2, s2) - e0)


def ref_dpm_adaptive(x, sig, D, noise, span, eta=1.0, s_noise=1.0):
    """DPM-Solver with adaptive steps: the orders-2/3 pair's difference over max(0.0078, 0.05 * max(|x_low|,
    |x_prev|)), root mean square over the batch; Söderlind's PID controller (integral gain 1 / order, order 3 or
    1.5 with eta) with the arctan limiter; a step kept when the factor is >= 0.81; first h 0.05 in lambda."""
    sigma_min, sigma_max, _ = span
    sg = lambda lam: math.exp(-lam)  # noqa: E731
    eps = lambda x, lam: (x - D(x, sg(lam))) / sg(lam)  # noqa: E731
    lam, end, h, x_prev, inv = -math.log(sigma_max), -math.log(sigma_min), 0.05, x, None
    gain = 1 / (1.5 if eta else 3)
    while lam < end - 1e-5:
        t = min(end, lam + h)
        target, up = t, 0.0
        if eta:
            down, _ = ancestral(sg(lam), sg(t), eta)
            target = min(end, -math.log(down))
            up = math.sqrt(max(sg(t) ** 2 - sg(target) ** 2, 0.0))
        e0 = eps(x, lam)
        low = _dpm_step(x, e0, lam, target, 2, eps, r1=1 / 3)
        high = _dpm_step(x, e0, lam, target, 3, eps)
        scale = np.maximum(0.0078, 0.05 * np.maximum(np.abs(low), np.abs(x_prev)))
        error = np.sqrt(np.mean(((low - high) / scale) ** 2))
        inv_now = 1 / (error + 1e-8)
        inv = inv_now if inv is None else inv
        factor = 1 + math.atan(inv_now ** gain - 1)
        if factor >= 0.81:
            x_prev, x, lam = low, high + noise(None, None) * up * s_noise, t
        h *= factor
    return x


REFERENCES = {**STOCHASTIC, **BROWNIAN, **DETERMINISTIC, "LMS": ref_lms, "Heun": ref_heun, "DPM2": ref_dpm2,
              "LCM": ref_lcm, "DPM fast": ref_dpm_fast, "DPM adaptive": ref_dpm_adaptive}
K_SAMPLERS = [s.name for s in samplers.SAMPLERS if s.uses_schedule]
SCHEDULE_LABELS = samplers.schedule_labels()


# ---- running both on the tiny model's denoiser ------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_ckpt_dir):
    """The tiny SD 1.x model's CFG denoiser (from a one-step generation), and its VAE."""
    app = make_easel(tmp_path_factory.mktemp("grid"), tiny_ckpt_dir)
    seen = {}
    run = app.engine._run

    def spy(p, sampling, *args, **kwargs):
        seen["denoiser"], seen["model"] = sampling.denoiser, p.plan.model
        return run(p, sampling, *args, **kwargs)

    app.engine._run = spy
    app.txt2img(GenerationRequest(prompt="a lighthouse", steps=1, width=64, height=64, seed=1, batch_size=2,
                                  checkpoint="tiny-sd1", save_images=False))
    app.engine._run = run
    denoiser = seen["denoiser"]
    denoiser.set_guidance(total_steps=STEPS)
    yield denoiser, seen["model"]
    app.close()


def _decode(model, latents) -> torch.Tensor:
    with torch.no_grad():
        image = model.vae.decode(latents.float() / model.configs["vae"]["scaling_factor"]).sample
    return ((image.double() + 1) / 2).clamp(0, 1)


def psnr(model, a, b) -> float:
    mse = float(((_decode(model, a) - _decode(model, b)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


class RecordedTree:
    """The Brownian increments Easel's trees gave, looked up by the reference's own (sigma, sigma_next).

    The trees themselves are checked against AUTOMATIC1111's in test_samplers_a1111.py; here a lookup
    fails unless the reference asks for the very increments Easel used (it halves the cost of the grid)."""

    def __init__(self):
        self.increments: list[tuple[float, float, np.ndarray]] = []

    def record(self, monkeypatch):
        from webui.core.brownian import BrownianNoise

        between = BrownianNoise.between

        def recording(tree, sigma, sigma_next):
            value = between(tree, sigma, sigma_next)
            self.increments.append((float(sigma), float(sigma_next), value.double().numpy()))
            return value

        monkeypatch.setattr(BrownianNoise, "between", recording)

    def __call__(self, sigma, sigma_next) -> np.ndarray:
        for a, b, value in self.increments:
            if math.isclose(a, sigma, rel_tol=1e-6) and math.isclose(b, sigma_next, rel_tol=1e-6):
                return value
        raise AssertionError(f"Easel drew no Brownian increment from {sigma} to {sigma_next}")


def easel_image(denoiser, name, label, steps=STEPS, ensd=0, **options):
    info, concrete = samplers.resolve(name, label)
    rng = ImageRNG((4, 8, 8), SEEDS, torch.device("cpu"), subseeds=[SUBSEED, SUBSEED + 1],
                   subseed_strength=STRENGTH, ensd=ensd)
    denoiser.step = 0
    return samplers.run(info, concrete, denoiser, rng, rng.first(), steps, denoiser.model.scheduler_config,
                        lambda i, x, d: None, rng.generators, options=k_samplers.SamplerOptions(**options))


def reference_image(denoiser, name, label, monkeypatch, steps=STEPS, ensd=0, tree=None, **options):
    table = (LCMTable if name == "LCM" else A1111Table)(denoiser.model.scheduler_config)
    sigmas = a1111_schedule(table, name, label, steps)

    def D(x, sigma):  # AUTOMATIC1111's CompVis wrapper around the same CFG prediction
        s = torch.tensor(sigma, dtype=torch.float32)
        t = table.sigma_to_t(s) if name != "LCM" else table.timestep(sigma)
        x32 = torch.from_numpy(x).float()
        eps = denoiser.predict(x32 * (1 / (s ** 2 + 1) ** 0.5), float(t))
        x0 = (x32 - eps * s).double().numpy()
        if name != "LCM":
            return x0
        # LCM's boundary condition at its timestep (scaled x10), sigma_data 0.5
        scaled = t * 10.0
        return scaled / (scaled ** 2 + 0.25) ** 0.5 * x0 + 0.25 / (scaled ** 2 + 0.25) * x

    noise = A1111Noise(SEEDS, [SUBSEED, SUBSEED + 1], STRENGTH, ensd)
    source = (tree or A1111Tree(SEEDS, sigmas, monkeypatch)) if name in BROWNIAN else noise
    if name in ("DPM fast", "DPM adaptive"):  # AUTOMATIC1111 hands them the model's sigma range (and the steps)
        options = {**options, "span": (float(table.sigmas[0]), float(table.sigmas[-1]), steps)}
    denoiser.step = 0
    latents = REFERENCES[name](noise.first * sigmas[0], sigmas, D, source, **options)
    return torch.from_numpy(latents)


@pytest.mark.parametrize("label", SCHEDULE_LABELS)
@pytest.mark.parametrize("name", K_SAMPLERS)
def test_every_sampler_and_schedule_type_equals_automatic1111(tiny, monkeypatch, name, label):
    denoiser, model = tiny
    tree = RecordedTree()
    tree.record(monkeypatch)
    ours = easel_image(denoiser, name, label)
    theirs = reference_image(denoiser, name, label, monkeypatch, tree=tree)
    info, _ = samplers.resolve(name, label)
    db = psnr(model, ours, theirs)
    print(f"{name} / {label}: {db:.1f} dB")
    assert db >= (40 if info.stochastic else 55), f"{name} / {label}: {db:.1f} dB"


def test_schedules_as_automatic1111_defines_them(tiny):
    """The sigma lists themselves (every type, several lengths, the discarded next-to-last sigma)."""
    denoiser, _ = tiny
    table = A1111Table(denoiser.model.scheduler_config)
    for steps in (4, 6, 10, 11, 30):
        for label in SCHEDULE_LABELS:
            for name in ("Euler", "DPM2 a", "DPM++ 2M SDE"):
                info, concrete = samplers.resolve(name, label)
                ours = samplers.sigmas_for(info, concrete, denoiser.schedule, steps).tolist()
                theirs = a1111_schedule(table, name, label, steps)
                assert len(ours) == len(theirs), (name, label, steps)
                np.testing.assert_allclose(ours, theirs, rtol=2e-6, atol=1e-7, err_msg=f"{name} / {label} / {steps}")


def test_the_beta_schedule_takes_its_alpha_and_beta_settings(tiny):
    denoiser, _ = tiny
    table = A1111Table(denoiser.model.scheduler_config)
    info, _ = samplers.resolve("Euler", "Beta")
    try:
        denoiser.schedule.beta_dist = (0.3, 0.9)
        for steps in (4, 10):
            ours = samplers.sigmas_for(info, "Beta", denoiser.schedule, steps).tolist()
            np.testing.assert_allclose(ours, a1111_sigmas(table, "Beta", steps, 0.3, 0.9), rtol=2e-6, atol=1e-7)
        assert ours != a1111_sigmas(table, "Beta", 10)
    finally:
        denoiser.schedule.beta_dist = (0.6, 0.6)


def test_the_table_and_timesteps_are_automatic1111s(tiny):
    denoiser, _ = tiny
    table = A1111Table(denoiser.model.scheduler_config)
    assert torch.equal(denoiser.schedule.sigmas, table.sigmas)
    sigmas = torch.tensor([0.01, 0.0292, 0.03, 0.5, 1.0, 3.3, 14.6, 14.61, 20.0])
    assert torch.equal(denoiser.schedule.sigma_to_t(sigmas), table.sigma_to_t(sigmas))


@pytest.mark.parametrize("name,label,steps", [("DDIM", "Automatic", STEPS), ("DDIM", "Karras", STEPS),
                                               ("DDIM", "Automatic", 6), ("PLMS", "Automatic", STEPS),
                                               ("PLMS", "Karras", 7)])
def test_ddim_and_plms_are_automatic1111s_and_ignore_the_schedule_type(tiny, name, label, steps):
    """DDIM and PLMS run on timesteps, not on a sigma schedule: the schedule type does not change them (as there);
    6 and 7 steps: 1000 // n leaves a remainder, so the grid has n + 1 points and n updates run."""
    denoiser, model = tiny
    config = denoiser.model.scheduler_config
    betas = torch.linspace(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0).float().double().tolist()
    timesteps = [min(t + 1, 999) for t in range(0, 1000, 1000 // steps)]
    noise = A1111Noise(SEEDS, [SUBSEED, SUBSEED + 1], STRENGTH)
    eps = lambda x, t: denoiser.predict(torch.from_numpy(x).float(), float(t)).double().numpy()  # noqa: E731
    denoiser.step = 0
    reference = ref_ddim if name == "DDIM" else ref_plms
    theirs = torch.from_numpy(reference(noise.first, timesteps, eps, alphas_cumprod))
    db = psnr(model, easel_image(denoiser, name, label, steps=steps, eta=0.0), theirs)  # "Eta for DDIM": 0
    print(f"{name} / {steps} steps: {db:.1f} dB")
    assert db >= 55, f"{name} / {steps} steps: {db:.1f} dB"


def test_churn_tmin_tmax_noise_and_ensd_as_automatic1111_hands_them_over(tiny, monkeypatch):
    """Euler, Heun and DPM2 take Sigma churn / tmin / tmax / noise; churn noise comes from seed + ENSD."""
    denoiser, model = tiny
    options = {"s_churn": 2.0, "s_tmin": 0.5, "s_tmax": 10.0, "s_noise": 1.01}
    for name, reference in (("Euler", ref_euler_churn), ("Heun", ref_heun), ("DPM2", ref_dpm2)):
        REFERENCES[name], saved = reference, REFERENCES[name]
        try:
            ours = easel_image(denoiser, name, "Automatic", ensd=31337, **options)
            theirs = reference_image(denoiser, name, "Automatic", monkeypatch, ensd=31337, **options)
        finally:
            REFERENCES[name] = saved
        assert psnr(model, ours, theirs) >= 40, name
        plain = easel_image(denoiser, name, "Automatic")
        assert psnr(model, ours, plain) < 40, name  # the churn did something


# ---- UniPC as AUTOMATIC1111 runs it (Zhao et al. 2023, data prediction, on the authors' discrete schedule) ----

def unipc_grid(log_alpha: np.ndarray, steps: int, skip_type: str) -> np.ndarray:
    """AUTOMATIC1111's model timesteps for UniPC: continuous time t from 1 to 1/N (N levels, level k at
    t = (k + 1) / N, log alpha linear in t between levels), spaced by the skip type, called at (t - 1/N) * 1000."""
    n = len(log_alpha)
    levels = (np.arange(n) + 1) / n
    if skip_type == "time_uniform":
        t = np.linspace(1, 1 / n, steps + 1)
    elif skip_type == "time_quadratic":
        t = np.linspace(1, (1 / n) ** 0.5, steps + 1) ** 2
    else:  # logSNR: evenly spaced in lambda = log(alpha / sigma), mapped back to t through log alpha
        lam = lambda la: la - 0.5 * np.log(1 - np.exp(2 * la))  # noqa: E731
        wanted = np.linspace(lam(np.interp(1, levels, log_alpha)), lam(np.interp(1 / n, levels, log_alpha)), steps + 1)
        t = np.interp(-0.5 * np.log1p(np.exp(-2 * wanted)), log_alpha[::-1], levels[::-1])
    return (t - 1 / n) * 1000


def _phi_g(hh: float, p: int, b_h: float) -> np.ndarray:
    """g_k = hh * k! * phi_{k+1}(hh) / B(h), k = 1..p, with phi_1(z) = (e^z - 1) / z, phi_{k+1} = (phi_k - 1/k!) / z."""
    phi, g = math.expm1(hh) / hh, []
    for k in range(1, p + 1):
        phi = (phi - 1 / math.factorial(k)) / hh
        g.append(hh * math.factorial(k) * phi / b_h)
    return np.array(g)


def ref_unipc(x, taus, eps, log_alpha, variant="bh1", order=3, lower_order_final=True):
    """UniP-p predictor + UniC-p corrector in data prediction (the paper's Algorithms 1-2 with B(h) = h for
    bh1, e^h - 1 for bh2): warm-up orders 1, 2, ... and, with lower_order_final, min(order, steps left) at the
    end; the model value at the predicted point is reused by the corrector and the next step; no corrector
    after the last step, which ends on the lowest level (not at sigma 0)."""
    def coefficients(tau):
        la = float(np.interp(tau, np.arange(len(log_alpha)), log_alpha))
        alpha, sigma = math.exp(la), math.sqrt(-math.expm1(2 * la))
        return alpha, sigma, math.log(alpha) - math.log(sigma)

    def data(x, tau):
        alpha, sigma, _ = coefficients(tau)
        return (x - sigma * eps(x, tau)) / alpha

    n = len(taus) - 1
    models, lambdas = [data(x, taus[0])], [coefficients(taus[0])[2]]
    for i in range(1, n + 1):
        p = i if i < order else (min(order, n + 1 - i) if lower_order_final else order)
        alpha_t, sigma_t, lam_t = coefficients(taus[i])
        sigma_s = coefficients(taus[i - 1])[1]
        h = lam_t - lambdas[-1]
        hh = -h
        b_h = hh if variant == "bh1" else math.expm1(hh)
        g = _phi_g(hh, p, b_h)
        m0 = models[-1]
        rs = [(lambdas[-1 - k] - lambdas[-1]) / h for k in range(1, p)]
        diffs = [(models[-1 - k] - m0) / r for k, r in zip(range(1, p), rs)]
        R = np.array([[r ** (k - 1) for r in rs + [1.0]] for k in range(1, p + 1)])
        base = sigma_t / sigma_s * x - alpha_t * math.expm1(hh) * m0
        if p == 1:
            predicted = base
        else:
            a = [0.5] if p == 2 else np.linalg.solve(R[:-1, :-1], g[:-1])
            predicted = base - alpha_t * b_h * sum(c * d for c, d in zip(a, diffs))
        if i == n:
            return predicted
        m_t = data(predicted, taus[i])
        c = [0.5] if p == 1 else np.linalg.solve(R, g)
        x = base - alpha_t * b_h * (sum(cm * d for cm, d in zip(c[:-1], diffs)) + c[-1] * (m_t - m0))
        models.append(m_t)
        lambdas.append(lam_t)
    return x


@pytest.mark.parametrize("settings", [{}, {"unipc_variant": "bh2", "unipc_skip_type": "logSNR"},
                                      {"unipc_skip_type": "time_quadratic", "unipc_order": 2,
                                       "unipc_lower_order_final": False}])
def test_unipc_is_automatic1111s(tiny, settings):
    """AUTOMATIC1111's defaults (bh1, time_uniform, order 3, lower order final) and its other settings."""
    denoiser, model = tiny
    config = denoiser.model.scheduler_config
    betas = torch.linspace(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, 1000, dtype=torch.float64) ** 2
    log_alpha = 0.5 * torch.cumprod(1 - betas, 0).float().double().log().numpy()
    taus = unipc_grid(log_alpha, STEPS, settings.get("unipc_skip_type", "time_uniform"))
    noise = A1111Noise(SEEDS, [SUBSEED, SUBSEED + 1], STRENGTH)
    eps = lambda x, t: denoiser.predict(torch.from_numpy(x).float(), float(t)).double().numpy()  # noqa: E731
    denoiser.step = 0
    theirs = torch.from_numpy(ref_unipc(noise.first, taus, eps, log_alpha,
                                        variant=settings.get("unipc_variant", "bh1"),
                                        order=settings.get("unipc_order", 3),
                                        lower_order_final=settings.get("unipc_lower_order_final", True)))
    db = psnr(model, easel_image(denoiser, "UniPC", "Automatic", **settings), theirs)
    print(f"UniPC {settings}: {db:.1f} dB")
    assert db >= 55, f"UniPC {settings}: {db:.1f} dB"


@pytest.mark.parametrize("name,steps,eta", [("DPM fast", 5, 0.0), ("DPM fast", 6, 0.7), ("DPM adaptive", 4, 0.0)])
def test_dpm_fast_and_adaptive_orders_and_eta(tiny, monkeypatch, name, steps, eta):
    """DPM fast: 5 calls make orders 3, 2; 6 calls 3, 2, 1; eta 0 is deterministic (the noise is still drawn,
    times 0). DPM adaptive at eta 0: its step sizes follow its error estimate, which float32 rounding moves
    a little (about 72 dB on the tiny model, against 120 for fixed steps)."""
    denoiser, model = tiny
    ours = easel_image(denoiser, name, "Automatic", steps=steps, eta=eta)
    theirs = reference_image(denoiser, name, "Automatic", monkeypatch, steps=steps, eta=eta)
    db = psnr(model, ours, theirs)
    print(f"{name} / {steps} steps, eta {eta}: {db:.1f} dB")
    assert db >= (55 if eta == 0 else 40), db
