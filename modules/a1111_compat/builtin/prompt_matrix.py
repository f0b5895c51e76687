"""A1111's "Prompt matrix", written on the A1111 script API (proof that the API is enough).

``a cat|in a hat|on a mat`` makes every combination of the parts after the first: ``a cat``,
``a cat, in a hat``, ``a cat, on a mat``, ``a cat, in a hat, on a mat``. Args, as A1111's:
``[put_at_start, different_seeds, prompt_type ("positive"/"negative"), variations_delimiter
("comma"/"space"), margin_size]``. The answer's first image is the grid of all of them.
"""

import gradio as gr

from modules import images, scripts
from modules.processing import process_images
from modules.schemas import RequestError


class PromptMatrix(scripts.Script):
    def title(self):
        return "Prompt matrix"

    def ui(self, is_img2img):
        put_at_start = gr.Checkbox(label="Put variable parts at start of prompt", value=False)
        different_seeds = gr.Checkbox(label="Use different seed for each picture", value=False)
        prompt_type = gr.Radio(["positive", "negative"], label="Select prompt", value="positive")
        delimiter = gr.Radio(["comma", "space"], label="Select joining char", value="comma")
        margin_size = gr.Slider(label="Grid margins (px)", minimum=0, maximum=500, value=0, step=2)
        return [put_at_start, different_seeds, prompt_type, delimiter, margin_size]

    def run(self, p, put_at_start=False, different_seeds=False, prompt_type="positive", variations_delimiter="comma",
            margin_size=0):
        if prompt_type not in ("positive", "negative"):
            raise RequestError(f"script_args[2]: prompt_type {prompt_type!r}; choose positive or negative")
        if variations_delimiter not in ("comma", "space"):
            raise RequestError(f"script_args[3]: variations_delimiter {variations_delimiter!r}; choose comma or space")
        p.setup_seeds()
        original = p.prompt if prompt_type == "positive" else p.negative_prompt
        parts = original.split("|")
        joiner = ", " if variations_delimiter == "comma" else " "
        combinations = []
        for combination in range(2 ** (len(parts) - 1)):
            selected = [text.strip().strip(",") for n, text in enumerate(parts[1:]) if combination & (1 << n)]
            first = parts[0].strip().strip(",")
            combinations.append(joiner.join([*selected, first] if put_at_start else [first, *selected]))
        count = len(combinations)
        if p.batch_size > 1 and count % p.batch_size:
            p.batch_size = 1
        p.n_iter = count // p.batch_size
        seeds = [p.seed + (i if different_seeds else 0) for i in range(count)]
        if prompt_type == "positive":
            p.all_prompts, p.prompt = combinations, combinations[0]
        else:
            p.all_negative_prompts, p.negative_prompt = combinations, combinations[0]
        p.all_seeds, p.all_subseeds = seeds, [p.subseed + (i if different_seeds else 0) for i in range(count)]
        p.extra_generation_params["Prompt matrix"] = original.replace("|", " | ")
        processed = process_images(p)
        if len(processed.images) > 1:
            grid = images.image_grid(processed.images, rows=2 ** ((len(parts) - 1) // 2))
            processed.images.insert(0, grid)
            processed.infotexts.insert(0, processed.infotexts[0])
            processed.all_prompts.insert(0, processed.all_prompts[0])
            processed.all_negative_prompts.insert(0, processed.all_negative_prompts[0])
            processed.all_seeds.insert(0, processed.all_seeds[0])
            processed.all_subseeds.insert(0, processed.all_subseeds[0])
            processed.index_of_first_image = 1
        return processed
