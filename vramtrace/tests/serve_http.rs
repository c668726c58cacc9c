//! `vramtrace serve` as its clients meet it: an HTTP client on loopback against a real server,
//! serving a recorded trace of the simulated driver and tracing a simulated workload live
//! (eBPF, root); requests it must refuse; `promtool check metrics`; a real Prometheus
//! (Debian's `prometheus`) scraping it and answering a query for the workload's bytes and
//! every query of the Grafana dashboard; WebSocket clients, a stalled one among them; JSON
//! logs; and the deploy/ samples checked by their own tools, nginx proxying serve for real.

mod common;

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{require_root, sim};
use serde_json::Value;

/// A `vramtrace serve` running for one test; stopped (SIGTERM, then kill) when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
    /// The traced command's stdout lines (the workload's ground truth), when there is one.
    stdout: std::sync::mpsc::Receiver<String>,
    /// Serve's stderr lines up to the one that says where it listens, that one included.
    said: Vec<String>,
    /// Serve's stderr lines after it.
    stderr: std::sync::mpsc::Receiver<String>,
}

/// Where serve says it listens, in a human line or a JSON one (`--log-format json`).
fn listening_on(line: &str) -> Option<SocketAddr> {
    let message = if line.starts_with('{') {
        let v: Value = serde_json::from_str(line).expect("a JSON log line");
        format!("vramtrace: {}", v["message"].as_str()?)
    } else {
        line.to_owned()
    };
    let rest = message.strip_prefix("vramtrace: serving on http://")?;
    let a = rest.split('/').next().expect("an address");
    Some(a.parse().expect("a socket address"))
}

impl Server {
    fn start(args: &[&str]) -> Server {
        Self::start_env(&[], args)
    }

    fn start_env(envs: &[(&str, &str)], args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vramtrace"))
            .envs(envs.iter().copied())
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting vramtrace serve");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("serve: {line}");
                let _ = tx.send(line);
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let (out_tx, out_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = out_tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut said = Vec::new();
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let at = listening_on(&line);
                    said.push(line);
                    if let Some(a) = at {
                        break a;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("vramtrace serve did not say where it listens within 60 s");
                }
            }
        };
        Server {
            child,
            addr,
            stdout: out_rx,
            said,
            stderr: rx,
        }
    }

    fn get(&self, path: &str) -> Response {
        request(
            self.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"),
        )
    }

    fn json(&self, path: &str) -> Value {
        let r = self.get(path);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        serde_json::from_str(&r.body).expect("JSON")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill has no memory effects; the pid is our own child's.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
struct Response {
    status: u16,
    head: String,
    body: String,
}

/// One request written as given (so that malformed ones can be sent), the connection closed
/// after the response.
fn request(addr: SocketAddr, raw: &str) -> Response {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).ok();
    let raw = raw.replacen("\r\n\r\n", "\r\nConnection: close\r\n\r\n", 1);
    s.write_all(raw.as_bytes()).expect("write");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Response {
        status,
        head: head.to_owned(),
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A sample's value in the Prometheus text format.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is needed (Debian's prometheus package: scripts/setup.sh installs it)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Records `exit-without-free` into `trace`; returns the workload's ground truth.
fn record_exit_without_free(trace: &Path) -> Value {
    require_root();
    let (lib, workload) = sim();
    let out = Command::new(env!("CARGO_BIN_EXE_vramtrace"))
        .arg("record")
        .arg("-o")
        .arg(trace)
        .arg("--libcuda")
        .arg(lib)
        .arg("--")
        .arg(workload)
        .arg("--lib")
        .arg(lib)
        .arg("exit-without-free")
        .output()
        .expect("vramtrace record");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .expect("the workload's ground truth");
    serde_json::from_str(line).expect("JSON")
}

/// The moment, in seconds after the start, just before the trace's `exit` record.
fn secs_before_exit(trace: &Path) -> f64 {
    let text = std::fs::read_to_string(trace).expect("trace");
    let mut start = None;
    let mut exit = None;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).expect("JSON line");
        match v["type"].as_str() {
            Some("header") => start = v["start_monotonic_ns"].as_u64(),
            Some("exit") => exit = v["ts_ns"].as_u64(),
            _ => {}
        }
    }
    let (start, exit) = (start.expect("header"), exit.expect("exit"));
    (exit - 1_000 - start) as f64 / 1e9
}

#[test]
fn serves_a_recorded_trace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = dir.path().join("trace.jsonl");
    let truth = record_exit_without_free(&trace);
    let device = truth["device_bytes_at_exit"]
        .as_u64()
        .expect("device bytes");
    let server = Server::start(&["--replay", trace.to_str().expect("utf-8")]);

    let health = server.json("/api/health");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["tracing"], "replay");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    // The process exited: nothing is held at the end of the trace.
    assert_eq!(health["vram_bytes_used"], 0);
    assert_eq!(health["nvml"]["available"], false);
    assert!(health["nvml"]["reason"].is_string(), "{health}");

    // Just before the exit the process held what the workload says it left.
    let at = secs_before_exit(&trace);
    let snap = server.json(&format!("/api/snapshot?at={at}"));
    assert_eq!(snap["vram_bytes_used"], device, "{snap}");
    assert_eq!(snap["processes"][0]["device_bytes"], device);
    assert_eq!(
        snap["host_bytes"],
        truth["host_bytes_at_exit"].as_u64().expect("host bytes")
    );

    let analysis = server.json("/api/analysis");
    assert!(analysis.is_object());
    let config = server.json("/api/config");
    assert_eq!(config["top"], 20);
    assert_eq!(config["token_required"], false);

    let metrics = server.get("/metrics");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.head.contains("text/plain; version=0.0.4"),
        "{}",
        metrics.head
    );
    promtool_check(&metrics.body);
    assert!(
        metrics
            .body
            .contains("vramtrace_allocations_total{kind=\"device\"}")
    );
    let om = request(
        server.addr,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n",
    );
    assert!(
        om.head.contains("application/openmetrics-text"),
        "{}",
        om.head
    );
    assert!(om.body.ends_with("# EOF\n"));
}

