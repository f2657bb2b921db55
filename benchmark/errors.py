"""The one exception the CLI turns into a single line on stderr and exit code 2."""


class UserError(Exception):
    """Bad input from the user: a missing file, a malformed suite, absent data. Never a bug of ours."""


def one_line(exc: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
