"""Typed errors: each names what was wrong, so the CLI can print it without a traceback.

Torch-free, because the runtime raises them too.
"""


class LatexportError(Exception):
    """Base class of every error latexport raises on purpose."""


class UnsupportedModelError(LatexportError):
    """The architecture or task is not one latexport can convert."""


class CheckpointError(LatexportError):
    """A checkpoint is missing, partial or corrupt."""


class OutputExistsError(LatexportError):
    """The output directory exists and ``overwrite`` was not asked for."""


class ValidationError(LatexportError):
    """An exported graph does not match its reference within tolerance."""

    def __init__(self, message: str, report: str = ""):
        super().__init__(message)
        self.report = report


class ExportError(LatexportError):
    """The exporter could not turn the model into a graph (the message says which, and what takes it)."""


class ModelDirectoryError(LatexportError):
    """An exported model directory (or its model.onnx) cannot be used."""


class SettingsError(LatexportError, ValueError):
    """An option is out of its range (a profile power, a learning rate, ...)."""


class InvalidInputError(LatexportError, ValueError):
    """A runtime input (text, tensor, keep_ratio) is unusable; the message names it."""


class ProviderError(LatexportError):
    """An ONNX Runtime execution provider is unknown or not available here."""
