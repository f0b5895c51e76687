"""What the page tells a new user before a run: what the bundled model knows (the prompt
placeholder and examples), and a one-line warning when the size is far from the checkpoint's
native one (a model draws repeated or broken-up pictures far from the size it was trained at)."""

from __future__ import annotations

BUNDLED_MODEL = "easel-shapes"  # models/Stable-diffusion/easel-shapes.safetensors (bundled/README.md)
# the bundled model's world (bundled/shapes.py; tests/test_webui_hints.py keeps these true)
BUNDLED_SHAPES = ("circle", "square", "triangle", "star")
BUNDLED_COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
BUNDLED_SIZES = ("small", "large")
BUNDLED_PLACES = ("on the left", "on the right", "at the top", "at the bottom", "in the center")
BUNDLED_EXAMPLES = (
    "a large red circle on the left, blue background",
    "a small yellow star at the top, black background",
    "a large green triangle in the center, white background",
)
GENERAL_PLACEHOLDER = ("Prompt (Ctrl+Enter generates; paste an A1111 infotext and press {read} to fill every "
                       "field)")
FAR_FACTOR = 2.0  # a side more than twice, or less than half, the native size is "far"


def bundled_hint(native: int) -> str:
    """What the bundled model knows, in one paragraph (the examples row's label)."""
    return (f"Examples: the bundled model draws one shape ({', '.join(BUNDLED_SHAPES)}), {len(BUNDLED_COLOURS)} colours "
            f"({', '.join(BUNDLED_COLOURS)}), {' or '.join(BUNDLED_SIZES)}, {', '.join(BUNDLED_PLACES)}, on a "
            f"solid background, at {native}x{native}")


def prompt_placeholder(model_name: str | None, read_params: str) -> str:
    """The prompt box's placeholder: with the bundled model selected, an example it knows; else the
    shortcuts. Short, so the box keeps its height when the user starts typing."""
    if model_name == BUNDLED_MODEL:
        return f"e.g. {BUNDLED_EXAMPLES[0]} (Ctrl+Enter generates)"
    return GENERAL_PLACEHOLDER.format(read=read_params)


def size_warning(width: int | float | None, height: int | float | None, native: int) -> str:
    """One line when width or height is far from ``native``; empty otherwise."""
    if not width or not height or native <= 0:
        return ""
    far = [side for side in (width, height) if side > native * FAR_FACTOR or side < native / FAR_FACTOR]
    if not far:
        return ""
    return (f"<span class='easel-warning'>{int(width)}x{int(height)} is far from this checkpoint's native "
            f"{native}x{native}: expect repeated or broken-up pictures (try {native}x{native}, and Hires. fix to "
            f"go larger).</span>")


def selected_model_name(services) -> str | None:
    """The selected checkpoint's model name (file name without extension), None without one."""
    from modules.checkpoints import CheckpointError

    try:
        return services.checkpoints.get(services.selected_checkpoint).model_name
    except CheckpointError:
        return None
