"""Samplers, schedules and seeds: the full set, checked against independent reference code.

The reference implementations below are written from the papers' equations in a different
shape from webui/core/k_samplers.py (float64 numpy, explicit ODE/solver formulas), so a
shared mistake is unlikely.
"""
import math

import numpy as np
import pytest
import torch

from webui.core import samplers
from webui.core.infotext import parse_infotext
from webui.core.k_samplers import SamplerOptions
from webui.core.philox import PhiloxGenerator
from webui.core.pnginfo import infotext_to_fields
from webui.core.request import GenerationRequest, ValidationError
from webui.core.schedules import SCHEDULES, DiscreteSchedule
from webui.core.seeds import ImageRNG, slerp

SD_CONFIG = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


# ---- reference implementations (float64, from the equations) ---------------------------------

def ref_model_sigmas() -> np.ndarray:
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    alpha_bar = np.cumprod(1 - betas)
    return np.sqrt((1 - alpha_bar) / alpha_bar)


def ref_karras(n: int, smin: float, smax: float, rho: float = 7.0) -> np.ndarray:
    i = np.arange(n)
    sig = (smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    return np.append(sig, 0.0)


def ref_uniform(n: int) -> np.ndarray:
    log_sigmas = np.log(ref_model_sigmas())
    t = np.linspace(999, 0, n)
    return np.append(np.exp(np.interp(t, np.arange(1000), log_sigmas)), 0.0)


def toy_denoiser(x: np.ndarray, sigma: float) -> np.ndarray:
    """A smooth, non-trivial D(x, sigma): the exact denoiser for a Gaussian data distribution N(mu, s^2)."""
    mu, s2 = 0.3, 0.5
    return (s2 * x + sigma ** 2 * mu) / (s2 + sigma ** 2)


def ref_euler(x, sig, D):
    for i in range(len(sig) - 1):
        x = x + (sig[i + 1] - sig[i]) * (x - D(x, sig[i])) / sig[i]
    return x


def ref_heun(x, sig, D):
    for i in range(len(sig) - 1):
        f = lambda y, s: (y - D(y, s)) / s  # noqa: E731  dx/dsigma of the probability-flow ODE
        h = sig[i + 1] - sig[i]
        k1 = f(x, sig[i])
        if sig[i + 1] == 0:
            x = x + h * k1
        else:
            k2 = f(x + h * k1, sig[i + 1])
            x = x + h * (k1 + k2) / 2
    return x


def ref_dpm2(x, sig, D):
    for i in range(len(sig) - 1):
        f = lambda y, s: (y - D(y, s)) / s  # noqa: E731
        if sig[i + 1] == 0:
            x = x + (sig[i + 1] - sig[i]) * f(x, sig[i])
            continue
        mid = math.sqrt(sig[i] * sig[i + 1])  # geometric mean = midpoint in log sigma
        x_mid = x + (mid - sig[i]) * f(x, sig[i])
        x = x + (sig[i + 1] - sig[i]) * f(x_mid, mid)
    return x


def ref_lms(x, sig, D, order=4):
    """Adams-Bashforth on dx/dsigma with Simpson-integrated Lagrange weights (numeric, not exact)."""
    history = []
    for i in range(len(sig) - 1):
        history.insert(0, (sig[i], (x - D(x, sig[i])) / sig[i]))
        history = history[:order]
        nodes = [s for s, _ in history]
        grid = np.linspace(sig[i], sig[i + 1], 20001)
        step = x * 0
        for j, (_, deriv) in enumerate(history):
            basis = np.ones_like(grid)
            for k, node in enumerate(nodes):
                if k != j:
                    basis *= (grid - node) / (nodes[j] - node)
            weight = (grid[1] - grid[0]) / 3 * (basis[0] + basis[-1] + 4 * basis[1:-1:2].sum() + 2 * basis[2:-1:2].sum())
            step = step + weight * deriv
        x = x + step
    return x


def ref_dpmpp_2m(x, sig, D):
    """DPM-Solver++(2M), Lu et al. 2022 Algorithm 2, with alpha = 1, sigma = sig, lambda = -log sigma."""
    prev = None
    lam = [(-math.log(s) if s > 0 else math.inf) for s in sig]
    for i in range(len(sig) - 1):
        d = D(x, sig[i])
        if sig[i + 1] == 0:
            x = d
        else:
            h = lam[i + 1] - lam[i]
            if prev is None:
                D_i = d
            else:
                r = (lam[i] - lam[i - 1]) / h
                D_i = (1 + 1 / (2 * r)) * d - 1 / (2 * r) * prev
            x = (sig[i + 1] / sig[i]) * x - (math.exp(-h) - 1) * D_i
        prev = d
    return x


REFERENCES = {"Euler": (ref_euler, "Uniform"), "Heun": (ref_heun, "Uniform"), "LMS": (ref_lms, "Uniform"),
              "DPM2": (ref_dpm2, "Karras"), "DPM++ 2M": (ref_dpmpp_2m, "Uniform"),
              "DPM++ 2M Karras": (ref_dpmpp_2m, "Karras")}


class _NoNoise:
    def next(self):
        raise AssertionError("a deterministic sampler drew noise")


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_deterministic_samplers_equal_the_published_algorithms(name):
    reference, schedule_label = REFERENCES[name]
    info, label = samplers.resolve(name, "Automatic" if name.endswith("Karras") else schedule_label)
    assert label == schedule_label
    model = DiscreteSchedule.from_config(SD_CONFIG)
    steps = 12
    sigmas = samplers.sigmas_for(info, label, model, steps)
    smin, smax = ref_model_sigmas()[0], ref_model_sigmas()[-1]
    if info.discard_penultimate:
        expected = ref_karras(steps + 1, smin, smax)
        expected = np.append(expected[:-2], 0.0)
    else:
        expected = ref_karras(steps, smin, smax) if label == "Karras" else ref_uniform(steps)
    np.testing.assert_allclose(sigmas.numpy(), expected, rtol=2e-6)

    start = np.random.default_rng(0).standard_normal((1, 4, 3, 3)) * expected[0]
    ours = info.k_function(lambda x, s: torch.from_numpy(toy_denoiser(x.numpy(), s)),
                           torch.from_numpy(start.copy()), torch.from_numpy(expected), _NoNoise(),
                           lambda i, x, d: None, SamplerOptions())
    theirs = reference(start.copy(), list(expected), toy_denoiser)
    tolerance = 1e-6 if name != "LMS" else 1e-7 * np.abs(theirs).max() + 1e-9
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-9, atol=tolerance)


