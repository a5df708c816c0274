"""Errors shown to the user as one line (no traceback) with a non-zero exit."""


class UserInputError(ValueError):
    """Bad input: the message names the setting, file or column to fix."""


class ConfigError(UserInputError):
    """An invalid setting."""


class DataError(UserInputError):
    """Unusable data: missing file, missing key or column, bad values or shapes."""


class DivergenceError(RuntimeError):
    """Training or scoring produced NaN/inf; the message names the step."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when the message is empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
