"""The classifiers' model card names what each model is and how it was trained."""

import pytest

from lungdr.config import CNN3DConfig, SVMConfig, TransferConfig
from lungdr.models.card import model_card
from lungdr.models.cnn3d import CNN3D
from lungdr.models.svm import GaborSVM
from lungdr.models.transfer import InceptionTransfer


@pytest.mark.parametrize("augment", [False, True])
def test_card_names_c3_augmentation_and_c2_weights(augment):
    classifiers = {"svm": GaborSVM(SVMConfig()), "transfer": InceptionTransfer(TransferConfig(weights="none")),
                   "cnn3d": CNN3D(CNN3DConfig(augment=augment))}
    metrics = {"fusion": {"accuracy": 0.9, "auc": 0.95, "coverage": 0.97, "needs_review": 1, "n": 30}}
    card = model_card(classifiers, metrics, {"svm": 0.4, "transfer": 0.3, "cnn3d": 0.3}, {"train": 10}, ["caveat"],
                      has_segmenter=True)
    assert "not tuberculosis" in card and "NOT pretrained" in card and "- caveat" in card
    c3 = next(line for line in card.splitlines() if line.startswith("- C3"))
    assert ("geometric augmentation" in c3) is augment


@pytest.mark.parametrize("views,intensities", [(("letterbox", "letterbox"), ("film", "film")),
                                               (("lungs", "square"), ("lungs", "film")),
                                               (("square", "lungs"), ("film", "lungs"))])
def test_card_says_which_classifiers_see_another_view(views, intensities):
    c1, c3 = views
    region = "lung_box" if c1 == "lungs" else "image"
    classifiers = {"svm": GaborSVM(SVMConfig(view=c1, intensity=intensities[0], context_region=region)),
                   "cnn3d": CNN3D(CNN3DConfig(view=c3, intensity=intensities[1]))}
    card = model_card(classifiers, {}, {"svm": 0.5, "cnn3d": 0.5}, {"train": 10}, [], has_segmenter=True)

    def named(phrase):  # the models a card line with ``phrase`` lists
        return [line.rsplit(": ", 1)[1] for line in card.splitlines() if phrase in line]

    def expected(view):
        return [f"{n}." for n, v in zip(("svm", "cnn3d"), views) if v == view]

    assert named("framed around its segmented lungs") == expected("lungs")
    assert named("stretched to the full square") == expected("square")
    c1_line = next(line for line in card.splitlines() if line.startswith("- C1"))
    assert ("the lung box's texture on a 6 x 6 grid" in c1_line) == (region == "lung_box")
    assert ("whole-image texture on a 6 x 6 grid" in c1_line) == (region == "image")
    assert named("equalized over the segmented lung box") == [f"{n}." for n, i in zip(("svm", "cnn3d"), intensities)
                                                              if i == "lungs"]
