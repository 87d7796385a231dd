"""Operator commands, ``flask --app app <command>``, grouped by topic.

- database and keys: ``migrate``, ``gen-key``, ``rotate-key``, ``import-env-credentials``
- API tokens: ``create-token``, ``list-tokens``, ``revoke-token``
- housekeeping over every user's rows: ``prune-logs``, ``rollup-metrics``, ``redact-history``,
  ``list-weekday-schedules``

Each command is a thin wrapper: parse options, call the module that does the work
(``database``, the vault, ``tokens``, ``maintenance``, ``history_redaction``), print.
A ``PilotError`` becomes a click error (exit status 1) with its message. Commands
reach the app's parts through ``current_pilot()``; ``init_app`` adds them all.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click
from flask import Flask
from flask.cli import with_appcontext

from database import migrate
from pilot.application import current_pilot
from pilot.data import store
from pilot.errors import PilotError
from pilot.ops import history_redaction, maintenance, rollup
from pilot.security import tokens
from pilot.security.auth import valid_user_id
from pilot.security.vault import CredentialDecryptError, generate_key
from pilot.settings import ENV_API_KEYS


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


# --- database and keys -------------------------------------------------------------


@click.command("migrate")
@with_appcontext
def migrate_command() -> None:
    """Apply pending SQL migrations (as the connecting role)."""
    applied = migrate(current_pilot().db.dsn)
    click.echo(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ""))


@click.command("gen-key")
def gen_key_command() -> None:
    """Print a new Fernet key (prepend it to FERNET_KEY, then run rotate-key)."""
    click.echo(generate_key())


@click.command("rotate-key")
@with_appcontext
def rotate_key_command() -> None:
    """Re-encrypt every stored credential under the first FERNET_KEY; safe to re-run."""
    pilot = current_pilot()
    try:
        with pilot.db.transaction(None, as_app=False) as cur:
            if not store.role_bypasses_rls(cur):
                raise click.ClickException(
                    "rotate-key must run as a role that bypasses row-level security (superuser or BYPASSRLS)"
                )
            rows = store.all_credentials_for_update(cur)
            already = sum(pilot.vault.encrypted_with_primary(r["encrypted_value"]) for r in rows)
            for r in rows:
                store.set_encrypted_value(cur, r["id"], pilot.vault.rotate(r["encrypted_value"]))
    except CredentialDecryptError as exc:
        raise click.ClickException(f"{exc.message}; nothing was changed") from exc
    click.echo(f"re-encrypted {len(rows)} credential(s) under the first key ({already} were already under it)")


@click.command("import-env-credentials")
@click.option("--user", "user_id", required=True, help="the user whose credentials these are")
@with_appcontext
def import_env_credentials_command(user_id: str) -> None:
    """Store OPENAI_API_KEY, GROQ_API_KEY and ANTHROPIC_API_KEY from the environment for USER."""
    pilot = current_pilot()
    found = pilot.settings.env_credentials
    if not found:
        click.echo("none of " + ", ".join(var for _, var in ENV_API_KEYS) + " is set; nothing stored")
        return
    with _as_click_errors(), pilot.db.transaction(user_id) as cur:
        for provider, secret in found.items():
            encrypted = pilot.vault.encrypt(user_id, provider, "api_key", secret)
            store.upsert_credential(cur, user_id, provider, "api_key", encrypted)
    for provider in found:
        click.echo(f"stored {provider} api_key for {user_id}")


# --- API tokens --------------------------------------------------------------------


@click.command("create-token")
@click.argument("user_id", metavar="USER", callback=_user_id)
@click.option("--name", default="", help="a label to recognise the token by (e.g. 'ci' or 'zapier')")
@with_appcontext
def create_token_command(user_id: str, name: str) -> None:
    """Create an API token for USER and print it once (it is stored only as a SHA-256 hash)."""
    if len(name) > 100:
        raise click.BadParameter("at most 100 characters", param_hint="--name")
    with _as_click_errors():
        token_id, token = tokens.create(current_pilot().db, user_id, name)
    click.echo(token)
    click.echo(
        f"token {token_id} for {user_id}: send it as 'Authorization: Bearer <token>' (AUTH_MODE=token); "
        "it cannot be shown again",
        err=True,
    )


@click.command("list-tokens")
@click.option("--user", "user_id", required=True, callback=_user_id, help="whose tokens to list")
@with_appcontext
def list_tokens_command(user_id: str) -> None:
    """List USER's API tokens: id, name, created, last used, revoked (never the tokens themselves)."""
    with _as_click_errors():
        rows = tokens.list_for(current_pilot().db, user_id)
    if not rows:
        click.echo(f"no tokens for {user_id}")
    for row in rows:
        state = f"revoked {row['revoked_at']:%Y-%m-%d %H:%M}" if row["revoked_at"] else "active"
        used = f"{row['last_used_at']:%Y-%m-%d %H:%M}" if row["last_used_at"] else "never"
        click.echo(f"{row['id']}\t{row['name'] or '-'}\tcreated {row['created_at']:%Y-%m-%d}\tused {used}\t{state}")


