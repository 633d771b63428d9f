"""Bad input: every problem is reported under its field name, and nothing runs or is written."""
import pytest

from webui.core.request import GenerationRequest, ValidationError

BAD = [
    ("width", {"width": 100}, "multiple of 8"),
    ("width", {"width": 32}, "64"),
    ("height", {"height": 8192}, "4096"),
    ("height", {"height": "512"}, "whole number"),
    ("steps", {"steps": 0}, "1 to 150"),
    ("steps", {"steps": 151}, "1 to 150"),
    ("steps", {"steps": 2.5}, "whole number"),
    ("cfg_scale", {"cfg_scale": float("nan")}, "number"),
    ("cfg_scale", {"cfg_scale": float("inf")}, "number"),
    ("cfg_scale", {"cfg_scale": -1}, "0 to 100"),
    ("seed", {"seed": -5}, "-1"),
    ("seed", {"seed": 2**40}, "-1"),
    ("batch_size", {"batch_size": 9}, "1 to 8"),
    ("n_iter", {"n_iter": 0}, "1 to 100"),
    ("prompt", {"prompt": None}, "text"),
    ("sampler_name", {"sampler_name": "Heun++ Turbo"}, "choose one of"),
    ("scheduler", {"scheduler": "Wobbly"}, "choose one of"),
]


@pytest.mark.parametrize("field,change,words", BAD, ids=[f"{f}-{i}" for i, (f, *_ ) in enumerate(BAD)])
def test_each_bad_field_is_named_and_nothing_is_written(easel, field, change, words):
    with pytest.raises(ValidationError) as caught:  # constructing validates; the sampler names need the engine
        easel.submit_txt2img(GenerationRequest(**{"prompt": "x", "steps": 2, "width": 64, "height": 64, **change}))
    fields = [e.field for e in caught.value.errors]
    assert field in fields
    assert words in str(caught.value)
    assert not easel.queue.jobs()
    assert not any(easel.paths.outputs_dir.rglob("*.png"))


def test_several_errors_are_all_reported():
    with pytest.raises(ValidationError) as caught:
        GenerationRequest(width=65, height=70, steps=0)
    assert {e.field for e in caught.value.errors} == {"width", "height", "steps"}


def test_unknown_checkpoint_fails_in_the_job_with_the_list(easel):
    job = easel.submit_txt2img(GenerationRequest(prompt="x", steps=2, width=64, height=64, checkpoint="nope"))
    job.wait(30)
    assert "nope" in str(job.error) and "tiny-sd1.safetensors" in str(job.error)
    assert not any(easel.paths.outputs_dir.rglob("*.png"))


def test_unknown_fields_are_rejected_by_name():
    with pytest.raises(ValidationError, match="sampler: unknown field"):
        GenerationRequest.from_dict({"prompt": "x", "sampler": "Euler"})