/// A server replaying a fixture that wants `token`, and the directory of its token file.
fn replay_with_token(token: &str) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{token}\n")).expect("token file");
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/gpu/async.jsonl.gz");
    let server = Server::start(&[
        "--replay",
        fixture,
        "--token-file",
        file.to_str().expect("utf-8"),
    ]);
    (server, dir)
}

#[test]
fn refuses_what_a_read_only_service_must_not_take() {
    let (server, _dir) = replay_with_token("s3cret");
    let auth = "Authorization: Bearer s3cret\r\n";
    let get = |path: &str, extra: &str| {
        request(
            server.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n"),
        )
    };

    assert_eq!(get("/api/health", "").status, 401);
    let wrong = get("/api/health", "Authorization: Bearer s3cre\r\n");
    assert_eq!(wrong.status, 401);
    assert!(
        wrong
            .head
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer")
    );
    assert_eq!(get("/api/health", auth).status, 200);
    assert_eq!(get("/metrics", auth).status, 200);
    promtool_check(&get("/metrics", auth).body);

    assert_eq!(get("/nope", auth).status, 404);
    // The embedded web page, with a policy that lets only this server's scripts run.
    let page = get("/", auth);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<div id=\"root\">"), "{}", page.body);
    assert!(
        page.head
            .to_ascii_lowercase()
            .contains("content-security-policy: default-src 'self'; script-src 'self'"),
        "{}",
        page.head
    );
    assert_eq!(get("/../../etc/passwd", auth).status, 404);
    assert_eq!(get("/api/allocations?limit=x", auth).status, 400);
    assert_eq!(get("/api/allocations?sort=size", auth).status, 400);
    assert_eq!(get("/api/health/../../etc/passwd", auth).status, 404);
    let post = request(
        server.addr,
        &format!("POST /metrics HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\n\r\n"),
    );
    assert_eq!(post.status, 405);
    let delete = request(
        server.addr,
        &format!("DELETE /api/health HTTP/1.1\r\nHost: x\r\n{auth}\r\n"),
    );
    assert_eq!(delete.status, 405);
    // A body, a long target, too many headers, a request that is not HTTP.
    let body = request(
        server.addr,
        &format!("GET /api/health HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 5\r\n\r\nhello"),
    );
    assert_eq!(body.status, 413);
    let long = get(&format!("/api/health?{}", "a".repeat(4096)), auth);
    assert_eq!(long.status, 414);
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let headers = get("/api/health", &format!("{auth}{many}"));
    assert_eq!(headers.status, 431, "{}", headers.head);
    let garbage = request(server.addr, "\x16\x03\x01 not http\r\n\r\n");
    assert_eq!(garbage.status, 400, "{garbage:?}");
    let bad_at = get("/api/snapshot?at=-1", auth);
    assert_eq!(bad_at.status, 400);
    let bad_at = get("/api/snapshot?at=soon", auth);
    assert_eq!(bad_at.status, 400);
    // Still serving after all that.
    assert_eq!(get("/api/health", auth).status, 200);
}

/// A WebSocket handshake to `server` offering `protocol`, with `extra` headers: the response,
/// or the HTTP status it was refused with.
fn ws_handshake(
    addr: SocketAddr,
    protocol: Option<&str>,
    extra: Option<(&str, &str)>,
) -> Result<(Ws, tungstenite::handshake::client::Response), u16> {
    use tungstenite::client::IntoClientRequest as _;
    let mut req = format!("ws://{addr}/ws")
        .into_client_request()
        .expect("a request");
    if let Some(p) = protocol {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", p.parse().expect("a header value"));
    }
    if let Some((k, v)) = extra {
        req.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(k.as_bytes()).expect("a header name"),
            v.parse().expect("a header value"),
        );
    }
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(20))).ok();
    match tungstenite::client(req, stream) {
        Ok(ok) => Ok(ok),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
            Err(r.status().as_u16())
        }
        Err(e) => panic!("WebSocket handshake: {e}"),
    }
}