@click.command("revoke-token")
@click.argument("token_id", type=click.IntRange(1, 2**63 - 1))
@click.option("--user", "user_id", required=True, callback=_user_id, help="the token's owner")
@with_appcontext
def revoke_token_command(token_id: int, user_id: str) -> None:
    """Revoke USER's API token TOKEN_ID (see list-tokens); it stops working at once."""
    with _as_click_errors():
        tokens.revoke(current_pilot().db, user_id, token_id)
    click.echo(f"revoked token {token_id} of {user_id}")


# --- housekeeping over every user's rows ---------------------------------------------


@click.command("prune-logs")
@click.option("--older-than-days", type=int, required=True, help="delete history older than this many days")
@click.option("--keep-runs", is_flag=True, help="delete execution logs only, keep finished plan runs")
@click.option(
    "--batch-size", type=int, default=maintenance.DEFAULT_BATCH_SIZE, show_default=True, help="rows per transaction"
)
@with_appcontext
def prune_logs_command(older_than_days: int, keep_runs: bool, batch_size: int) -> None:
    """Delete every user's execution logs and finished runs older than N days, in batches
    (and idempotency keys older than 24 hours).

    Needs a role that bypasses row-level security (superuser or BYPASSRLS).
    Queued and running runs, and each plan's latest run, are kept.
    """
    with _as_click_errors():
        result = maintenance.prune_history(
            current_pilot().db, older_than_days, include_runs=not keep_runs, batch_size=batch_size
        )
    click.echo(maintenance.describe(result))


@click.command("rollup-metrics")
@click.option(
    "--settle-seconds",
    type=click.IntRange(0, 3600),
    default=rollup.SETTLE_SECONDS,
    show_default=True,
    help="roll up an hour only once it ended this long ago (its last log rows have committed)",
)
@with_appcontext
def rollup_metrics_command(settle_seconds: int) -> None:
    """Roll every closed hour of execution_logs up into provider_metrics_hourly (the provider metrics' source).

    Serving processes do this every METRICS_ROLLUP_SECONDS; run it after a restore, after
    turning that off, or to catch up a long history at once. Safe beside them: one rollup
    at a time across processes (this one stops at once if another is rolling up).
    """
    with _as_click_errors():
        hours = rollup.catch_up(current_pilot().db, settle_seconds=settle_seconds)
    if hours < 0:
        click.echo("another process is rolling up right now; nothing done")
        return
    click.echo(f"rolled up {hours} closed hour(s) of execution logs")


@click.command("redact-history")
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
@with_appcontext
def redact_history_command(batch_size: int, move_plan_headers: bool) -> None:
    """Redact secrets that leaked into stored logs and runs before this version; report plans holding them.

    Run once after upgrading; safe to re-run (a second run changes nothing). Redacts every user's
    execution logs and plan runs by the value of each stored credential (pieces of it too), by
    key shape and by secret header name. Prints counts and where plans hold secrets, never a secret.
    Needs a role that bypasses row-level security (superuser or BYPASSRLS). Rotate exposed keys.
    """
    pilot = current_pilot()
    with _as_click_errors():
        report = history_redaction.redact_history(
            pilot.db, pilot.vault, pilot.registry, batch_size=batch_size, move_plan_headers=move_plan_headers
        )
    for line in history_redaction.describe(report):
        click.echo(line)


@click.command("list-weekday-schedules")
@with_appcontext
def list_weekday_schedules_command() -> None:
    """List every user's cron plans whose meaning the crontab(5) fix changed, with the old and new meaning.

    Day-of-week numbers (0 was Monday, now Sunday), both day fields restricted
    (now either matches), texts no longer valid. Lists only: every schedule keeps
    its text. Needs a role that bypasses row-level security.
    """
    with _as_click_errors():
        changes = maintenance.weekday_schedules(current_pilot().db)
    click.echo("id\tuser\tname\tcron\ttimezone\tstate\tchange")
    for c in changes:
        state = "enabled" if c.enabled else "paused"
        fields = (str(c.plan_id), c.user_id, " ".join(c.name.split()), " ".join(c.cron.split()), c.timezone, state)
        click.echo("\t".join((*fields, c.change)))
    click.echo(
        f"listed {len(changes)} plan(s) whose cron schedule changed meaning; edit those whose new meaning is wrong"
    )


COMMANDS = (
    migrate_command,
    gen_key_command,
    rotate_key_command,
    import_env_credentials_command,
    create_token_command,
    list_tokens_command,
    revoke_token_command,
    prune_logs_command,
    rollup_metrics_command,
    redact_history_command,
    list_weekday_schedules_command,
)


def init_app(app: Flask) -> None:
    """Add every command above to ``app.cli``."""
    for command in COMMANDS:
        app.cli.add_command(command)
