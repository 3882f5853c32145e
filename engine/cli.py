"""The `hl7engine` command: run | validate | convert | send | messages | test.

Exit codes: 0 ok; 1 a message failed (convert) or was refused (send: AE/AR/CE/CR);
2 usage; 78 (EX_CONFIG) invalid configuration.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from engine.types import ConfigError, EngineError, Status

EX_CONFIG = 78
DEFAULT_CONFIG = Path("config/engine.yaml")

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="hl7engine: an HL7 v2 interface engine (MLLP in, durable custody, FHIR out).",
)
messages_app = typer.Typer(no_args_is_help=True, help="Inspect, replay and release stored messages.")
app.add_typer(messages_app, name="messages")
keys_app = typer.Typer(no_args_is_help=True, help="Encryption at rest: make keys, re-encrypt stored rows.")
app.add_typer(keys_app, name="keys")

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Engine config file.")]


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"hl7engine: {message}", err=True)
    return typer.Exit(code)


def _load(config_path: Path) -> Any:
    from engine.config.loader import load_config

    try:
        return load_config(config_path)
    except ConfigError as exc:
        for finding in exc.findings:
            typer.echo(finding, err=True)
        raise typer.Exit(EX_CONFIG) from None


def _operator_logging(cfg: Any) -> None:
    """Operator commands log to stderr (warnings, and every audit event) and to the audit trail."""
    from engine.obs.logging import configure_logging

    configure_logging(level="warning", fmt=cfg.logging.format, stream=sys.stderr, audit_path=cfg.audit_path)


def _use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    uvloop.install()


@app.command()
def run(
    config: ConfigOpt = DEFAULT_CONFIG,
    log_level: Annotated[str | None, typer.Option(help="Override logging.level.")] = None,
) -> None:
    """Start the listeners, runners and admin API; SIGTERM/SIGINT drain gracefully."""
    from engine.app import Engine
    from engine.obs.logging import configure_logging

    cfg = _load(config)
    configure_logging(level=log_level or cfg.logging.level, fmt=cfg.logging.format,
                      log_content=cfg.logging.log_content, audit_path=cfg.audit_path)
    _use_uvloop()
    engine = Engine(cfg, config_path=config)
    try:
        code = asyncio.run(engine.run_until_signal())
    except ConfigError as exc:
        for finding in exc.findings:
            typer.echo(finding, err=True)
        raise typer.Exit(EX_CONFIG) from None
    except OSError as exc:
        # e.g. a port already in use: say which, without a traceback.
        raise _fail(f"cannot start: {exc.strerror or exc}", 1) from None
    raise typer.Exit(code)


@app.command()
def validate(
    config: ConfigOpt = DEFAULT_CONFIG,
    diff: Annotated[bool, typer.Option("--diff", help="Show what a reload would change in the running engine.")]
    = False,
    admin_url: Annotated[str | None, typer.Option(help="Running engine's admin URL (default: admin.listen).")]
    = None,
    check_ports: Annotated[bool, typer.Option(help="Also check that listen ports can be bound.")] = False,
) -> None:
    """Check a config (fields, references, environment); findings as file:line:col, exit 78 if invalid."""
    from engine.config.validate import main_validate
    from engine.registry import default_registry

    code = main_validate(config, default_registry(), check_ports=check_ports)
    if code != 0 or not diff:
        raise typer.Exit(code)
    from engine.config.diff import main_diff

    cfg = _load(config)
    url = admin_url or f"http://{cfg.admin.listen}"
    raise typer.Exit(main_diff(cfg, url, typer.echo))


@app.command()
def convert(
    file: Annotated[str, typer.Argument(help="A file of one or more messages, or - for stdin.")],
    channel: Annotated[str, typer.Option("--channel", help="The channel whose stages to run.")],
    config: ConfigOpt = DEFAULT_CONFIG,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Report fields present but not mapped.")] = False,
    pretty: Annotated[bool, typer.Option(help="Indent the JSON (one Bundle per line otherwise).")] = False,
) -> None:
    """Run messages through a channel's stages without storing or sending; print one Bundle per line."""
    from engine.conversion import ConversionFailed, convert_file

    cfg = _load(config)
    data = sys.stdin.buffer.read() if file == "-" else _read(file)
    try:
        for result in convert_file(cfg, channel, data):
            if result.output is None:
                typer.echo(f"message {result.index}: filtered by the channel", err=True)
                continue
            typer.echo(json.dumps(result.output, indent=2 if pretty else None, ensure_ascii=False))
            if verbose and result.unmapped:
                fields = ", ".join(f"{seg}-{fld}" for seg, fld in result.unmapped)
                typer.echo(f"message {result.index}: present but not mapped: {fields}", err=True)
    except ConversionFailed as exc:
        raise _fail(str(exc)) from None
    except EngineError as exc:
        raise _fail(str(exc)) from None


