"""A1111-style fixture using the remaining callbacks: before/after image saved, model loaded,
cfg_denoiser, script unloaded, and modules.images.save_image."""

from modules import images, script_callbacks, shared

seen = {"models": [], "saved": [], "unloaded": 0, "steps": []}


def before_saved(params):
    params.pnginfo["parameters"] += ", Stamp: yes"


def saved(params):
    seen["saved"].append(params.filename)


def model_loaded(sd_model):
    seen["models"].append(sd_model.info.name)


def cfg_denoiser(params):
    seen["steps"].append(params.sampling_step)
    params.x = params.x * 0


def unloaded():
    seen["unloaded"] += 1


def save_copy(image, folder):
    """A1111's images.save_image, as extensions call it."""
    return images.save_image(image, folder, "copy", 5, "a prompt", "png", info="copy info", p=None)


script_callbacks.on_before_image_saved(before_saved)
script_callbacks.on_image_saved(saved)
script_callbacks.on_model_loaded(model_loaded)
script_callbacks.on_cfg_denoiser(cfg_denoiser)
script_callbacks.on_script_unloaded(unloaded)
script_callbacks.on_before_ui(lambda: None)  # not supported: accepted, never called
assert shared.state.job_count == 0
