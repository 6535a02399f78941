"""fastalex.training.startup: the device choice, the process group, errors as one line."""

import argparse

import pytest
import torch

from fastalex.training import startup
from fastalex.training.distributed import DistInfo
from fastalex.training.startup import UsageError


def test_resolve_device():
    assert startup.resolve_device("cpu") == torch.device("cpu")
    assert startup.resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UsageError, match="--device nonsense"):
        startup.resolve_device("nonsense")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA is not available"):
            startup.resolve_device("cuda")
    else:
        with pytest.raises(UsageError, match="CUDA device"):
            startup.resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_session_without_torchrun_is_one_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with startup.session("cpu") as (device, info):
        assert device == torch.device("cpu") and info == DistInfo()
        assert not info.enabled and info.is_main
    with pytest.raises(UsageError):
        with startup.session("nonsense"):
            pass


def test_run_cli_exit_codes(capsys):
    assert startup.run_cli("prog", lambda: 0) == 0

    def bad():
        raise UsageError("--x must be >= 1")

    assert startup.run_cli("prog", bad) == 2
    assert capsys.readouterr().err == "prog: error: --x must be >= 1\n"

    def interrupted():
        raise KeyboardInterrupt

    assert startup.run_cli("prog", interrupted, interrupted="stopped; files kept") == 130
    assert capsys.readouterr().err == "prog: stopped; files kept\n"

    def crashes():
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError):  # anything else keeps its traceback
        startup.run_cli("prog", crashes)


def test_help_formatter_shows_defaults(capsys):
    p = argparse.ArgumentParser(prog="p", formatter_class=startup.HelpFormatter,
                                description="one line that wraps " * 8,
                                epilog="kept:\n  as written")
    p.add_argument("--n", type=int, default=3, help="a number")
    p.add_argument("--path", help="a path (default: none)")
    p.add_argument("--on", action="store_true", help="a switch")
    p.add_argument("--own", default=2, help="shown where I say (%(default)s) only")
    text = p.format_help()
    assert "a number (default: 3)" in text and "a switch (default: False)" in text
    assert "(default: none)" in text and "(default: None)" not in text
    assert "shown where I say (2) only\n" in text
    assert "kept:\n  as written" in text
    assert max(len(line) for line in text.splitlines()) < 100  # the description is wrapped


def test_a_stopped_run_is_one_line_exit_1(capsys):
    def stops():
        raise startup.TrainingError("non-finite training loss at epoch 2, step 7: stopped")

    assert startup.run_cli("prog", stops) == 1
    assert capsys.readouterr().err == \
        "prog: error: non-finite training loss at epoch 2, step 7: stopped\n"


def test_fastalex_warnings_print_as_one_line(capsys):
    """Python prints a warning as file:line: Category: message and the source line under it;
    fastalex's own (an unreadable image skipped) are one line, other warnings unchanged."""
    import warnings

    from fastalex.training.data.datasets import CorruptImageWarning

    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *rest: seen.append(str(message))
        startup.install_warning_format()
        startup.install_warning_format()  # idempotent: a forked worker inherits it
        warnings.warn("skipping unreadable image a/b.jpg: cannot\n  identify it",
                      CorruptImageWarning)
        warnings.warn("someone else's", UserWarning)
    assert capsys.readouterr().err == \
        "warning: skipping unreadable image a/b.jpg: cannot identify it\n"
    assert seen == ["someone else's"]
