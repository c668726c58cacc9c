//! The service's model held to the Ledger it follows, its escaping, and its bounds.

use proptest::prelude::*;

use super::{Served, Tracing, json_text, metrics, snapshot_json};
use crate::testing::{MIB, Sim, sequence};
use crate::trace::Record;

fn served(records: &[Record]) -> Served {
    let mut s = Served::new(Tracing::Replay);
    s.apply(records);
    s
}

proptest! {
    /// The sums the service shows are the Ledger's, whatever the sequence: the model moves
    /// only by the change stream and loses nothing.
    #[test]
    fn the_model_agrees_with_the_ledger(records in sequence(120)) {
        let s = served(&records);
        let totals = s.ledger.totals().usage;
        prop_assert_eq!(s.model.vram_bytes_used(), totals.device_bytes);
        prop_assert_eq!(s.model.pool_held_bytes(), totals.pool_held_bytes);
        prop_assert_eq!(s.model.host_bytes(), totals.host_bytes);
        for p in s.ledger.processes() {
            let row = s.model.procs.get(&p.proc).cloned().unwrap_or_default();
            prop_assert_eq!(row.device_bytes(), p.usage.device_bytes);
            prop_assert_eq!(row.pool_held_bytes(), p.usage.pool_held_bytes);
            prop_assert_eq!(row.host_bytes, p.usage.host_bytes);
            prop_assert_eq!(row.live, p.live_allocations().count() as u64);
        }
        let gpus = s.model.gpus(&s.ledger);
        let by_gpu: u64 = gpus.values().map(|g| g.device.iter().sum::<u64>()).sum();
        prop_assert_eq!(by_gpu, totals.device_bytes);
    }
}

#[test]
fn names_with_control_characters_and_markup_are_escaped_everywhere() {
    let mut p = Sim::new(1, 4242);
    let evil = "ev\u{1b}[31mil<script>\"x\"\n&";
    let mut recs = vec![p.process(evil)];
    if let Some(Record::Process(proc)) = recs.first_mut() {
        proc.cmdline = vec![evil.into(), "--flag=</td>".into()];
    }
    recs.push(p.alloc(0x1000, 8 * MIB));
    let s = served(&recs);

    let text = metrics::render(&s.model, &s.ledger, &[], 20, metrics::Format::Prometheus);
    let line = text
        .lines()
        .find(|l| l.starts_with("vramtrace_process_device_bytes{"))
        .expect("a per-process series");
    assert!(
        line.contains(r#"comm="ev�[31mil<script>\"x\"\n&""#),
        "{line}"
    );
    assert!(!text.chars().any(|c| c.is_control() && c != '\n'));

    let json = json_text(&snapshot_json(&s));
    assert!(!json.contains('<') && !json.contains('>') && !json.contains('&'));
    assert!(!json.chars().any(char::is_control));
    let back: serde_json::Value = serde_json::from_str(&json).expect("still JSON");
    assert_eq!(back["processes"][0]["comm"], evil);
}

#[test]
fn per_process_series_are_bounded_by_top_and_the_rest_counted() {
    let mut recs = Vec::new();
    for i in 0..30u32 {
        let mut p = Sim::new(i + 1, 1000 + i);
        recs.push(p.process(&format!("proc{i}")));
        recs.push(p.alloc(0x1000, u64::from(i + 1) * MIB));
    }
    let s = served(&recs);
    let text = metrics::render(&s.model, &s.ledger, &[], 20, metrics::Format::Prometheus);
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("vramtrace_process_device_bytes{"))
        .collect();
    assert_eq!(series.len(), 20);
    // The largest first: proc29 holds 30 MiB.
    assert!(series[0].contains("comm=\"proc29\""), "{}", series[0]);
    assert!(text.contains("\nvramtrace_processes_omitted 10\n"));
    assert!(text.contains("\nvramtrace_processes 30\n"));
    assert!(!text.contains("0x"), "no address in any label");
}

#[test]
fn health_names_the_last_oom_with_its_breakdown() {
    use crate::tui::synth;
    let recs = vec![
        synth::process(1, 77, "trainer"),
        synth::alloc(1, synth::T0, 0x1000, 8 * MIB, None),
        synth::oom(1, synth::T0 + 10, 1 << 30),
    ];
    let s = served(&recs);
    assert_eq!(s.model.ooms, 1);
    let oom = super::last_oom_json(&s);
    assert_eq!(oom["pid"], 77);
    assert_eq!(oom["comm"], "trainer");
    let summary = oom["summary"].as_str().expect("a summary");
    assert!(summary.contains("requested 1.0 GiB"), "{summary}");
    assert!(summary.contains("8.0 MiB"), "{summary}");
    let text = metrics::render(&s.model, &s.ledger, &[], 20, metrics::Format::Prometheus);
    assert!(text.contains("\nvramtrace_oom_total 1\n"), "{text}");
}

