"""The two kinds of failure a user is told about in one line, without a traceback."""


class InputError(ValueError):
    """Bad input: names the key, the value or the file, and is raised before any training."""


class TrainingError(RuntimeError):
    """Training went wrong (a NaN loss, collapsed codes): names the stage and the step."""


def either(choices: tuple[str, ...]) -> str:
    """'a, b or c': the allowed values, for an error message."""
    return f"{', '.join(choices[:-1])} or {choices[-1]}"
