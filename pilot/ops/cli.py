"""Operator commands: ``flask --app app migrate | gen-key | rotate-key | import-env-credentials |
list-weekday-schedules``.

Token and housekeeping commands (create-token, list-tokens, revoke-token, prune-logs) live in ``cli_ops``.
"""

from __future__ import annotations

import click
from flask import Flask

from database import migrate
from pilot.data import store
from pilot.errors import PilotError
from pilot.ops import cli_ops, maintenance
from pilot.security.vault import CredentialDecryptError, generate_key
from pilot.services import Services
from pilot.settings import ENV_API_KEYS


def init_app(app: Flask) -> None:
    svc: Services = app.extensions["pilot"]

    @app.cli.command("migrate")
    def migrate_command() -> None:
        """Apply pending SQL migrations (as the connecting role)."""
        applied = migrate(svc.db.dsn)
        click.echo(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ""))

    @app.cli.command("gen-key")
    def gen_key_command() -> None:
        """Print a new Fernet key (prepend it to FERNET_KEY, then run rotate-key)."""
        click.echo(generate_key())

    @app.cli.command("rotate-key")
    def rotate_key_command() -> None:
        """Re-encrypt every stored credential under the first FERNET_KEY; safe to re-run."""
        try:
            with svc.db.transaction(None, as_app=False) as cur:
                if not store.role_bypasses_rls(cur):
                    raise click.ClickException(
                        "rotate-key must run as a role that bypasses row-level security (superuser or BYPASSRLS)"
                    )
                rows = store.all_credentials_for_update(cur)
                already = sum(svc.vault.encrypted_with_primary(r["encrypted_value"]) for r in rows)
                for r in rows:
                    store.set_encrypted_value(cur, r["id"], svc.vault.rotate(r["encrypted_value"]))
        except CredentialDecryptError as exc:
            raise click.ClickException(f"{exc.message}; nothing was changed") from exc
        click.echo(f"re-encrypted {len(rows)} credential(s) under the first key ({already} were already under it)")

    @app.cli.command("import-env-credentials")
    @click.option("--user", "user_id", required=True, help="the user whose credentials these are")
    def import_env_credentials_command(user_id: str) -> None:
        """Store OPENAI_API_KEY, GROQ_API_KEY and ANTHROPIC_API_KEY from the environment for USER."""
        found = svc.settings.env_credentials
        if not found:
            click.echo("none of " + ", ".join(var for _, var in ENV_API_KEYS) + " is set; nothing stored")
            return
        try:
            with svc.db.transaction(user_id) as cur:
                for provider, secret in found.items():
                    encrypted = svc.vault.encrypt(user_id, provider, "api_key", secret)
                    store.upsert_credential(cur, user_id, provider, "api_key", encrypted)
        except PilotError as exc:
            raise click.ClickException(exc.message) from exc
        for provider in found:
            click.echo(f"stored {provider} api_key for {user_id}")

    @app.cli.command("list-weekday-schedules")
    def list_weekday_schedules_command() -> None:
        """List every user's cron plans whose meaning the crontab(5) fix changed, with the old and new meaning.

        Day-of-week numbers (0 was Monday, now Sunday), both day fields restricted
        (now either matches), texts no longer valid. Lists only: every schedule keeps
        its text. Needs a role that bypasses row-level security.
        """
        list_weekday_schedules(svc)

    cli_ops.init_app(app)


def list_weekday_schedules(svc: Services) -> None:
    """Print ``maintenance.weekday_schedules`` as tab-separated lines under a header, then a count."""
    try:
        changes = maintenance.weekday_schedules(svc.db)
    except PilotError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo("id\tuser\tname\tcron\ttimezone\tstate\tchange")
    for c in changes:
        state = "enabled" if c.enabled else "paused"
        fields = (str(c.plan_id), c.user_id, " ".join(c.name.split()), " ".join(c.cron.split()), c.timezone, state)
        click.echo("\t".join((*fields, c.change)))
    click.echo(
        f"listed {len(changes)} plan(s) whose cron schedule changed meaning; edit those whose new meaning is wrong"
    )
