//! The page's windowed reads: live allocations a page of rows at a time, one symbolized
//! stack, the timeline of a replayed trace. Each reads the Ledger's state (or what its
//! change stream added up to); none decides anything.

use std::sync::Arc;

use axum::{
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Served, Shared, error, json_body};
use crate::analyze::postmortem::frame_line;

/// Rows a request may ask for at most.
pub const MAX_ROWS: usize = 1000;

#[derive(Debug, Deserialize)]
pub struct AllocQuery {
    at: Option<f64>,
    pid: Option<u32>,
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
    sort: Option<String>,
}

/// The live allocations, largest first (or newest first with `sort=age`), `limit` rows from
/// `offset`, with how many there are in all.
pub fn allocations(s: &Served, q: &AllocQuery) -> Result<Value, &'static str> {
    let newest_first = match q.sort.as_deref() {
        None | Some("bytes") => false,
        Some("age") => true,
        Some(_) => return Err("sort= must be bytes or age"),
    };
    let limit = q.limit.unwrap_or(100).min(MAX_ROWS);
    let mut rows = Vec::new();
    for p in s.ledger.processes() {
        if q.pid.is_some_and(|pid| pid != p.pid) {
            continue;
        }
        for a in s.ledger.live_allocations(p.proc) {
            rows.push((p, a));
        }
    }
    let key = |a: &crate::ledger::LiveAllocation| {
        if newest_first {
            (
                std::cmp::Reverse(a.ts_ns),
                std::cmp::Reverse(a.bytes),
                a.addr,
            )
        } else {
            (
                std::cmp::Reverse(a.bytes),
                std::cmp::Reverse(a.ts_ns),
                a.addr,
            )
        }
    };
    let total = rows.len();
    let offset = q.offset.min(total);
    let end = (offset + limit).min(total);
    if end > offset {
        // Only the window is put in order: the rows before it are partitioned off.
        let by = |x: &(_, &crate::ledger::LiveAllocation),
                  y: &(_, &crate::ledger::LiveAllocation)| {
            key(x.1).cmp(&key(y.1))
        };
        if offset > 0 {
            rows.select_nth_unstable_by(offset, by);
        }
        let tail = &mut rows[offset..];
        if end - offset < tail.len() {
            tail.select_nth_unstable_by(end - offset, by);
        }
        rows[offset..end].sort_unstable_by(by);
    }
    let start = s.ledger.time_span().map(|(a, _)| a);
    let out: Vec<Value> = rows[offset..end]
        .iter()
        .map(|(p, a)| {
            json!({
                "pid": p.pid,
                "comm": p.comm(),
                "addr": a.addr.map(|x| format!("{x:#x}")),
                "bytes": a.bytes,
                "mem": a.mem.name(),
                "api": &*a.api,
                "class": a.class.name(),
                "device": a.device,
                "tid": a.tid,
                "stack": a.stack,
                "ts_ns": a.ts_ns,
                "t": start.map(|s| a.ts_ns.saturating_sub(s) as f64 / 1e9),
                "top_frame": crate::analyze::postmortem::top_frame(&s.ledger, a.stack),
            })
        })
        .collect();
    Ok(json!({ "total": total, "offset": offset, "rows": out }))
}

pub async fn allocations_handler(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<AllocQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "pid=, offset= and limit= must be numbers",
        );
    };
    let v = match q.at {
        None => allocations(&shared.lock(), &q),
        Some(at) => match shared.served_at(at).await {
            Ok(s) => allocations(&s, &q),
            Err(e) => return e.response(),
        },
    };
    match v {
        Ok(v) => json_body(&v).into_response(),
        Err(msg) => error(StatusCode::BAD_REQUEST, msg),
    }
}

#[derive(Debug, Deserialize)]
pub struct StackQuery {
    id: u32,
}

/// One stack, its frames symbolized as the reports name them, innermost first.
pub async fn stack_handler(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<StackQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error(StatusCode::BAD_REQUEST, "id= must be a stack id");
    };
    let s = shared.lock();
    let Some(stack) = s.ledger.stack(q.id) else {
        return error(StatusCode::NOT_FOUND, "no such stack (yet)");
    };
    let frames: Vec<String> = stack.frames.iter().map(frame_line).collect();
    let body = json!({ "id": stack.id, "frames": frames, "truncated": stack.truncated });
    drop(s);
    json_body(&body).into_response()
}

