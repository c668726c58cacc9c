//! `GET /ws`: the state as a stream. A client gets the full state first, then only what
//! changed, at most [`RATE`] times a second and never when nothing did; a heartbeat when
//! quiet; GPUs that appear or disappear named. A client that falls behind is dropped: one
//! producer builds each message once and hands it to every client through a bounded
//! channel, so a slow reader costs at most [`BACKLOG`] shared messages, never a queue of its
//! own. A client that stops reading altogether is dropped too, within [`PING`] to twice that:
//! it no longer answers the pings (a browser answers them without the page's script), and
//! whatever the kernel's socket buffers still take, a write that waits [`SEND_TIMEOUT`] ends
//! it. Every client dropped is counted by why, in `/api/health`.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    extract::{
        State,
        ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade},
    },
    http::{HeaderMap, header},
    response::Response,
};
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use super::{Shared, json_text, snapshot_json};

/// Changes sent per second at most.
pub const RATE: u32 = 5;
/// Messages a client may fall behind by before it is dropped.
pub const BACKLOG: usize = 16;
/// A client that has not taken a message within this long is dropped.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// A heartbeat goes out after this long without a message.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// A ping goes out this often; a client that has sent nothing (no pong) by the next one is
/// dropped.
pub const PING: Duration = Duration::from_secs(5);

/// The producer's side: the state last sent and the channel to every client.
pub struct Stream {
    tx: broadcast::Sender<Utf8Bytes>,
    /// The state every change sent so far adds up to, and its sequence number; a new client
    /// starts from it (taken under this lock, so it and the changes after it fit).
    last: Mutex<(Value, u64)>,
    /// Clients dropped for falling more than [`BACKLOG`] messages behind.
    dropped_behind: AtomicU64,
    /// Clients dropped for not taking a message within [`SEND_TIMEOUT`] or not answering a
    /// ping within [`PING`].
    dropped_unresponsive: AtomicU64,
}

impl Default for Stream {
    fn default() -> Self {
        Stream {
            tx: broadcast::channel(BACKLOG).0,
            last: Mutex::new((Value::Null, 0)),
            dropped_behind: AtomicU64::new(0),
            dropped_unresponsive: AtomicU64::new(0),
        }
    }
}

impl Stream {
    /// Clients connected now.
    pub fn clients(&self) -> usize {
        self.tx.receiver_count()
    }

    /// What `/api/health` says of the stream: clients now, and those dropped by why.
    pub fn health(&self) -> Value {
        json!({
            "clients": self.clients(),
            "dropped_behind": self.dropped_behind.load(Ordering::Relaxed),
            "dropped_unresponsive": self.dropped_unresponsive.load(Ordering::Relaxed),
        })
    }
}

/// Why a client's stream ended.
enum End {
    /// It closed, or its connection failed.
    Gone,
    /// It fell more than [`BACKLOG`] messages behind.
    Behind(u64),
    /// It did not take a message within [`SEND_TIMEOUT`], or answer a ping within [`PING`].
    Unresponsive(&'static str),
}

/// The processes of a snapshot keyed by pid, for a change per process.
fn by_pid(state: &Value) -> Map<String, Value> {
    state["processes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| (p["pid"].to_string(), p.clone()))
        .collect()
}

fn gpu_labels(state: &Value) -> Vec<Value> {
    state["gpus"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| g["gpu"].clone())
        .collect()
}

/// What changed from `old` to `new`: top-level fields replaced, processes added, changed or
/// gone by pid, GPUs that appeared or disappeared. `None` when nothing did.
pub fn diff(old: &Value, new: &Value) -> Option<Value> {
    let (Some(o), Some(n)) = (old.as_object(), new.as_object()) else {
        return Some(json!({ "set": new }));
    };
    let mut set = Map::new();
    for (k, v) in n {
        if k != "processes" && o.get(k) != Some(v) {
            set.insert(k.clone(), v.clone());
        }
    }
    let (op, np) = (by_pid(old), by_pid(new));
    let upsert: Vec<&Value> = np
        .iter()
        .filter(|(pid, p)| op.get(*pid) != Some(*p))
        .map(|(_, p)| p)
        .collect();
    let removed: Vec<&Value> = op
        .iter()
        .filter(|(pid, _)| !np.contains_key(*pid))
        .map(|(_, p)| &p["pid"])
        .collect();
    let (og, ng) = (gpu_labels(old), gpu_labels(new));
    let gpus_added: Vec<&Value> = ng.iter().filter(|g| !og.contains(g)).collect();
    let gpus_removed: Vec<&Value> = og.iter().filter(|g| !ng.contains(g)).collect();
    if set.is_empty() && upsert.is_empty() && removed.is_empty() {
        return None;
    }
    let mut out = json!({ "set": set });
    if !upsert.is_empty() {
        out["processes_upsert"] = json!(upsert);
    }
    if !removed.is_empty() {
        out["processes_removed"] = json!(removed);
    }
    if !gpus_added.is_empty() {
        out["gpus_added"] = json!(gpus_added);
    }
    if !gpus_removed.is_empty() {
        out["gpus_removed"] = json!(gpus_removed);
    }
    Some(out)
}

/// The producer: every 1/[`RATE`] s, when the model moved, the new state's changes go out.
pub async fn produce(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1) / RATE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut seen = None;
    loop {
        tick.tick().await;
        let state = {
            let s = shared.lock();
            let key = (
                s.model.version,
                s.tracing,
                s.ledger.nvml().samples(),
                s.telemetry_seq,
            );
            if seen == Some(key) {
                continue;
            }
            seen = Some(key);
            snapshot_json(&s)
        };
        let stream = &shared.stream;
        let mut last = stream.last.lock().unwrap_or_else(|e| e.into_inner());
        let Some(change) = diff(&last.0, &state) else {
            continue;
        };
        last.1 += 1;
        let msg = json!({ "type": "changes", "seq": last.1, "changes": change });
        last.0 = state;
        // No receiver is not an error: the next client starts from `last`.
        let _ = stream.tx.send(json_text(&msg).into());
    }
}

/// The prefix of the WebSocket subprotocol that carries a bearer token, base64url-encoded
/// without padding: a browser cannot set `Authorization` on a WebSocket, but it can offer
/// subprotocols, and unlike a query string they do not end up in access logs.
pub const BEARER_PROTOCOL: &str = "vramtrace.bearer.";

/// The bearer subprotocol a client offered, if any: the protocol as offered (to echo back)
/// and the token it carries (`None` when it is not base64url).
pub fn bearer_protocol(headers: &HeaderMap) -> Option<(String, Option<Vec<u8>>)> {
    use base64::Engine as _;
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|p| {
            let b64 = p.strip_prefix(BEARER_PROTOCOL)?;
            let token = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(b64)
                .ok();
            Some((p.to_owned(), token))
        })
}