@app.command()
def send(
    target: Annotated[str, typer.Argument(help="HOST:PORT of an MLLP listener.")],
    files: Annotated[list[Path], typer.Argument(help="Files holding one or more messages each.")],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each ACK.")] = 30.0,
    tls_ca: Annotated[Path | None, typer.Option(help="CA bundle: use TLS and verify the server.")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="Client certificate for mutual TLS.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Client key for mutual TLS.")] = None,
) -> None:
    """Send messages over MLLP and print each ACK; exit 1 if any is AE/AR/CE/CR or missing."""
    from engine.sending import send_files

    try:
        ok = asyncio.run(send_files(target, files, timeout=timeout, tls_ca=tls_ca, tls_cert=tls_cert,
                                    tls_key=tls_key, out=typer.echo))
    except (OSError, EngineError) as exc:
        raise _fail(f"send failed: {exc}") from None
    raise typer.Exit(0 if ok else 1)


@app.command("test")
def test_channels(
    channel: Annotated[str | None, typer.Argument(help="Channel name; default all.")] = None,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Run channel sample tests: samples/*.hl7 against *.expected.json (subset match)."""
    from engine.conversion import run_samples

    cfg = _load(config)
    failures = run_samples(cfg, channel, out=typer.echo)
    raise typer.Exit(1 if failures else 0)


# ---------------------------------------------------------------------- messages


@messages_app.command("list")
def messages_list(
    config: ConfigOpt = DEFAULT_CONFIG,
    channel: Annotated[str | None, typer.Option(help="Only this channel.")] = None,
    status: Annotated[
        list[str] | None, typer.Option(help="received, processing, retry, done, filtered, dead, released.")
    ] = None,
    after_id: Annotated[int, typer.Option(help="Page after this id.")] = 0,
    limit: Annotated[int, typer.Option(help="Page size.")] = 50,
) -> None:
    """List stored messages (metadata only, no content)."""
    from engine.operator import list_messages

    cfg = _load(config)
    _operator_logging(cfg)
    asyncio.run(list_messages(cfg, channel=channel, statuses=status, after_id=after_id, limit=limit,
                              out=typer.echo))


@messages_app.command("show")
def messages_show(
    message_id: int,
    config: ConfigOpt = DEFAULT_CONFIG,
    unmask: Annotated[bool, typer.Option(help="Show patient data unmasked (audited).")] = False,
) -> None:
    """Show one message; field values are masked unless --unmask (every view is audited)."""
    from engine.operator import show_message

    cfg = _load(config)
    _operator_logging(cfg)
    try:
        found = asyncio.run(show_message(cfg, message_id, unmask=unmask, out=typer.echo))
    except EngineError as exc:  # e.g. the key a row was encrypted with is not configured
        raise _fail(str(exc)) from None
    if not found:
        raise _fail(f"no message {message_id}")


@messages_app.command("replay")
def messages_replay(
    message_ids: Annotated[list[int] | None, typer.Argument(help="Message ids.")] = None,
    config: ConfigOpt = DEFAULT_CONFIG,
    channel: Annotated[str | None, typer.Option(help="Select this channel's messages.")] = None,
    status: Annotated[list[str] | None, typer.Option(help="Statuses to select (default dead).")] = None,
    since: Annotated[str | None, typer.Option(help="Received at or after (ISO 8601).")] = None,
    until: Annotated[str | None, typer.Option(help="Received before (ISO 8601).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Convert only: store and send nothing.")] = False,
    diff: Annotated[bool, typer.Option("--diff", help="With --dry-run: show how the output would change.")]
    = False,
    with_config: Annotated[Path | None, typer.Option("--with", help="Candidate config (another channel "
                                                     "version) to convert with; default the current one.")]
    = None,
) -> None:
    """Put messages back in the queue (the running engine delivers them again), or with
    --dry-run --diff show what another channel version would make of them (output holds
    patient data; audited)."""
    from engine.operator import Selection, dry_run_replay, replay_messages

    cfg = _load(config)
    _operator_logging(cfg)
    try:
        selection = Selection(
            ids=tuple(message_ids or ()),
            channel=channel,
            statuses=frozenset(Status(s) for s in status) if status else frozenset({Status.DEAD}),
            since=_epoch(since),
            until=_epoch(until),
        )
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    if not selection.ids and selection.channel is None and selection.since is None:
        raise _fail("name message ids, or select with --channel/--since", 2)
    if dry_run:
        candidate = _load(with_config) if with_config is not None else cfg
        changed = asyncio.run(dry_run_replay(cfg, candidate, selection, diff=diff, out=typer.echo))
        if diff:
            typer.echo(f"{changed} output(s) would change")
        return
    count = asyncio.run(replay_messages(cfg, selection))
    typer.echo(f"requeued {count} message(s)")


def _epoch(value: str | None) -> float | None:
    if value is None:
        return None
    import datetime as dt

    moment = dt.datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


@messages_app.command("release")
def messages_release(
    message_ids: Annotated[list[int], typer.Argument(help="Message ids.")],
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Resolve dead letters without delivering them (kept, status `released`)."""
    from engine.operator import release_messages

    cfg = _load(config)
    _operator_logging(cfg)
    count = asyncio.run(release_messages(cfg, message_ids))
    typer.echo(f"released {count} message(s)")


# ---------------------------------------------------------------------- keys


@keys_app.command("generate")
def keys_generate() -> None:
    """Print a new random AES-256 key (base64). Put it in a secret file or env var, never in the config."""
    from engine.store.crypto import generate_key

    typer.echo(generate_key())


@keys_app.command("rekey")
def keys_rekey(
    config: ConfigOpt = DEFAULT_CONFIG,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would change; write nothing.")] = False,
    page_size: Annotated[int, typer.Option(min=1, max=1000, help="Rows read and rewritten per step.")] = 200,
) -> None:
    """Re-encrypt every stored row under encryption.active (plaintext rows too); safe while the engine runs.

    Exit 1 when some rows could not be decrypted (they are listed by id; nothing else is lost).
    """
    cfg = _load(config)
    if cfg.encryption is None:
        raise _fail("no 'encryption:' section in the config: nothing to rekey", EX_CONFIG)
    try:
        report = asyncio.run(_rekey(cfg, dry_run=dry_run, page_size=page_size))
    except ConfigError as exc:
        for finding in exc.findings:
            typer.echo(finding, err=True)
        raise typer.Exit(EX_CONFIG) from None
    except EngineError as exc:
        raise _fail(str(exc)) from None
    found = ", ".join(f"{key}: {count}" for key, count in sorted(report.by_key.items())) or "none"
    verb = "would re-encrypt" if dry_run else "re-encrypted"
    typer.echo(f"rows by key before: {found}")
    typer.echo(f"{verb} {report.rekeyed}, already under '{cfg.encryption.active}' {report.current}, "
               f"failed {report.failures} (of {report.examined} rows)")
    for table, row_id, reason in report.failed:
        typer.echo(f"  {table} {row_id}: {reason}", err=True)
    raise typer.Exit(1 if report.failures else 0)


async def _rekey(cfg: Any, *, dry_run: bool, page_size: int) -> Any:
    from engine.store.encrypted import EncryptedStore, keyring_from_config
    from engine.store.factory import open_store

    store = EncryptedStore(open_store(cfg.store), keyring_from_config(cfg.encryption))
    await store.open()
    try:
        return await store.rekey(dry_run=dry_run, page_size=page_size)
    finally:
        await store.close()


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise _fail(f"cannot read {path}: {exc.strerror}") from None


audit_app = typer.Typer(no_args_is_help=True, help="The hash-chained audit trail of operator actions.")
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(
    config: ConfigOpt = DEFAULT_CONFIG,
    file: Annotated[Path | None, typer.Option("--file", help="Audit file (default: from the config).")] = None,
) -> None:
    """Check that no audit entry was changed, removed or reordered; exit 1 at the first break."""
    from engine.obs.audit import verify

    path = file if file is not None else _load(config).audit_path
    if not path.exists():
        raise _fail(f"no audit trail at {path}")
    result = verify(path)
    if result.ok:
        typer.echo(f"{path}: ok, {result.entries} entries chained")
        raise typer.Exit(0)
    raise _fail(f"{path}:{result.line}: {result.reason} (the {result.entries} entries before it are intact)")


def main() -> None:
    app(prog_name="hl7engine")
