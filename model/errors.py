"""The one exception type for bad user input.

Every layer raises `InputError` with a one-line message that names the offending file or value and
says what was expected; the CLI turns it into `fsad: error: <message>` on stderr and exit code 2.
"""


class InputError(ValueError):
    """Bad user input (a file, a value, a data layout). The message is a single line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # force one line
