//! Builds the eBPF programs (vramtrace-ebpf) with the pinned nightly and bpf-linker, so that
//! the object can be embedded in the binary with `include_bytes_aligned!`.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// The nightly whose LLVM (22) matches bpf-linker's. Newer nightlies use an LLVM that
/// Debian does not ship; keep this in step with scripts/setup.sh.
const BPF_NIGHTLY: &str = "nightly-2026-07-20";

fn main() -> anyhow::Result<()> {
    web_dist()?;
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    // The programs are built from the wire types too: a change there (a field, a size)
    // must rebuild them, or the embedded object and user space disagree on every event.
    if let Some(common) = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "vramtrace-common")
        .and_then(|p| p.manifest_path.parent())
    {
        println!("cargo:rerun-if-changed={common}");
    }
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "vramtrace-ebpf")
        .ok_or_else(|| anyhow!("the vramtrace-ebpf package is not in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("vramtrace-ebpf has no manifest directory"))?;
    aya_build::build_ebpf(
        [Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::Custom(BPF_NIGHTLY),
    )
}

/// The web page (`web/`, built by `npm run build` into `web/dist`) is embedded in the binary
/// by `serve::web`; without the build there is nothing to embed, which is said here rather
/// than as a missing-directory error from the macro.
fn web_dist() -> anyhow::Result<()> {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let dist = std::path::Path::new(&manifest).join("../web/dist");
    println!("cargo:rerun-if-changed={}", dist.display());
    if !dist.join("index.html").is_file() {
        anyhow::bail!(
            "the web page is not built: {} has no index.html. Run scripts/setup.sh \
             (or `npm ci && npm run build` in web/) first; Node 18 or later is needed",
            dist.display()
        );
    }
    Ok(())
}
