"""The typed training request: every input of a DreamBooth, LoRA or textual-inversion run, validated.

``TrainOptions`` holds the scalar fields (the HTTP API's body shares them, so a bad field is a 422
naming it); ``TrainRequest`` adds the instance images, already read (``data.load_instance_images``
reads uploads and folders, skipping what is not an image with a warning). ``training_warnings``
adds the advice a run deserves before it starts: a common word as the identifier, few images,
more repeats than fine-tuning needs.

Captions: an instance image may have a caption (``NAME.txt`` beside ``NAME.png``, as kohya and
A1111's DreamBooth extension read them, or ``instance_captions`` in the API). ``[filewords]`` in
the instance prompt stands for the image's caption (``[filewords]`` alone: the caption is the
whole prompt), and in the class prompt for the caption without the identifier, so
``a red zwx shape on the left`` teaches ``zwx`` in the place of a shape word, and prior
preservation keeps ``a red shape on the left``. A class prompt of several lines gives each class
image its own prompt (image i: line i, cycling), so the prior can hold the class's variety.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from modules.schemas import RequestError, RequestModel

METHODS = ("dreambooth", "lora", "textual_inversion")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "polynomial", "cosine")
LORA_TARGETS = ("attention", "cross_attention_kv")  # the UNet layers a LoRA adapts (lora_train.UNET_TARGETS)
MIN_IMAGES, MAX_IMAGES = 3, 30
FEW_IMAGES = 5  # below this many instance images: a warning (3 is the hard minimum)
DEFAULT_LEARNING_RATES = {"dreambooth": 5e-6, "lora": 1e-4, "textual_inversion": 5e-3}
MAX_REPEATS = {"dreambooth": 200, "lora": 400, "textual_inversion": 2000}  # image views per image before a warning
# CLIP's BPE vocabulary is ordered by merge frequency: a whole word with a low id is a frequent one.
COMMON_TOKEN_ID = 20_000
FILEWORDS = "[filewords]"  # in a prompt: the image's caption (A1111's DreamBooth extension's word)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin")


class TrainOptions(RequestModel):
    """Everything but the images. Defaults: LoRA rank 4, the method's usual learning rate, 64 px
    sample images every ``sample_every`` steps (0: only at the end), a resumable state every
    ``save_every`` steps (0: only when cancelled)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    method: Literal["dreambooth", "lora", "textual_inversion"] = "lora"
    sd_model_checkpoint: str | None = Field(None, description="base checkpoint (None: the selected one)")
    sd_vae: str | None = Field(None, description="VAE file from models/VAE used to encode the images (None: the model's)")
    output_name: str = Field("", description="file name of the result, without extension (default: the identifier, "
                                               "e.g. 'zwx'; DreamBooth 'zwx-dreambooth')")
    overwrite: bool = Field(False, description="replace an existing model file of that name")
    resume: Literal["auto", "yes", "no"] = Field(
        "auto", description="auto: continue a saved state of this same training if there is one; "
                            "yes: it must exist; no: start over")
    instance_dir: str | None = Field(None, description="server folder the instance images were read from")
    instance_prompt: str = Field(..., min_length=1, max_length=500, description="e.g. 'a photo of zwx person'")
    class_prompt: str = Field("", max_length=10_000, description=(
        "e.g. 'a photo of a person'; several lines: class image i is drawn and trained with line i (cycling)"))
    token: str | None = Field(None, description="the identifier (default: instance prompt words not in the class prompt; "
                                                 "textual inversion: the output name)")
    with_prior_preservation: bool = False
    class_dir: str | None = Field(None, description=(
        "a server folder of class images (with NAME.txt captions) for prior preservation, used instead of "
        "generating them with the base model (at most num_class_images, in name order)"))
    num_class_images: int = Field(50, ge=1, le=1000)
    prior_loss_weight: float = Field(1.0, ge=0.0, le=100.0)
    class_steps: int = Field(20, ge=1, le=150, description="sampling steps of the generated class images")
    class_cfg_scale: float = Field(7.0, ge=1.0, le=30.0)
    steps: int = Field(400, ge=1, le=1_000_000)
    max_minutes: float = Field(0.0, ge=0.0, description="0: no limit; else stop training after this many minutes "
                                                         "(steps included) and write the result")
    learning_rate: float | None = Field(None, gt=0.0, le=1.0, description="None: 5e-6 DreamBooth, 1e-4 LoRA, 5e-3 TI")
    lr_scheduler: Literal["constant", "constant_with_warmup", "polynomial", "cosine"] = "constant"
    lr_warmup_steps: int = Field(0, ge=0)
    batch_size: int = Field(1, ge=1, le=64)
    resolution: int | None = Field(None, ge=8, le=4096, description="None: the model's native size")
    seed: int = Field(0, ge=0, le=2**32 - 1)
    train_text_encoder: bool = False
    text_encoder_learning_rate: float | None = Field(None, gt=0.0, le=1.0, description=(
        "with train_text_encoder: the text encoder's own learning rate (kohya's text_encoder_lr); None: learning_rate"))
    token_learning_rate: float | None = Field(None, gt=0.0, le=1.0, description=(
        "DreamBooth: pivotal tuning, the identifier's own token-embedding rows trained apart at this rate (e.g. 5e-3, "
        "as textual inversion trains its vectors) beside the model at learning_rate, and written into the checkpoint; "
        "None: those rows train with the text encoder, if at all"))
    gradient_checkpointing: bool = False
    mixed_precision: Literal["no", "fp16", "bf16"] = Field("no", description="CUDA only; the CPU trains in fp32")
    use_8bit_adam: bool = Field(False, description="bitsandbytes' AdamW8bit (CUDA only; else AdamW with a warning)")
    max_grad_norm: float = Field(1.0, gt=0.0)
    noise_offset: float = Field(0.0, ge=0.0, le=1.0, description=(
        "offset noise (kohya's noise_offset, e.g. 0.05-0.1): a random constant per image and channel added to the "
        "noise, so the model learns images darker or brighter than the average; 0: plain noise"))
    ema_decay: float = Field(0.0, ge=0.0, lt=1.0, description=(
        "keep an exponential moving average of the trained weights (e.g. 0.999) and write it, and draw the final "
        "samples with it, instead of the last step's weights; 0: off"))
    caption_dropout: float = Field(0.0, ge=0.0, lt=1.0, description=(
        "share of the images trained with the empty prompt (kohya's caption_dropout_rate, e.g. 0.1), so the "
        "unconditional prediction that classifier-free guidance extrapolates from is trained too; 0: never"))
    class_caption_dropout: float = Field(0.0, ge=0.0, lt=1.0, description=(
        "with prior preservation: share of the class images (only those) trained with the empty prompt (e.g. 0.1), "
        "so the unconditional prediction keeps learning the class as the base model drew it, never the instance; "
        "0: never"))
    snr_gamma: float | None = Field(None, gt=0.0, le=100.0, description=(
        "Min-SNR-gamma loss weighting (Hang et al. 2023; e.g. 5): each timestep's loss weighted by min(SNR, gamma) / SNR, "
        "which lowers the weight of the nearly clean steps; None: every timestep alike"))
    lora_rank: int = Field(4, ge=1, le=256)
    lora_alpha: float | None = Field(None, gt=0.0, description="None: the rank (scale 1)")
    lora_targets: Literal["attention", "cross_attention_kv"] = Field("attention", description=(
        "UNet layers the LoRA adapts: 'attention', to_q/to_k/to_v/to_out.0 of every attention block; "
        "'cross_attention_kv', only the key and value projections of the text (cross) attention, as Custom Diffusion"))
    init_lora: str | None = Field(None, description="LoRA (models/Lora) to continue training from")
    initializer_token: str = Field("*", min_length=1, description="textual inversion: word whose embedding starts the vectors")
    num_vectors: int = Field(1, ge=1, le=75, description="textual inversion: vectors per token")
    sample_prompts: list[str] = Field(default_factory=list, max_length=8)
    sample_every: int = Field(0, ge=0)
    sample_steps: int = Field(20, ge=1, le=150)
    save_every: int = Field(100, ge=0)
    warnings: list[str] = Field(default_factory=list, description="advice found while reading the request")

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, data: Any) -> Any:
        """No output name: the identifier (``zwx``; ``zwx-dreambooth`` for a full model)."""
        if not isinstance(data, dict) or data.get("output_name"):
            return data
        token = data.get("token")
        if token is not None and not isinstance(token, str):
            return data  # the field's own validation names the wrong type
        ident = token or _new_words(str(data.get("instance_prompt") or ""), str(data.get("class_prompt") or ""))
        if not ident:
            return data  # output_name stays missing: the error names it
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", ident).strip("-.")
        return {**data, "output_name": f"{name}-dreambooth" if data.get("method") == "dreambooth" else name}

    @field_validator("resolution")
    @classmethod
    def _multiple_of_8(cls, v: int | None) -> int | None:
        if v is not None and v % 8:
            raise ValueError(f"must be a multiple of 8 (got {v}; nearest: {max(8, round(v / 8) * 8)})")
        return v

    @field_validator("output_name")
    @classmethod
    def _file_name(cls, v: str) -> str:
        v = v.strip()
        if not v:
            return v  # checked with the other fields: the identifier may give the name
        if v.lower().endswith(MODEL_SUFFIXES):
            raise ValueError(f"give the name without extension (got {v!r})")
        if not NAME_RE.match(v):
            raise ValueError(f"must be a file name of letters, digits, '_', '-', '.' (no folders), got {v!r}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TrainOptions:
        if self.with_prior_preservation and not self.class_prompt.strip() and not self.class_dir:
            raise ValueError("class_prompt: required with prior preservation (e.g. 'a photo of a person')")
        if not self.output_name:
            if FILEWORDS in self.instance_prompt:
                raise ValueError("token: required when the identifier is only in the captions (e.g. token 'zwx' "
                                 f"with instance prompt {FILEWORDS!r})")
            raise ValueError("output_name: required (no class prompt tells the identifier to name the file after)")
        if self.method == "textual_inversion":
            if self.token not in (None, self.output_name):
                raise ValueError(f"token: a textual-inversion embedding is used by its file name; leave token empty "
                                 f"or make it the output name {self.output_name!r} (got {self.token!r})")
            if FILEWORDS not in self.instance_prompt and self.output_name.lower() not in self.instance_prompt.lower():
                raise ValueError(f"instance_prompt: must contain the embedding's name {self.output_name!r} "
                                 f"(e.g. 'a {self.output_name} shape'): its vectors are trained in that place")
        if self.class_caption_dropout and not self.with_prior_preservation:
            raise ValueError("class_caption_dropout: only with prior preservation (it drops the class images' prompts; "
                             "caption_dropout drops any image's)")
        if self.text_encoder_learning_rate is not None:
            if self.method == "textual_inversion":
                raise ValueError("text_encoder_learning_rate: not for textual inversion (it trains only its vectors)")
            if not self.train_text_encoder:
                raise ValueError("text_encoder_learning_rate: only with train_text_encoder (the text encoder is frozen)")
        if self.token_learning_rate is not None:
            if self.method != "dreambooth":
                raise ValueError(f"token_learning_rate: only for method 'dreambooth' (got method {self.method!r})")
            if not self.identifier():
                raise ValueError("token_learning_rate: needs the identifier; give token (e.g. 'zwx')")
        if self.init_lora and self.method != "lora":
            raise ValueError(f"init_lora: only for method 'lora' (got method {self.method!r})")
        return self

    @property
    def override_settings(self) -> dict[str, Any]:
        """Generation requests may override settings; a training never does (``Services.submit`` reads it)."""
        return {}

    @property
    def lr(self) -> float:
        """The learning rate, or the method's usual one."""
        return self.learning_rate if self.learning_rate is not None else DEFAULT_LEARNING_RATES[self.method]

    def identifier(self) -> str | None:
        """The word the concept is bound to: ``token``, else the instance prompt's words that the
        class prompt lacks (``a zwx shape`` vs ``a shape`` → ``zwx``); None when that cannot be told."""
        if self.method == "textual_inversion":
            return self.output_name
        if self.token:
            return self.token
        return _new_words(self.instance_prompt, self.class_prompt)


def strip_words(text: str, words: str | None) -> str:
    """``text`` without the words of ``words`` (case-insensitive, whole words), spaces tidied."""
    if not words:
        return text
    drop = {w.lower() for w in words.split()}
    kept = [w for w in text.split() if re.sub(r"[^\w-]", "", w.lower()) not in drop]
    return " ".join(kept).replace(" ,", ",")


def _new_words(instance_prompt: str, class_prompt: str) -> str | None:
    """The instance prompt's words that the class prompt lacks; None without a class prompt."""
    if not class_prompt.strip():
        return None
    words = lambda text: re.findall(r"[\w-]+", text.replace(FILEWORDS, " ").lower())  # noqa: E731
    extra = [w for w in words(instance_prompt) if w not in set(words(class_prompt))]
    return " ".join(extra) or None


class TrainRequest(TrainOptions):
    """A training job: the options and the instance images (PIL, as read; resized when the job runs).

    A request carries its job's live ``monitor`` (``modules.training.job.TrainMonitor``): it is
    created with the request, shared by the copy ``Services.submit`` makes, and read by the API and UI.
    """

    instance_images: list[Any] = Field(default_factory=list, repr=False, description="PIL images")
    instance_captions: list[str | None] = Field(default_factory=list, description="one per image (None: no caption)")
    class_images: list[Any] = Field(default_factory=list, repr=False, description="PIL images read from class_dir")
    class_captions: list[str | None] = Field(default_factory=list, description="one per class image (None: none)")
    _monitor: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _image_count(self) -> TrainRequest:
        n = len(self.instance_images)
        if n < MIN_IMAGES:
            where = f" (folder {self.instance_dir})" if self.instance_dir else ""
            raise ValueError(f"instance_images: {n} readable images{where}; at least {MIN_IMAGES} are needed "
                             f"({MIN_IMAGES}-{MAX_IMAGES} of the subject)")
        if n > MAX_IMAGES:
            raise ValueError(f"instance_images: {n} images; at most {MAX_IMAGES} are used for one concept "
                             "(choose the best ones)")
        if self.instance_captions and len(self.instance_captions) != n:
            raise ValueError(f"instance_captions: {len(self.instance_captions)} captions for {n} images (give one per "
                             "image, in the same order; an empty one for an image without)")
        if FILEWORDS in self.instance_prompt or FILEWORDS in self.class_prompt:
            missing = [str(i + 1) for i, c in enumerate(self.captions()) if not c]
            if missing:
                raise ValueError(f"instance_captions: the prompts use {FILEWORDS} but image(s) {', '.join(missing)} have "
                                 "no caption (a NAME.txt beside NAME.png, or instance_captions)")
        if self.method == "textual_inversion":
            for prompt in self.instance_prompts():
                if self.output_name.lower() not in prompt.lower():
                    raise ValueError(f"instance_prompt: {prompt!r} lacks the embedding's name {self.output_name!r}: "
                                     "its vectors are trained in that place")
        return self

    def captions(self) -> list[str]:
        """One caption per image ('' where there is none)."""
        return [(c or "").strip() for c in self.instance_captions] or [""] * len(self.instance_images)

    def instance_prompts(self) -> list[str]:
        """The prompt of each instance image: the instance prompt with [filewords] replaced by its caption."""
        return [fill_filewords(self.instance_prompt, c) for c in self.captions()]

    def class_prompts(self) -> list[str]:
        """The class prompts, class image i drawn and trained with prompt i (cycling): one per line of the
        class prompt, and a line with [filewords] once per caption (the identifier taken out). Class
        images from ``class_dir`` are trained with their own captions (those without: the lines, cycling)."""
        lines = self._class_prompt_lines()
        if self.class_images:
            captions = self.class_captions or [None] * len(self.class_images)
            return [(c or "").strip() or lines[i % len(lines)] for i, c in enumerate(captions)]
        return lines

    def _class_prompt_lines(self) -> list[str]:
        out: list[str] = []
        for line in [line.strip() for line in self.class_prompt.splitlines() if line.strip()] or [""]:
            if FILEWORDS in line:
                out += [fill_filewords(line, strip_words(c, self.identifier())) for c in self.captions()]
            else:
                out.append(line)
        return out

    @property
    def monitor(self) -> Any:
        """The job's live state (created on first use)."""
        if self._monitor is None:
            from modules.training.job import TrainMonitor

            self._monitor = TrainMonitor()
        return self._monitor


def fill_filewords(prompt: str, caption: str) -> str:
    """``prompt`` with [filewords] replaced by ``caption`` (spaces and commas tidied)."""
    if FILEWORDS not in prompt:
        return prompt
    text = " ".join(prompt.replace(FILEWORDS, caption).split()).replace(" ,", ",")
    return text.strip(" ,")


def training_warnings(request: TrainOptions, image_count: int, tokenizer: Any) -> list[str]:
    """Advice before a run: a common word as identifier, few images, likely over-training."""
    out: list[str] = []
    ident = request.identifier()
    if ident and request.method != "textual_inversion":
        ids = tokenizer(ident, add_special_tokens=False).input_ids
        word = tokenizer.convert_ids_to_tokens(ids[0]) if len(ids) == 1 else ""
        if len(ids) == 1 and word.endswith("</w>") and word[:-4].isalpha() and ids[0] < COMMON_TOKEN_ID:
            out.append(f"the identifier {ident!r} is a common word (one frequent CLIP token): the model already "
                       "means something by it; a rare token such as 'zwx' or 'ohwx' works best")
    if image_count < FEW_IMAGES:
        out.append(f"only {image_count} instance images: {FEW_IMAGES}-20 varied images give a more faithful concept")
    captions = getattr(request, "instance_captions", [])
    if any(captions) and FILEWORDS not in request.instance_prompt + request.class_prompt:
        out.append(f"the images have captions, but neither prompt uses {FILEWORDS}: the captions are not used "
                   f"(e.g. instance prompt {FILEWORDS!r} or 'a photo of zwx person, {FILEWORDS}')")
    repeats = request.steps * request.batch_size / max(1, image_count)
    if repeats > MAX_REPEATS[request.method]:
        out.append(f"{request.steps} steps x batch {request.batch_size} show each of the {image_count} images about "
                   f"{repeats:.0f} times (over {MAX_REPEATS[request.method]} tends to over-fit: the model copies the "
                   "images); try fewer steps")
    return out


def parse_train_request(data: dict[str, Any]) -> TrainRequest:
    """Validate ``data`` into a TrainRequest; RequestError names each bad field (the checks across
    fields name theirs in the message)."""
    try:
        return TrainRequest.model_validate(data)
    except ValidationError as err:
        parts = []
        for e in err.errors():
            where = ".".join(str(x) for x in e["loc"])
            message = e["msg"].removeprefix("Value error, ")
            parts.append(f"{where}: {message}" if where else message)
        raise RequestError("; ".join(parts)) from None
