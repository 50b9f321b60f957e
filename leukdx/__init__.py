"""leukdx: healthy vs leukaemic blood-smear classification with Keras 3."""

__version__ = "0.1.0"
