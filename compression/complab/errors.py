"""Errors a user can cause. Every message names the problem and the fix."""


class CompressionLabError(Exception):
    """Base class: the app shows these with st.error, the CLI with exit code 2 and one line."""


class ModelLoadError(CompressionLabError):
    """A model file is missing, corrupt, untrusted or does not match its architecture."""


class MismatchError(ModelLoadError):
    """A model and a dataset do not fit each other: input channels, class count or input size."""


class DataLoadError(CompressionLabError):
    """A dataset folder is missing or not in a format we read."""


class PlanError(CompressionLabError):
    """A plan (recipe) is invalid: names the step, the layer and the bad value."""


class FormatError(CompressionLabError):
    """A compact model file is truncated, corrupt or not ours."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's first non-empty line for a one-line message (some libraries raise with no text at all)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return type(exc).__name__
