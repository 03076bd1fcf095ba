//! Every capacity constant of the appliance, with units last, and the compile-time
//! assertions that relate them. Runtime-configurable limits have their defaults here and
//! are checked against the hard bounds in `config` validation.

#![forbid(unsafe_code)]

/// Size of a memory page; segments and preallocation are multiples of it.
pub const PAGE_BYTES: u64 = 4096;

/// Default size of one log segment file.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// Smallest accepted `log.segment_bytes`.
pub const SEGMENT_BYTES_MIN: u64 = 1024 * 1024;
/// Largest accepted `log.segment_bytes`.
pub const SEGMENT_BYTES_MAX: u64 = 1024 * 1024 * 1024;

/// Default longest accepted line (`max_line_bytes`), terminator excluded.
pub const LINE_BYTES_DEFAULT: u32 = 64 * 1024;
/// Largest accepted `max_line_bytes`: a line must always fit in a fresh segment.
pub const LINE_BYTES_MAX: u32 = 256 * 1024;

/// Bytes read from one TCP connection per read call.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Largest UDP datagram read.
pub const DATAGRAM_BYTES_MAX: usize = 64 * 1024;
/// Receive buffer asked for on UDP sockets (the kernel may clamp it to `rmem_max`).
pub const UDP_RCVBUF_BYTES: usize = 8 * 1024 * 1024;

/// Bytes one core reads from sockets before it returns to the rest of its loop.
pub const READ_BYTES_PER_TICK_MAX: usize = 1024 * 1024;
/// Reads from one connection before the core moves on to the next one. One: connections
/// sharing a core advance together, so one fast sender does not push the core's watermark
/// ahead of the data still waiting in the others' buffers.
pub const READS_PER_CONNECTION_MAX: usize = 1;
/// Datagrams read from one UDP socket per loop turn.
pub const DATAGRAMS_PER_TICK_MAX: usize = 256;
/// Inbound queue messages a core folds into its windows per loop turn.
pub const INBOUND_MESSAGES_PER_TICK_MAX: usize = 64;
/// Time a core spends folding inbound messages per loop turn, at most (checked per
/// message): with a million keys out of cache, 64 batches take hundreds of ms.
pub const INBOUND_TURN_BUDGET_US: u64 = 1_000;

/// Events in one routed batch before it is sent to its owner core.
pub const ROUTE_BATCH_EVENTS_MAX: usize = 1024;
/// Capacity, in batches, of each bounded queue between a pair of cores.
pub const QUEUE_BATCHES_MAX: usize = 64;

/// Default open connections per TCP listener per core.
pub const CONNECTIONS_DEFAULT: u32 = 1024;
/// Default `idle_timeout` of a TCP listener: a connection that sends nothing for this long is
/// closed by its core, so silent or abandoned peers cannot hold the listener's slots.
pub const IDLE_TIMEOUT_MS_DEFAULT: u64 = 5 * 60 * 1000;
/// How often a core looks for connections past their listener's `idle_timeout`: a connection
/// is closed between `idle_timeout` and `idle_timeout + IDLE_SWEEP_MS` after its last read.
pub const IDLE_SWEEP_MS: u64 = 1_000;
/// Idle connections one sweep closes at most; the rest go at the next tick.
pub const IDLE_CLOSES_PER_SWEEP_MAX: usize = 1024;
/// At `max_connections` a new connection closes the longest-idle one, if that one has been
/// idle at least this long (so a burst of connects cannot close senders mid-stream).
pub const DISPLACE_IDLE_MS_MIN: u64 = 1_000;
/// First pause of a listener after `accept` fails (out of descriptors or memory); it doubles
/// with each failure up to [`ACCEPT_BACKOFF_MS_MAX`].
pub const ACCEPT_BACKOFF_MS_MIN: u64 = 10;
/// Longest pause of a listener between two failed `accept`s.
pub const ACCEPT_BACKOFF_MS_MAX: u64 = 1_000;
/// Descriptors kept out of reach of TCP connections, for everything else the process opens:
/// log segments, checkpoints, aggregates and dead-letter files, the admin server's
/// connections, listeners and pollers. At most a quarter of `RLIMIT_NOFILE` (see
/// `net::FdBudget`).
pub const FDS_RESERVED: u64 = 256;
/// Default live keys per shard before events go to the overflow key.
pub const KEYS_PER_SHARD_DEFAULT: u32 = 1_000_000;
/// Keys a shard makes room for when it starts (at most its `max_keys_per_shard`), so its
/// key table never grows, and stalls the core moving every key, below that.
pub const KEYS_PREALLOCATED_MAX: usize = 4 << 20;
/// Key under which events beyond `max_keys_per_shard` are counted.
pub const OVERFLOW_KEY: &str = "__sluice_overflow__";
/// Longest key kept; longer keys are rejected as `key_too_long`.
pub const KEY_BYTES_MAX: usize = 1024;

