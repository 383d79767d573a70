"""The `kuadeploy` command line (DESIGN §7)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

import msgspec

from kuadeploy import __version__
from kuadeploy.audit import offline
from kuadeploy.config import Config, ConfigError, load_config
from kuadeploy.export import AtError, export_at, resolve_at
from kuadeploy.ledger import GENESIS, SchemaError, reading
from kuadeploy.ledger.store import utc_now
from kuadeploy.ledger.verify import load_trusted, save_trusted, verify_ledger
from kuadeploy.rebuild import rebuild_and_compare


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
    if bool(args.checkpoint) != bool(args.pubkey):
        raise CliError("--checkpoint and --pubkey go together")
    checkpoint = offline.read_checkpoint_file(args.checkpoint) if args.checkpoint else None
    with closing(reading.open_readonly(config.ledger_path)) as conn:
        result = verify_ledger(conn, start)
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
    save_trusted(config.data_dir, result.head)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kuadeploy", description=__doc__)
    parser.add_argument("--version", action="version", version=f"kuadeploy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    offline = argparse.ArgumentParser(add_help=False)
    offline.add_argument("--config", help="kuadeploy.toml (default: $KUA_CONFIG)")
    offline.add_argument("--data-dir", help="data directory (overrides the config)")

    audit = sub.add_parser("audit", help="ledger audit").add_subparsers(dest="audit", required=True)
    verify = audit.add_parser("verify", parents=[offline], help="verify the hash chain")
    verify.add_argument("--full", action="store_true", help="from event 1, not the last verified")
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.add_argument("--checkpoint", help="also check against this signed checkpoint file")
    verify.add_argument("--pubkey", help="the checkpoint's verifier key (C2SP vkey)")
    verify.set_defaults(func=cmd_audit_verify)
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

    export = sub.add_parser("export", parents=[offline], help="the registry as JSON")
    export.add_argument("--at", help="a seq or an RFC 3339 time (default: the head)")
    export.set_defaults(func=cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CliError, ConfigError, SchemaError, AtError, offline.CheckpointFileError) as exc:
        print(f"kuadeploy: {exc}", file=sys.stderr)
        return 2
