"""The terminal: a progress bar and error lines on stderr, shared by every sub-command."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

err = Console(stderr=True, soft_wrap=True)  # a line is never wrapped: scripts read them whole


@contextmanager
def progress_bar(total: int, label: str) -> Iterator[Progress]:
    """A rich progress bar on stderr; it draws only on a terminal."""
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        bar.add_task(label, total=total)
        yield bar


def print_error(message: str, code: str) -> None:
    """One line on stderr: ``error <message> [<code>]``, never wrapped, never read as markup."""
    err.print(f"[red]error[/red] {escape(message)} {escape(f'[{code}]')}", highlight=False, soft_wrap=True)