/// Event times further than this ahead of the ingest time are rejected as `bad_timestamp`:
/// one far-future timestamp would otherwise drag the watermark ahead of every other input.
pub const EVENT_TIME_FUTURE_MS_MAX: i64 = 60 * 60 * 1000;

/// Raw bytes of a rejected line kept in its dead-letter record: with JSON escaping a record
/// stays within a small constant of this, whatever the line.
pub const DEADLETTER_LINE_BYTES_MAX: usize = 256;
/// Default `deadletter.max_bytes`: dead-letter bytes kept per partition, all files together.
pub const DEADLETTER_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// Smallest accepted share of `deadletter.max_bytes` per file.
pub const DEADLETTER_FILE_BYTES_MIN: u64 = 64 * 1024;
/// Largest accepted `deadletter.max_bytes`.
pub const DEADLETTER_BYTES_MAX: u64 = 1024 * 1024 * 1024 * 1024;
/// Default `deadletter.files`: the file being written plus the rotated ones.
pub const DEADLETTER_FILES_DEFAULT: u32 = 4;
/// Largest accepted `deadletter.files`.
pub const DEADLETTER_FILES_MAX: u32 = 100;
/// Default `deadletter.repeats`: full records of one (listener, reason) per second before
/// further ones are only counted in a repeat record.
pub const DEADLETTER_REPEATS_DEFAULT: u32 = 10;
/// Largest accepted `deadletter.repeats`.
pub const DEADLETTER_REPEATS_MAX: u32 = 1_000_000;
/// Span over which repeats of one (listener, reason) are collapsed.
pub const DEADLETTER_REPEAT_WINDOW_MS: i64 = 1_000;
/// Records buffered before a dead-letter log writes them out without waiting for the tick.
pub const DEADLETTER_BUFFER_BYTES: usize = 32 * 1024;

/// Admin connections open at once. At the cap, a new connection closes the oldest idle one
/// (no request in flight); when every one is busy it is refused (closed with a 503).
pub const ADMIN_CONNECTIONS_MAX: usize = 128;
/// Time an admin client has to send a complete request head, on a new connection and
/// between requests of a kept-alive one; then the connection is closed.
pub const ADMIN_HEADER_READ_TIMEOUT_MS: u64 = 5_000;
/// Longest an admin request may take, body included, before it is answered 408.
pub const ADMIN_REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Largest admin request head (request line and headers); hyper's read buffer bound.
pub const ADMIN_HEAD_BYTES_MAX: usize = 16 * 1024;
/// Largest admin request body.
pub const ADMIN_BODY_BYTES_MAX: usize = 64 * 1024;
/// Listen backlog of the admin socket (the kernel caps it at `net.core.somaxconn`).
pub const ADMIN_LISTEN_BACKLOG: i32 = 1024;
/// Pause after a failed accept (descriptors exhausted) before the admin server tries again.
pub const ADMIN_ACCEPT_BACKOFF_MS: u64 = 100;

