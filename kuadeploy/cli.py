"""The `kuadeploy` command line (DESIGN §7)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

import msgspec

from kuadeploy import __version__, historyview, manifest_cli, progress
from kuadeploy import events as ev
from kuadeploy.audit import offline
from kuadeploy.client import Client, ClientError
from kuadeploy.config import Config, ConfigError, load_config
from kuadeploy.export import AtError, export_at, resolve_at
from kuadeploy.follow import follow
from kuadeploy.ledger import GENESIS, SchemaError, reading
from kuadeploy.ledger.store import utc_now
from kuadeploy.ledger.verify import load_trusted, save_trusted, verify_ledger
from kuadeploy.progress import Progress
from kuadeploy.rebuild import rebuild_and_compare
from kuadeploy.service import StartupError
from kuadeploy.tokens import add_token, tokens_path
from projections.history import Change, fold_history


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
    if bool(args.checkpoint) != bool(args.pubkey):
        raise CliError("--checkpoint and --pubkey go together")
    checkpoint = offline.read_checkpoint_file(args.checkpoint) if args.checkpoint else None
    with closing(reading.open_readonly(config.ledger_path)) as conn:
        shown = Progress("verified") if progress.wanted(args.progress) else None
        result = verify_ledger(conn, start, progress=shown)
        checked = None
        if result.ok and checkpoint is not None:
            checked = offline.check_checkpoint(conn, checkpoint, args.pubkey)
    if args.json:
        doc = result.to_json()
        if checked is not None:
            doc["checkpoint"] = checked.to_json()
        print(msgspec.json.encode(doc).decode())
    if not result.ok:
        if not args.json:
            print(f"FAILED at seq {result.first_bad_seq}: {result.reason}")
        return 1
    if checked is not None and checked.problem is not None:
        if not args.json:
            print(f"FAILED: {checked.problem}")
        return 1
    try:
        save_trusted(config.data_dir, result.head)
    except OSError as exc:  # read-only media, say: the verdict stands, the next run is full
        print(f"kuadeploy: verified point not recorded: {exc.strerror}", file=sys.stderr)
    if not args.json:
        scope = "from event 1" if start.seq == 0 else f"after trusted seq {start.seq}"
        print(
            f"ok: {result.events} events verified {scope}; "
            f"head seq {result.head.seq} hash {result.head.hash.hex()}"
        )
        if checked is not None:
            print(f"ok: {checked.summary}")
    return 0


def cmd_audit_pubkey(args: argparse.Namespace) -> int:
    config = _offline_config(args)
    print(offline.verifier_key(config))
    return 0


def cmd_audit_witness(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get("KUA_TOKEN")
    if not args.url:
        raise CliError("--url (or KUA_URL) is required")
    code, message = offline.witness(args.url, Path(args.state), args.pubkey, token, utc_now())
    if code == 2:
        raise CliError(message)
    print(message if code == 0 else f"FAILED: {message}")
    return code


def cmd_rebuild(args: argparse.Namespace) -> int:
    config = _offline_config(args)
    with closing(reading.open_readonly(config.ledger_path)) as conn:
        shown = Progress("rebuilt") if progress.wanted(args.progress) else None
        state, report = rebuild_and_compare(conn, shown)
    for line in report.differences:
        print(f"DIFFERENCE: {line}")
    verdict = "ok" if report.ok else "FAILED"
    print(
        f"{verdict}: rebuilt {report.events} events to seq {state.seq}; "
        f"{report.snapshots_checked} snapshots compared"
    )
    return 0 if report.ok else 1


def _client(args: argparse.Namespace) -> Client | None:
    """A client of a running server when a URL is given (--url, else KUA_URL unless
    --data-dir or --config ask for the offline command)."""
    url = args.url
    offline = getattr(args, "data_dir", None) or getattr(args, "config", None)
    if url is None and not offline:
        url = os.environ.get("KUA_URL")
    if not url:
        return None
    return Client(url, args.token or os.environ.get("KUA_TOKEN"))


def _print_json(doc: object) -> None:
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(doc), indent=2).decode() + "\n")


def cmd_export(args: argparse.Namespace) -> int:
    client = _client(args)
    if client is not None:
        _print_json(client.export(args.at))
        return 0
    config = _offline_config(args)
    with closing(reading.open_readonly(config.ledger_path)) as conn:
        seq = resolve_at(conn, args.at, utc_now()) if args.at else reading.read_head(conn).seq
        doc = export_at(conn, seq)
    _print_json(doc)
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    client = _client(args)
    if client is not None:
        doc = client.history(args.app)
    else:
        config = _offline_config(args)
        changes: list[Change] = []
        with closing(reading.open_readonly(config.ledger_path)) as conn:
            for body in reading.iter_stream_bodies(conn, f"app/{args.app}"):
                fold_history(changes, ev.decode(body))
        if not changes:
            raise CliError(f"app {args.app!r} has no history")
        doc = {"app": args.app, "changes": msgspec.to_builtins(changes)}
    if args.json:
        _print_json(doc)
    else:
        sys.stdout.write(historyview.render(doc["changes"]))
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    client = _client(args)
    if client is None:
        raise CliError("deploy needs a running server: pass --url (or set KUA_URL)")
    body: dict = {"force": args.force}
    if args.sha:
        body["sha"] = args.sha
    answer = client.deploy(args.app, body)
    deploy_id = answer["deploy_id"]
    if answer.get("noop"):
        print(f"nothing to do: {answer['reason']} (deploy {deploy_id})")
    else:
        print(f"deploy {deploy_id} queued")
    # Without --follow it still waits: the exit status is the deploy's verdict, never
    # "queued" (a queued deploy can still fail).
    return follow(client, deploy_id, progress=args.follow)


def cmd_serve(args: argparse.Namespace) -> int:
    from kuadeploy.serve import serve, setup_logging

    config = load_config(args.config)
    setup_logging()
    try:
        asyncio.run(serve(config, accept_ledger_rewind=args.accept_ledger_rewind))
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
    try:
        Path(config.data_dir).mkdir(parents=True, exist_ok=True)
        token = add_token(config.data_dir, args.actor, args.role)
    except OSError as exc:  # not a directory, read-only, no permission
        why = "not a directory" if isinstance(exc, FileExistsError) else exc.strerror
        raise CliError(f"cannot store the token in {config.data_dir}: {why}") from None
    except msgspec.MsgspecError as exc:  # left as it is: it holds the other tokens
        raise CliError(f"{tokens_path(config.data_dir)} is not a token file: {exc}") from None
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
    serve.add_argument(
        "--accept-ledger-rewind",
        action="store_true",
        help="start on a ledger shorter than or inconsistent with the last signed "
        "checkpoint (recorded in the ledger)",
    )
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
    verify.add_argument("--checkpoint", help="also check against this signed checkpoint file")
    verify.add_argument("--pubkey", help="the checkpoint's verifier key (C2SP vkey)")
    verify.set_defaults(func=cmd_audit_verify)
    _progress_flag(verify)
    pubkey = audit.add_parser("pubkey", parents=[offline], help="the checkpoint verifier key")
    pubkey.set_defaults(func=cmd_audit_pubkey)
    witness = audit.add_parser("witness", help="check a server's checkpoints only grow")
    witness.add_argument("--url", default=os.environ.get("KUA_URL"), help="default: $KUA_URL")
    witness.add_argument("--state", required=True, help="file recording the last checkpoint")
    witness.add_argument("--pubkey", help="verifier key (default: the one recorded in --state)")
    witness.add_argument("--token", help="a reader token (default: $KUA_TOKEN)")
    witness.set_defaults(func=cmd_audit_witness)

    rebuild = sub.add_parser("rebuild", parents=[offline], help="refold and compare projections")
    rebuild.set_defaults(func=cmd_rebuild)
    _progress_flag(rebuild)

    client = argparse.ArgumentParser(add_help=False)
    client.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8080 ($KUA_URL)")
    client.add_argument("--token", help="bearer token for --url (default: $KUA_TOKEN)")

    export = sub.add_parser("export", parents=[offline, client], help="the registry as JSON")
    export.add_argument("--at", help="a seq or an RFC 3339 time (default: the head)")
    export.set_defaults(func=cmd_export)

    deploy = sub.add_parser("deploy", parents=[client], help="deploy an app (the release command)")
    deploy.add_argument("app")
    deploy.add_argument("--sha", help="the commit to deploy (default: the branch head)")
    deploy.add_argument("--force", action="store_true", help="even if already deployed")
    deploy.add_argument(
        "--follow",
        action="store_true",
        help="show every step live (either way: exit 0 only on a verified success)",
    )
    deploy.set_defaults(func=cmd_deploy)

    history = sub.add_parser("history", parents=[offline, client], help="every change of an app")
    history.add_argument("app")
    history.add_argument("--json", action="store_true", help="print the raw JSON")
    history.set_defaults(func=cmd_history)
    return parser


def _progress_flag(parser: argparse.ArgumentParser) -> None:
    help_ = "progress lines on stderr (default: when stderr is a terminal)"
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, help=help_)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (
        CliError,
        ClientError,
        ConfigError,
        SchemaError,
        AtError,
        offline.CheckpointFileError,
    ) as exc:
        print(f"kuadeploy: {exc}", file=sys.stderr)
        return 2
