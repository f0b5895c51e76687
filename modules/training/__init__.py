"""Fine-tuning as queue jobs: DreamBooth (full), DreamBooth-LoRA and textual inversion.

- ``config``: the typed ``TrainRequest`` (every input, validated) and its warnings;
- ``data``: instance images (uploads or a folder) and the cached class images;
- ``dreambooth`` / ``lora_train`` / ``textual_inversion``: one training method each (what is
  trained, how the prompt is encoded, how the result is written);
- ``loop``: the shared training loop (noise, loss, optimizer, precision, resumable state);
- ``outputs``: atomic writes of the result files (temporary file, then rename);
- ``job``: the queue job ``run(request, ctx)`` and its live ``TrainMonitor``;
- ``cli``: ``launch.sh train ...``.
"""
