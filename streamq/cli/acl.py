"""``streamq acl``: print the least-privilege ACL rule of a role (``streamq.acl``)."""

from __future__ import annotations

from typing import Annotated

import typer

from streamq import acl as rules


def acl(
    role: Annotated[
        str,
        typer.Option(
            "--role",
            help="producer, producer-chains, worker, dashboard or dashboard-read-only.",
            show_default=False,
        ),
    ],
    prefix: Annotated[str, typer.Option(help="The Apps' key prefix.")] = "streamq",
    queue: Annotated[
        str | None, typer.Option(help="Only this queue's keys (default: every queue).")
    ] = None,
    user: Annotated[
        str | None, typer.Option(help="The ACL user name (default: streamq-<role>).")
    ] = None,
    rule_only: Annotated[
        bool,
        typer.Option(
            "--rule-only", help="Print only the rule, for a users.acl line or your own SETUSER."
        ),
    ] = False,
) -> None:
    """Print the ACL rule a role needs: its commands and its keys, nothing more.

    The line is ``ACL SETUSER <user> reset on >CHANGE-ME <rule>``: put a real
    password in place of CHANGE-ME (or ``#<sha256 hex>``) before running it.
    """
    if rule_only:
        typer.echo(rules.rule(role, prefix, queue))
    else:
        typer.echo(rules.setuser(role, user or f"streamq-{role}", "CHANGE-ME", prefix, queue))
