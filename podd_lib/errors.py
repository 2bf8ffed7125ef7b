"""One exception type for bad input: the CLI prints its message as one line and exits 2."""


class PoddError(ValueError):
    """A user-facing error whose message is one clear line."""
