"""Typed errors of the package; scripts turn them into one-line messages and exit codes."""


class PipelineError(Exception):
    """Base of every error this package raises on purpose."""

    exit_code = 1


class InputError(PipelineError):
    """The user gave something unusable: a bad setting, an empty folder, an unreadable image."""

    exit_code = 2


class ImageError(InputError):
    """One image (a file or a URL) could not be read or decoded; the message names it.

    ``kind`` says which way it failed: ``"not_image"``, ``"too_large"``, ``"refused"`` (a URL
    the fetcher will not visit), ``"unreachable"`` (a URL that could not be fetched) or
    ``"invalid"`` (anything else: empty, missing, unreadable).
    """

    def __init__(self, source: str, reason: str, kind: str = "invalid"):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason
        self.kind = kind


class ArtifactError(PipelineError):
    """An artifacts folder is missing, partial, or written by an incompatible version."""

    exit_code = 2


class UnknownImage(InputError):
    """No indexed image has the id or path asked for (it was removed, or never was)."""
