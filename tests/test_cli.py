"""The command-line generator: same engine, same files and infotext as the UI."""
import subprocess
import sys
from pathlib import Path

from PIL import Image

from webui.core.images import read_infotext
from webui.core.infotext import parse_infotext

ROOT = Path(__file__).resolve().parent.parent


def run_cli(tmp_path, ckpt_dir, *args, entry=("-m", "webui.cli")):
    cmd = [sys.executable, *entry, "generate", "--device", "cpu", "--models-dir", str(tmp_path / "models"),
           "--data-dir", str(tmp_path / "data"), "--outputs-dir", str(tmp_path / "outputs"),
           "--ckpt-dir", str(ckpt_dir), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_generate_writes_images_with_infotext(tmp_path, tiny_ckpt_dir):
    out = tmp_path / "out"
    done = run_cli(tmp_path, tiny_ckpt_dir, "--model", "tiny-sd1", "--prompt", "a lighthouse, stormy sea",
                   "--negative-prompt", "people", "--steps", "3", "--sampler", "Euler a", "--cfg-scale", "6",
                   "--seed", "11", "--width", "64", "--height", "64", "--batch-size", "2", "--out", str(out))
    assert done.returncode == 0, done.stderr
    paths = [Path(line) for line in done.stdout.split()]
    assert [p.name for p in paths] == ["00000-11.png", "00001-12.png"]
    info = parse_infotext(read_infotext(Image.open(paths[1])))
    assert info.prompt == "a lighthouse, stormy sea" and info.negative_prompt == "people"
    assert info.params["Sampler"] == "Euler a" and info.params["Seed"] == "12" and info.params["CFG scale"] == "6"


def test_bad_flag_value_names_the_flag_and_writes_nothing(tmp_path, tiny_ckpt_dir):
    done = run_cli(tmp_path, tiny_ckpt_dir, "--prompt", "x", "--width", "100", "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert "--width" in done.stderr and "multiple of 8" in done.stderr
    assert not (tmp_path / "out").exists()


def test_launch_py_is_the_same_entry_point(tmp_path, tiny_ckpt_dir):
    done = run_cli(tmp_path, tiny_ckpt_dir, "--prompt", "x", "--steps", "2", "--width", "64", "--height", "64",
                   "--seed", "3", entry=(str(ROOT / "launch.py"),))
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.split()[0])
    assert path.parent.parent == tmp_path / "outputs" / "txt2img-images" and path.name == "00000-3.png"
