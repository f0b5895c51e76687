"""The DreamBooth demonstration (bundled/demo_dreambooth.py): instance hearts, class scenes, each run's request."""

from __future__ import annotations

import numpy as np

from bundled.demo_dreambooth import (
    RUNS,
    TABLE_HEAD,
    Scores,
    class_scenes,
    instance_images,
    instance_scenes,
    make_parser,
    run_values,
    shares,
    table_row,
)
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


def test_the_table_reports_hearts_circles_and_squares_in_its_own_columns():
    scores = Scores(zwx_drawn={"heart": 0.7, "square": 0.3}, zwx_color=1.0, zwx_position=0.96,
                    circle_drawn={"circle": 0.88, "star": 0.12}, square_drawn={"heart": 0.4, "square": 0.6})
    assert (scores.heart, scores.circle, scores.square) == (0.7, 0.88, 0.6)
    row = table_row("dreambooth", "yes", 3000, 9.5, scores)
    assert row == "| dreambooth | yes | 3000 | 9.5 | 70% | 100% | 96% | 88% | 60% |"
    header, rule = TABLE_HEAD.splitlines()
    assert header.split("|")[-2].strip() == "square → square"
    assert len(header.split("|")) == len(rule.split("|")) == len(row.split("|"))
    assert Scores({}, 0.0, 0.0, {}, {}).square == 0.0  # nothing drawn: no share


def test_each_run_uses_its_own_recipe_unless_a_flag_overrides_it():
    from modules.training.config import TrainOptions

    prior_fields, plain_fields = (fields for _, fields in RUNS["dreambooth"])
    args = make_parser().parse_args([])
    assert (args.sampler, args.cfg_scale, args.class_images) == ("DPM++ 2M", 3.0, "rendered")
    own = run_values("dreambooth", True, prior_fields, args)
    assert own["train_text_encoder"] is True and own["class_caption_dropout"] == 0.1
    assert own["learning_rate"] == prior_fields["learning_rate"] and own["class_cfg_scale"] == 3.0
    assert len(own["class_prompt"].splitlines()) == args.num_class_images
    # by default the class prompts are the instance captions with each trained shape for "zwx shape"
    instance_captions = instance_images()[1]
    for i, line in enumerate(own["class_prompt"].splitlines()):
        shape = SHAPES[i % len(SHAPES)]
        assert line == instance_captions[(i // len(SHAPES)) % len(instance_captions)].replace("zwx shape", shape)
    random_scenes = run_values("dreambooth", True, prior_fields, make_parser().parse_args(["--no-class-like-instances"]))
    assert random_scenes["class_prompt"] == "\n".join(text for _, text in class_scenes(args.num_class_images))
    flags = make_parser().parse_args(["--no-train-text-encoder", "--class-caption-dropout", "0", "--learning-rate", "3e-5",
                                      "--steps", "7", "--cfg-scale", "6"])
    given = run_values("dreambooth", True, prior_fields, flags)
    assert (given["train_text_encoder"], given["class_caption_dropout"], given["learning_rate"]) == (False, 0.0, 3e-5)
    assert given["steps"] == 7 and given["class_cfg_scale"] == 6.0
    plain = run_values("dreambooth", False, plain_fields, make_parser().parse_args(["--class-caption-dropout", "0.2"]))
    assert "class_caption_dropout" not in plain and plain["with_prior_preservation"] is False
    pivot = make_parser().parse_args(["--token-learning-rate", "5e-3", "--text-encoder-learning-rate", "1e-3"])
    assert run_values("dreambooth", True, prior_fields, pivot)["token_learning_rate"] == 5e-3
    assert run_values("dreambooth", True, prior_fields, pivot)["text_encoder_learning_rate"] == 1e-3
    assert "text_encoder_learning_rate" not in run_values("dreambooth", False, plain_fields, pivot)  # its text encoder is frozen
    lora = run_values("lora", True, RUNS["lora"][0][1], pivot)
    assert "token_learning_rate" not in lora and "token_learning_rate" not in own  # DreamBooth only, off unless asked
    for values in (own, given, plain, lora):  # every run's fields make a valid request
        TrainOptions(**values)