#[test]
fn a_token_opens_the_websocket_in_a_subprotocol_and_a_wrong_one_does_not() {
    // Not base64url itself: the page encodes whatever the file holds.
    let (server, _dir) = replay_with_token("e2e-s3cret>>?");
    // base64url of the token's UTF-8 bytes, without padding.
    let encoded = "ZTJlLXMzY3JldD4-Pw";
    let right = format!("vramtrace.bearer.{encoded}");

    assert_eq!(ws_handshake(server.addr, None, None).err(), Some(401));
    for wrong in [
        "vramtrace.bearer.ZTJlLXMzY3JldD4-Pq",
        // The standard alphabet's form of the right token.
        "vramtrace.bearer.ZTJlLXMzY3JldD4+Pw",
        "vramtrace.bearer.ZTJlLXMzY3JldD4",
        "vramtrace.bearer.not base64!",
        "vramtrace.bearer.",
        "vramtrace",
    ] {
        assert_eq!(
            ws_handshake(server.addr, Some(wrong), None).err(),
            Some(401),
            "{wrong}"
        );
    }
    // Right: the protocol is echoed (a browser fails the connection otherwise), and the
    // state comes.
    let offered = format!("vramtrace.v1, {right}");
    let (mut ws, resp) = ws_handshake(server.addr, Some(&offered), None).expect("accepted");
    assert_eq!(resp.status(), 101);
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some(right.as_str())
    );
    assert_eq!(ws_json(&mut ws)["type"], "state");
    // A client that can set headers may use Authorization on the WebSocket, too.
    let (mut ws, _) = ws_handshake(
        server.addr,
        None,
        Some(("Authorization", "Bearer e2e-s3cret>>?")),
    )
    .expect("accepted");
    assert_eq!(ws_json(&mut ws)["type"], "state");

    // HTTP: missing, wrong, right.
    let get_path = |path: &str, extra: &str| {
        request(
            server.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n"),
        )
    };
    let get = |extra: &str| get_path("/api/config", extra);
    assert_eq!(get("").status, 401);
    assert_eq!(get("Authorization: Bearer e2e-s3cret>>\r\n").status, 401);
    assert_eq!(
        get("Authorization: Basic ZTJlLXMzY3JldD4-Pw\r\n").status,
        401
    );
    let ok = get("Authorization: Bearer e2e-s3cret>>?\r\n");
    assert_eq!(ok.status, 200);
    assert!(ok.body.contains("\"token_required\":true"), "{}", ok.body);
    // The page itself loads without it, so that it can ask for it; nothing else does.
    let page = get_path("/", "");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<div id=\"root\">"), "{}", page.body);
    for path in [
        "/api/snapshot",
        "/api/allocations",
        "/metrics",
        "/api",
        "/api/",
    ] {
        assert_eq!(get_path(path, "").status, 401, "{path}");
    }
}

/// Polls `/metrics` until `series` has `want`.
fn wait_for(server: &Server, series: &str, want: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = server.get("/metrics").body;
        if sample(&m, series) == Some(want) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never reached {want}:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn truth_of(server: &Server) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = server
            .stdout
            .recv_timeout(left)
            .expect("the workload's ground truth on stdout");
        if line.starts_with('{') {
            return serde_json::from_str(&line).expect("JSON");
        }
    }
}

#[test]
fn traces_a_simulated_workload_live() {
    require_root();
    let (lib, workload) = sim();
    let lib = lib.to_str().expect("utf-8");
    let server = Server::start(&[
        "--libcuda",
        lib,
        "--",
        workload.to_str().expect("utf-8"),
        "--lib",
        lib,
        "--hold",
        "30",
        "exit-without-free",
    ]);
    let truth = truth_of(&server);
    let device = truth["device_bytes_at_exit"]
        .as_u64()
        .expect("device bytes");
    let host = truth["host_bytes_at_exit"].as_u64().expect("host bytes");
    wait_for(&server, "vramtrace_vram_bytes_used", device as f64);
    // Host memory may come in a later drain than the device bytes: waited for as well.
    let m = wait_for(&server, "vramtrace_host_fallback_bytes", host as f64);
    assert_eq!(sample(&m, "vramtrace_vram_bytes_used"), Some(device as f64));
    promtool_check(&m);
    assert_eq!(sample(&m, "vramtrace_processes"), Some(1.0));
    // The fills that make allocations weights may still be on their way when the bytes are
    // all there: the series is waited for too.
    let weights = truth["labels"]["weights"].as_u64().expect("weights");
    wait_for(
        &server,
        "vramtrace_gpu_memory_traced_bytes{gpu=\"0\",class=\"weights\"}",
        weights as f64,
    );
    let health = server.json("/api/health");
    assert_eq!(health["tracing"], "live");
    assert_eq!(health["vram_bytes_used"], device);
    let snap = server.json("/api/snapshot");
    assert_eq!(snap["processes"][0]["device_bytes"], device);
    // The stream starts from the state last sent (at most 1/5 s old); its changes bring
    // it to what the workload holds.
    let mut ws = ws_connect(server.addr);
    let first = ws_json(&mut ws);
    assert_eq!(first["type"], "state");
    let mut state = first["state"].clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while state["vram_bytes_used"] != device {
        assert!(
            Instant::now() < deadline,
            "the stream never showed {device}: {state}"
        );
        let msg = ws_json(&mut ws);
        if msg["type"] == "changes" {
            for (k, v) in msg["changes"]["set"].as_object().expect("set") {
                state[k] = v.clone();
            }
        }
    }
    assert!(
        snap["processes"][0]["cmdline"][0]
            .as_str()
            .is_some_and(|c| c.ends_with("vramtrace-workload"))
    );
}