@pytest.mark.parametrize("name", ["Euler", "Heun", "DPM++ 2M", "LMS"])
def test_final_latents_match_reference_on_the_tiny_model(easel, name):
    """The reference loops driven by the real tiny model's CFG denoiser reach the same latents."""
    from webui.core.prompt_plan import plan_prompts

    model = easel.models.get("tiny-sd1.safetensors")
    request = GenerationRequest(prompt="a tree", steps=5, width=64, height=64, sampler_name=name, scheduler="Uniform")
    plan = plan_prompts(request, model, easel.engine.options(request), easel.engine.loras, easel.engine.embeddings,
                        easel.engine.styles)
    denoiser = plan.make_denoiser(1, None, None)
    info, label = samplers.resolve(name, "Uniform")
    sigmas = samplers.sigmas_for(info, label, denoiser.schedule, 5)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * float(sigmas[0])
    ours = info.k_function(denoiser.denoise, noise.clone(), sigmas, _NoNoise(), lambda i, x, d: None, SamplerOptions())
    D = lambda x, s: denoiser.denoise(torch.from_numpy(x).float(), float(s)).double().numpy()  # noqa: E731
    theirs = REFERENCES[name][0](noise.double().numpy(), [float(s) for s in sigmas], D)
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-4, atol=1e-4)


# ---- every sampler x schedules on the tiny model ----------------------------------------------------


def _generate(easel, **kw):
    base = dict(prompt="a red fox", steps=4, width=64, height=64, seed=8, checkpoint="tiny-sd1", save_images=False)
    base.update(kw)
    return easel.txt2img(GenerationRequest(**base))


