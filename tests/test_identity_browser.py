"""Browser: the Identity tab - upload a face, generate with InstantID, PhotoMaker v1 and v2."""
import pytest
from PIL import Image

from webui.core.images import read_infotext
from webui.core.infotext import parse_infotext

from conftest import start_server
from identity_helpers import face_card, write_insightface_pack, write_instantid, write_photomaker
from test_browser import ARTIFACTS, open_app, set_slider

from playwright.sync_api import expect  # noqa: E402  (test_browser skips without chromium)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from webui.devices import device_config
    from webui.model_manager.architecture import Architecture
    from webui.model_manager.loader import load_checkpoint
    from webui.model_manager.registry import scan_folder
    from webui.model_manager.tiny import write_single_file

    root = tmp_path_factory.mktemp("idserver")
    models = root / "models"
    write_single_file(models / "Stable-diffusion" / "tiny-sdxl.safetensors", Architecture("sdxl"), seed=7)
    info = next(i for i in scan_folder(models / "Stable-diffusion") if i.name == "tiny-sdxl.safetensors")
    unet = load_checkpoint(info, device_config("cpu"), False).unet
    write_insightface_pack(models / "insightface" / "antelopev2")
    write_instantid(models / "instantid", unet, seed=3)
    write_photomaker(models / "photomaker" / "photomaker-v1.bin", unet, version=1, seed=4)
    write_photomaker(models / "photomaker" / "photomaker-v2.bin", unet, version=2, seed=5)
    running = start_server(root, None)
    yield running
    running.stop()


def test_identity_tab_generates_with_each_method(server, tmp_path):
    photo = tmp_path / "face.png"
    face_card((256, 256), [(128, 128, 50)]).save(photo)
    with open_app(server.url, height=1600) as page:
        page.locator("#tabs").get_by_role("tab", name="Identity").click()
        page.wait_for_selector("#identity_prompt textarea", timeout=30_000)
        expect(page.locator("#identity_files")).to_contain_text("weights-only loader")
        set_slider(page, "identity_steps", 2)
        set_slider(page, "identity_width", 64)
        set_slider(page, "identity_height", 64)
        page.locator("#identity_seed input").fill("21")
        page.locator("#identity_photo_1 input[type=file]").set_input_files(str(photo))
        expect(page.locator("#identity_photo_1 img")).to_be_visible(timeout=10_000)
        for index, method in enumerate(("InstantID", "PhotoMaker v1", "PhotoMaker v2")):
            page.locator("#identity_method").get_by_text(method, exact=True).click()
            page.locator("#identity_prompt textarea").fill(f"a photo of a man img, take {index}")
            page.locator("#identity_generate").click()
            expect(page.locator("#html_info_identity")).to_contain_text(f"Method: {method}", timeout=90_000)
            expect(page.locator("#html_info_identity")).to_contain_text(f"take {index}")
            page.screenshot(path=str(ARTIFACTS / f"identity-{method.replace(' ', '-').lower()}.png"),
                            full_page=True)
    made = sorted((server.root / "outputs" / "txt2img-images").rglob("*-21.png"))
    assert len(made) == 3
    methods = [parse_infotext(read_infotext(Image.open(path))).params["Identity"] for path in made]
    assert [m.split(",")[0] for m in methods] == ["Method: InstantID", "Method: PhotoMaker v1", "Method: PhotoMaker v2"]
