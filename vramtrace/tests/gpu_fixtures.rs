//! Traces recorded by the GPU check (tests/gpu/README.md) on a real NVIDIA GPU, replayed
//! through the same comparison with their ground truth: PyTorch's segments, reserved bytes,
//! NVML's per-process figure, the classes of parameters and activations, the OOM.
//!
//! The fixtures in tests/data/gpu/ were recorded on an H100 with driver 580 (CUDA 13.0) and
//! PyTorch 2.11; each is `NAME.jsonl.gz` with `NAME.truth.json`.

use std::path::Path;
use std::process::Command;

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/gpu")
}

fn compare(args: &[&str]) -> std::process::Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/gpu/compare.py");
    Command::new("python3")
        .arg(script)
        .args(["--vramtrace", env!("CARGO_BIN_EXE_vramtrace")])
        .args(args)
        .output()
        .expect("python3 runs")
}

#[test]
fn every_gpu_fixture_agrees_with_its_ground_truth() {
    let dir = fixtures();
    let truths = std::fs::read_dir(&dir)
        .expect("tests/data/gpu exists")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".truth.json"))
        .count();
    assert!(
        truths >= 6,
        "expected the six scenarios' fixtures in {dir:?}"
    );
    let out = compare(&[dir.to_str().expect("utf-8 path")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "the comparison failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("{truths} scenarios")), "{stdout}");
    assert!(stdout.contains(" 0 failures"), "{stdout}");
}

#[test]
fn a_ground_truth_that_disagrees_fails_the_comparison() {
    // The comparison must be able to fail: one segment a granule larger than traced, and the
    // activation expected to be weights.
    let dir = tempfile::tempdir().expect("temp dir");
    let src = fixtures();
    std::fs::copy(
        src.join("caching.jsonl.gz"),
        dir.path().join("caching.jsonl.gz"),
    )
    .expect("copy trace");
    let text = std::fs::read_to_string(src.join("caching.truth.json")).expect("truth");
    let mut truth: serde_json::Value = serde_json::from_str(&text).expect("json");
    let marks = truth["marks"].as_array_mut().expect("marks");
    let in_step = marks
        .iter_mut()
        .find(|m| m["name"] == "in_step")
        .expect("an in_step mark");
    let size = in_step["segments"][0]["size"].as_u64().expect("size");
    in_step["segments"][0]["size"] = (size + (2 << 20)).into();
    in_step["tensors"]["activation"]["expect"] = "weights".into();
    std::fs::write(
        dir.path().join("caching.truth.json"),
        serde_json::to_string(&truth).expect("json"),
    )
    .expect("write truth");
    let out = compare(&[dir.path().to_str().expect("utf-8 path")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("has no traced allocation"), "{stdout}");
    assert!(stdout.contains("expected weights"), "{stdout}");
    assert!(stdout.contains(" 2 failures"), "{stdout}");
}

#[test]
fn the_h100_oom_is_explained_with_what_was_taken_since_nvml_last_looked() {
    // NVML's last sample in the trace was taken before PyTorch allocated 72 GiB in 3 ms;
    // its free figure alone (79.1 GiB) would say the 8 GiB request should have fit.
    let out = Command::new(env!("CARGO_BIN_EXE_vramtrace"))
        .args(["analyze", "--json"])
        .arg(fixtures().join("oom.jsonl.gz"))
        .output()
        .expect("vramtrace runs");
    assert!(out.status.success());
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let oom = &r["postmortem"]["ooms"][0];
    assert_eq!(oom["request_bytes"], 8u64 << 30);
    // Nine 8 GiB tensors and the 2 MiB segment of the first small one.
    assert_eq!(oom["held_device_bytes"], (72u64 << 30) + (2 << 20));
    let verdict = oom["verdict"].as_str().expect("a verdict");
    assert!(
        verdict.contains("took 72.0 GiB on the GPU since: about 7.1 GiB free at the failure"),
        "{verdict}"
    );
    assert!(!verdict.contains("enough free memory"), "{verdict}");
    // NVML's figure for the process is of the sample's moment, when 2 MiB was traced: its
    // context is the rest, not nothing.
    assert!(
        verdict.contains("NVML counted 28.0 MiB for it, 26.0 MiB beyond the traced allocations"),
        "{verdict}"
    );
    // The largest holders are cited by the code that made them, not a stack number: the
    // Python function of the workload, read from CPython by the probe.
    let holder = &oom["largest"][0];
    assert!(
        holder["top_frame"]
            .as_str()
            .is_some_and(|f| f.starts_with("workload.py:") && f.ends_with(" scenario_oom")),
        "{holder}"
    );
}

/// PyTorch handing a 64 MiB CUDA tensor to a spawned process (torch.multiprocessing:
/// cudaIpcGetMemHandle in the parent, cudaIpcOpenMemHandle in the child) on the H100, as
/// `tests/gpu/ipc.py` does, recorded with both processes traced. The child's mapping is the
/// parent's allocation, named by PID and address, and never counted twice: the machine's peak
/// is the parent's 64 MiB and the child's own 2 MiB.
#[test]
fn pytorch_ipc_on_the_h100_is_mapped_not_owned_and_attributed() {
    let dir = fixtures().join("torch-ipc");
    let sides: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("torch-ipc.out"))
        .expect("the workload's output")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    let exporter = sides
        .iter()
        .find(|s| s["side"] == "exporter" && s["data_ptr"].is_u64())
        .expect("exporter");
    let importer = sides
        .iter()
        .find(|s| s["side"] == "importer")
        .expect("importer");
    let out = Command::new(env!("CARGO_BIN_EXE_vramtrace"))
        .args(["analyze", "--json"])
        .arg(dir.join("torch-ipc.jsonl.gz"))
        .output()
        .expect("vramtrace runs");
    assert!(out.status.success());
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let procs = r["processes"].as_array().expect("processes");
    let by_pid = |pid: &serde_json::Value| {
        procs
            .iter()
            .find(|p| p["pid"] == *pid)
            .unwrap_or_else(|| panic!("pid {pid} in {procs:?}"))
    };
    let child = by_pid(&importer["pid"]);
    let imports = child["imports"].as_array().expect("the child's imports");
    assert_eq!(imports.len(), 1, "{imports:?}");
    let m = &imports[0];
    assert_eq!(m["api"], "cuIpcOpenMemHandle_v2");
    assert_eq!(
        m["addr"], importer["data_ptr"],
        "where the child sees the tensor"
    );
    assert_eq!(m["bytes"], exporter["bytes"]);
    assert_eq!(m["owner"]["pid"], exporter["pid"]);
    assert_eq!(
        m["owner"]["addr"], exporter["data_ptr"],
        "the parent's tensor"
    );
    assert_eq!(m["from"], format!("mapped from PID {}", exporter["pid"]));
    assert!(
        m["end_ts_ns"].is_u64(),
        "closed when the child let go of it"
    );
    let parent_peak = by_pid(&exporter["pid"])["peak_device_bytes"]
        .as_u64()
        .expect("peak");
    let child_peak = child["peak_device_bytes"].as_u64().expect("peak");
    assert_eq!(child_peak, 2 << 20, "the child's own memory only");
    assert_eq!(
        r["machine"]["peak_device_bytes"].as_u64(),
        Some(parent_peak + child_peak)
    );
}