pub async fn handler(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    // A browser fails the connection unless the server names one of the protocols it
    // offered; the token in it was checked before the request came here.
    let ws = match bearer_protocol(&headers) {
        Some((protocol, _)) => ws.protocols([protocol]),
        None => ws,
    };
    ws.max_message_size(4096)
        .max_write_buffer_size(1 << 20)
        .on_upgrade(move |socket| client(shared, socket))
}

async fn send(socket: &mut WebSocket, msg: Message) -> Result<(), End> {
    match tokio::time::timeout(SEND_TIMEOUT, socket.send(msg)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(End::Gone),
        Err(_) => Err(End::Unresponsive("took no message within the send timeout")),
    }
}

async fn client(shared: Arc<Shared>, mut socket: WebSocket) {
    let end = stream_to(&shared, &mut socket).await;
    let stream = &shared.stream;
    let (counter, code, reason) = match end {
        End::Gone => return,
        End::Behind(n) => {
            tracing::info!(behind = n, "dropping a WebSocket client that fell behind");
            (
                &stream.dropped_behind,
                1008,
                "too slow: fell behind the stream; reconnect for the full state",
            )
        }
        End::Unresponsive(why) => {
            tracing::info!(why, "dropping an unresponsive WebSocket client");
            (
                &stream.dropped_unresponsive,
                1001,
                "unresponsive: reconnect for the full state",
            )
        }
    };
    counter.fetch_add(1, Ordering::Relaxed);
    // A client that reads nothing will not read this either: tried briefly, then the
    // connection is dropped with the socket.
    let close = Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }));
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.send(close)).await;
}

/// Sends the state, then its changes, heartbeats and pings, until the client goes or must be
/// dropped.
async fn stream_to(shared: &Shared, socket: &mut WebSocket) -> End {
    let (mut rx, first) = {
        let mut last = shared.stream.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.0.is_null() {
            // Nothing produced yet: start from the state as it is.
            last.0 = snapshot_json(&shared.lock());
        }
        let first = json!({ "type": "state", "seq": last.1, "state": last.0 });
        (shared.stream.tx.subscribe(), json_text(&first))
    };
    if let Err(end) = send(socket, Message::Text(first.into())).await {
        return end;
    }
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.tick().await;
    let mut ping = tokio::time::interval(PING);
    // After a slow send, the next ping still comes a whole period after the last: a burst of
    // missed ticks would drop a client before its pong could arrive.
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    // A ping is out and nothing has come back since.
    let mut unanswered = false;
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Ok(text) => {
                    if let Err(end) = send(socket, Message::Text(text)).await {
                        return end;
                    }
                    heartbeat.reset();
                }
                Err(broadcast::error::RecvError::Lagged(n)) => return End::Behind(n),
                Err(broadcast::error::RecvError::Closed) => return End::Gone,
            },
            _ = heartbeat.tick() => {
                let beat = json_text(&json!({ "type": "heartbeat" }));
                if let Err(end) = send(socket, Message::Text(beat.into())).await {
                    return end;
                }
            }
            _ = ping.tick() => {
                if unanswered {
                    return End::Unresponsive("did not answer a ping");
                }
                if let Err(end) = send(socket, Message::Ping(Default::default())).await {
                    return end;
                }
                unanswered = true;
            }
            incoming = socket.recv() => match incoming {
                // Read-only: what a client sends is read (pings answered by the library) and
                // ignored, but it shows the client reads; a close or an error ends it.
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return End::Gone,
                Some(Ok(_)) => unanswered = false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_sends_only_what_changed() {
        let a = json!({"vram_bytes_used": 1, "ooms": 0, "gpus": [{"gpu": "0"}],
                       "processes": [{"pid": 1, "device_bytes": 1}, {"pid": 2, "device_bytes": 5}]});
        assert_eq!(diff(&a, &a), None);
        let b = json!({"vram_bytes_used": 2, "ooms": 0, "gpus": [{"gpu": "0"}, {"gpu": "1"}],
                       "processes": [{"pid": 1, "device_bytes": 2}, {"pid": 3, "device_bytes": 0}]});
        let d = diff(&a, &b).expect("a change");
        assert_eq!(d["set"]["vram_bytes_used"], 2);
        assert!(d["set"].get("ooms").is_none());
        assert_eq!(d["processes_upsert"].as_array().map(Vec::len), Some(2));
        assert_eq!(d["processes_removed"], json!([2]));
        assert_eq!(d["gpus_added"], json!(["1"]));
        assert!(d.get("gpus_removed").is_none());
    }
}