/// How often a core runs its periodic work (watermarks, flushes, metrics) when idle.
pub const TICK_MS: u64 = 20;

/// How often a core publishes its latency histograms to the shared metrics (never per event:
/// between two publications it records into histograms it alone owns).
pub const LATENCY_PUBLISH_MS: u64 = 250;
/// The quantiles of a latency summary cover the last one to two of these (two slots that
/// rotate: the one filling and the one before it).
pub const LATENCY_WINDOW_MS: u64 = 60_000;
/// Largest duration a latency histogram tells apart (longer ones count as this), in ns.
pub const LATENCY_NS_MAX: u64 = 3_600 * 1_000_000_000;

/// How often a core reads the kernel's drop counts of its UDP sockets (`/proc/self/net/udp`).
pub const UDP_DROPS_POLL_MS: u64 = 250;

/// Default size of one results record segment.
pub const RESULTS_SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// Smallest accepted `results.segment_bytes`.
pub const RESULTS_SEGMENT_BYTES_MIN: u64 = 4096;
/// Largest accepted `results.segment_bytes`.
pub const RESULTS_SEGMENT_BYTES_MAX: u64 = 1024 * 1024 * 1024;

/// Checkpoints kept by default.
pub const CHECKPOINTS_KEPT_DEFAULT: u32 = 3;
/// Default checkpoint interval.
pub const CHECKPOINT_INTERVAL_MS_DEFAULT: u64 = 5_000;
/// Default log flush interval under `flush = interval`.
pub const FLUSH_INTERVAL_MS_DEFAULT: u64 = 200;

/// Most cores (and so log partitions and shards) one instance runs.
pub const CORES_MAX: usize = 256;

const _: () = assert!(SEGMENT_BYTES_DEFAULT.is_multiple_of(PAGE_BYTES));
const _: () = assert!(SEGMENT_BYTES_MIN.is_multiple_of(PAGE_BYTES));
const _: () = assert!(SEGMENT_BYTES_MIN <= SEGMENT_BYTES_DEFAULT);
// A line plus its framing and a batch header always fits in an empty segment, with room to spare.
const _: () = assert!((LINE_BYTES_MAX as u64) * 4 <= SEGMENT_BYTES_MIN);
const _: () = assert!(LINE_BYTES_DEFAULT <= LINE_BYTES_MAX);
const _: () = assert!(READ_CHUNK_BYTES <= READ_BYTES_PER_TICK_MAX);
const _: () = assert!(CORES_MAX <= u16::MAX as usize);
const _: () = assert!(QUEUE_BATCHES_MAX >= 2);
const _: () = assert!(UDP_DROPS_POLL_MS >= TICK_MS);
const _: () = assert!(LATENCY_PUBLISH_MS >= TICK_MS);
const _: () = assert!(LATENCY_WINDOW_MS >= 4 * LATENCY_PUBLISH_MS);
// A record (escaped line, names, reason) always fits in a file's smallest share of the cap.
const _: () = assert!((DEADLETTER_LINE_BYTES_MAX as u64) * 8 <= DEADLETTER_FILE_BYTES_MIN);
const _: () = assert!(DEADLETTER_BUFFER_BYTES as u64 <= DEADLETTER_FILE_BYTES_MIN);
const _: () = assert!(
    DEADLETTER_BYTES_DEFAULT >= DEADLETTER_FILE_BYTES_MIN * DEADLETTER_FILES_DEFAULT as u64
);
const _: () = assert!(DEADLETTER_REPEATS_DEFAULT <= DEADLETTER_REPEATS_MAX);
// hyper refuses a read buffer below 8 KiB.
const _: () = assert!(ADMIN_HEAD_BYTES_MAX >= 8192);
const _: () = assert!(ADMIN_CONNECTIONS_MAX >= 2);
const _: () = assert!(IDLE_SWEEP_MS >= TICK_MS);
const _: () = assert!(ACCEPT_BACKOFF_MS_MIN > 0 && ACCEPT_BACKOFF_MS_MIN <= ACCEPT_BACKOFF_MS_MAX);

