"""Wiring and start/stop order. No logic of its own beyond the lifecycle.

Start: store (open, recover) -> sinks -> runners -> listeners -> admin, ready.
Stop:  not ready -> stop accepting -> finish in-flight frames and their ACKs ->
       drain runners -> close sinks -> close store. Past the deadline the rest is
       cancelled, and the log says duplicates are possible (work that was delivered
       but not yet marked done is delivered again after restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from engine import __version__
from engine.admin import AdminServer
from engine.config.models import ChannelConfig, EngineConfig
from engine.mllp.server import ConnectionInfo, MllpLimits, MllpServer
from engine.mllp.tls import server_context
from engine.obs import metrics
from engine.obs.disk import record_store_filesystem
from engine.pipeline.intake import Acceptance, Intake, IntakeSettings
from engine.pipeline.runner import RetryPolicy, Runner
from engine.pipeline.senders import sender_policy
from engine.pipeline.workers import ChannelSpec, PoolExecutor, StageExecutor, WorkerPool, resolve_workers
from engine.registry import BuildContext, Registry, default_registry
from engine.store.factory import open_engine_store
from engine.types import ConfigError, Sink, Stage, Store

log = structlog.get_logger("hl7engine.app")

_GAUGE_INTERVAL_S = 2.0


@dataclass(slots=True)
class ChannelRuntime:
    config: ChannelConfig
    stages: list[Stage]
    sinks: list[Sink]
    runner: Runner
    intake: Intake
    server: MllpServer
    state: str = "starting"
    stats: dict[str, Any] = field(default_factory=dict)


def build_stages(channel: ChannelConfig, registry: Registry, ctx: BuildContext) -> list[Stage]:
    stages: list[Stage] = []
    for stage_config in channel.pipeline:
        plugin = registry.stage(str(getattr(stage_config, "type")))  # noqa: B009 - plugin models all have `type`
        assert plugin is not None, "config validation checks stage types"
        stages.append(plugin.factory(stage_config, ctx))
    return stages


def build_sinks(channel: ChannelConfig, registry: Registry, ctx: BuildContext) -> list[Sink]:
    sinks: list[Sink] = []
    for sink_config in channel.sinks:
        plugin = registry.sink(str(getattr(sink_config, "type")))  # noqa: B009
        assert plugin is not None, "config validation checks sink types"
        sinks.append(plugin.factory(sink_config, ctx))
    return sinks


def intake_settings(channel: ChannelConfig) -> IntakeSettings:
    return IntakeSettings(
        channel=channel.name,
        acceptance=Acceptance(channel.accept),
        ack_mode=channel.ack,
        mllp_release=channel.mllp_release,
        charset_fallback=channel.charset_fallback,
        ordering_field=channel.ordering.key if channel.ordering else None,
        channel_version=channel.version,
        senders=sender_policy(channel.senders),
    )


def retry_policy(channel: ChannelConfig) -> RetryPolicy:
    r = channel.retry
    return RetryPolicy(initial_s=r.initial_s, max_s=r.max_s, multiplier=r.multiplier,
                       jitter=r.jitter, max_attempts=r.max_attempts)


async def start_sinks(rt: ChannelRuntime) -> None:
    """Start each sink; one that cannot reach its target yet must not stop custody.

    Messages keep being stored and ACKed; deliveries to that sink fail transiently and
    are retried with backoff until it answers.
    """
    for sink in rt.sinks:
        try:
            await sink.start()
        except Exception as exc:
            log.warning("sink_start_failed", channel=rt.config.name, sink=sink.name,
                        error_type=exc.__class__.__name__)


def listener_changed(old: ChannelConfig, new: ChannelConfig) -> bool:
    """True when the socket itself must be rebound (connections are then dropped)."""
    fields = ("listen", "tls", "limits", "allow")
    return any(getattr(old, f) != getattr(new, f) for f in fields)


def plan_reload(old: EngineConfig, new: EngineConfig) -> dict[str, list[str]]:
    """What a reload from `old` to `new` would do, channel by channel (by config hash)."""
    before = {c.name: c for c in old.channels}
    after = {c.name: c for c in new.channels}
    restart = [section for section in ("store", "admin", "logging", "workers", "workers_nice", "encryption")
               if getattr(old, section) != getattr(new, section)]
    return {
        "added": sorted(after.keys() - before.keys()),
        "removed": sorted(before.keys() - after.keys()),
        "changed": sorted(n for n in before.keys() & after.keys() if before[n].version != after[n].version),
        "unchanged": sorted(n for n in before.keys() & after.keys() if before[n].version == after[n].version),
        "restart_needed": restart,
    }


def split_hostport(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class Engine:
    def __init__(self, config: EngineConfig, registry: Registry | None = None,
                 config_path: Path | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self._reload_lock = asyncio.Lock()
        self.registry = registry or default_registry()
        self.store: Store = open_engine_store(config)
        self.channels: dict[str, ChannelRuntime] = {}
        workers = resolve_workers(config.workers)
        self.pool: WorkerPool | None = WorkerPool(workers, config.workers_nice) if workers > 0 else None
        self.admin: AdminServer | None = None
        self._ready = False
        self._draining = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.started_at = time.time()

    # ------------------------------------------------------------------ admin backend

    def is_ready(self) -> tuple[bool, dict[str, str]]:
        checks = {"store": "ok" if self._ready else "not ready"}
        for name, rt in self.channels.items():
            checks[f"channel:{name}"] = rt.state
        ready = self._ready and not self._draining and all(
            rt.state == "running" for rt in self.channels.values())
        return ready, checks

    def channel_summaries(self) -> list[dict[str, Any]]:
        return [
            {
                "name": name,
                "listen": rt.config.listen,
                "port": rt.server.port,
                "state": rt.state,
                "version": rt.config.version,
                "connections": rt.server.connections,
                "sinks": [s.name for s in rt.sinks],
                # Secrets are references (env/file names), never values, so this is safe to show.
                "config": rt.config.model_dump(mode="json", by_alias=True, exclude_none=True),
                **rt.stats,
            }
            for name, rt in self.channels.items()
        ]

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        metrics.BUILD_INFO.info({"version": __version__})
        metrics.READY.set(0)
        await self.store.open()
        recovered = await self.store.recover()
        if recovered:
            log.info("recovered_unfinished", count=recovered)
        if self.pool is not None:
            await self.pool.start()
        for channel in self.config.channels:
            if not channel.enabled:
                continue
            self.channels[channel.name] = self._build_channel(channel)
        for rt in self.channels.values():
            await start_sinks(rt)
            await rt.runner.prime()
            rt.runner.start()
        for rt in self.channels.values():
            await rt.server.start()
            rt.state = "running"
            log.info("channel_listening", channel=rt.config.name, port=rt.server.port)
        if self.config.admin is not None:
            self.admin = AdminServer(self.config.admin.listen, backend=self,
                                     tokens=self.config.admin.token_roles() or None)
            await self.admin.start()
            log.info("admin_listening", port=self.admin.port)
        self._spawn(self._gauges_loop())
        self._spawn(self._retention_loop())
        self._ready = True
        metrics.READY.set(1)
        log.info("engine_ready", channels=len(self.channels))

    def _build_channel(self, channel: ChannelConfig, server: MllpServer | None = None) -> ChannelRuntime:
        ctx = BuildContext(channel=channel.name, config_dir=self.config.base_dir)
        stages = build_stages(channel, self.registry, ctx)
        sinks = build_sinks(channel, self.registry, ctx)
        runner = Runner(channel.name, self.store, stages, sinks, retry=retry_policy(channel),
                        executor=self._executor(channel))
        intake = Intake(intake_settings(channel), self.store, on_stored=runner.wake,
                        stages=stages if channel.ack == "after_processing" else ())
        host, port = split_hostport(channel.listen)
        limits = channel.limits
        tls = channel.tls
        ssl_context = (
            server_context(tls.cert, tls.key, tls.ca, tls.require_client_cert) if tls is not None else None
        )
        rt_ref: list[ChannelRuntime] = []

        async def dispatch(payload: bytes, conn: ConnectionInfo) -> bytes | None:
            # Looked up per frame, so a reload swaps the pipeline under open connections;
            # a frame already in intake finishes under the version it started with.
            return await rt_ref[0].intake.handle(payload, conn)

        new_server = server or MllpServer(
            host,
            port,
            dispatch,
            limits=MllpLimits(
                max_frame_bytes=limits.max_frame_bytes,
                frame_timeout_s=limits.frame_timeout_s,
                idle_timeout_s=limits.idle_timeout_s,
                max_connections=limits.max_connections,
                max_connections_per_peer=limits.max_connections_per_peer,
                peer_connection_rate=limits.peer_connection_rate,
                peer_message_rate=limits.peer_message_rate,
            ),
            ssl_context=ssl_context,
            channel=channel.name,
            allow=channel.allow or None,
        )
        if server is not None:
            # Reload: keep the bound listener and its connections; repoint its handler.
            server.handler = dispatch
            new_server = server
        rt = ChannelRuntime(channel, stages, sinks, runner, intake, new_server)
        rt_ref.append(rt)
        return rt

    def _executor(self, channel: ChannelConfig) -> StageExecutor | None:
        """Stages run in the worker pool when there is one; None = inline on the event loop."""
        if self.pool is None or not channel.pipeline:
            return None
        spec = ChannelSpec(
            channel=channel.name,
            version=channel.version,
            stages=tuple((str(getattr(c, "type")), c.model_dump(by_alias=True, mode="json"))  # noqa: B009
                         for c in channel.pipeline),
            config_dir=str(self.config.base_dir),
        )
        return PoolExecutor(self.pool, spec)

    # ------------------------------------------------------------------ reload

    async def reload(self) -> dict[str, list[str]]:
        """Re-read the config file and apply channel changes without a restart.

        A config that fails validation raises ConfigError and changes nothing. Changed
        channels get new stages, sinks and runner; their listener (and its open
        connections) is kept unless listen/TLS/limits/allow changed. Unchanged channels
        are not touched. Store, admin and logging changes need a restart (logged).
        """
        if self.config_path is None:
            raise ConfigError(["reload: the engine was not started from a config file"])
        from engine.config.loader import load_config

        async with self._reload_lock:
            new = load_config(self.config_path, self.registry)
            changes = plan_reload(self.config, new)
            for section in changes["restart_needed"]:
                log.warning("reload_needs_restart", section=section)
            for name in changes["removed"]:
                await self._stop_channel(self.channels.pop(name))
            for name in changes["changed"]:
                await self._replace_channel(self.channels[name], new.channel(name))
            for name in changes["added"]:
                channel = new.channel(name)
                if channel.enabled:
                    rt = self._build_channel(channel)
                    await self._start_channel(rt)
                    self.channels[name] = rt
            self.config = new
            log.info("config_reloaded", **{k: len(v) for k, v in changes.items()})
            return changes

    async def _start_channel(self, rt: ChannelRuntime, *, with_server: bool = True) -> None:
        await start_sinks(rt)
        await rt.runner.prime()
        rt.runner.start()
        if with_server:
            await rt.server.start()
        rt.state = "running"

    async def _stop_channel(self, rt: ChannelRuntime, timeout: float = 10.0) -> None:
        rt.state = "draining"
        await rt.server.stop_accepting()
        await rt.server.drain(timeout)
        await rt.server.close()
        await self._retire_work(rt, timeout)
        rt.state = "stopped"

    async def _retire_work(self, rt: ChannelRuntime, timeout: float) -> None:
        await rt.runner.stop(timeout)
        for sink in rt.sinks:
            with contextlib.suppress(Exception):
                await sink.close()

    async def _replace_channel(self, old: ChannelRuntime, channel: ChannelConfig) -> None:
        if not channel.enabled:
            await self._stop_channel(self.channels.pop(channel.name))
            return
        if listener_changed(old.config, channel):
            await self._stop_channel(old)
            rt = self._build_channel(channel)
            await self._start_channel(rt)
            self.channels[channel.name] = rt
            return
        fresh = self._build_channel(channel, server=old.server)
        # Warm the new version up while the old one still works, so the swap is short.
        await fresh.runner.prime()
        # Work first: the old runner finishes its batch, then the new one takes over.
        await self._retire_work(old, 10.0)
        await self._start_channel(fresh, with_server=False)
        self.channels[channel.name] = fresh

    async def stop(self, deadline_s: float = 30.0) -> None:
        """Graceful drain within `deadline_s`; forced after ¾ of it."""
        started = time.monotonic()
        self._draining = True
        metrics.READY.set(0)
        log.info("engine_stopping", deadline_s=deadline_s)
        forced = False
        for rt in self.channels.values():
            rt.state = "draining"
            await rt.server.stop_accepting()
        budget = deadline_s * 0.75
        for rt in self.channels.values():
            remaining = max(0.1, budget - (time.monotonic() - started))
            await rt.server.drain(remaining)
        for rt in self.channels.values():
            remaining = max(0.1, budget - (time.monotonic() - started))
            if not await rt.runner.stop(remaining):
                forced = True
        if forced:
            log.warning("engine_forced_stop",
                        note="work in progress was cancelled; duplicates are possible after restart")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for rt in self.channels.values():
            for sink in rt.sinks:
                with contextlib.suppress(Exception):
                    await sink.close()
            await rt.server.close()
            rt.state = "stopped"
        if self.admin is not None:
            await self.admin.close()
        if self.pool is not None:
            await self.pool.close()
        await self.store.close()
        self._ready = False
        log.info("engine_stopped", seconds=round(time.monotonic() - started, 3))

    async def run_until_signal(self) -> int:
        """Run until SIGTERM/SIGINT, then drain. A second signal forces an immediate exit."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        signals = (signal.SIGTERM, signal.SIGINT)
        received: list[int] = []

        def on_signal(signum: int) -> None:
            received.append(signum)
            if len(received) > 1:
                log.warning("engine_forced_exit", note="second signal; duplicates are possible after restart")
                raise SystemExit(1)
            stop.set()

        def on_hup() -> None:
            self._spawn(self._reload_from_signal())

        for sig in signals:
            loop.add_signal_handler(sig, on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, on_hup)
        try:
            await self.start()
            await stop.wait()
            await self.stop(self.config.shutdown_timeout_s)
        finally:
            for sig in (*signals, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        return 0

    async def _reload_from_signal(self) -> None:
        try:
            await self.reload()
        except ConfigError as exc:
            # Refused whole: the running config keeps going. Findings name file:line:col only.
            log.error("reload_refused", findings=exc.findings)
        except Exception as exc:
            log.error("reload_failed", error_type=exc.__class__.__name__)

    # ------------------------------------------------------------------ background

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _gauges_loop(self) -> None:
        while True:
            now = time.time()
            for name, rt in self.channels.items():
                try:
                    stats = await self.store.stats(name)
                except Exception as exc:
                    log.error("stats_failed", channel=name, error_type=exc.__class__.__name__)
                    continue
                metrics.QUEUE_DEPTH.labels(name).set(stats.pending)
                age = now - stats.oldest_pending_at if stats.oldest_pending_at else 0.0
                metrics.QUEUE_OLDEST_AGE.labels(name).set(max(0.0, age))
                metrics.DEAD_LETTERS.labels(name).set(stats.dead)
                rt.stats = {"pending": stats.pending, "oldest_pending_age_s": round(max(0.0, age), 3),
                            "dead": stats.dead}
            record_store_filesystem(self.config.store.path)
            await asyncio.sleep(_GAUGE_INTERVAL_S)

    async def _retention_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.store.retention.prune_interval_s)
            try:
                removed = await prune_finished(self.store, self.config, time.time())
            except Exception as exc:
                log.error("prune_failed", error_type=exc.__class__.__name__)
                continue
            if removed:
                log.info("pruned", messages=removed)


async def prune_finished(store: Store, config: EngineConfig, now: float) -> int:
    """Prune finished messages: each channel by its own retention (or the store's), then
    everything else (channels no longer configured) by the longest setting, so nothing is
    removed before any retention that could apply to it has passed."""
    default_days = config.store.retention.done_days
    removed = 0
    longest = default_days
    for channel in config.channels:
        days = channel.retention.done_days if channel.retention is not None else default_days
        longest = max(longest, days)
        removed += await store.prune(now - days * 86400, channel.name)
    removed += await store.prune(now - longest * 86400)
    return removed