#[test]
fn the_allocation_window_is_the_ledger_s_live_allocations_in_order() {
    let mut p = Sim::new(1, 4242);
    let mut recs = vec![p.process("w")];
    for i in 0..50u64 {
        recs.push(p.alloc(0x10_0000 * (i + 1), (i + 1) * MIB));
    }
    let s = served(&recs);
    let q = |offset: usize, limit: usize| {
        let q: super::api::AllocQuery = serde_json::from_value(serde_json::json!({
            "offset": offset, "limit": limit
        }))
        .expect("a query");
        super::api::allocations(&s, &q).expect("a window")
    };
    let all = q(0, 1000);
    assert_eq!(all["total"], 50);
    let page = q(10, 5);
    let bytes: Vec<u64> = page["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["bytes"].as_u64().expect("bytes"))
        .collect();
    assert_eq!(bytes, [40, 39, 38, 37, 36].map(|m| m * MIB));
    let flame = super::api::flame(&s);
    assert_eq!(flame["bytes"], (1..=50).sum::<u64>() * MIB);
    assert_eq!(flame["children"][0]["name"], "w (4242)");
}

/// The telemetry poller's GPU figures become gauges by NVML index; what a GPU did not give
/// is absent, and a gauge no GPU gave has no family at all.
#[test]
fn gpu_utilization_temperature_and_power_are_gauges() {
    let s = served(&[]);
    let gpu = crate::nvml::GpuTelemetry {
        index: 0,
        name: Some("NVIDIA H100 80GB HBM3".into()),
        uuid: Some("GPU-abc".into()),
        utilization_gpu_percent: Some(37),
        utilization_memory_percent: Some(5),
        temperature_celsius: Some(41),
        power_watts: Some(71.23),
        power_limit_watts: None,
        ..Default::default()
    };
    let text = metrics::render(&s.model, &s.ledger, &[gpu], 20, metrics::Format::Prometheus);
    let labels = r#"{gpu="0",uuid="GPU-abc",model="NVIDIA H100 80GB HBM3"}"#;
    for line in [
        format!("vramtrace_gpu_utilization_ratio{labels} 0.37"),
        format!("vramtrace_gpu_memory_activity_ratio{labels} 0.05"),
        format!("vramtrace_gpu_temperature_celsius{labels} 41"),
        format!("vramtrace_gpu_power_watts{labels} 71.23"),
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
    }
    assert!(!text.contains("vramtrace_gpu_power_limit_watts"), "{text}");
}

#[test]
fn pod_labels_where_the_process_is_in_a_pod_and_empty_where_not() {
    let (mut pod, mut host) = (Sim::new(1, 4242), Sim::new(2, 4343));
    let mut recs = vec![pod.process("vllm"), host.process("train")];
    if let Some(Record::Process(proc)) = recs.first_mut() {
        proc.container = Some("ab".repeat(32));
        proc.pod_uid = Some("0f1e2d3c-aaaa-4bbb-8ccc-0123456789ab".into());
        proc.pod_name = Some("vllm-7d9f-x2".into());
        proc.pod_namespace = Some("inference".into());
    }
    recs.push(pod.alloc(0x1000, 8 * MIB));
    recs.push(host.alloc(0x1000, 4 * MIB));
    let s = served(&recs);

    let text = metrics::render(&s.model, &s.ledger, &[], 20, metrics::Format::Prometheus);
    let series = |pid: &str| {
        text.lines()
            .find(|l| {
                l.starts_with("vramtrace_process_device_bytes{")
                    && l.contains(&format!("pid=\"{pid}\""))
            })
            .unwrap_or_else(|| panic!("a series for {pid} in {text}"))
            .to_owned()
    };
    let line = series("4242");
    for label in [
        "pod_uid=\"0f1e2d3c-aaaa-4bbb-8ccc-0123456789ab\"",
        "pod=\"vllm-7d9f-x2\"",
        "namespace=\"inference\"",
    ] {
        assert!(line.contains(label), "{label} in {line}");
    }
    let line = series("4343");
    for label in [
        "container=\"\"",
        "pod_uid=\"\"",
        "pod=\"\"",
        "namespace=\"\"",
    ] {
        assert!(line.contains(label), "{label} in {line}");
    }

    let snap = snapshot_json(&s);
    let procs = snap["processes"].as_array().expect("processes");
    let by_pid = |pid: u32| procs.iter().find(|p| p["pid"] == pid).expect("the process");
    assert_eq!(
        by_pid(4242)["pod"],
        serde_json::json!({"uid": "0f1e2d3c-aaaa-4bbb-8ccc-0123456789ab",
                           "name": "vllm-7d9f-x2", "namespace": "inference"})
    );
    assert!(by_pid(4343)["pod"].is_null());
    assert!(by_pid(4343)["container"].is_null());
}

#[test]
fn a_token_file_must_hold_printable_ascii() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("token");
    let read = |text: &str| {
        std::fs::write(&file, text).expect("write");
        super::read_token(&file).map_err(|e| e.to_string())
    };
    assert_eq!(read("e2e-s3cret>>?\nignored\n"), Ok("e2e-s3cret>>?".into()));
    assert!(read("\n").is_err_and(|e| e.contains("is empty")));
    for bad in ["s\u{e9}cret\n", "two words\n", "tab\there\n"] {
        let e = read(bad).expect_err(bad);
        assert!(e.contains("printable ASCII"), "{e}");
    }
}
