"""Every metric the engine exports, declared in one place.

Rules (DESIGN.md §3): prefix `hl7engine_`, base units (seconds, bytes), counters end in
`_total`. Labels are bounded sets chosen by the engine or its config: channel and sink
names, ACK codes, fixed reason words, segment ids and field numbers. Never a label with
PHI, a control id, a peer address or free text.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

# `_created` series double the exposition and no dashboard of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

# ACK latency is mostly the group-commit fsync: sub-millisecond to tens of ms.
_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
# Delivery latency includes queueing and retries: milliseconds to hours.
_DELIVERY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
)

BUILD_INFO = Info("hl7engine_build", "Engine version.", registry=REGISTRY)
READY = Gauge("hl7engine_ready", "1 when the engine accepts traffic, 0 while starting or draining.",
              registry=REGISTRY)

# ---- listener (custody)
CONNECTIONS_OPEN = Gauge(
    "hl7engine_connections_open", "Open MLLP connections.", ["channel"], registry=REGISTRY
)
CONNECTIONS = Counter(
    "hl7engine_connections_total",
    "MLLP connections by outcome: accepted, refused_limit, refused_peer_limit, refused_address, "
    "refused_rate, tls_failed.",
    ["channel", "outcome"],
    registry=REGISTRY,
)
CONNECTIONS_CLOSED = Counter(
    "hl7engine_connections_closed_total",
    "MLLP connections closed, by reason: peer, idle, frame_deadline, shutdown, error.",
    ["channel", "reason"],
    registry=REGISTRY,
)
FRAMES_REJECTED = Counter(
    "hl7engine_frames_rejected_total",
    "Frames that could not be read (no HL7 ACK sent): too_large, deadline, closed_mid_frame, interrupted.",
    ["channel", "reason"],
    registry=REGISTRY,
)
MESSAGES_THROTTLED = Counter(
    "hl7engine_messages_throttled_total",
    "Frames that waited for their peer's message rate limit (reading from the peer paused meanwhile).",
    ["channel"],
    registry=REGISTRY,
)
GARBAGE_BYTES = Counter(
    "hl7engine_garbage_bytes_total",
    "Bytes received outside any MLLP frame and skipped.",
    ["channel"],
    registry=REGISTRY,
)
MESSAGES_RECEIVED = Counter(
    "hl7engine_messages_received_total", "Frames received and handed to intake.", ["channel"],
    registry=REGISTRY,
)
RECEIVED_BYTES = Counter(
    "hl7engine_received_bytes_total", "Payload bytes of received frames.", ["channel"],
    registry=REGISTRY,
)
ACKS = Counter(
    "hl7engine_acks_total",
    "Acknowledgements sent, by code (AA AE AR CA CE CR, commit_ack/commit_nak for MLLP release 2).",
    ["channel", "code"],
    registry=REGISTRY,
)
ACK_LATENCY = Histogram(
    "hl7engine_ack_latency_seconds",
    "Time from a frame's last byte to its ACK being written.",
    ["channel"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
DUPLICATES = Counter(
    "hl7engine_duplicates_total",
    "Exact resends (same sender, control id and content): stored ACK replayed, nothing reprocessed.",
    ["channel"],
    registry=REGISTRY,
)
CONTROL_ID_COLLISIONS = Counter(
    "hl7engine_control_id_collisions_total",
    "Messages reusing a sender's control id with different content (stored as new, flagged).",
    ["channel"],
    registry=REGISTRY,
)
QUARANTINED = Counter(
    "hl7engine_quarantined_total",
    "Frames rejected before custody (no MSH, unaccepted type); raw bytes kept in quarantine.",
    ["channel", "reason"],
    registry=REGISTRY,
)

# ---- store
STORE_COMMIT_LATENCY = Histogram(
    "hl7engine_store_commit_seconds",
    "Duration of one durable group commit (transaction + fsync).",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
STORE_BATCH_SIZE = Histogram(
    "hl7engine_store_batch_messages",
    "Messages per group commit.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
    registry=REGISTRY,
)
STORE_ERRORS = Counter(
    "hl7engine_store_errors_total", "Store operations that failed, by operation.", ["operation"],
    registry=REGISTRY,
)
# Set by engine.obs.disk.record_store_filesystem (SQLite only: a PostgreSQL store's disk is
# the database server's); the "disk nearly full" alert reads them without node_exporter.
STORE_FS_AVAIL = Gauge(
    "hl7engine_store_filesystem_avail_bytes",
    "Bytes available to the engine on the filesystem holding the SQLite store.",
    registry=REGISTRY,
)
STORE_FS_SIZE = Gauge(
    "hl7engine_store_filesystem_size_bytes",
    "Size of the filesystem holding the SQLite store.",
    registry=REGISTRY,
)

# ---- work (runner, stages, sinks)
QUEUE_DEPTH = Gauge(
    "hl7engine_queue_depth", "Stored messages not yet finished (received, processing, retry).",
    ["channel"], registry=REGISTRY,
)
QUEUE_OLDEST_AGE = Gauge(
    "hl7engine_queue_oldest_age_seconds", "Age of the oldest unfinished message (0 when empty).",
    ["channel"], registry=REGISTRY,
)
DEAD_LETTERS = Gauge(
    "hl7engine_dead_letters", "Messages in the dead-letter list.", ["channel"], registry=REGISTRY
)
PROCESSED = Counter(
    "hl7engine_messages_processed_total",
    "Work outcomes per message attempt: done, filtered, retry, dead.",
    ["channel", "outcome"],
    registry=REGISTRY,
)
DELIVERIES = Counter(
    "hl7engine_sink_deliveries_total",
    "Sink delivery attempts by outcome: ok, transient, permanent.",
    ["channel", "sink", "outcome"],
    registry=REGISTRY,
)
DELIVERY_LATENCY = Histogram(
    "hl7engine_delivery_latency_seconds",
    "Time from receipt to a message being delivered to a sink.",
    ["channel", "sink"],
    buckets=_DELIVERY_BUCKETS,
    registry=REGISTRY,
)
STAGE_LATENCY = Histogram(
    "hl7engine_stage_seconds",
    "Time spent in one stage for one message.",
    ["channel", "stage"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
FIELDS_UNMAPPED = Counter(
    "hl7engine_fields_unmapped_total",
    "Fields present in a message but not mapped (segment id and field number; never values).",
    ["channel", "segment", "field"],
    registry=REGISTRY,
)
