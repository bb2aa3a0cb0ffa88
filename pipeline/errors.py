"""Typed errors of the package; scripts turn them into one-line messages and exit codes."""


def shown(text: str, limit: int = 300) -> str:
    """``text`` (a path, a URL, a name someone typed) fit for a one-line message: cut in the middle
    past ``limit`` characters, and control characters (a newline in a file name) escaped."""
    if len(text) > limit:
        text = f"{text[: limit // 2]}...({len(text) - limit:,} characters)...{text[-limit // 2:]}"
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


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
        super().__init__(f"{shown(source)}: {reason}")
        self.source = source
        self.reason = reason
        self.kind = kind


class ArtifactError(PipelineError):
    """An artifacts folder is missing, partial, or written by an incompatible version."""

    exit_code = 2


class Unavailable(PipelineError):
    """A part of a service spread over a cluster (an index shard, the encoder) did not answer; the
    client may try again (HTTP 503)."""


class UnknownImage(InputError):
    """No indexed image has the id or path asked for (it was removed, or never was)."""
