"""The ``robench`` command group. Commands are thin: parse, call the library, print.

Every invalid input ends in one line ``error: …`` on stderr with exit code 2 and no traceback.
"""
from __future__ import annotations

import sys

import click

from robench.errors import BadInput


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="robench", prog_name="robench")
def cli() -> None:
    """robench: how robust is this architecture, and does damping / multistep discretisation help?"""
    from robench.devices import prepare_cuda_env
    from robench.machine import keep_freed_memory

    prepare_cuda_env()  # CUBLAS_WORKSPACE_CONFIG before any command can create a cuBLAS handle
    keep_freed_memory()  # freed tensors reused, not faulted in again every step (10-15 % of CPU training)


def _one_line(msg: str) -> str:
    from robench.safetext import terminal_text

    return terminal_text(" ".join(str(msg).split()))  # names from files never rewrite the terminal


def main(argv: list[str] | None = None) -> None:
    """Console entry point: runs the group and turns bad input into a one-line error with exit code 2."""
    try:
        rv = cli.main(args=argv, prog_name="robench", standalone_mode=False)
    except BadInput as e:
        click.echo(f"error: {_one_line(e)}", err=True)
        sys.exit(2)
    except click.UsageError as e:  # unknown option, bad choice, missing argument: all exit 2
        click.echo(f"error: {_one_line(e.format_message())}", err=True)
        sys.exit(2)
    except click.ClickException as e:
        click.echo(f"error: {_one_line(e.format_message())}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except (click.Abort, KeyboardInterrupt):
        click.echo("interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:  # stdout closed by the reader (| head): the work is done, the rest is unread
        from robench.cli.options import silence

        silence(sys.stdout)
        sys.exit(0)
    except OSError as e:  # a full disk, a vanished folder, a read-only file system while working
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        click.echo(f"error: {_one_line(e.strerror or e)}{_one_line(where)}", err=True)
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)


# Commands register themselves on import; keep this list in pipeline order.
from robench.cli import (data_cmd, zoo_cmd, train_cmd, eval_cmd, sweep_cmd, results_cmd,  # noqa: E402,F401
                         check_cmd, leaderboard_cmd, regress_cmd, compare_cmd, claims_cmd, landscape_cmd,
                         stability_cmd, noise_cmd, plot_cmd, report_cmd,
                         campaign_cmd)