/// First wait before a core retries a write that failed (ENOSPC, EIO, EPERM); it doubles
/// with each failure up to [`STORAGE_RETRY_MS_MAX`].
pub const STORAGE_RETRY_MS_MIN: u64 = 10;
/// Longest wait between two retries of a failed write.
pub const STORAGE_RETRY_MS_MAX: u64 = 1_000;
/// Aggregates rows a shard may hold while its file cannot take them; above it the shard
/// reads no more events (its sources then stop reading their sockets), so memory stays
/// bounded while the disk is full.
pub const AGGREGATES_STAGED_BYTES_MAX: usize = 16 * 1024 * 1024;

const _: () = assert!(STORAGE_RETRY_MS_MIN > 0 && STORAGE_RETRY_MS_MIN <= STORAGE_RETRY_MS_MAX);

/// Bytes of closed-row text the query index holds (the newest rows; older ones are in
/// `aggregates/`).
pub const QUERY_HISTORY_BYTES: usize = 64 * 1024 * 1024;
/// Rows one `/api/v1/windows` answer holds at most (closed and open each); more matched
/// says `"truncated":true`.
pub const QUERY_ROWS_MAX: usize = 10_000;
/// Largest `last` of `/api/v1/windows` (closed rows per key and window).
pub const QUERY_LAST_MAX: usize = 1_000;
/// Largest `n` of `/api/v1/top`.
pub const QUERY_TOP_MAX: usize = 1_000;
/// Open-window requests queued per shard; one more is answered 503 (busy).
pub const OPEN_QUERIES_QUEUED_MAX: usize = 4;
/// Key slots a core scans per loop turn for an open-window query, at most.
pub const OPEN_SCAN_SLOTS_PER_TURN: usize = 2_048;
/// Time a core spends per loop turn on an open-window query, at most (checked every 64
/// slots).
pub const OPEN_SCAN_TURN_BUDGET_US: u64 = 200;
/// Share (percent) of a core's time that open-window queries may take while it has input.
pub const OPEN_SCAN_SHARE_PERCENT: u32 = 25;
/// How old an open-window answer may be, by default, to be given again to the same question
/// (`max_age_ms`; 0 asks the cores afresh).
pub const OPEN_ANSWER_MAX_AGE_MS_DEFAULT: usize = 1_000;
/// Largest `max_age_ms` a client may give.
pub const OPEN_ANSWER_MAX_AGE_MS_MAX: usize = 60_000;
/// Distinct open-window answers kept for reuse.
pub const OPEN_ANSWERS_CACHED_MAX: usize = 32;
/// Time a core spends per loop turn encoding a checkpoint's snapshot, at most (checked
/// every 8 key slots): a snapshot of a million open windows is taken in steps, with the
/// core's input folded between them (see `window/snapshot.rs`).
pub const SNAPSHOT_STEP_BUDGET_US: u64 = 200;
/// Share (percent) of a core's time that a snapshot's steps may take while it has input.
pub const SNAPSHOT_SHARE_PERCENT: u32 = 50;
/// A results record's readers (stream clients, notifiers) hold its retention back up to
/// this many times `[results] retention_bytes`; past it the slowest lose their oldest rows.
pub const RESULTS_READER_HOLD_FACTOR: u64 = 4;
/// How long the admin server waits for every shard's answer to an open-window query.
pub const OPEN_QUERY_TIMEOUT_MS: u64 = 5_000;
/// Clients of `/api/v1/stream` at once; one more is answered 503.
pub const STREAM_CLIENTS_MAX: usize = 32;
/// Frames queued for one stream client before its follower waits.
pub const STREAM_QUEUE_FRAMES: usize = 256;
/// A stream client that takes no frame for this long is dropped.
pub const STREAM_STALL_MAX_MS: u64 = 30_000;
/// A comment frame after this long without an event keeps proxies from closing a stream.
pub const STREAM_KEEPALIVE_MS: u64 = 15_000;

