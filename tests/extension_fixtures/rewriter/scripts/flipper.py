"""A1111-style fixture: a dropdown script whose run() calls process_images and flips the images."""

import gradio as gr
from PIL import ImageOps

from modules import scripts
from modules.processing import process_images


class Flipper(scripts.Script):
    def title(self):
        return "Flip images"

    def ui(self, is_img2img):
        return [gr.Checkbox(value=True, label="Mirror")]

    def run(self, p, mirror):
        processed = process_images(p)
        if mirror:
            processed.images = [ImageOps.mirror(im) for im in processed.images]
        return processed
