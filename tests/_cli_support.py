"""Running the command line in tests: the exit code and what it printed."""

from napari_itermask.cli import main


def run_cli(capsys, *args):
    """``itermask ARGS...`` in-process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def lines(text):
    """The non-blank lines of ``text``."""
    return [ln for ln in text.strip().splitlines() if ln.strip()]


def assert_one_line_error(code, err):
    """A failure reported as exactly one ``itermask: error:`` line, without a traceback."""
    assert code != 0
    shown = lines(err)
    assert len(shown) == 1, err
    assert shown[0].startswith("itermask: error:") and "Traceback" not in err
