"""The `kuadeploy` command line (DESIGN §7)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

import msgspec

from kuadeploy import __version__, manifest_cli
from kuadeploy.config import Config, ConfigError, load_config
from kuadeploy.export import AtError, export_at, resolve_at
from kuadeploy.ledger import GENESIS, SchemaError, reading
from kuadeploy.ledger.store import utc_now
from kuadeploy.ledger.verify import load_trusted, save_trusted, verify_ledger
from kuadeploy.rebuild import rebuild_and_compare
from kuadeploy.service import StartupError
from kuadeploy.tokens import add_token


class CliError(Exception):
    """A one-line message for the user; exit status 2."""


def _offline_config(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    if args.data_dir:
        config = msgspec.structs.replace(config, data_dir=args.data_dir)
    return config


def cmd_audit_verify(args: argparse.Namespace) -> int:
    config = _offline_config(args)
    start = GENESIS if args.full else load_trusted(config.data_dir)
    with closing(reading.open_readonly(config.ledger_path)) as conn:
        result = verify_ledger(conn, start)
    if args.json:
        print(msgspec.json.encode(result.to_json()).decode())
    if not result.ok:
        if not args.json:
            print(f"FAILED at seq {result.first_bad_seq}: {result.reason}")
        return 1
    save_trusted(config.data_dir, result.head)
    if not args.json:
        scope = "from event 1" if start.seq == 0 else f"after trusted seq {start.seq}"
        print(
            f"ok: {result.events} events verified {scope}; "
            f"head seq {result.head.seq} hash {result.head.hash.hex()}"
        )
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    config = _offline_config(args)
    with closing(reading.open_readonly(config.ledger_path)) as conn:
        state, report = rebuild_and_compare(conn)
    for line in report.differences:
        print(f"DIFFERENCE: {line}")
    verdict = "ok" if report.ok else "FAILED"
    print(
        f"{verdict}: rebuilt {report.events} events to seq {state.seq}; "
        f"{report.snapshots_checked} snapshots compared"
    )
    return 0 if report.ok else 1


def cmd_export(args: argparse.Namespace) -> int:
    config = _offline_config(args)
    with closing(reading.open_readonly(config.ledger_path)) as conn:
        seq = resolve_at(conn, args.at, utc_now()) if args.at else reading.read_head(conn).seq
        doc = export_at(conn, seq)
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(doc), indent=2).decode() + "\n")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from kuadeploy.serve import serve, setup_logging

    config = load_config(args.config)
    setup_logging()
    try:
        asyncio.run(serve(config))
    except StartupError as exc:
        print(f"kuadeploy: cannot start: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_self_handoff(args: argparse.Namespace) -> int:
    from kuadeploy.selfdeploy.transient import run_handoff
    from kuadeploy.serve import setup_logging

    setup_logging()
    return asyncio.run(run_handoff(load_config(args.config), args.deploy))


def cmd_token_add(args: argparse.Namespace) -> int:
    config = _offline_config(args)
    Path(config.data_dir).mkdir(parents=True, exist_ok=True)
    token = add_token(config.data_dir, args.actor, args.role)
    print(token)
    print(f"token for {args.actor} ({args.role}) created; only its hash is stored", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kuadeploy", description=__doc__)
    parser.add_argument("--version", action="version", version=f"kuadeploy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    offline = argparse.ArgumentParser(add_help=False)
    offline.add_argument("--config", help="kuadeploy.toml (default: $KUA_CONFIG)")
    offline.add_argument("--data-dir", help="data directory (overrides the config)")

    serve = sub.add_parser("serve", help="run the service")
    serve.add_argument("--config", help="kuadeploy.toml (default: $KUA_CONFIG)")
    serve.set_defaults(func=cmd_serve)

    manifest_cli.add_parser(sub)

    handoff = sub.add_parser(
        "self-handoff", help="(run by a self-deploy in its transient container)"
    )
    handoff.add_argument("--config", help="kuadeploy.toml (default: $KUA_CONFIG)")
    handoff.add_argument("--deploy", required=True, help="the self-deploy's id")
    handoff.set_defaults(func=cmd_self_handoff)

    token = sub.add_parser("token", help="API tokens").add_subparsers(dest="token", required=True)
    token_add = token.add_parser("add", parents=[offline], help="create a token, print it once")
    token_add.add_argument("actor")
    token_add.add_argument("--role", required=True, choices=["reader", "deployer", "admin"])
    token_add.set_defaults(func=cmd_token_add)

    audit = sub.add_parser("audit", help="ledger audit").add_subparsers(dest="audit", required=True)
    verify = audit.add_parser("verify", parents=[offline], help="verify the hash chain")
    verify.add_argument("--full", action="store_true", help="from event 1, not the last verified")
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.set_defaults(func=cmd_audit_verify)

    rebuild = sub.add_parser("rebuild", parents=[offline], help="refold and compare projections")
    rebuild.set_defaults(func=cmd_rebuild)

    export = sub.add_parser("export", parents=[offline], help="the registry as JSON")
    export.add_argument("--at", help="a seq or an RFC 3339 time (default: the head)")
    export.set_defaults(func=cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CliError, ConfigError, SchemaError, AtError) as exc:
        print(f"kuadeploy: {exc}", file=sys.stderr)
        return 2
