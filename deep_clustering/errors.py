"""The two kinds of failure a user is told about in one line, without a traceback."""


class InputError(ValueError):
    """Bad input: names the key, the value or the file, and is raised before any training."""


class TrainingError(RuntimeError):
    """Training went wrong (a NaN loss, collapsed codes): names the stage and the step."""
