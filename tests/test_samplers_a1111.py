"""Every k-sampler's image against a reference made with AUTOMATIC1111's noise conventions.

The reference loops below are written from the published algorithms (Karras et al. 2022 for
the ancestral Euler/DPM-Solver-2 steps, Lu et al. 2022 "DPM-Solver++" for the 2S/SDE/2M SDE/
3M SDE steps) in float64 numpy, and their noise follows AUTOMATIC1111's documented behaviour:

- initial noise: one torch CPU generator per image seeded with its seed, first draw; a
  variation seed's noise is mixed in by slerp over dim 1 of each (C, H, W) tensor;
- ancestral / churn noise: further draws of each image's generator (a fresh generator seeded
  seed + ENSD when ENSD is set);
- SDE noise: per image a torchsde BrownianTree over [smallest positive sigma, largest sigma],
  entropy = the image's seed, its node normals CUDA's (Philox) numbers; a step from s to t
  takes (W(t) - W(s)) / sqrt(|t - s|).

Each case generates a batch of 2 with a variation seed through the real engine on the tiny
model and compares the decoded images (PSNR over [0, 1] pixels).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from webui.core import samplers
from webui.core.infotext import parse_infotext
from webui.core.philox import PhiloxGenerator
from webui.core.request import GenerationRequest
from webui.pnginfo import infotext_to_fields

# torchsde clamps a query at the largest sigma to its rounded end, with a warning (so does AUTOMATIC1111)
pytestmark = pytest.mark.filterwarnings("ignore:Should have t")

SEED, SUBSEED, STRENGTH, STEPS = 21, 500, 0.3, 4
SHAPE = (4, 8, 8)


# ---- AUTOMATIC1111's noise, rebuilt here -------------------------------------------------------------

def a1111_slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    low, high = low.double(), high.double()
    low_n, high_n = low / low.norm(dim=1, keepdim=True), high / high.norm(dim=1, keepdim=True)
    omega = torch.acos((low_n * high_n).sum(1))
    return ((torch.sin((1 - val) * omega) / torch.sin(omega)).unsqueeze(1) * low
            + (torch.sin(val * omega) / torch.sin(omega)).unsqueeze(1) * high)


class A1111Noise:
    """Initial noise and further draws, one generator per image (torch CPU, or NV: CUDA's Philox numbers)."""

    def __init__(self, seeds, subseeds=None, strength=0.0, ensd=0, source="CPU"):
        self.source = source
        self.generators = [self._generator(s) for s in seeds]
        first = []
        for i, g in enumerate(self.generators):
            noise = self._randn(g)
            if subseeds:
                noise = a1111_slerp(strength, noise, self._randn(self._generator(subseeds[i])))
            first.append(noise.double().numpy())
        self.first = np.stack(first)
        if ensd:
            self.generators = [self._generator(s + ensd) for s in seeds]

    def _generator(self, seed):
        return PhiloxGenerator(seed) if self.source == "NV" else torch.Generator().manual_seed(seed)

    def _randn(self, generator) -> torch.Tensor:
        if self.source == "NV":
            return torch.from_numpy(generator.randn(SHAPE))
        return torch.randn(SHAPE, generator=generator)

    def __call__(self, sigma=None, sigma_next=None) -> np.ndarray:
        return np.stack([self._randn(g).double().numpy() for g in self.generators])


class A1111Tree:
    """Per-image torchsde Brownian trees with CUDA's normals (Philox), as on AUTOMATIC1111's GPU."""

    def __init__(self, seeds, sigmas, monkeypatch):
        import torchsde
        from torchsde._brownian import brownian_interval

        monkeypatch.setattr(brownian_interval, "_randn", lambda size, dtype, device, seed: torch.from_numpy(
            PhiloxGenerator(int(seed)).randn(tuple(size))).to(dtype))
        f32 = lambda v: float(np.float32(v))  # noqa: E731  (its sigmas are float32 tensors)
        positive = [s for s in sigmas if s > 0]
        zero = torch.zeros(SHAPE)
        self.trees = [torchsde.BrownianTree(f32(min(positive)), zero, f32(max(positive)), entropy=s) for s in seeds]

    def __call__(self, sigma, sigma_next) -> np.ndarray:
        a, b = float(np.float32(sigma)), float(np.float32(sigma_next))
        w = np.stack([tree(min(a, b), max(a, b)).double().numpy() for tree in self.trees])
        return (w if b > a else -w) / math.sqrt(abs(b - a))


# ---- reference samplers (float64) -----------------------------------------------------------------

def ancestral(s, t, eta):
    """(sigma_down, sigma_up): sigma_up^2 + sigma_down^2 = t^2, sigma_up = eta * t * sqrt(1 - t^2/s^2)."""
    up = min(t, eta * math.sqrt(t ** 2 * (s ** 2 - t ** 2) / s ** 2)) if eta else 0.0
    return math.sqrt(t ** 2 - up ** 2), up


def ref_euler_a(x, sig, D, noise, eta=1.0, s_noise=1.0):
    for s, t in zip(sig[:-1], sig[1:]):
        down, up = ancestral(s, t, eta)
        x = x + (down - s) * (x - D(x, s)) / s
        if t > 0:
            x = x + noise(s, t) * s_noise * up
    return x


def ref_dpm2_a(x, sig, D, noise, eta=1.0, s_noise=1.0):
    for s, t in zip(sig[:-1], sig[1:]):
        down, up = ancestral(s, t, eta)
        slope = (x - D(x, s)) / s
        if down == 0:
            x = x + (down - s) * slope
            continue
        mid = math.sqrt(s * down)
        x_mid = x + (mid - s) * slope
        x = x + (down - s) * (x_mid - D(x_mid, mid)) / mid + noise(s, t) * s_noise * up
    return x


def ref_dpmpp_2s_a(x, sig, D, noise, eta=1.0, s_noise=1.0):
    for s, t in zip(sig[:-1], sig[1:]):
        d0 = D(x, s)
        down, up = ancestral(s, t, eta)
        if down == 0:
            x = x + (down - s) * (x - d0) / s
        else:
            mid = math.sqrt(s * down)  # halfway in lambda = -log sigma
            u = (mid / s) * x + (1 - mid / s) * d0
            x = (down / s) * x + (1 - down / s) * D(u, mid)
        if t > 0:
            x = x + noise(s, t) * s_noise * up
    return x


def ref_dpmpp_sde(x, sig, D, noise, eta=1.0, s_noise=1.0, r=0.5):
    for s, t in zip(sig[:-1], sig[1:]):
        d0 = D(x, s)
        if t == 0:
            x = x + (t - s) * (x - d0) / s
            continue
        mid = math.exp(math.log(s) + r * (math.log(t) - math.log(s)))
        down, up = ancestral(s, mid, eta)
        u = (down / s) * x + (1 - down / s) * d0 + noise(s, mid) * s_noise * up
        d1 = D(u, mid)
        down, up = ancestral(s, t, eta)
        mix = (1 - 1 / (2 * r)) * d0 + (1 / (2 * r)) * d1
        x = (down / s) * x + (1 - down / s) * mix + noise(s, t) * s_noise * up
    return x


def ref_dpmpp_2m_sde(x, sig, D, noise, eta=1.0, s_noise=1.0, heun=False):
    old, h_old = None, None
    for s, t in zip(sig[:-1], sig[1:]):
        d0 = D(x, s)
        if t == 0:
            x = d0
        else:
            h = math.log(s / t)
            a = h * (1 + eta)  # the SDE's data-prediction exponent
            x = (t / s) * math.exp(-eta * h) * x + (1 - math.exp(-a)) * d0
            if old is not None:
                slope = (d0 - old) * (h / h_old)
                x = x + ((1 - (1 - math.exp(-a)) / a) if heun else 0.5 * (1 - math.exp(-a))) * slope
            if eta:
                x = x + noise(s, t) * t * math.sqrt(1 - math.exp(-2 * eta * h)) * s_noise
            h_old = h
        old = d0
    return x


def ref_dpmpp_3m_sde(x, sig, D, noise, eta=1.0, s_noise=1.0):
    history, hs = [], []
    for s, t in zip(sig[:-1], sig[1:]):
        d0 = D(x, s)
        if t == 0:
            x = d0
        else:
            h = math.log(s / t)
            a = h * (1 + eta)
            phi1 = 1 - math.exp(-a)
            phi2 = 1 - phi1 / a  # phi_2 of the exponential integrator
            x = math.exp(-a) * x + phi1 * d0
            if len(history) >= 2:
                r0, r1 = hs[-1] / h, hs[-2] / h
                d1_0, d1_1 = (d0 - history[-1]) / r0, (history[-1] - history[-2]) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                x = x + phi2 * d1 - (phi2 / a - 0.5) * d2
            elif history:
                x = x + phi2 * (d0 - history[-1]) / (hs[-1] / h)
            if eta:
                x = x + noise(s, t) * t * math.sqrt(1 - math.exp(-2 * h * eta)) * s_noise
            hs.append(h)
        history.append(d0)
    return x


def _karras(n, lo, hi, rho=7.0):
    ramp = np.linspace(0, 1, n)
    return list((hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho)


def ref_restart(x, sig, D, noise, s_noise=1.0, **_):
    """Heun; from 20 steps AUTOMATIC1111's plan: 9 restart steps once (from 36: steps // 4, twice) taken from
    a Karras main schedule, restarting where it is nearest sigma 0.1, back up to its sigma nearest 2."""
    steps = len(sig) - 1
    pairs = list(zip(sig[:-1], sig[1:]))
    if steps >= 20:
        r, k = (steps // 4, 2) if steps >= 36 else (9, 1)
        base = _karras(steps - r * k, sig[-2], sig[0]) + [0.0]
        low, high = int(np.argmin(np.abs(np.array(base) - 0.1))), int(np.argmin(np.abs(np.array(base) - 2)))
        segment = _karras(r + 1, base[low], base[high])
        pairs = []
        for i in range(len(base) - 1):
            pairs.append((base[i], base[i + 1]))
            if i + 1 == low and high < low:
                pairs += list(zip(segment[:-1], segment[1:])) * k
    last = None
    for s, t in pairs:
        if last is not None and last < s:
            x = x + noise(last, s) * s_noise * math.sqrt(s ** 2 - last ** 2)
        x = heun_step(x, s, t, D)
        last = t
    return x


def heun_step(x, s, t, D):
    """One Heun step from sigma s to t (Karras et al. 2022, Alg. 1; the last step to 0 is Euler's)."""
    slope = (x - D(x, s)) / s
    if t == 0:
        return x + (t - s) * slope
    x_e = x + (t - s) * slope
    return x + (t - s) * (slope + (x_e - D(x_e, t)) / t) / 2


def ref_euler(x, sig, D, noise, **_):
    for s, t in zip(sig[:-1], sig[1:]):
        x = x + (t - s) * (x - D(x, s)) / s
    return x


def ref_dpmpp_2m(x, sig, D, noise, **_):
    """DPM++ 2M is 2M SDE without noise: at eta 0, exp(-a) = t/s and the midpoint slope term is the
    2M estimate's (1 + h/2h_old) d0 - (h/2h_old) old rewritten."""
    return ref_dpmpp_2m_sde(x, sig, D, noise, eta=0.0)


STOCHASTIC = {"Euler a": ref_euler_a, "DPM2 a": ref_dpm2_a, "DPM++ 2S a": ref_dpmpp_2s_a, "Restart": ref_restart}
BROWNIAN = {"DPM++ SDE": ref_dpmpp_sde, "DPM++ 2M SDE": ref_dpmpp_2m_sde,
            "DPM++ 2M SDE Heun": lambda *a, **k: ref_dpmpp_2m_sde(*a, heun=True, **k),
            "DPM++ 3M SDE": ref_dpmpp_3m_sde}
DETERMINISTIC = {"Euler": ref_euler, "DPM++ 2M": ref_dpmpp_2m}


# ---- running Easel and the reference on the same denoiser ---------------------------------------------

def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = ((a.double() + 1) / 2).clamp(0, 1), ((b.double() + 1) / 2).clamp(0, 1)
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def _decode(model, latents):
    with torch.no_grad():
        return model.vae.decode(latents.float() / model.configs["vae"]["scaling_factor"]).sample


def _easel_and_reference(easel, monkeypatch, name, reference, request=None, options=None, steps=STEPS, **settings):
    engine = easel.engine
    seen = {}
    run = engine._run

    def spy(p, sampling, *args, **kwargs):
        seen["denoiser"], seen["plan"] = sampling.denoiser, p.plan
        seen["latents"] = run(p, sampling, *args, **kwargs)
        return seen["latents"]

    monkeypatch.setattr(engine, "_run", spy)
    result = easel.txt2img(GenerationRequest(
        prompt="a lighthouse", steps=steps, width=64, height=64, seed=SEED, subseed=SUBSEED,
        subseed_strength=STRENGTH, batch_size=2, sampler_name=name, checkpoint="tiny-sd1", save_images=False,
        **(request or {}), override_settings={"randn_source": "CPU", **settings}))
    monkeypatch.undo()
    plan, denoiser = seen["plan"], seen["denoiser"]
    sigmas = [float(s) for s in samplers.sigmas_for(plan.sampler, plan.schedule, denoiser.schedule, steps)]
    seeds, ensd = [SEED, SEED + 1], settings.get("eta_noise_seed_delta", 0)
    a1111 = A1111Noise(seeds, [SUBSEED, SUBSEED + 1], STRENGTH, ensd, settings.get("randn_source", "CPU"))
    noise = A1111Tree(seeds, sigmas, monkeypatch) if name in BROWNIAN else a1111
    D = lambda x, s: denoiser.denoise(torch.from_numpy(x).float(), float(s)).double().numpy()  # noqa: E731
    theirs = reference(a1111.first * sigmas[0], sigmas, D, noise, **(options or {}))
    model = plan.model
    psnr = _psnr(_decode(model, seen["latents"]), _decode(model, torch.from_numpy(theirs)))
    return psnr, result


@pytest.mark.parametrize("name", [*STOCHASTIC, *BROWNIAN, *DETERMINISTIC])
def test_images_equal_automatic1111_conventions(easel, monkeypatch, name):
    reference = {**STOCHASTIC, **BROWNIAN, **DETERMINISTIC}[name]
    psnr, _ = _easel_and_reference(easel, monkeypatch, name, reference)
    print(f"{name}: {psnr:.1f} dB")
    assert psnr >= (55 if name in DETERMINISTIC else 40), f"{name}: {psnr:.1f} dB"


def test_restart_with_automatic1111s_restart_plan(easel, monkeypatch):
    """From 20 steps Restart restarts once (9 steps from sigma ~2 back to ~0.1), with fresh noise and ENSD."""
    psnr, _ = _easel_and_reference(easel, monkeypatch, "Restart", ref_restart, steps=20, eta_noise_seed_delta=7)
    assert psnr >= 40, psnr


def test_ensd_seeds_the_step_noise_not_the_brownian_tree(easel, monkeypatch):
    psnr, result = _easel_and_reference(easel, monkeypatch, "Euler a", ref_euler_a, eta_noise_seed_delta=31337)
    assert psnr >= 40 and parse_infotext(result.infotexts[0]).params["ENSD"] == "31337"
    psnr, _ = _easel_and_reference(easel, monkeypatch, "DPM++ 2M SDE", ref_dpmpp_2m_sde, eta_noise_seed_delta=31337)
    assert psnr >= 40


def test_nv_source_on_the_cpu(easel, monkeypatch):
    for name, reference in (("Euler a", ref_euler_a), ("DPM++ SDE", ref_dpmpp_sde)):
        psnr, result = _easel_and_reference(easel, monkeypatch, name, reference, randn_source="NV")
        assert psnr >= 40, (name, psnr)
        assert parse_infotext(result.infotexts[0]).params["RNG"] == "NV"


def test_eta_and_sigma_noise_as_automatic1111_hands_them_over(easel, monkeypatch):
    """Eta reaches every ancestral/SDE sampler; "Sigma noise" reaches DPM2 a, 2S a and the SDE samplers,
    but AUTOMATIC1111 never passes it to Euler a (which keeps s_noise 1) and does not record it there."""
    for name, reference, taken in (("Euler a", ref_euler_a, False), ("DPM2 a", ref_dpm2_a, True),
                                   ("DPM++ 2M SDE", ref_dpmpp_2m_sde, True)):
        options = {"eta": 0.7, "s_noise": 1.05 if taken else 1.0}
        psnr, result = _easel_and_reference(easel, monkeypatch, name, reference,
                                            request={"eta": 0.7, "s_noise": 1.05}, options=options)
        assert psnr >= 40, (name, psnr)
        params = parse_infotext(result.infotexts[0]).params
        assert params["Eta"] == "0.7" and ("Sigma noise" in params) == taken, (name, params)


def test_per_step_sde_noise_is_recorded_and_pasted(easel, monkeypatch):
    psnr, result = _easel_and_reference(easel, monkeypatch, "DPM++ 2M SDE", ref_dpmpp_2m_sde, sde_noise="Per-step")
    assert psnr < 30  # independent draws: another image
    params = parse_infotext(result.infotexts[0]).params
    assert params["SDE noise"] == "Per-step"
    assert infotext_to_fields(parse_infotext(result.infotexts[0]))["override_settings"]["sde_noise"] == "Per-step"
    tree = _easel_and_reference(easel, monkeypatch, "DPM++ 2M SDE", ref_dpmpp_2m_sde)[1]
    assert "SDE noise" not in parse_infotext(tree.infotexts[0]).params
    assert infotext_to_fields(parse_infotext(tree.infotexts[0]))["override_settings"]["sde_noise"] == "Brownian tree"


def test_brownian_trees_are_per_image_and_consistent():
    from webui.core.brownian import BrownianNoise

    pair = BrownianNoise([5, 6], SHAPE, torch.device("cpu"), 0.03, 14.6)
    alone = BrownianNoise([6], SHAPE, torch.device("cpu"), 0.03, 14.6)
    whole = pair.between(10.0, 2.0)
    assert torch.equal(whole[1], alone.between(10.0, 2.0)[0])
    assert torch.equal(pair.between(2.0, 10.0), -whole)
    # additivity: W(2) - W(10) = (W(5) - W(10)) + (W(2) - W(5))
    parts = pair.between(10.0, 5.0) * math.sqrt(5.0) + pair.between(5.0, 2.0) * math.sqrt(3.0)
    torch.testing.assert_close(parts, whole * math.sqrt(8.0), atol=1e-4, rtol=1e-4)


def test_the_paste_lists_sde_noise_for_the_ui():
    from webui.pnginfo import override_item_fields, override_items

    a1111 = parse_infotext("a cat\nSteps: 20, Sampler: DPM++ 2M SDE Karras, CFG scale: 7, Seed: 1, Size: 512x512")
    assert "SDE noise: Brownian tree" in override_items(a1111)
    assert "SDE noise: Brownian tree" not in override_items(parse_infotext("a cat\nSteps: 20, Sampler: Euler a"))
    fields = override_item_fields(["SDE noise: Per-step"])
    assert fields["override_settings"] == {"sde_noise": "Per-step"}


def test_unipc_and_beta_settings_reach_the_image_the_infotext_and_the_paste(easel):
    """AUTOMATIC1111 names a UniPC setting in the infotext only where it differs from its default, and writes the
    Beta schedule's alpha and beta whenever Beta runs; a paste brings them back as override settings."""
    def generate(sampler, scheduler="Automatic", **settings):
        result = easel.txt2img(GenerationRequest(prompt="a lighthouse", steps=STEPS, width=64, height=64, seed=SEED,
                                                 sampler_name=sampler, scheduler=scheduler, checkpoint="tiny-sd1",
                                                 save_images=False, override_settings=settings))
        return np.asarray(result.images[0], dtype=float), parse_infotext(result.infotexts[0])

    plain, info = generate("UniPC")
    assert not any(key.startswith("UniPC") for key in info.params)
    changed, info = generate("UniPC", uni_pc_variant="bh2", uni_pc_order=2, uni_pc_lower_order_final=False)
    assert np.abs(changed - plain).max() > 0
    assert {k: v for k, v in info.params.items() if k.startswith("UniPC")} == {
        "UniPC variant": "bh2", "UniPC order": "2", "UniPC lower order final": "False"}
    overrides = infotext_to_fields(info)["override_settings"]
    assert {k: overrides[k] for k in ("uni_pc_variant", "uni_pc_order", "uni_pc_lower_order_final")} == {
        "uni_pc_variant": "bh2", "uni_pc_order": 2, "uni_pc_lower_order_final": False}
    assert "uni_pc_skip_type" not in overrides

    plain, info = generate("Euler", "Beta")
    assert (info.params["Beta schedule alpha"], info.params["Beta schedule beta"]) == ("0.6", "0.6")
    changed, info = generate("Euler", "Beta", beta_dist_alpha=0.4)
    assert np.abs(changed - plain).max() > 0 and info.params["Beta schedule alpha"] == "0.4"
    overrides = infotext_to_fields(info)["override_settings"]
    assert (overrides["beta_dist_alpha"], overrides["beta_dist_beta"]) == (0.4, 0.6)
    assert "Beta schedule alpha" not in generate("Euler", "Karras")[1].params
