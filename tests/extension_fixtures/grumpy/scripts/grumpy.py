"""A1111-style fixture whose hooks raise: the job must go on."""

from modules import script_callbacks, scripts


class Grumpy(scripts.Script):
    def title(self):
        return "Grumpy"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def process_batch(self, p, *args, **kwargs):
        raise RuntimeError("grumpy process_batch")


def on_saved(params):
    raise ValueError("grumpy on_image_saved")


script_callbacks.on_image_saved(on_saved)
