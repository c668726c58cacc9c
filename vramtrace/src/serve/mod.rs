//! `vramtrace serve`: read-only HTTP over the one Ledger, live (through the same
//! [`Recorder`](crate::session::Recorder) as `record`) or replaying a trace file.
//!
//! Every record goes through the Ledger; the service's [`Model`] moves only with the
//! Ledger's change stream, and the responses read the Model and the Ledger's state.
//!
//! Endpoints (all `GET`; a bearer token on every one when `--token-file` is given):
//! `/api/health`, `/metrics` (Prometheus text, OpenMetrics on request), `/api/snapshot`,
//! `/api/config`, `/ws` (a WebSocket: the state, then its changes), `/api/allocations`
//! (live allocations, a window of rows), `/api/stack?id=`; under `--replay` also
//! `/api/analysis`, `/api/snapshot?at=SECS` and `/api/timeline`. Every other `GET` is the
//! web page (`web/`, embedded).

pub mod api;
pub mod metrics;
pub mod moments;
pub mod state;
pub mod telemetry;
pub mod timeline;
pub mod web;
pub mod ws;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use axum::{
    Router,
    extract::{Query, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use state::Model;

use crate::{
    analyze,
    cli::ServeArgs,
    ledger::{Class, Ledger, Replay, Seen, Step},
    session::{self, LiveSink, RecordOptions},
};

/// The port `serve` listens on unless told otherwise (DCGM exporter has 9400).
pub const DEFAULT_PORT: u16 = 9477;
/// Longest request target (path and query) accepted.
const MAX_TARGET: usize = 2048;

/// Whether records still arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tracing {
    /// The probes are being attached.
    Starting,
    /// Live: records arrive.
    Live,
    /// The recording ended (its command exited, or its duration passed); the state stays.
    Ended,
    /// A trace file, replayed to its end.
    Replay,
}

/// The Ledger and the Model it feeds.
#[derive(Debug)]
pub struct Served {
    pub ledger: Ledger,
    pub model: Model,
    pub tracing: Tracing,
    pub records: u64,
    /// The latest telemetry reading (GPUs and the machine); null before the first.
    pub telemetry: Value,
    /// Readings taken, to tell a new one.
    pub telemetry_seq: u64,
    /// The GPUs of the latest reading, for `/metrics` (empty without NVML or nvidia-smi).
    pub gpu_telemetry: Vec<crate::nvml::GpuTelemetry>,
    /// Bytes by class over time, for a replayed trace.
    pub timeline: Option<timeline::Timeline>,
    /// Copies of the replay's state through the trace, for the state at a moment.
    pub moments: Option<Arc<moments::Moments>>,
}

impl Served {
    /// Empty, in the given tracing state.
    pub fn new(tracing: Tracing) -> Self {
        Served {
            ledger: Ledger::new(),
            model: Model::default(),
            tracing,
            records: 0,
            telemetry: Value::Null,
            telemetry_seq: 0,
            gpu_telemetry: Vec::new(),
            timeline: None,
            moments: None,
        }
    }

    /// Applies records in trace order; the Model takes what each changed.
    pub fn apply(&mut self, records: &[crate::trace::Record]) {
        for rec in records {
            let changes = self.ledger.apply(rec);
            self.model.take(changes);
            self.records += 1;
        }
    }
}

/// The settings `/api/config` reports.
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    pub version: &'static str,
    pub listen: SocketAddr,
    pub top: usize,
    pub replay: Option<PathBuf>,
    pub output: Option<PathBuf>,
    pub pids: Vec<u32>,
    pub command: Vec<String>,
    pub stacks: crate::probe::StackMode,
    pub nvml_interval_ms: Option<u64>,
    pub poll_interval_ms: u64,
    pub token_required: bool,
}

/// The state at one moment, made once for every read that asks for it.
type AtMoment = Arc<tokio::sync::OnceCell<Arc<Served>>>;

/// What every handler shares.
pub struct Shared {
    pub served: Mutex<Served>,
    pub config: Config,
    token: Option<String>,
    started: Instant,
    /// The WebSocket stream's producer side.
    pub stream: ws::Stream,
    /// The state at the page's cursor, replayed once for every read at that moment: the
    /// reads that come together (the snapshot, the allocations, the flame graph) wait for
    /// the one replay instead of each making its own.
    at: Mutex<Option<(u64, AtMoment)>>,
    /// `/api/analysis` of the replayed trace, as sent.
    analysis: tokio::sync::OnceCell<String>,
}

