"""User-facing errors: raised for mistakes a user can fix, printed as one line."""


class UserError(Exception):
    """A mistake in the user's input (config, paths, data); the message names what is wrong."""


class ConfigError(UserError):
    """A config key is unknown, has the wrong type or an impossible value."""


def first_line(err: BaseException) -> str:
    """An exception's message cut to its first line (for one-line user errors)."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
