"""One module per generation mode; each exposes ``run(request, ctx) -> GenerationResult``."""
