"""The typed error every lmlab package raises for bad input; the CLI prints it as one line and exits 1."""


class LmlabError(Exception):
    """A problem with the user's input or data (missing file, wrong column, mismatched checkpoint, NaN loss).

    The message must name the problem and, where possible, the fix. `lmlab.cli` prints it without a traceback.
    """
