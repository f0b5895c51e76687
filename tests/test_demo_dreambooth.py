"""The DreamBooth demonstration's data (bundled/demo_dreambooth.py): instance hearts, class scenes."""

from __future__ import annotations

import numpy as np

from bundled.demo_dreambooth import class_scenes, instance_images, instance_scenes, shares
from bundled.detect import detect
from bundled.shapes import SHAPES


def test_instance_images_are_hearts_captioned_with_their_colour_and_place():
    images, captions = instance_images()
    assert len(images) == len(captions) == 5
    for image, scene, caption in zip(images, instance_scenes(), captions, strict=True):
        found = detect(image)
        assert (found.shape, found.color, found.background) == ("heart", scene.color, scene.background)
        assert caption.startswith(f"a {scene.color} zwx shape ") and caption.endswith(f", {scene.background} background")


def test_class_scenes_cycle_the_trained_shapes_at_random_places():
    scenes = class_scenes(8)
    assert [scene.shape for scene, _ in scenes] == list(SHAPES) * 2
    assert len({(scene.color, scene.position) for scene, _ in scenes}) > 4
    assert all(text.startswith(f"a {scene.color} {scene.shape} ") for scene, text in scenes)


def test_class_scenes_like_the_instances_take_each_instance_context_in_turn():
    instances = instance_scenes()
    scenes = class_scenes(12, like_instances=True)
    assert [scene.shape for scene, _ in scenes] == list(SHAPES) * 3
    for i, (scene, text) in enumerate(scenes):
        twin = instances[i // len(SHAPES)]
        assert (scene.color, scene.background, scene.position, scene.size) == (
            twin.color, twin.background, twin.position, twin.size)
        assert "zwx" not in text and scene.shape in text


def test_shares_count_the_detected_shapes_most_frequent_first():
    assert shares(["star", "circle", "star", "heart"]) == {"star": 0.5, "circle": 0.25, "heart": 0.25}
    assert np.isclose(sum(shares(["a", "b", "b"]).values()), 1.0)
