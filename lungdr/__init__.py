"""lungdr: distributed detection of lung abnormalities in chest DR images.

The core (io, transforms, augment, segmentation, features, models, ensemble, metrics, bundle,
predictor) never imports Ray; ``lungdr.scale`` is the only package that does.
"""

__version__ = "0.1.0"
