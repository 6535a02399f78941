"""What every command shares: the device choice, joining (and leaving) the process group of a
``torchrun`` launch, the help format, and a user's mistake as one line on stderr.

torch is imported inside the functions, so a command's ``--help`` and flag errors come first.
"""

import argparse
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class UsageError(Exception):
    """A problem with the command line or its inputs: printed without a traceback (exit 2)."""


class TrainingError(Exception):
    """A run that had to stop (e.g. its loss stopped being finite), with a complete message:
    printed without a traceback (exit 1)."""


class HelpFormatter(argparse.HelpFormatter):
    """Every option that has a default ends its help with ``(default: ...)``, the value the
    parser holds when it prints; a description or epilog with line breaks is kept as written."""

    def _fill_text(self, text, width, indent):
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action):
        text = action.help or ""
        if "%(default)" not in text and action.option_strings \
                and action.default not in (None, argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


def resolve_device(name=None):
    """The ``torch.device`` for ``--device NAME``; ``None`` means cuda when available, else cpu.
    A name this machine cannot run is a :class:`UsageError`."""
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise UsageError(f"--device {name}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine "
                         "(use --device cpu)")
    if device.type == "cuda" and device.index is not None \
            and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    return device


@contextmanager
def session(device_name=None) -> Iterator[tuple]:
    """``(device, info)`` for this process, inside a ``with`` block: the checked device, and
    the :class:`~fastalex.training.distributed.DistInfo` of the process group it joined (left
    again on exit). Under torchrun each process takes the CUDA device of its local rank."""
    import torch

    from fastalex.training import distributed

    device = resolve_device(device_name)
    info = distributed.init(device.type)
    try:
        if info.enabled and device.type == "cuda":
            device = torch.device("cuda", info.local_rank)
        yield device, info
    finally:
        distributed.shutdown()


def log(info, *parts) -> None:
    """Print one line on rank 0 (through tqdm, so progress bars stay intact)."""
    if info.is_main:
        from tqdm.auto import tqdm

        tqdm.write(" ".join(str(p) for p in parts), file=sys.stdout)
        sys.stdout.flush()


def install_warning_format(*_) -> None:
    """Print fastalex's own warnings (an unreadable image skipped, ...) as one line each,
    ``warning: ...``, in this process; every other warning as before (Python's format: file,
    line and the source line below). Also a DataLoader ``worker_init_fn``: workers that are not
    forked do not inherit it."""
    previous = warnings.showwarning
    if getattr(previous, "fastalex_one_line", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        if not category.__module__.startswith("fastalex"):
            return previous(message, category, filename, lineno, file, line)
        from tqdm.auto import tqdm

        tqdm.write("warning: " + " ".join(str(message).split()), file=file or sys.stderr)

    show.fastalex_one_line = True
    warnings.showwarning = show


def run_cli(prog: str, command: Callable[[], int], interrupted: str = "interrupted") -> int:
    """Run ``command``; its exit status, 2 after a :class:`UsageError` (one line, no traceback),
    1 after a :class:`TrainingError` (one line), 130 after Ctrl-C (with the ``interrupted``
    message). fastalex's warnings print as one line each meanwhile."""
    previous = warnings.showwarning
    install_warning_format()
    try:
        return command()
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except TrainingError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = previous