#[test]
fn prometheus_scrapes_serve_and_answers_for_the_workloads_bytes() {
    require_root();
    let (lib, workload) = sim_paths();
    // In a pod, so that the dashboard's panel by pod has something to show.
    let pod = PodCgroup::new();
    let script = pod.start(&format!(
        "{workload} --lib {lib} --hold 60 exit-without-free"
    ));
    let server = Server::start(&["--libcuda", &lib, "--", "sh", "-c", &script]);
    let truth = truth_of(&server);
    let device = truth["device_bytes_at_exit"]
        .as_u64()
        .expect("device bytes");
    wait_for(&server, "vramtrace_vram_bytes_used", device as f64);

    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: vramtrace\n    static_configs:\n      - targets: ['{}']\n",
            server.addr
        ),
    )
    .expect("config");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        l.local_addr().expect("addr").port()
    };
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _prometheus = Kill(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "prometheus is needed (Debian's prometheus package: scripts/setup.sh installs it)",
            ),
    );
    let api: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (value, comm) = loop {
        let r = std::panic::catch_unwind(|| {
            request(
                api,
                "GET /api/v1/query?query=vramtrace_process_device_bytes HTTP/1.1\r\nHost: x\r\n\r\n",
            )
        });
        if let Ok(r) = r
            && r.status == 200
            && let Ok(v) = serde_json::from_str::<Value>(&r.body)
            && let Some(first) = v["data"]["result"].get(0)
        {
            let value: f64 = first["value"][1]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("a value");
            break (value, first["metric"]["comm"].clone());
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus had no sample within 60 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(value, device as f64);
    assert_eq!(comm, "vramtrace-workl");
    let up = request(
        api,
        "GET /api/v1/query?query=up HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    let v: Value = serde_json::from_str(&up.body).expect("JSON");
    assert_eq!(v["data"]["result"][0]["value"][1], "1", "{v}");

    dashboard_queries_return_data(api);
}

/// Series that come from NVML, which a machine without a GPU does not have: a dashboard query
/// over one of them may return nothing here, and its panel must say that it needs NVML.
const NVML_ONLY: [&str; 8] = [
    "vramtrace_gpu_memory_used_bytes",
    "vramtrace_gpu_memory_limit_bytes",
    "vramtrace_gpu_memory_free_bytes",
    "vramtrace_gpu_utilization_ratio",
    "vramtrace_gpu_memory_activity_ratio",
    "vramtrace_gpu_temperature_celsius",
    "vramtrace_gpu_power_watts",
    "vramtrace_gpu_power_limit_watts",
];

/// A PromQL query against Prometheus's HTTP API: its result vector.
fn prom_query(api: SocketAddr, expr: &str) -> Vec<Value> {
    let r = request(
        api,
        &format!(
            "GET /api/v1/query?query={} HTTP/1.1\r\nHost: x\r\n\r\n",
            percent_encode(expr)
        ),
    );
    let v: Value = serde_json::from_str(&r.body).expect("JSON");
    assert_eq!(v["status"], "success", "{expr}: {v}");
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// The panels of a Grafana dashboard, those inside rows included.
fn panels(list: &Value) -> Vec<&Value> {
    list.as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| std::iter::once(p).chain(panels(&p["panels"])))
        .collect()
}

/// Every PromQL expression of `deploy/grafana-dashboard.json`, its template variables given
/// the values Grafana would give them, returns data from the real Prometheus at `api` that
/// scrapes a serve recording a workload; or, over an NVML-only series on a machine without a
/// GPU, its panel says it needs NVML.
fn dashboard_queries_return_data(api: SocketAddr) {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/grafana-dashboard.json"
        ))
        .expect("the dashboard"),
    )
    .expect("dashboard JSON");
    // The template variables: `instance` is `label_values(METRIC, instance)`, asked of
    // Prometheus as Grafana asks it; `All` selected.
    let mut vars: Vec<(String, String)> = Vec::new();
    for var in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        let name = var["name"].as_str().expect("a name");
        match var["type"].as_str() {
            Some("datasource") => continue,
            Some("query") => {
                let q = var["query"]["query"].as_str().expect("a variable query");
                let inner = q
                    .strip_prefix("label_values(")
                    .and_then(|r| r.strip_suffix(')'))
                    .unwrap_or_else(|| panic!("{name}: only label_values() is handled: {q}"));
                let (metric, label) = inner.rsplit_once(',').expect("label_values(METRIC, LABEL)");
                let values: Vec<String> = prom_query(api, metric.trim())
                    .iter()
                    .filter_map(|r| r["metric"][label.trim()].as_str().map(str::to_owned))
                    .collect();
                assert!(
                    !values.is_empty(),
                    "the variable {name} ({q}) has no values"
                );
                // Grafana's multi-value form: alternatives, each escaped as a regex.
                let escaped: Vec<String> = values.iter().map(|v| v.replace('.', "\\\\.")).collect();
                vars.push((name.to_owned(), format!("({})", escaped.join("|"))));
            }
            other => panic!("template variable {name} of type {other:?} is not handled"),
        }
    }
    let substitute = |expr: &str| {
        let mut e = expr.to_owned();
        for (name, value) in &vars {
            e = e
                .replace(&format!("${{{name}}}"), value)
                .replace(&format!("${name}"), value);
        }
        assert!(!e.contains('$'), "a template variable is left in {e}");
        e
    };
    let mut checked = 0;
    let mut nvml_only = Vec::new();
    for panel in panels(&dashboard["panels"]) {
        let title = panel["title"].as_str().unwrap_or("");
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = substitute(target["expr"].as_str().expect("an expression"));
            checked += 1;
            if NVML_ONLY.iter().any(|s| expr.contains(s)) {
                let description = panel["description"].as_str().unwrap_or("");
                assert!(
                    description.contains("NVML"),
                    "{title}: {expr} needs NVML, and the panel's description must say so"
                );
                // Valid PromQL all the same.
                prom_query(api, &expr);
                nvml_only.push(title.to_owned());
                continue;
            }
            // rate() and increase() need two scrapes: asked again for a while.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if !prom_query(api, &expr).is_empty() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{title}: {expr} returned no data within 30 s"
                );
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
    eprintln!(
        "{checked} dashboard queries answered; empty without a GPU (NVML only): {nvml_only:?}"
    );
    assert!(checked >= 10, "only {checked} queries in the dashboard");
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

