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
    let v = allocations(&shared.lock(), &q);
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
    if [q.from, q.to].iter().flatten().any(|x| !x.is_finite()) {
        return error(StatusCode::BAD_REQUEST, "from= and to= must be finite");
    }
    let s = shared.lock();
    let Some(t) = &s.timeline else {
        return error(
            StatusCode::NOT_FOUND,
            "the timeline is served under serve --replay only",
        );
    };
    let body = t.window(q.from, q.to, q.points.unwrap_or(600));
    drop(s);
    json_body(&body).into_response()
}
