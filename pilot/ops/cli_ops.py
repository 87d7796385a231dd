"""Operator commands for tokens and housekeeping.

``flask --app app create-token | list-tokens | revoke-token | prune-logs | redact-history``.

Registered by ``cli.init_app``. Each command is a thin wrapper: parse options,
call ``tokens`` or ``maintenance``, print; a ``PilotError`` becomes a click
error (exit status 1) with its message.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click
from flask import Flask

from pilot.errors import PilotError
from pilot.ops import history_redaction, maintenance
from pilot.security import tokens
from pilot.security.auth import valid_user_id
from pilot.services import Services


@contextmanager
def _as_click_errors() -> Iterator[None]:
    try:
        yield
    except PilotError as exc:
        raise click.ClickException(exc.message) from exc


def _user_id(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not valid_user_id(value):
        raise click.BadParameter("must be a non-empty string of at most 255 printable characters")
    return value


def init_app(app: Flask) -> None:
    """Register the commands on ``app.cli``."""
    svc: Services = app.extensions["pilot"]

    @app.cli.command("create-token")
    @click.argument("user_id", metavar="USER", callback=_user_id)
    @click.option("--name", default="", help="a label to recognise the token by (e.g. 'ci' or 'zapier')")
    def create_token_command(user_id: str, name: str) -> None:
        """Create an API token for USER and print it once (it is stored only as a SHA-256 hash)."""
        if len(name) > 100:
            raise click.BadParameter("at most 100 characters", param_hint="--name")
        with _as_click_errors():
            token_id, token = tokens.create(svc.db, user_id, name)
        click.echo(token)
        click.echo(
            f"token {token_id} for {user_id}: send it as 'Authorization: Bearer <token>' (AUTH_MODE=token); "
            "it cannot be shown again",
            err=True,
        )

    @app.cli.command("list-tokens")
    @click.option("--user", "user_id", required=True, callback=_user_id, help="whose tokens to list")
    def list_tokens_command(user_id: str) -> None:
        """List USER's API tokens: id, name, created, last used, revoked (never the tokens themselves)."""
        with _as_click_errors():
            rows = tokens.list_for(svc.db, user_id)
        if not rows:
            click.echo(f"no tokens for {user_id}")
        for row in rows:
            state = f"revoked {row['revoked_at']:%Y-%m-%d %H:%M}" if row["revoked_at"] else "active"
            used = f"{row['last_used_at']:%Y-%m-%d %H:%M}" if row["last_used_at"] else "never"
            click.echo(f"{row['id']}\t{row['name'] or '-'}\tcreated {row['created_at']:%Y-%m-%d}\tused {used}\t{state}")

    @app.cli.command("revoke-token")
    @click.argument("token_id", type=click.IntRange(1, 2**63 - 1))
    @click.option("--user", "user_id", required=True, callback=_user_id, help="the token's owner")
    def revoke_token_command(token_id: int, user_id: str) -> None:
        """Revoke USER's API token TOKEN_ID (see list-tokens); it stops working at once."""
        with _as_click_errors():
            tokens.revoke(svc.db, user_id, token_id)
        click.echo(f"revoked token {token_id} of {user_id}")

    @app.cli.command("prune-logs")
    @click.option("--older-than-days", type=int, required=True, help="delete history older than this many days")
    @click.option("--keep-runs", is_flag=True, help="delete execution logs only, keep finished plan runs")
    @click.option(
        "--batch-size", type=int, default=maintenance.DEFAULT_BATCH_SIZE, show_default=True, help="rows per transaction"
    )
    def prune_logs_command(older_than_days: int, keep_runs: bool, batch_size: int) -> None:
        """Delete every user's execution logs and finished runs older than N days, in batches.

        Needs a role that bypasses row-level security (superuser or BYPASSRLS).
        Queued and running runs, and each plan's latest run, are kept.
        """
        with _as_click_errors():
            result = maintenance.prune_history(
                svc.db, older_than_days, include_runs=not keep_runs, batch_size=batch_size
            )
        click.echo(maintenance.describe(result))

    @app.cli.command("redact-history")
    @click.option(
        "--batch-size",
        type=int,
        default=history_redaction.DEFAULT_BATCH_SIZE,
        show_default=True,
        help="rows per transaction",
    )
    @click.option(
        "--move-plan-headers",
        is_flag=True,
        help="move inline secret webhook headers of plans into their owners' webhook credentials (header:<Name>) "
        "and point the steps' auth at them; without it plans are only reported",
    )
    def redact_history_command(batch_size: int, move_plan_headers: bool) -> None:
        """Redact secrets that leaked into stored logs and runs before this version; report plans holding them.

        Run once after upgrading; safe to re-run (a second run changes nothing). Redacts every user's
        execution logs and plan runs by the value of each stored credential (pieces of it too), by
        key shape and by secret header name. Prints counts and where plans hold secrets, never a secret.
        Needs a role that bypasses row-level security (superuser or BYPASSRLS). Rotate exposed keys.
        """
        with _as_click_errors():
            report = history_redaction.redact_history(
                svc.db, svc.vault, svc.registry, batch_size=batch_size, move_plan_headers=move_plan_headers
            )
        for line in history_redaction.describe(report):
            click.echo(line)