#[derive(Debug, Deserialize)]
pub struct TimelineQuery {
    from: Option<f64>,
    to: Option<f64>,
    points: Option<usize>,
}

/// The timeline of a replayed trace by class, at the detail the window needs.
pub async fn timeline_handler(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<TimelineQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "from= and to= must be seconds, points= a count",
        );
    };
    in_replay_window(&shared, q.from, q.to, "the timeline is", |t| {
        t.window(q.from, q.to, q.points.unwrap_or(600))
    })
}

/// Answers from the replayed trace's timeline for the window `from`..`to` (seconds): 400
/// when the window is not finite, 404 when no trace is replayed. `what` names what is
/// served, for the 404's message. The answer is written out after the lock is let go.
fn in_replay_window<T: serde::Serialize>(
    shared: &Shared,
    from: Option<f64>,
    to: Option<f64>,
    what: &str,
    answer: impl FnOnce(&super::timeline::Timeline) -> T,
) -> Response {
    if [from, to].iter().flatten().any(|x| !x.is_finite()) {
        return error(StatusCode::BAD_REQUEST, "from= and to= must be finite");
    }
    let body = match &shared.lock().timeline {
        Some(t) => answer(t),
        None => {
            return error(
                StatusCode::NOT_FOUND,
                &format!("{what} served under serve --replay only"),
            );
        }
    };
    json_body(&body).into_response()
}

#[derive(Debug, Deserialize)]
pub struct LifetimesQuery {
    from: Option<f64>,
    to: Option<f64>,
    max: Option<usize>,
}

/// The allocations live in a window of a replayed trace, the largest `max`, for the
/// lifetime view (PyTorch memory_viz's Active Memory Timeline).
pub async fn lifetimes_handler(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<LifetimesQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "from= and to= must be seconds, max= a count",
        );
    };
    in_replay_window(&shared, q.from, q.to, "the lifetimes are", |t| {
        t.lifetimes_window(q.from, q.to, q.max.unwrap_or(1500))
    })
}

#[derive(Debug, Deserialize)]
pub struct FlameQuery {
    at: Option<f64>,
}

/// Nodes of the flame graph smaller than this share of the whole are merged.
const FLAME_MIN_SHARE: f64 = 0.002;

#[derive(Default)]
struct Node {
    bytes: u64,
    children: std::collections::BTreeMap<String, Node>,
}

impl Node {
    fn json(&self, name: &str, min: u64) -> Value {
        let mut kids: Vec<(&String, &Node)> = self.children.iter().collect();
        kids.sort_by_key(|(_, n)| std::cmp::Reverse(n.bytes));
        let mut out = Vec::new();
        let mut small = 0;
        for (k, n) in kids {
            if n.bytes >= min {
                out.push(n.json(k, min));
            } else {
                small += n.bytes;
            }
        }
        if small > 0 {
            out.push(json!({ "name": "(smaller)", "bytes": small, "children": [] }));
        }
        json!({ "name": name, "bytes": self.bytes, "children": out })
    }
}

/// Live bytes by stack (device and host), the process at the root and the entry point at
/// the leaves, as `export --format flamegraph` folds them: now, or at `at=` seconds of a
/// replayed trace.
pub fn flame(s: &Served) -> Value {
    let mut root = Node::default();
    for p in s.ledger.processes() {
        let proc_name = format!("{} ({})", p.comm(), p.pid);
        for a in s.ledger.live_allocations(p.proc) {
            root.bytes += a.bytes;
            let mut node = root.children.entry(proc_name.clone()).or_default();
            node.bytes += a.bytes;
            let frames: Vec<String> = match a.stack.and_then(|id| s.ledger.stack(id)) {
                Some(st) => st.frames.iter().rev().map(frame_line).collect(),
                None => vec!["[no stack]".into()],
            };
            for f in frames.into_iter().chain(std::iter::once(a.api.to_string())) {
                node = node.children.entry(f).or_default();
                node.bytes += a.bytes;
            }
        }
    }
    let min = ((root.bytes as f64) * FLAME_MIN_SHARE) as u64;
    root.json("all", min.max(1))
}

pub async fn flame_handler(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<FlameQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error(StatusCode::BAD_REQUEST, "at= must be seconds");
    };
    let body = match q.at {
        None => flame(&shared.lock()),
        Some(at) => match shared.served_at(at).await {
            Ok(s) => flame(&s),
            Err(e) => return e.response(),
        },
    };
    json_body(&body).into_response()
}
