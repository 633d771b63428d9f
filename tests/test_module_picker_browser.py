"""The top bar's per-checkpoint pickers in a real browser: "VAE / Text Encoder" (choose a file, generate, and
the infotext names it as Forge writes it, `Module 1: <stem>`) and "Weights" (fp8 for this checkpoint: the next
image says `Weights: fp8_e4m3fn`)."""
from __future__ import annotations

from safetensors.torch import load_file, save_file

from test_browser import expect, open_app, set_steps_and_size

NAME = "picker-vae-tiny"


def test_a_module_chosen_in_the_top_bar_is_used_and_written_to_the_infotext(ui_server, tiny_ckpt_dir):
    from webui.model_manager.convert import VAE_PREFIX

    vae = ui_server.root / "models" / "VAE" / f"{NAME}.safetensors"  # the tiny SD checkpoint's own VAE
    vae.parent.mkdir(parents=True, exist_ok=True)
    tensors = load_file(str(tiny_ckpt_dir / "tiny-sd1.safetensors"))
    save_file({k[len(VAE_PREFIX):]: v for k, v in tensors.items() if k.startswith(VAE_PREFIX)}, str(vae))
    try:
        with open_app(ui_server.url) as page:
            page.locator("#refresh_forge_additional_modules").click()  # the file is newer than the page
            box = page.locator("#setting_forge_additional_modules input")
            for _ in range(3):  # the refresh answers asynchronously: look again until the file is listed
                box.click()
                box.fill(NAME)
                option = page.get_by_role("option", name=f"{NAME}.safetensors")
                if option.count():
                    break
                page.keyboard.press("Escape")
                page.locator("#refresh_forge_additional_modules").click()
                page.wait_for_timeout(2000)
            option.click()
            page.keyboard.press("Escape")
            expect(page.locator("#setting_forge_additional_modules")).to_contain_text(NAME)
            page.locator("#txt2img_prompt textarea").fill("a red barn")
            set_steps_and_size(page, 2)
            page.locator("#txt2img_seed input").fill("31")
            page.locator("#txt2img_generate").click()
            expect(page.locator("#html_info_txt2img")).to_contain_text("Seed: 31", timeout=60_000)
            expect(page.locator("#html_info_txt2img")).to_contain_text(f"Module 1: {NAME}")
            # forget the choice again (the server is shared with other browser modules)
            page.locator("#setting_forge_additional_modules .token-remove").first.click()
            expect(page.locator("#setting_forge_additional_modules .token")).to_have_count(0)
            choose_weights(page, "fp8_e4m3fn")
            expect(page.locator("#checkpoint_weight_storage")).to_contain_text("In force: fp8_e4m3fn (this checkpoint)")
            page.locator("#txt2img_seed input").fill("32")
            page.locator("#txt2img_generate").click()
            expect(page.locator("#html_info_txt2img")).to_contain_text("Seed: 32", timeout=60_000)
            expect(page.locator("#html_info_txt2img")).to_contain_text("Weights: fp8_e4m3fn")
            choose_weights(page, "Automatic")  # back to the setting, for the other modules on this server
            expect(page.locator("#checkpoint_weight_storage")).to_contain_text("In force: Automatic (default)")
    finally:
        vae.unlink()  # a remembered file that is gone is skipped: the shared server's checkpoints are as before


def choose_weights(page, value: str) -> None:
    page.locator("#checkpoint_weight_storage input").click()
    page.get_by_role("option", name=value, exact=True).click()
