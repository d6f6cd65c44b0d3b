"""Errors that are the user's to fix: the CLI prints them as one line and exits 2."""


class LpdaskError(Exception):
    """A problem with the input, the options or the output path, explained in one line."""


class MetadataWarning(UserWarning):
    """Input metadata that the output cannot carry, named so nothing is dropped silently."""


class PlanWarning(UserWarning):
    """No plan keeps within the memory budget; the one needing the least memory runs."""