impl Shared {
    /// What the handlers share, around `served` (the benchmark and tests build one).
    pub fn new(served: Served, config: Config, token: Option<String>) -> Self {
        Shared {
            served: Mutex::new(served),
            config,
            token,
            started: Instant::now(),
            stream: ws::Stream::default(),
            at: Mutex::new(None),
            analysis: tokio::sync::OnceCell::new(),
        }
    }

    /// The state `secs` after the start of the replayed trace (`serve --replay` only): the
    /// trace replayed through the Ledger up to then, from the nearest copy of the state the
    /// startup replay kept ([`moments`]). The latest moment asked for is kept, so that the
    /// snapshot, the allocations and the flame graph at one cursor cost one replay.
    pub async fn served_at(self: &Arc<Self>, secs: f64) -> Result<Arc<Served>, AtError> {
        let Some(moments) = self.lock().moments.clone() else {
            return Err(AtError::NotReplay);
        };
        if !(secs.is_finite() && secs >= 0.0) {
            return Err(AtError::Bad);
        }
        let key = secs.to_bits();
        let cell = {
            let mut at = self.at.lock().unwrap_or_else(|e| e.into_inner());
            match at.as_ref() {
                Some((k, cell)) if *k == key => cell.clone(),
                _ => {
                    let cell = Arc::new(tokio::sync::OnceCell::new());
                    *at = Some((key, cell.clone()));
                    cell
                }
            }
        };
        cell.get_or_try_init(|| async move {
            let served = tokio::task::spawn_blocking(move || moments.at(secs))
                .await
                .map_err(|e| AtError::Failed(e.to_string()))?
                .map_err(|e| AtError::Failed(format!("{e:#}")))?;
            Ok(Arc::new(served))
        })
        .await
        .cloned()
    }

