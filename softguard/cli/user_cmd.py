"""``softguard user add|remove|list``: the users file clients log in to softguard with
(credentials softguard holds, docs/decisions/0018-credentials-softguard-holds.md).

The file holds SCRAM verifiers only; the password is read from the terminal (twice) or,
with ``--password-stdin``, from one line of standard input (scripts), never from the
command line, where other users could read it in the process list.
"""

from __future__ import annotations

import getpass
import sys
from pathlib import Path
from typing import Annotated

import typer

from softguard.auth.scram import Verifier
from softguard.auth.users import User, UsersFile, UsersFileError
from softguard.cli.common import fail

user_app = typer.Typer(
    help="Manage who may log in to softguard (the users file; see `serve --users-file`).",
    no_args_is_help=True,
)

UsersFileOption = Annotated[
    Path,
    typer.Option(
        "--users-file",
        envvar="SOFTGUARD_USERS_FILE",
        help="the users file (created when missing, mode 0600)",
    ),
]


def _load(path: Path) -> UsersFile:
    try:
        return UsersFile.load(path, missing_ok=True)
    except UsersFileError as exc:
        raise fail(str(exc), 2) from None


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise fail("the passwords do not match", 2)
    if not password:
        raise fail("an empty password is not allowed", 2)
    return password


@user_app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="the name the client logs in with")],
    users_file: UsersFileOption,
    role: Annotated[
        str | None,
        typer.Option(help="the database role its sessions run as (default: NAME)"),
    ] = None,
    database: Annotated[
        list[str] | None,
        typer.Option("--database", help="a database it may open (repeat; default: any)"),
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="read the password from standard input")
    ] = False,
) -> None:
    """Add a user, or replace its password, role and databases."""
    users = _load(users_file)
    password = _read_password(password_stdin)
    try:
        user = User(name, Verifier.from_password(password), role or name, tuple(database or ()))
        users.put(user)
        users.save()
        UsersFile.load(users_file)  # what serve will read: refuse to leave a bad file
    except (UsersFileError, OSError) as exc:
        raise fail(str(exc), 1) from None
    typer.echo(f"softguard: user {name!r} logs in as role {user.role!r} ({users_file})")


@user_app.command("remove")
def remove(
    name: Annotated[str, typer.Argument(help="the user to remove")],
    users_file: UsersFileOption,
) -> None:
    """Remove a user (its open sessions go on; new logins are refused)."""
    users = _load(users_file)
    if not users.remove(name):
        raise fail(f"no user {name!r} in {users_file}", 1)
    try:
        users.save()
    except OSError as exc:
        raise fail(str(exc), 1) from None
    typer.echo(f"softguard: user {name!r} removed")


@user_app.command("list")
def list_users(users_file: UsersFileOption) -> None:
    """List the users: name, role, databases (never secrets)."""
    users = _load(users_file)
    for user in sorted(users.users.values(), key=lambda u: u.name):
        databases = ", ".join(user.databases) or "any database"
        typer.echo(f"{user.name}\trole {user.role}\t{databases}")


def register(app: typer.Typer) -> None:
    app.add_typer(user_app, name="user")
