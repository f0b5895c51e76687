"""ControlNet, built in: models (``models``, ``layout``), preprocessors (``preprocessors``,
``annotators``), the detect job (``detect``) and the model-cache glue (``runtime``).

Units are applied in the sampling loop by ``modules.controlnet.apply``.
"""
