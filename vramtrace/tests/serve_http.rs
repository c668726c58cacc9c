//! `vramtrace serve` as its clients meet it: an HTTP client on loopback against a real server,
//! serving a recorded trace of the simulated driver and tracing a simulated workload live
//! (eBPF, root); requests it must refuse; `promtool check metrics`; and a real Prometheus
//! (Debian's `prometheus`) scraping it and answering a query for the workload's bytes.

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
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vramtrace"))
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
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("vramtrace: serving on http://") {
                        let a = rest.split('/').next().expect("an address");
                        break a.parse().expect("a socket address");
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
        "60",
        "exit-without-free",
    ]);
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

    // Every query of the Grafana dashboard is valid PromQL against these metrics, and the
    // panels about memory held now show the workload.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/grafana-dashboard.json"
        ))
        .expect("the dashboard"),
    )
    .expect("dashboard JSON");
    let mut shown = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"]
                .as_str()
                .expect("an expression")
                .replace("$instance", ".*");
            let r = request(
                api,
                &format!(
                    "GET /api/v1/query?query={} HTTP/1.1\r\nHost: x\r\n\r\n",
                    percent_encode(&expr)
                ),
            );
            let v: Value = serde_json::from_str(&r.body).expect("JSON");
            assert_eq!(v["status"], "success", "{expr}: {v}");
            if !v["data"]["result"].as_array().is_none_or(Vec::is_empty) {
                shown.push(panel["title"].as_str().unwrap_or("").to_owned());
            }
        }
    }
    for title in [
        "VRAM traced now",
        "Traced device memory by class",
        "Top processes by device memory",
    ] {
        assert!(
            shown.iter().any(|t| t == title),
            "{title} showed nothing: {shown:?}"
        );
    }
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
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
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