type Ws = tungstenite::WebSocket<TcpStream>;

fn ws_connect(addr: SocketAddr) -> Ws {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(20))).ok();
    let (ws, resp) =
        tungstenite::client(format!("ws://{addr}/ws"), stream).expect("WebSocket handshake");
    assert_eq!(resp.status(), 101);
    ws
}

fn ws_json(ws: &mut Ws) -> Value {
    loop {
        match ws.read().expect("a message") {
            tungstenite::Message::Text(t) => return serde_json::from_str(&t).expect("JSON"),
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// Resident memory that is not a mapped file: the heap and stacks, where a queue would grow.
fn rss_anon_kib(pid: u32) -> u64 {
    status_kib(pid, "RssAnon:")
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{field} in {status}"))
}

#[test]
fn websocket_clients_get_the_state_then_nothing_unchanged_and_hold_bounded_memory() {
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/gpu/async.jsonl.gz");
    let server = Server::start(&["--replay", fixture]);
    let snapshot = server.json("/api/snapshot");

    let mut first = ws_connect(server.addr);
    let msg = ws_json(&mut first);
    assert_eq!(msg["type"], "state");
    assert_eq!(msg["state"]["vram_bytes_used"], snapshot["vram_bytes_used"]);
    assert_eq!(msg["state"]["records"], snapshot["records"]);
    // A replay does not change: nothing more comes but heartbeats (none within 2 s).
    first
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(2)))
        .ok();
    match first.read() {
        Err(tungstenite::Error::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("an unchanged state was resent: {other:?}"),
    }

    let before = rss_kib(server.child.id());
    let mut clients: Vec<Ws> = (0..100).map(|_| ws_connect(server.addr)).collect();
    for c in &mut clients {
        assert_eq!(ws_json(c)["type"], "state");
    }
    let after = rss_kib(server.child.id());
    eprintln!("server RSS: {before} KiB before, {after} KiB with 100 more WebSocket clients");
    assert!(
        after.saturating_sub(before) < 64 * 1024,
        "100 clients cost {} KiB",
        after - before
    );
    // The HTTP side still answers while they are connected.
    assert_eq!(server.get("/api/health").status, 200);
    for mut c in clients {
        let _ = c.close(None);
    }
}

/// The simulated driver and the workload, as the strings a command line takes.
fn sim_paths() -> (String, String) {
    let (lib, workload) = sim();
    let s = |p: &Path| p.to_str().expect("a UTF-8 path").to_owned();
    (s(lib), s(workload))
}

/// The WebSocket part of `/api/health`: clients now, and those dropped by why.
fn ws_health(server: &Server) -> (u64, u64, u64) {
    let h = server.json("/api/health");
    let n = |k: &str| {
        h["websocket"][k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} in {h}"))
    };
    (n("clients"), n("dropped_behind"), n("dropped_unresponsive"))
}

#[test]
fn a_stalled_websocket_client_is_dropped_while_the_others_keep_their_updates() {
    require_root();
    let (lib, workload) = sim_paths();
    let (lib, workload) = (lib.as_str(), workload.as_str());
    // The state keeps moving for a minute: a process appears with its memory, then exits, one
    // after another.
    let script = format!(
        "end=$(($(date +%s) + 60)); while [ $(date +%s) -lt $end ]; do \
         {workload} --lib {lib} exit-without-free >/dev/null || exit 1; done"
    );
    // Its diagnostics as JSON lines, chosen by the environment, as a DaemonSet would.
    let server = Server::start_env(
        &[("VRAMTRACE_LOG_FORMAT", "json")],
        &["-v", "--libcuda", lib, "--", "sh", "-c", &script],
    );

    // The client that reads: every message it gets, with when it came.
    let mut reader = ws_connect(server.addr);
    assert_eq!(ws_json(&mut reader)["type"], "state");
    let (tx, got) = std::sync::mpsc::channel::<(Instant, Value)>();
    std::thread::spawn(move || {
        // Pings are answered by tungstenite on the next read.
        while let Ok(m) = reader.read() {
            let tungstenite::Message::Text(t) = m else {
                continue;
            };
            let msg: Value = serde_json::from_str(&t).expect("JSON");
            if tx.send((Instant::now(), msg)).is_err() {
                return;
            }
        }
    });
    // Warmed up first: the recorder's own caches (libraries mapped for unwinding, the
    // processes seen) grow as the first workloads run.
    let mut early = Vec::new();
    while early.len() < 10 {
        let (at, msg) = got
            .recv_timeout(Duration::from_secs(20))
            .expect("changes while the workloads run");
        if msg["type"] == "changes" {
            early.push(at);
        }
    }
    // The stalled client: upgraded, then never reads again (nor answers a ping).
    let mut stalled = ws_connect(server.addr);
    let stalled_at = Instant::now();
    let rss_before = rss_anon_kib(server.child.id());
    assert_eq!(ws_health(&server).0, 2);

    let limit = Duration::from_secs(25);
    let (dropped_after, rss_peak) = loop {
        let rss = rss_anon_kib(server.child.id());
        let (clients, behind, unresponsive) = ws_health(&server);
        if behind + unresponsive == 1 {
            assert_eq!(clients, 1, "the reading client was dropped too");
            break (stalled_at.elapsed(), rss);
        }
        assert!(
            stalled_at.elapsed() < limit,
            "a client that stopped reading was not dropped within {limit:?} \
             ({clients} clients, {behind} dropped behind, {unresponsive} unresponsive)"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "stalled client dropped after {:.1} s; server's anonymous memory {rss_before} KiB, \
         then {rss_peak} KiB",
        dropped_after.as_secs_f64()
    );
    assert!(
        rss_peak.saturating_sub(rss_before) < 32 * 1024,
        "the server grew by {} KiB while a client stalled",
        rss_peak - rss_before
    );

    // The reading client had the changes all along, and still has them after the drop.
    let changes: Vec<Instant> = got
        .try_iter()
        .filter(|(_, m)| m["type"] == "changes")
        .map(|(at, _)| at)
        .collect();
    assert!(
        changes.len() >= 10,
        "{} changes reached the reading client while the other stalled",
        changes.len()
    );
    let gap = changes
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    assert!(
        gap < Duration::from_secs(3),
        "the reading client waited {gap:?} for a change"
    );
    let dropped_at = Instant::now();
    let later = loop {
        let (at, msg) = got
            .recv_timeout(Duration::from_secs(5))
            .expect("changes after the stalled client was dropped");
        if msg["type"] == "changes" && at > dropped_at {
            break msg;
        }
    };
    assert!(later["seq"].as_u64().is_some(), "{later}");
    assert_eq!(ws_health(&server).0, 1);

    // What the stalled client finds when it reads again: what was in flight, then the end.
    stalled
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .ok();
    let mut ended = false;
    for _ in 0..10_000 {
        match stalled.read() {
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Ok(tungstenite::Message::Close(_)) | Err(_) => {
                ended = true;
                break;
            }
            Ok(_) => {}
        }
    }
    assert!(
        ended,
        "the server did not end the stalled client's connection"
    );

    // Why it was dropped is logged, as a JSON line with the reason as a field.
    let logged: Vec<Value> = server.stderr.try_iter().map(|l| json_log(&l)).collect();
    assert!(
        logged.iter().any(|l| l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("dropping"))
            && (l["why"].is_string() || l["behind"].is_u64())),
        "no JSON line says why the client was dropped: {logged:?}"
    );
}

/// One `--log-format json` line: an object with a UTC timestamp, a level and a message.
fn json_log(line: &str) -> Value {
    let v: Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
    let ts = v["timestamp"]
        .as_str()
        .unwrap_or_else(|| panic!("no timestamp: {line}"));
    // RFC 3339 in UTC: 2026-11-28T01:02:03.456789Z.
    assert!(
        ts.len() >= 20
            && ts.as_bytes()[4] == b'-'
            && ts.as_bytes()[10] == b'T'
            && ts.ends_with('Z'),
        "timestamp {ts:?} in {line}"
    );
    assert!(
        ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&v["level"].as_str().unwrap_or("")),
        "level in {line}"
    );
    assert!(v["message"].is_string(), "message in {line}");
    v
}

#[test]
fn log_format_json_makes_every_diagnostic_a_json_line() {
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/gpu/async.jsonl.gz");
    let server = Server::start(&["--log-format", "json", "--replay", fixture]);
    assert_eq!(server.get("/api/health").status, 200);
    // SAFETY: kill has no memory effects; the pid is our own child's.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    let mut lines = server.said.clone();
    lines.extend(server.stderr.iter());
    assert!(!lines.is_empty());
    let logged: Vec<Value> = lines.iter().map(|l| json_log(l)).collect();
    let serving = logged
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("serving on http://"))
        })
        .expect("the line that says where serve listens");
    assert_eq!(serving["level"], "INFO");
    // Without the flag, the same line is for a person.
    let human = Server::start(&["--replay", fixture]);
    assert!(
        human.said.iter().all(|l| !l.starts_with('{')),
        "{:?}",
        human.said
    );
}

