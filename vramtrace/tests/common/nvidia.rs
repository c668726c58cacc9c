//! NVIDIA's driver libraries the tests run against: every generation Debian ships. 535 is
//! bookworm's libcuda1, installed by scripts/setup.sh; 550 (trixie) and 555 (experimental,
//! CUDA 12.5 ABI) are downloaded by it, never installed, into a side folder. Shared by the
//! unit tests (through `crate::testing`) and the integration tests (through `common`).

use std::path::PathBuf;

/// Bookworm's libcuda1, installed.
pub const INSTALLED_LIBCUDA: &str = "/usr/lib/x86_64-linux-gnu/libcuda.so.1";

/// Where scripts/setup.sh unpacks the generations it does not install, unless
/// `VRAMTRACE_NVIDIA_DIR` says otherwise.
pub const DEFAULT_SIDE_DIR: &str = "/var/cache/vramtrace/nvidia";

/// The library inside an unpacked libcuda1 package.
const IN_PACKAGE: &str = "usr/lib/x86_64-linux-gnu/nvidia/current/libcuda.so.1";

/// The generations unpacked into the side folder.
pub const SIDE_GENERATIONS: [&str; 2] = ["550", "555"];

/// One driver generation's `libcuda.so.1`.
#[derive(Clone, Debug)]
pub struct Generation {
    /// `535`, `550`, `555`.
    pub name: &'static str,
    /// The library.
    pub path: PathBuf,
}

impl Generation {
    /// `libcuda1 550 (/var/cache/...)`, for assertion messages.
    pub fn label(&self) -> String {
        format!("libcuda1 {} ({})", self.name, self.path.display())
    }
}

/// The side folder.
pub fn side_dir() -> PathBuf {
    std::env::var_os("VRAMTRACE_NVIDIA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SIDE_DIR))
}

/// Every generation, 535 first. Panics, naming what is missing and scripts/setup.sh, when
/// one is absent: a test that needs them never passes without them.
pub fn generations() -> Vec<Generation> {
    let mut out = vec![Generation {
        name: "535",
        path: PathBuf::from(INSTALLED_LIBCUDA),
    }];
    let side = side_dir();
    out.extend(SIDE_GENERATIONS.iter().map(|name| Generation {
        name,
        path: side.join(name).join(IN_PACKAGE),
    }));
    let missing: Vec<String> = out
        .iter()
        .filter(|g| !g.path.exists())
        .map(Generation::label)
        .collect();
    assert!(
        missing.is_empty(),
        "NVIDIA's driver libraries are missing: {}. Run scripts/setup.sh, which installs \
         bookworm's libcuda1 (535) and downloads 550 (trixie) and 555 (experimental) into \
         {} without installing them (VRAMTRACE_NVIDIA_DIR moves that folder)",
        missing.join(", "),
        side.display()
    );
    out
}
