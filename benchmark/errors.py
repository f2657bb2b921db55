"""The one exception the CLI turns into a single line on stderr and exit code 2."""


class UserError(Exception):
    """Bad input from the user: a missing file, a malformed suite, absent data. Never a bug of ours."""
