"""The three classifiers behind one interface (Ray-free): C1 ``GaborSVM``, C2 ``InceptionTransfer``,
C3 ``CNN3D``. Import them from their modules (``lungdr.models.svm`` ...) so torch loads only when needed."""

CLASSIFIER_NAMES = ("svm", "transfer", "cnn3d")


def classifier_class(name: str):
    """The ``Classifier`` subclass registered under ``name`` (imports lazily)."""
    from lungdr.errors import ConfigError

    if name == "svm":
        from lungdr.models.svm import GaborSVM as cls
    elif name == "transfer":
        from lungdr.models.transfer import InceptionTransfer as cls
    elif name == "cnn3d":
        from lungdr.models.cnn3d import CNN3D as cls
    else:
        raise ConfigError(f"unknown classifier {name!r}; expected one of {CLASSIFIER_NAMES}")
    return cls


def load_classifier(directory):
    """Load whichever classifier ``directory/config.json`` names."""
    from lungdr.models.base import read_config

    return classifier_class(read_config(directory)["name"]).load(directory)
