//! Which of the capabilities tracing needs this process has, to say what is missing when the
//! kernel refuses, instead of advising what the user already granted.

/// A capability tracing needs, with why.
struct Needed {
    name: &'static str,
    bit: u32,
    why: &'static str,
}

/// What `record` and `top` need when not run as root (numbers from linux/capability.h).
const NEEDED: [Needed; 4] = [
    Needed {
        name: "CAP_BPF",
        bit: 39,
        why: "load the programs and maps",
    },
    Needed {
        name: "CAP_PERFMON",
        bit: 38,
        why: "attach uprobes and tracepoints",
    },
    Needed {
        name: "CAP_SYS_PTRACE",
        bit: 19,
        why: "read other users' processes",
    },
    Needed {
        name: "CAP_DAC_READ_SEARCH",
        bit: 2,
        why: "read tracefs' event formats, readable by root only",
    },
];

/// The effective capability set of this process, from `/proc/self/status`.
fn effective() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// The needed capabilities missing from `eff`.
fn missing(eff: u64) -> Vec<&'static Needed> {
    NEEDED
        .iter()
        .filter(|n| eff & (1u64 << n.bit) == 0)
        .collect()
}

/// Advice for a refusal: run with sudo, or grant the capabilities, naming those this process
/// lacks; when it has them all, that the kernel refused for another reason.
pub fn advice() -> String {
    advice_for(effective())
}

fn advice_for(eff: Option<u64>) -> String {
    let all: Vec<&str> = NEEDED.iter().map(|n| n.name).collect();
    let setcap: Vec<String> = NEEDED.iter().map(|n| n.name.to_lowercase()).collect();
    let grant = format!(
        "run with sudo, or grant the capabilities {} (sudo setcap {}+ep $(which vramtrace))",
        all.join(", "),
        setcap.join(",")
    );
    match eff.map(missing) {
        Some(lacking) if lacking.is_empty() => format!(
            "this process has {}, so the kernel refused for another reason (lockdown, a \
             security module, or a container's seccomp profile); run as root to rule that out",
            all.join(", ")
        ),
        Some(lacking) => {
            let named: Vec<String> = lacking
                .iter()
                .map(|n| format!("{} (to {})", n.name, n.why))
                .collect();
            format!("{grant}; this process lacks {}", named.join(", "))
        }
        None => grant,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_advice_names_what_is_missing() {
        let three = (1u64 << 39) | (1 << 38) | (1 << 19);
        let a = advice_for(Some(three));
        assert!(a.contains("run with sudo"), "{a}");
        assert!(
            a.ends_with(
                "this process lacks CAP_DAC_READ_SEARCH (to read tracefs' event formats, \
                 readable by root only)"
            ),
            "{a}"
        );
        assert!(a.contains("cap_bpf,cap_perfmon,cap_sys_ptrace,cap_dac_read_search+ep"));
        let none = advice_for(Some(0));
        assert!(none.contains("lacks CAP_BPF"), "{none}");
        let all = advice_for(Some(three | (1 << 2)));
        assert!(all.contains("refused for another reason"), "{all}");
        assert!(!all.contains("lacks"), "{all}");
        assert!(advice_for(None).starts_with("run with sudo"));
    }
}