    /// The state; a handler that panicked while holding it left it usable.
    pub fn lock(&self) -> MutexGuard<'_, Served> {
        self.served.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why the state at a moment could not be given.
#[derive(Debug, thiserror::Error)]
pub enum AtError {
    #[error("at= needs serve --replay")]
    NotReplay,
    #[error("at= must be seconds, finite and not negative")]
    Bad,
    #[error("{0}")]
    Failed(String),
}

impl AtError {
    fn response(&self) -> Response {
        let status = match self {
            AtError::NotReplay | AtError::Bad => StatusCode::BAD_REQUEST,
            AtError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        error(status, &self.to_string())
    }
}

/// Reads the bearer token: the file's first line, which must be printable ASCII.
fn read_token(path: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the token file {}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    if token.is_empty() {
        bail!("the token file {} is empty", path.display());
    }
    // A browser sends header values byte per character (Latin-1), not UTF-8: a token of
    // other characters could not be given on a request (RFC 6750's b64token is ASCII too).
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        bail!(
            "the token in {} must be printable ASCII without spaces",
            path.display()
        );
    }
    Ok(token)
}

/// Runs `vramtrace serve` until SIGINT or SIGTERM.
pub fn serve(args: ServeArgs, verbose: bool) -> Result<()> {
    if args.top == 0 {
        bail!("--top must be at least 1");
    }
    let token = args.token_file.as_deref().map(read_token).transpose()?;
    let nvml_interval = (!args.no_nvml).then(|| Duration::from_millis(args.nvml_interval));
    if args.nvml_interval == 0 {
        bail!("--nvml-interval must be at least 1 millisecond");
    }
    let poll = Duration::from_millis(args.poll_interval);
    if poll < telemetry::MIN_INTERVAL {
        bail!(
            "--poll-interval must be at least {} ms",
            telemetry::MIN_INTERVAL.as_millis()
        );
    }
    if poll < telemetry::DEFAULT_INTERVAL {
        crate::say!(
            "vramtrace: warning: polling telemetry every {} ms costs NVML and CPU time; the default is {} ms",
            poll.as_millis(),
            telemetry::DEFAULT_INTERVAL.as_millis()
        );
    }
    let config = Config {
        version: env!("CARGO_PKG_VERSION"),
        listen: args.listen,
        top: args.top,
        replay: args.replay.clone(),
        output: args.output.clone(),
        pids: args.pids.clone(),
        command: args.command.clone(),
        stacks: args.stack.mode(),
        nvml_interval_ms: nvml_interval.map(|d| d.as_millis() as u64),
        poll_interval_ms: poll.as_millis() as u64,
        token_required: token.is_some(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let served = match &args.replay {
        Some(path) => {
            let replay =
                Replay::open(path).with_context(|| format!("reading {}", path.display()))?;
            replayed(replay, Some((path, moments::Keep::default())))
        }
        None => Served::new(Tracing::Starting),
    };
    let shared = Arc::new(Shared::new(served, config, token));
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let addr = listener.local_addr()?;
        crate::say!("vramtrace: serving on http://{addr}/ (metrics at /metrics)");
        let app = router(shared.clone());
        tokio::spawn(ws::produce(shared.clone()));
        if args.replay.is_none() {
            telemetry::spawn(shared.clone(), poll).context("starting the telemetry poller")?;
        } else {
            shared.lock().telemetry = json!({
                "unavailable": "serving a trace: this machine's telemetry does not describe it"
            });
        }
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown())
                .await
        });
        if args.replay.is_none() {
            let opts = RecordOptions {
                output: args.output.clone(),
                force: args.force,
                pids: args.pids.clone(),
                libcuda: args.libcuda.clone(),
                duration: args.duration.map(Duration::from_secs_f64),
                command: args.command.clone(),
                stacks: args.stack.mode(),
                hold_new: args.stack.hold_new,
                ring_bytes: args.ring_size,
                probe_at: args.probe_at,
                verbose,
                quiet: true,
                nvml_interval,
                policy: session::Policy::Report,
                host_signal: 0,
            };
            let (_stop_tx, stop_rx) = tokio::sync::oneshot::channel();
            let sink = shared.clone();
            let live = LiveSink {
                on_records: Box::new(move |batch| {
                    let mut s = sink.lock();
                    s.tracing = Tracing::Live;
                    s.apply(&batch);
                }),
                stop: stop_rx,
            };
            // The recording handles SIGINT and SIGTERM itself, so that the trace (with -o)
            // is sealed; the server stops on the same signals.
            let started = Instant::now();
            match session::record_with(opts, Some(live)).await {
                Ok(outcome) => {
                    let by_itself = outcome.command_status.is_some()
                        || args
                            .duration
                            .is_some_and(|d| started.elapsed().as_secs_f64() >= d);
                    shared.lock().tracing = Tracing::Ended;
                    if !by_itself {
                        server.abort();
                        return Ok(());
                    }
                    crate::say!("vramtrace: recording ended; still serving (Ctrl-C to stop)");
                }
                Err(e) => {
                    crate::say!("vramtrace: recording failed: {e:#}");
                    server.abort();
                    return Err(e);
                }
            }
        }
        server
            .await
            .context("the server task")?
            .context("serving")?;
        Ok(())
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

/// The routes, behind the checks every request goes through.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/health", get(health))
        .route("/metrics", get(metrics_handler))
        .route("/api/snapshot", get(snapshot))
        .route("/api/config", get(config))
        .route("/api/analysis", get(analysis))
        .route("/api/allocations", get(api::allocations_handler))
        .route("/api/stack", get(api::stack_handler))
        .route("/api/timeline", get(api::timeline_handler))
        .route("/api/lifetimes", get(api::lifetimes_handler))
        .route("/api/flame", get(api::flame_handler))
        .route("/ws", get(ws::handler))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared)
}

fn error(status: StatusCode, msg: &str) -> Response {
    (status, json_body(&json!({ "error": msg }))).into_response()
}

