"""A1111's "Prompts from file or textbox", written on the A1111 script API.

One job per non-empty line of the text: a plain line is the prompt (placed before or after the
request's prompt, ``prompt_position``), a line of ``--name value`` options sets those fields
(A1111's list: ``--prompt``, ``--negative_prompt``, ``--seed``, ``--steps``, ``--cfg_scale``,
``--sampler_name``, ``--width``, ``--height``, ``--batch_size``, ``--n_iter``, ...). Args, as A1111's:
``[iterate_seed, same_seed_for_all, prompt_position ("start"/"end"), text]``.
"""

import copy
import shlex

import gradio as gr

from modules import scripts
from modules.processing import Processed, process_images
from modules.schemas import RequestError

TAGS = {"prompt": str, "negative_prompt": str, "styles": list, "seed": int, "subseed": int, "subseed_strength": float,
        "seed_resize_from_h": int, "seed_resize_from_w": int, "sampler_name": str, "sampler_index": str,
        "batch_size": int, "n_iter": int, "steps": int, "cfg_scale": float, "width": int, "height": int,
        "tiling": bool, "do_not_save_samples": bool, "do_not_save_grid": bool, "outpath_samples": str,
        "outpath_grids": str, "prompt_for_display": str, "denoising_strength": float}
MAX_LINES = 100


def parse_line(line: str, number: int) -> dict:
    """``--tag value`` pairs of one line (a bare flag is True); an unknown tag or bad value names the line."""
    try:
        words = shlex.split(line)
    except ValueError as err:
        raise RequestError(f"script_args[3] line {number}: {err}") from None
    args, pos = {}, 0
    while pos < len(words):
        tag = words[pos]
        if not tag.startswith("--") or tag[2:] not in TAGS:
            raise RequestError(f"script_args[3] line {number}: unknown option {tag!r}; known: --"
                             + ", --".join(sorted(TAGS)))
        name, kind = tag[2:], TAGS[tag[2:]]
        if kind is bool and (pos + 1 == len(words) or words[pos + 1].startswith("--")):
            args[name], pos = True, pos + 1
            continue
        if pos + 1 == len(words):
            raise RequestError(f"script_args[3] line {number}: {tag} needs a value")
        value = words[pos + 1]
        try:
            if kind is list:
                args[name] = [v.strip() for v in value.split(",") if v.strip()]
            elif kind is bool:
                args[name] = value.lower() in ("1", "true", "yes")
            else:
                args[name] = kind(value)
        except ValueError:
            raise RequestError(f"script_args[3] line {number}: {tag} {value!r} is not a valid {kind.__name__}") from None
        pos += 2
    if "sampler_index" in args:
        args["sampler_name"] = args.pop("sampler_index")
    return args


class PromptsFromFile(scripts.Script):
    def title(self):
        return "Prompts from file or textbox"

    def ui(self, is_img2img):
        iterate = gr.Checkbox(label="Iterate seed every line", value=False)
        same_seed = gr.Checkbox(label="Use same random seed for all lines", value=False)
        position = gr.Radio(["start", "end"], label="Insert prompts at the", value="start")
        text = gr.Textbox(label="List of prompt inputs", lines=2)
        return [iterate, same_seed, position, text]

    def run(self, p, checkbox_iterate=False, checkbox_iterate_batch=False, prompt_position="start", prompt_txt=""):
        if prompt_position not in ("start", "end"):
            raise RequestError(f"script_args[2]: prompt_position {prompt_position!r}; choose start or end")
        lines = [line.strip() for line in str(prompt_txt or "").splitlines() if line.strip()]
        if not lines:
            raise RequestError("script_args[3]: no prompts: give one prompt (or --options line) per line")
        if len(lines) > MAX_LINES:
            raise RequestError(f"script_args[3]: {len(lines)} lines; at most {MAX_LINES}")
        jobs = [parse_line(line, i + 1) if line.startswith("--") else {"prompt": line} for i, line in enumerate(lines)]
        if checkbox_iterate or checkbox_iterate_batch:
            p.setup_seeds()
        images, prompts, negatives, seeds, infotexts = [], [], [], [], []
        for args in jobs:
            copy_p = copy.copy(p)
            copy_p.extra_generation_params = dict(p.extra_generation_params)
            for name in ("all_prompts", "all_negative_prompts", "all_hr_prompts", "all_hr_negative_prompts",
                         "all_seeds", "all_subseeds"):
                setattr(copy_p, name, None)
            if "prompt" in args and p.prompt:
                args["prompt"] = f"{args['prompt']} {p.prompt}" if prompt_position == "start" \
                    else f"{p.prompt} {args['prompt']}"
            for name, value in args.items():
                setattr(copy_p, name, value)
            processed = process_images(copy_p)
            images += processed.images
            prompts += processed.all_prompts
            negatives += processed.all_negative_prompts
            seeds += processed.all_seeds
            infotexts += processed.infotexts
            if checkbox_iterate:
                p.seed = p.seed + p.batch_size * p.n_iter
        return Processed(p, images, seeds[0] if seeds else p.seed, infotexts[0] if infotexts else "",
                         all_prompts=prompts, all_negative_prompts=negatives, all_seeds=seeds, infotexts=infotexts)