def _px(result, i=0):
    return np.asarray(result.images[i]).astype(np.int16)


def test_every_sampler_with_several_schedules_gives_finite_distinct_images(easel):
    seen = {}
    for name in samplers.sampler_names():
        info = samplers.resolve(name)[0]
        schedules = ["Automatic", "Karras", "Exponential", "Align Your Steps", "Beta"] if info.uses_schedule else [
            "Automatic"]
        for schedule in schedules:
            image = _px(_generate(easel, sampler_name=name, scheduler=schedule))
            assert np.isfinite(image).all() and image.std() > 1, (name, schedule)
            seen[(name, schedule)] = image
    automatic = [image for (name, schedule), image in seen.items() if schedule == "Automatic"]
    distinct = {image.tobytes() for image in automatic}
    assert len(distinct) >= len(automatic) - 2  # a few samplers coincide by design at 4 steps (e.g. first-order)


@pytest.mark.parametrize("name", samplers.sampler_names())
def test_batch_of_four_equals_four_single_runs(easel, name):
    batch = _generate(easel, sampler_name=name, batch_size=4, seed=40)
    for i in range(4):
        single = _generate(easel, sampler_name=name, seed=40 + i)
        assert np.abs(_px(single) - _px(batch, i)).max() <= 2, (name, i)
    again = _generate(easel, sampler_name=name, batch_size=4, seed=40)
    assert all(np.array_equal(_px(batch, i), _px(again, i)) for i in range(4))


def test_all_schedules_end_at_zero_and_decrease(easel):
    model = DiscreteSchedule.from_config(SD_CONFIG)
    for label, (_, function) in SCHEDULES.items():
        sigmas = function(model, 10)
        assert len(sigmas) == 11 and float(sigmas[-1]) == 0.0, label
        assert (sigmas[:-1][1:] <= sigmas[:-1][:-1] + 1e-5).all(), label
        assert float(sigmas[0]) <= model.sigma_max * 1.01, label


def test_ays_uses_the_published_ten_step_schedule():
    model = DiscreteSchedule.from_config(SD_CONFIG, "sd1")
    sigmas = SCHEDULES["Align Your Steps"][1](model, 10)
    np.testing.assert_allclose(sigmas[:3].numpy(), [14.615, 6.475, 3.861], rtol=1e-5)


# ---- seeds -----------------------------------------------------------------------------------------


def test_variation_strength_zero_and_one(easel):
    base = _generate(easel, sampler_name="Euler a", seed=100)
    other = _generate(easel, sampler_name="Euler a", seed=200)
    zero = _generate(easel, sampler_name="Euler a", seed=100, subseed=200, subseed_strength=0.0)
    half = _generate(easel, sampler_name="Euler a", seed=100, subseed=200, subseed_strength=0.5)
    assert np.array_equal(_px(base), _px(zero))
    assert np.abs(_px(half) - _px(base)).mean() > 1 and np.abs(_px(half) - _px(other)).mean() > 1
    # strength 1: the variation seed's initial noise (the step noise still follows the main seed)
    one = _generate(easel, sampler_name="Euler", seed=100, subseed=200, subseed_strength=1.0)
    assert np.array_equal(_px(one), _px(_generate(easel, sampler_name="Euler", seed=200)))
    info = parse_infotext(half.infotexts[0])
    assert info.params["Variation seed"] == "200" and info.params["Variation seed strength"] == "0.5"


def test_slerp_endpoints_are_exact():
    a, b = torch.randn(4, 8, 8), torch.randn(4, 8, 8)
    assert torch.equal(slerp(0.0, a, b), a) and torch.equal(slerp(1.0, a, b), b)
    mid = slerp(0.5, a, b)
    assert abs(float(mid.norm()) - float((a.norm() + b.norm()) / 2)) < 0.1 * float(a.norm())


def test_resize_seed_from_puts_the_small_noise_in_the_middle():
    small = ImageRNG((4, 8, 8), [5], torch.device("cpu")).first()
    big = ImageRNG((4, 12, 16), [5], torch.device("cpu"), resize_from=(8, 8)).first()
    assert torch.equal(big[0, :, 2:10, 4:12], small[0])