/// Refuses what a read-only service must not take: a request with a body, an overlong
/// target, a missing or wrong bearer token.
async fn guard(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let target_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target_len > MAX_TARGET {
        return error(StatusCode::URI_TOO_LONG, "request target too long");
    }
    let has_body = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0")
        || req.headers().contains_key(header::TRANSFER_ENCODING);
    if has_body {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "this service is read-only and takes no request body",
        );
    }
    // The page's own files carry no data and must load for it to ask for the token: every
    // read of the state (the API, the metrics, the stream) wants it.
    if let Some(token) = shared
        .token
        .as_ref()
        .filter(|_| wants_token(req.uri().path()))
    {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .map(<[u8]>::to_vec)
            .or_else(|| ws::bearer_protocol(req.headers()).and_then(|(_, t)| t));
        if !given.is_some_and(|g| constant_time_eq(&g, token.as_bytes())) {
            let mut r = error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    next.run(req).await
}

/// Whether a request for `path` reads the state (everything but the web page's files).
fn wants_token(path: &str) -> bool {
    path == "/api" || path.starts_with("/api/") || path == "/metrics" || path == "/ws"
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn not_found(req: Request) -> Response {
    web::serve(&req).unwrap_or_else(|| error(StatusCode::NOT_FOUND, "no such endpoint"))
}

/// JSON with `<`, `>` and `&` escaped, so that no name a traced process chose can become
/// markup in a page that embeds the response; serde_json escapes control characters.
pub fn json_text(v: &impl Serialize) -> String {
    let s = serde_json::to_string(v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            c => out.push(c),
        }
    }
    out
}

fn json_body(v: &impl Serialize) -> ([(header::HeaderName, &'static str); 1], String) {
    ([(header::CONTENT_TYPE, "application/json")], json_text(v))
}

async fn metrics_handler(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let format =
        metrics::Format::from_accept(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let body = {
        let s = shared.lock();
        metrics::render(
            &s.model,
            &s.ledger,
            &s.gpu_telemetry,
            shared.config.top,
            format,
        )
    };
    ([(header::CONTENT_TYPE, format.content_type())], body).into_response()
}

fn nvml_json(ledger: &Ledger) -> Value {
    match ledger.nvml().info() {
        Some(i) if i.available => json!({ "available": true, "driver_version": i.driver_version }),
        Some(i) => {
            json!({ "available": false, "reason": i.reason.as_deref().unwrap_or("unknown") })
        }
        None => {
            json!({ "available": false, "reason": "no NVML facts yet (the recording has not started)" })
        }
    }
}

fn class_map(by: &state::ByClass) -> serde_json::Map<String, Value> {
    Class::ALL
        .iter()
        .zip(by)
        .filter(|(c, _)| !matches!(c, Class::Pool | Class::HostFallback))
        .map(|(c, b)| (c.name().to_owned(), json!(b)))
        .collect()
}

/// Per GPU: traced bytes by class, pool-held, and NVML's figures where it has them.
fn gpus_json(s: &Served) -> Vec<Value> {
    let mut out = Vec::new();
    let traced = s.model.gpus(&s.ledger);
    let info = s.ledger.nvml().info();
    let latest = s.ledger.nvml().latest();
    let mut nvml_indices: Vec<u32> = info
        .map(|i| i.gpus.iter().map(|g| g.index).collect())
        .unwrap_or_default();
    for g in traced.keys() {
        if let state::Gpu::Nvml(i) = g
            && !nvml_indices.contains(i)
        {
            nvml_indices.push(*i);
        }
    }
    let mut gpus: Vec<state::Gpu> = nvml_indices.into_iter().map(state::Gpu::Nvml).collect();
    gpus.extend(traced.keys().filter(|g| !matches!(g, state::Gpu::Nvml(_))));
    gpus.sort();
    for g in gpus {
        let sums = traced.get(&g).copied().unwrap_or_default();
        let mut v = json!({
            "gpu": g.label(),
            "traced_device_bytes": sums.device.iter().sum::<u64>(),
            "traced_by_class": class_map(&sums.device),
            "pool_held_bytes": sums.pool_held,
        });
        if let state::Gpu::Nvml(i) = g {
            let gi = info.and_then(|inf| inf.gpus.iter().find(|x| x.index == i));
            let sample = latest.and_then(|l| l.gpus.iter().find(|x| x.index == i));
            v["index"] = json!(i);
            if let Some(r) = s.ledger.nvml().gpus().iter().find(|r| r.index == i) {
                v["coverage"] = json!(r.coverage);
                v["unexplained_bytes"] = json!(r.unexplained_bytes());
                // NVML's figures are those of its latest sample: how long before the state's
                // latest event it was taken, and what was traced on the GPU then, so that a
                // page can say its figures are of another moment.
                v["nvml_traced_bytes"] = json!(r.traced_bytes);
                v["nvml_age_ns"] = json!(
                    s.ledger
                        .time_span()
                        .map(|(_, last)| last.saturating_sub(r.ts_ns))
                );
                v["untraced_processes"] = json!(r.untraced_processes);
            }
            v["name"] = json!(gi.and_then(|x| x.name.clone()));
            v["uuid"] = json!(gi.and_then(|x| x.uuid.clone()));
            // Absent when NVML did not say: never a zero it did not report.
            v["memory"] = match sample {
                Some(x) => json!({
                    "total_bytes": x.total_bytes.or(gi.and_then(|g| g.total_bytes)),
                    "used_bytes": x.used_bytes,
                    "free_bytes": x.free_bytes,
                }),
                None => json!({ "unavailable": "no NVML sample of this GPU" }),
            };
        }
        out.push(v);
    }
    out
}

/// The served state of a replay run to its end (or its cutoff): the model fed by the
/// Ledger's change stream, and the Ledger.
/// With the trace's path (the startup replay), the bytes by class are noted after each
/// record that moved them, and copies of the state are kept as `keep` says for the state at
/// a moment.
fn replayed<R: std::io::BufRead + Send>(
    mut replay: Replay<R>,
    startup: Option<(&std::path::Path, moments::Keep)>,
) -> Served {
    let mut served = Served::new(Tracing::Replay);
    let model = &mut served.model;
    let mut line = startup.map(|_| timeline::Timeline::new(replay.header().start_monotonic_ns));
    let mut moments = startup.map(|(p, keep)| moments::Moments::new(p, &replay, keep));
    let mut n = 0;
    replay.run_read_ahead_seen(|seen, ledger| {
        let rec = match seen {
            Seen::Record(Step::After, rec) => rec,
            Seen::Record(Step::Before, _) => return,
            Seen::ReadTo(at) => {
                if let Some(m) = moments.as_mut() {
                    m.read_to(at, ledger, model, n);
                }
                return;
            }
        };
        if let Some(m) = moments.as_mut() {
            m.saw(rec);
        }
        let changes = ledger.changes();
        model.take(changes);
        n += 1;
        if let (Some(line), Some((_, ts))) = (line.as_mut(), ledger.time_span())
            && !changes.is_empty()
        {
            line.note(ts, timeline::class_totals(model));
            for ch in changes {
                match ch {
                    crate::ledger::Change::Oom { proc, oom } => line.ooms.push(timeline::Mark {
                        ts_ns: oom.ts_ns,
                        pid: ledger.process(*proc).map(|p| p.pid),
                        api: oom.api.clone(),
                        requested_bytes: oom.requested_bytes,
                    }),
                    crate::ledger::Change::Ended {
                        proc, alloc, ts_ns, ..
                    } => line.lifetimes.ended(*proc, alloc, *ts_ns),
                    _ => {}
                }
            }
        }
    });
    served.records = n;
    if let Some(line) = line.as_mut() {
        let ledger = replay.ledger();
        for p in ledger.processes() {
            for a in ledger.live_allocations(p.proc) {
                line.lifetimes.live(p.proc, a);
            }
        }
    }
    served.timeline = line;
    served.moments = moments.map(|mut m| {
        m.finish();
        Arc::new(m)
    });
    served.ledger = replay.finish().0;
    served
}

fn last_oom_json(s: &Served) -> Value {
    let Some((proc, oom)) = &s.model.last_oom else {
        return Value::Null;
    };
    let p = s.ledger.process(*proc);
    let mut v = json!(oom);
    v["pid"] = json!(p.map(|p| p.pid));
    v["comm"] = json!(p.map(|p| p.comm()));
    let breakdown: Vec<String> = oom
        .live_by_class
        .iter()
        .filter(|(_, b)| **b > 0)
        .map(|(c, b)| format!("{} {}", c.name(), analyze::human_bytes(*b)))
        .collect();
    // NVML's free figure less what traced processes took since its sample: a sample from
    // before a burst of allocations would show memory that was no longer free.
    let available = oom
        .free_at_failure()
        .map(|f| format!(", available {}", analyze::human_bytes(f)))
        .unwrap_or_default();
    v["summary"] = json!(format!(
        "{}{}requested {}{}",
        breakdown.join(", "),
        if breakdown.is_empty() { "" } else { ", " },
        oom.requested_bytes
            .map_or_else(|| "? bytes".to_owned(), analyze::human_bytes),
        available
    ));
    v
}

async fn health(State(shared): State<Arc<Shared>>) -> Response {
    let s = shared.lock();
    let body = json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": shared.started.elapsed().as_secs_f64(),
        "tracing": s.tracing,
        "records": s.records,
        "lost_events": s.model.lost_events,
        "nvml": nvml_json(&s.ledger),
        "gpus": gpus_json(&s),
        "vram_bytes_used": s.model.vram_bytes_used(),
        "ooms": s.model.ooms,
        "last_oom": last_oom_json(&s),
        "websocket": shared.stream.health(),
    });
    drop(s);
    json_body(&body).into_response()
}

/// Imported mappings listed per process in the state (the total counts them all).
const IMPORTS_SHOWN: usize = 16;

/// The full state: what `/api/snapshot` returns and the WebSocket's first message.
pub fn snapshot_json(s: &Served) -> Value {
    let procs: Vec<Value> = s
        .model
        .ranked()
        .into_iter()
        .map(|(proc, row)| {
            let st = s.ledger.process(proc);
            let info = st.and_then(|p| p.info.as_ref());
            json!({
                "pid": st.map(|p| p.pid),
                "comm": st.map(|p| p.comm()),
                "cmdline": info.map(|i| &i.cmdline),
                "container": info.and_then(|i| i.container.as_deref()),
                "pod": info.and_then(|i| i.pod_uid.as_ref()).map(|uid| json!({
                    "uid": uid,
                    "name": info.and_then(|i| i.pod_name.as_deref()),
                    "namespace": info.and_then(|i| i.pod_namespace.as_deref()),
                })),
                "device_bytes": row.device_bytes(),
                "pool_held_bytes": row.pool_held_bytes(),
                "host_bytes": row.host_bytes,
                "live_allocations": row.live,
                "allocations_started": row.started,
                "ooms": row.ooms,
                "host_findings": row.host_findings,
                "nvml": s.ledger.nvml().process(proc).map(|n| &n.latest),
                // Other processes' memory mapped here: never in this process's bytes.
                "imported_bytes": st.map_or(0, |p| p.imported_bytes()),
                "imports": st.map(|p| p.imports().take(IMPORTS_SHOWN).map(|m| json!({
                    "bytes": m.bytes,
                    "size_unknown": m.size_unknown,
                    "api": m.api,
                    "device": m.device,
                    "source": m.source(),
                    "owner_pid": m.owner.as_ref().map(|o| o.pid),
                })).collect::<Vec<_>>()).unwrap_or_default(),
                "by_gpu": row.device.iter().map(|(d, by)| json!({
                    "device": d, "by_class": class_map(by)
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "tracing": s.tracing,
        "records": s.records,
        "time_span_ns": s.ledger.time_span(),
        "vram_bytes_used": s.model.vram_bytes_used(),
        "pool_held_bytes": s.model.pool_held_bytes(),
        "host_bytes": s.model.host_bytes(),
        "gpus": gpus_json(s),
        "processes": procs,
        "allocations": s.model.allocations,
        "ooms": s.model.ooms,
        "last_oom": last_oom_json(s),
        "host_findings": s.model.host_findings,
        "lost_events": s.model.lost_events,
        "nvml": nvml_json(&s.ledger),
        "telemetry": s.telemetry,
    })
}

#[derive(Debug, Deserialize)]
struct SnapshotQuery {
    at: Option<f64>,
}

async fn snapshot(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<SnapshotQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error(StatusCode::BAD_REQUEST, "at= must be a number of seconds");
    };
    match q.at {
        None => json_body(&snapshot_json(&shared.lock())).into_response(),
        Some(at) => match shared.served_at(at).await {
            Ok(served) => {
                let mut v = snapshot_json(&served);
                v["at_seconds"] = json!(at);
                json_body(&v).into_response()
            }
            Err(e) => e.response(),
        },
    }
}

async fn config(State(shared): State<Arc<Shared>>) -> Response {
    json_body(&shared.config).into_response()
}

async fn analysis(State(shared): State<Arc<Shared>>) -> Response {
    let Some(path) = shared.config.replay.clone() else {
        return error(
            StatusCode::NOT_FOUND,
            "the analysis is served under serve --replay only",
        );
    };
    // Made once: every page that opens asks for it, and each would read the whole trace.
    let report = shared
        .analysis
        .get_or_try_init(|| async move {
            tokio::task::spawn_blocking(move || analyze::analyze_file(&path))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
                .map(|report| json_text(&report))
        })
        .await;
    match report {
        Ok(text) => ([(header::CONTENT_TYPE, "application/json")], text.clone()).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e),
    }
}

#[cfg(test)]
mod tests;
