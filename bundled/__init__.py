"""The bundled "shapes world" model: its data renderer, detector, trainer and evaluation."""