/// A command's stdout, the test failing with its stderr when it fails.
fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/setup.sh installs it)"));
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// `text` with `from` replaced by `to`, which must be there: the test must not silently miss
/// a sample that changed shape.
fn replaced(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} is no longer in the sample");
    text.replace(from, to)
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("addr").port()
}

/// The deploy/ samples, checked by the tools that run them: `promtool check config`,
/// `systemd-analyze verify`, and `nginx -t` on the nginx sample (a self-signed certificate in
/// place of the real one), which then really proxies HTTPS, HTTP/2 and a WebSocket upgrade to a
/// serve and refuses what is not a GET.
#[test]
fn deploy_samples_pass_their_tools_and_nginx_proxies_serve() {
    let deploy = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy"));
    run_ok(
        Command::new("promtool")
            .arg("check")
            .arg("config")
            .arg(deploy.join("prometheus.yml")),
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let unit = replaced(
        &std::fs::read_to_string(deploy.join("vramtrace.service")).expect("the unit"),
        "ExecStart=/usr/local/bin/vramtrace serve",
        &format!("ExecStart={} serve", env!("CARGO_BIN_EXE_vramtrace")),
    );
    let unit_path = dir.path().join("vramtrace.service");
    std::fs::write(&unit_path, unit).expect("unit");
    run_ok(
        Command::new("systemd-analyze")
            .arg("verify")
            .arg(&unit_path),
    );

    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/gpu/async.jsonl.gz");
    let server = Server::start(&["--replay", fixture]);
    let (crt, key) = (
        dir.path().join("vramtrace.crt"),
        dir.path().join("vramtrace.key"),
    );
    run_ok(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=localhost", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&crt)
            .stderr(Stdio::null()),
    );
    let (https, http) = (free_port(), free_port());
    let mut site = std::fs::read_to_string(deploy.join("nginx.conf")).expect("nginx sample");
    for (from, to) in [
        ("/etc/ssl/certs/vramtrace.crt", crt.display().to_string()),
        ("/etc/ssl/private/vramtrace.key", key.display().to_string()),
        (
            "listen 443 ssl http2;",
            format!("listen 127.0.0.1:{https} ssl http2;"),
        ),
        ("listen 80;", format!("listen 127.0.0.1:{http};")),
        ("127.0.0.1:9477", server.addr.to_string()),
    ] {
        site = replaced(&site, from, &to);
    }
    let d = dir.path().display();
    std::fs::write(dir.path().join("vramtrace.conf"), site).expect("site");
    let main = dir.path().join("nginx.conf");
    // What /etc/nginx/nginx.conf gives a site in conf.d, with its files in the temporary folder.
    std::fs::write(
        &main,
        format!(
            "pid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n\
             access_log {d}/access.log;\nclient_body_temp_path {d}/body;\n\
             proxy_temp_path {d}/proxy;\ninclude {d}/vramtrace.conf;\n}}\n"
        ),
    )
    .expect("nginx.conf");
    run_ok(
        Command::new("nginx")
            .arg("-t")
            .arg("-c")
            .arg(&main)
            .stderr(Stdio::piped()),
    );
    struct Nginx(Child);
    impl Drop for Nginx {
        fn drop(&mut self) {
            // SAFETY: kill has no memory effects; the pid is our own child's.
            unsafe { libc::kill(self.0.id() as i32, libc::SIGQUIT) };
            let _ = self.0.wait();
        }
    }
    let _nginx = Nginx(
        Command::new("nginx")
            .arg("-c")
            .arg(&main)
            .args(["-g", "daemon off;"])
            .spawn()
            .expect("nginx (scripts/setup.sh installs nginx-light)"),
    );
    let url = |path: &str| format!("https://127.0.0.1:{https}{path}");
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-sk", "--max-time", "3"])
            .args(args)
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let health = loop {
        let body = curl(&[&url("/api/health")]);
        if let Ok(v) = serde_json::from_str::<Value>(&body) {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "nginx did not proxy /api/health: {body:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(health["status"], "ok");
    let status = |args: &[&str]| {
        curl(
            &[
                &["-o", "/dev/null", "-w", "%{http_code} %{http_version}"],
                args,
            ]
            .concat(),
        )
    };
    assert_eq!(status(&["--http2", &url("/metrics")]), "200 2");
    assert_eq!(status(&["-X", "POST", &url("/api/health")]), "403 2");
    assert!(status(&[&format!("http://127.0.0.1:{http}/")]).starts_with("301"));
    // A WebSocket upgrade through the proxy: 101, then serve's first message.
    let ws = curl(&[
        "--http1.1",
        "-N",
        "-i",
        "-H",
        "Connection: Upgrade",
        "-H",
        "Upgrade: websocket",
        "-H",
        "Sec-WebSocket-Version: 13",
        "-H",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        &url("/ws"),
    ]);
    assert!(ws.starts_with("HTTP/1.1 101"), "{ws}");
    assert!(ws.contains("\"type\":\"state\""), "{ws}");
}

/// A cgroup laid out as the kubelet lays out a pod's container's (cgroup v2 with the systemd
/// driver, or cgroup v1's pids hierarchy with cgroupfs), removed with what is left in it.
struct PodCgroup {
    dirs: Vec<std::path::PathBuf>,
    /// The pod's UID.
    uid: String,
    /// The container's id.
    id: String,
}

impl PodCgroup {
    /// A pod of its own for this test process, named after its PID and the clock.
    fn new() -> PodCgroup {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .subsec_nanos();
        let pid = std::process::id();
        let uid = format!("{pid:08x}-aaaa-4bbb-8ccc-{nanos:012x}");
        let id = format!("{:064x}", (u128::from(nanos) << 32) | u128::from(pid));
        let (uid, id) = (uid.as_str(), id.as_str());
        let root = Path::new("/sys/fs/cgroup");
        let dirs: Vec<std::path::PathBuf> = if root.join("cgroup.controllers").exists() {
            let u = uid.replace('-', "_");
            let slice = root.join("kubepods.slice/kubepods-besteffort.slice");
            vec![
                root.join("kubepods.slice"),
                slice.clone(),
                slice.join(format!("kubepods-besteffort-pod{u}.slice")),
                slice.join(format!(
                    "kubepods-besteffort-pod{u}.slice/cri-containerd-{id}.scope"
                )),
            ]
        } else {
            let pods = root.join("pids/kubepods/besteffort");
            vec![
                root.join("pids/kubepods"),
                pods.clone(),
                pods.join(format!("pod{uid}")),
                pods.join(format!("pod{uid}/{id}")),
            ]
        };
        let leaf = dirs.last().expect("a leaf");
        std::fs::create_dir_all(leaf).unwrap_or_else(|e| panic!("making {}: {e}", leaf.display()));
        PodCgroup {
            dirs,
            uid: uid.to_owned(),
            id: id.to_owned(),
        }
    }

    /// A shell command that runs `command` as the pod's container would start: in the pod's
    /// cgroup, with the kubelet's variables (pod `ml/trainer-0`).
    fn start(&self, command: &str) -> String {
        format!(
            "echo $$ > {} && env HOSTNAME=trainer-0 KUBERNETES_SERVICE_HOST=10.96.0.1 \
             POD_NAMESPACE=ml {command}",
            self.procs().display()
        )
    }

    fn procs(&self) -> std::path::PathBuf {
        self.dirs.last().expect("a leaf").join("cgroup.procs")
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        // The workload started in it outlives serve (serve leaves its command running).
        if let Ok(pids) = std::fs::read_to_string(self.procs()) {
            for pid in pids.lines().filter_map(|l| l.parse::<i32>().ok()) {
                // SAFETY: kill has no memory effects; these are the test's own workloads.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        // The leaf empties as the killed workload exits; the parents may hold another test's
        // pod, which removes them in its turn.
        let (leaf, parents) = self.dirs.split_last().expect("a leaf");
        for _ in 0..50 {
            if std::fs::remove_dir(leaf).is_ok() || !leaf.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for dir in parents.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

#[test]
fn a_process_in_a_pods_cgroup_carries_its_container_and_pod_labels() {
    require_root();
    let (lib, workload) = sim_paths();
    let (lib, workload) = (lib.as_str(), workload.as_str());
    let cgroup = PodCgroup::new();
    let (uid, id) = (cgroup.uid.clone(), cgroup.id.clone());
    let script = cgroup.start(&format!(
        "{workload} --lib {lib} --hold 20 exit-without-free"
    ));
    let server = Server::start(&["--libcuda", lib, "--", "sh", "-c", &script]);
    let truth = truth_of(&server);
    let device = truth["device_bytes_at_exit"]
        .as_u64()
        .expect("device bytes");
    let m = wait_for(&server, "vramtrace_vram_bytes_used", device as f64);
    let line = m
        .lines()
        .find(|l| l.starts_with("vramtrace_process_device_bytes{"))
        .expect("a per-process series");
    for label in [
        format!("container=\"{id}\""),
        format!("pod_uid=\"{uid}\""),
        "pod=\"trainer-0\"".to_owned(),
        "namespace=\"ml\"".to_owned(),
    ] {
        assert!(line.contains(&label), "{label} in {line}");
    }
    let snap = server.json("/api/snapshot");
    let p = &snap["processes"][0];
    assert_eq!(p["container"], id.as_str());
    assert_eq!(
        p["pod"],
        serde_json::json!({"uid": uid, "name": "trainer-0", "namespace": "ml"})
    );
    drop(server);
    drop(cgroup);
}

/// NVML's figures are those of its latest sample. On the H100's out-of-memory trace that
/// sample was taken 35 ms before the failure, when 2 MiB was traced, and PyTorch allocated
/// 72 GiB in between: the snapshot says how old the sample is and what was traced then, so
/// that its coverage is not read as the present's.
#[test]
fn the_snapshot_says_of_which_moment_nvmls_figures_are() {
    use vramtrace::trace::{Record, read::TraceReader};
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/gpu/oom.jsonl.gz");
    let server = Server::start(&["--replay", fixture]);
    let snap = server.json("/api/snapshot?at=4.55");
    let last = snap["time_span_ns"][1].as_u64().expect("time span");
    let sample = TraceReader::open(Path::new(fixture))
        .expect("fixture")
        .filter_map(|r| match r {
            Record::Nvml(n) => Some(n.ts_ns),
            _ => None,
        })
        .filter(|&t| t <= last)
        .max()
        .expect("an NVML sample before the moment");
    let gpu = &snap["gpus"][0];
    assert_eq!(gpu["nvml_age_ns"].as_u64(), Some(last - sample), "{gpu}");
    assert_eq!(gpu["nvml_traced_bytes"].as_u64(), Some(2 << 20), "{gpu}");
    assert_eq!(
        gpu["traced_device_bytes"].as_u64(),
        Some(72u64 << 30),
        "{gpu}"
    );
}

/// A process that maps another's memory (the `ipc` workload: an exporter and the importer it
/// spawns) shows what it maps and from whom, apart from its own bytes, which stay its own.
#[test]
fn an_importer_shows_what_it_maps_from_its_exporter_without_counting_it() {
    use vramtrace::trace::Record;
    let (lib, _) = sim();
    let r = common::record(lib, "ipc", &[]);
    let (start, records) = (r.header.start_monotonic_ns, &r.records);
    // The moment the first import succeeded, and who exported.
    let import = records
        .iter()
        .find_map(|r| match r {
            Record::Import(c) if c.ret == 0 => Some(c.clone()),
            _ => None,
        })
        .expect("an import");
    let exporter = records
        .iter()
        .find_map(|r| match r {
            Record::Export(c) if c.ret == 0 => Some(c.pid),
            _ => None,
        })
        .expect("an export");
    let server = Server::start(&["--replay", r.trace.to_str().expect("utf-8")]);
    let at = (import.ts_ns - start) as f64 / 1e9 + 1e-6;
    let snap = server.json(&format!("/api/snapshot?at={at}"));
    let procs = snap["processes"].as_array().expect("processes");
    let importer = procs
        .iter()
        .find(|p| p["pid"].as_u64() == Some(u64::from(import.pid)))
        .unwrap_or_else(|| panic!("the importer in {snap}"));
    assert!(importer["imported_bytes"].as_u64() > Some(0), "{importer}");
    let imports = importer["imports"].as_array().expect("imports");
    assert_eq!(imports[0]["owner_pid"].as_u64(), Some(u64::from(exporter)));
    assert_eq!(imports[0]["source"], format!("mapped from PID {exporter}"));
    // Mapped, not owned: the importer's own figures and the machine's leave it out.
    assert_eq!(importer["device_bytes"].as_u64(), Some(0), "{importer}");
    let owned: u64 = procs
        .iter()
        .map(|p| p["device_bytes"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(snap["vram_bytes_used"].as_u64(), Some(owned), "{snap}");
}