def test_nv_source_reproduces_cuda_randn():
    # torch.manual_seed(0); torch.randn(8, device="cuda") on NVIDIA GPUs
    expected = [-0.9247, -0.4253, -2.6438, 0.1452, -0.1209, -0.5797, -0.6229, -0.3284]
    np.testing.assert_allclose(PhiloxGenerator(0).randn((8,)), expected, atol=1e-4)


def test_ensd_changes_ancestral_but_not_deterministic_samplers(easel):
    for name, changes in (("Euler a", True), ("Euler", False)):
        plain = _generate(easel, sampler_name=name)
        shifted = _generate(easel, sampler_name=name, override_settings={"eta_noise_seed_delta": 31337})
        assert (not np.array_equal(_px(plain), _px(shifted))) == changes, name
        assert ("ENSD" in parse_infotext(shifted.infotexts[0]).params) == changes


def test_rng_sources_differ_and_are_recorded(easel):
    cpu = _generate(easel, sampler_name="Euler")
    nv = _generate(easel, sampler_name="Euler", override_settings={"randn_source": "NV"})
    assert not np.array_equal(_px(cpu), _px(nv))
    assert parse_infotext(nv.infotexts[0]).params["RNG"] == "NV"


def test_sampler_parameters_and_guidance_change_images_and_round_trip(easel):
    plain = _generate(easel, sampler_name="Euler a", cfg_scale=5)
    plain_euler = _generate(easel, sampler_name="Euler", cfg_scale=5)
    variants = {
        "eta": dict(eta=0.5), "churn": dict(sampler_name="Euler", s_churn=5.0),
        "rescale": dict(cfg_rescale=0.7), "interval": dict(cfg_interval_start=0.5),
    }
    for label, change in variants.items():
        result = _generate(easel, **{"sampler_name": "Euler a", "cfg_scale": 5, **change})
        reference = plain_euler if change.get("sampler_name") == "Euler" else plain
        assert not np.array_equal(_px(reference), _px(result)), label
        fields = infotext_to_fields(parse_infotext(result.infotexts[0]))
        for key, value in change.items():
            assert fields[key] == value, (label, key, fields)


def test_legacy_combined_names_and_unknown_names():
    assert samplers.split_legacy_name("DPM++ SDE Karras") == ("DPM++ SDE", "Karras")
    assert samplers.resolve("DPM++ 2M SDE Exponential")[1] == "Exponential"
    assert samplers.resolve("k_dpmpp_2m")[0].name == "DPM++ 2M"
    assert samplers.resolve("Euler a", "karras")[1] == "Karras"
    with pytest.raises(samplers.UnknownSamplerError) as caught:
        samplers.resolve("Euler b")
    assert "Euler a" in str(caught.value) and "Restart" in str(caught.value)
    with pytest.raises(ValidationError, match="sampler_name"):
        GenerationRequest(sampler_name="Nope").validate(samplers.Catalog())


def test_v_prediction_with_zero_terminal_snr(tmp_path):
    import json

    from webui.model_manager.architecture import Architecture
    from webui.model_manager.tiny import write_single_file

    from conftest import make_easel

    path = write_single_file(tmp_path / "ck" / "zsnr.safetensors", Architecture("sd1", "v_prediction"))
    sidecar = json.loads(path.with_suffix(".json").read_text())
    sidecar["components"]["scheduler"] = {"rescale_betas_zero_snr": True}
    path.with_suffix(".json").write_text(json.dumps(sidecar))
    app = make_easel(tmp_path, tmp_path / "ck")
    try:
        schedule = DiscreteSchedule.from_config(app.models.get("zsnr").scheduler_config)
        assert schedule.sigma_max > 1000  # (almost) pure noise at the last step
        for name in ("Euler", "DPM++ 2M", "DDIM", "UniPC"):
            image = _px(_generate(app, checkpoint="zsnr", sampler_name=name, scheduler="Uniform"))
            assert np.isfinite(image).all() and image.std() > 1, name
    finally:
        app.close()
