"""fastalex.training.data.shapes: the classes differ in shape, not in colour."""

import numpy as np

from fastalex.training.data import shapes
from fastalex.training.data.shapes import CLASSES, render_image


def test_builtin_classes_differ_in_shape_not_colour():
    # The same pose for every class (the pose is drawn first): the masks must differ clearly.
    masks = {
        name: np.asarray(shapes._shape_mask(name, np.random.default_rng(7), 64), np.float32) / 255
        for name in CLASSES
    }
    for i, a in enumerate(CLASSES):
        for b in CLASSES[i + 1 :]:
            overlap = np.minimum(masks[a], masks[b]).sum() / np.maximum(masks[a], masks[b]).sum()
            assert overlap < 0.8, (a, b, overlap)
    # Colour carries no class information: the mean colours of the classes differ far less
    # than the colours of the images within a class (a Fisher ratio near 1/n, not >> 1).
    n = 24
    colours = np.array(
        [
            [
                np.asarray(render_image(name, np.random.default_rng([c, i]), 24)).mean((0, 1))
                for i in range(n)
            ]
            for c, name in enumerate(CLASSES)
        ]
    )  # [classes, n, 3]
    between = colours.mean(1).var(0)
    within = colours.var(1).mean(0)
    assert np.all(between / within < 0.25), between / within