/// Bytes of one admin API answer `sluice query` and `sluice top` read (10,000 rows of a
/// few hundred bytes each fit many times over).
pub const CLI_ANSWER_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Bytes of one line of an `/api/v1/stream` answer `sluice query --follow` reads.
pub const CLI_STREAM_LINE_BYTES_MAX: u64 = 1024 * 1024;
/// How long the command line waits to connect to the admin server.
pub const CLI_CONNECT_TIMEOUT_MS: u64 = 3_000;
/// How long the command line waits for a whole answer (the stream excepted).
pub const CLI_ANSWER_TIMEOUT_MS: u64 = 15_000;
/// Rows of `/api/v1/top` that `sluice top` asks for (it shows as many as fit).
pub const CLI_TOP_KEYS: usize = 20;
/// `sluice query --follow` gives a stream up (and reconnects) after this long without a
/// byte: three of the server's keep-alive intervals.
pub const CLI_STREAM_SILENCE_MAX_MS: u64 = 3 * STREAM_KEEPALIVE_MS;

const _: () = assert!(CLI_ANSWER_TIMEOUT_MS > OPEN_QUERY_TIMEOUT_MS);

/// States (keys) one alert rule keeps per shard; a key past that is not watched and counted
/// (`sluice_alert_states_overflow_total`).
pub const ALERT_STATES_PER_RULE_MAX: usize = 100_000;
/// `[[alert]]` rules at most.
pub const ALERT_RULES_MAX: usize = 256;
/// Transitions a notifier holds in memory at once (read from `alerts/`, not yet delivered);
/// the rest wait in the record.
pub const NOTIFY_QUEUE_MAX: usize = 1_024;
/// Transitions sent in one notification request at most.
pub const NOTIFY_BATCH_MAX: usize = 64;
/// First retry delay of a failed notification; it doubles up to the max.
pub const NOTIFY_BACKOFF_MS_MIN: u64 = 100;
/// Longest delay between retries of a failed notification.
pub const NOTIFY_BACKOFF_MS_MAX: u64 = 10_000;
/// Timeout of one notification request.
pub const NOTIFY_TIMEOUT_MS: u64 = 5_000;
/// How often a notifier looks for new transitions when it has none.
pub const NOTIFY_POLL_MS: u64 = 100;
/// Firing alerts are re-sent to Alertmanager this often, with `endsAt` four times as far
/// ahead (as Prometheus' `resend_delay` and its `endsAt`).
pub const ALERTMANAGER_RESEND_MS: u64 = 60_000;
/// The shortest `[notify] resend_interval`: Alertmanager is told of every firing alert that
/// often, so below this the re-sends are load for no gain.
pub const ALERTMANAGER_RESEND_MS_MIN: u64 = 2_000;
/// The longest `[notify] resend_interval`.
pub const ALERTMANAGER_RESEND_MS_MAX: u64 = 3_600_000;
/// Firing alerts a notifier keeps for re-sending, at most.
pub const NOTIFY_FIRING_MAX: usize = 100_000;

const _: () = assert!(NOTIFY_BACKOFF_MS_MIN > 0 && NOTIFY_BACKOFF_MS_MIN <= NOTIFY_BACKOFF_MS_MAX);
const _: () = assert!(NOTIFY_BATCH_MAX <= NOTIFY_QUEUE_MAX);
// A re-send that times out still leaves the alert alive in Alertmanager (its `endsAt` is four
// intervals ahead) until the next one.
const _: () = assert!(NOTIFY_TIMEOUT_MS < 4 * ALERTMANAGER_RESEND_MS_MIN);
const _: () = assert!(
    ALERTMANAGER_RESEND_MS_MIN <= ALERTMANAGER_RESEND_MS
        && ALERTMANAGER_RESEND_MS <= ALERTMANAGER_RESEND_MS_MAX
);
