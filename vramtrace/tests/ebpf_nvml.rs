//! NVML in a real recording: the probes on the simulated driver, NVML through the real
//! `libnvidia-ml.so.1`. Without a GPU or kernel driver (the developers' and CI's machines),
//! NVML fails to initialize: the header must say so with the reason, tracing must go on, and
//! analyze must report it. With a GPU, samples must be in the trace.

mod common;

use common::{record, sim};
use vramtrace::trace::Record;

#[test]
fn nvml_is_recorded_once_and_tracing_goes_on() {
    let (lib, _) = sim();
    let r = record(lib, "mixed", &[]);
    let nvml = r
        .header
        .nvml
        .as_ref()
        .expect("the header says what NVML did");
    let samples = r
        .records
        .iter()
        .filter(|rec| matches!(rec, Record::Nvml(_)))
        .count();
    let pid = r.truth["pid"].as_u64().expect("truth has pid");
    let traced = r.analysis["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .any(|p| p["pid"].as_u64() == Some(pid));
    assert!(traced, "the workload was traced: {}", r.analysis);
    assert_eq!(r.analysis["nvml"]["available"], nvml.available);
    assert_eq!(r.analysis["nvml"]["samples"].as_u64(), Some(samples as u64));
    if nvml.available {
        // A machine with a GPU and its driver.
        assert!(samples > 0, "NVML available but no samples");
        assert!(!nvml.gpus.is_empty());
        return;
    }
    let reason = nvml.reason.as_deref().expect("a reason");
    eprintln!("NVML: {reason}");
    assert!(
        reason.contains("NVML could not initialize") || reason.contains("libnvidia-ml.so.1"),
        "{reason}"
    );
    if std::path::Path::new("/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1").exists()
        && !std::path::Path::new("/proc/driver/nvidia").exists()
    {
        assert!(reason.contains("Driver Not Loaded"), "{reason}");
    }
    assert_eq!(samples, 0, "no samples without NVML");
    assert_eq!(r.analysis["nvml"]["reason"], reason);
    assert!(nvml.gpus.is_empty() && nvml.driver_version.is_none());
}
