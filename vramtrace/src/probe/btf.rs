//! Field offsets of kernel structures, read from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`; the format: <https://docs.kernel.org/bpf/btf.html>): what the
//! BPF programs need to find the open file behind a descriptor, `current->files->fdt->fd[fd]`.
//!
//! Only the type section is walked, and only structs are looked into. (aya-obj parses BTF
//! too, but keeps a struct's members and their offsets to itself.)

use std::collections::HashMap;
use std::path::Path;

/// Where the kernel's own BTF is.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
/// `struct btf_type`: `name_off`, `info`, `size`/`type`.
const TYPE_LEN: usize = 12;

/// `BTF_KIND_*` values.
mod kind {
    pub const INT: u32 = 1;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const DECL_TAG: u32 = 17;
    pub const ENUM64: u32 = 19;
}

/// Byte offsets of the fields on the way from a task to the open file behind a descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileOffsets {
    /// `task_struct.files`.
    pub task_files: u32,
    /// `files_struct.fdt`.
    pub files_fdt: u32,
    /// `fdtable.max_fds`.
    pub fdt_max_fds: u32,
    /// `fdtable.fd`.
    pub fdt_fd: u32,
}

/// Why the offsets could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path} failed")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not BTF: {0}")]
    Malformed(&'static str),
    #[error("the kernel's BTF has no field {0}")]
    Missing(&'static str),
}

impl FileOffsets {
    /// The running kernel's offsets.
    pub fn of_running_kernel() -> Result<FileOffsets, BtfError> {
        FileOffsets::of_file(Path::new(VMLINUX_BTF))
    }

    /// The offsets in the BTF file `path`.
    pub fn of_file(path: &Path) -> Result<FileOffsets, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        FileOffsets::parse(&data)
    }

    /// The offsets in the BTF `data` (little-endian, as the kernel of the machine writes it).
    pub fn parse(data: &[u8]) -> Result<FileOffsets, BtfError> {
        let wanted: &[(&str, &[&str])] = &[
            ("task_struct", &["files"]),
            ("files_struct", &["fdt"]),
            ("fdtable", &["max_fds", "fd"]),
        ];
        let found = struct_members(data, wanted)?;
        let get = |s: &str, m: &str, what: &'static str| {
            found
                .get(&(s.to_owned(), m.to_owned()))
                .copied()
                .ok_or(BtfError::Missing(what))
        };
        Ok(FileOffsets {
            task_files: get("task_struct", "files", "task_struct.files")?,
            files_fdt: get("files_struct", "fdt", "files_struct.fdt")?,
            fdt_max_fds: get("fdtable", "max_fds", "fdtable.max_fds")?,
            fdt_fd: get("fdtable", "fd", "fdtable.fd")?,
        })
    }
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(BtfError::Malformed("cut short"))
}

/// The byte offsets of the `wanted` members of the structs named in it, by (struct, member):
/// the first struct of each name that has them.
fn struct_members(
    data: &[u8],
    wanted: &[(&str, &[&str])],
) -> Result<HashMap<(String, String), u32>, BtfError> {
    if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != MAGIC {
        return Err(BtfError::Malformed("no BTF magic (or not little-endian)"));
    }
    let hdr_len = u32_at(data, 4)? as usize;
    let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
    let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
    let types = data
        .get(hdr_len + type_off..hdr_len + type_off + type_len)
        .ok_or(BtfError::Malformed("type section outside the file"))?;
    let strings = data
        .get(hdr_len + str_off..hdr_len + str_off + str_len)
        .ok_or(BtfError::Malformed("string section outside the file"))?;
    let name = |off: u32| -> &[u8] {
        let rest = strings.get(off as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    };
    let mut found = HashMap::new();
    let mut at = 0;
    while at + TYPE_LEN <= types.len() {
        let (name_off, info) = (u32_at(types, at)?, u32_at(types, at + 4)?);
        let vlen = (info & 0xffff) as usize;
        let k = (info >> 24) & 0x1f;
        let kind_flag = info >> 31 != 0;
        let members_at = at + TYPE_LEN;
        // What follows the common part, by kind.
        let extra = match k {
            kind::INT | kind::VAR | kind::DECL_TAG => 4,
            kind::ARRAY => 12,
            kind::STRUCT | kind::UNION | kind::DATASEC | kind::ENUM64 => 12 * vlen,
            kind::ENUM | kind::FUNC_PROTO => 8 * vlen,
            _ => 0,
        };
        if k == kind::STRUCT {
            let sname = name(name_off);
            if let Some((s, members)) = wanted.iter().find(|(s, _)| s.as_bytes() == sname) {
                for i in 0..vlen {
                    let m = members_at + 12 * i;
                    let mname = name(u32_at(types, m)?);
                    let Some(member) = members.iter().find(|n| n.as_bytes() == mname) else {
                        continue;
                    };
                    let raw = u32_at(types, m + 8)?;
                    // With the kind flag, the low 24 bits are the bit offset.
                    let bits = if kind_flag { raw & 0x00ff_ffff } else { raw };
                    found
                        .entry((s.to_string(), member.to_string()))
                        .or_insert(bits / 8);
                }
            }
        }
        at = members_at + extra;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob with `structs`, each a name and (member, bit offset) pairs, and an int type
    /// before them (a kind with data after it).
    fn blob(structs: &[(&str, &[(&str, u32)])]) -> Vec<u8> {
        let mut strings = vec![0u8];
        let mut add = |s: &str| {
            let off = strings.len() as u32;
            strings.extend_from_slice(s.as_bytes());
            strings.push(0);
            off
        };
        let mut types = Vec::new();
        let mut push = |v: u32| types.extend_from_slice(&v.to_le_bytes());
        let int = add("int");
        push(int);
        push(kind::INT << 24);
        push(4);
        push(32);
        for (name, members) in structs {
            push(add(name));
            push((kind::STRUCT << 24) | members.len() as u32);
            push(64);
            for (m, bits) in *members {
                push(add(m));
                push(1);
                push(*bits);
            }
        }
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for v in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&types);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    fn finds_the_offsets_by_struct_and_member_name() {
        let data = blob(&[
            ("other", &[("files", 8)]),
            ("task_struct", &[("pid", 0), ("files", 8 * 1840)]),
            ("files_struct", &[("count", 0), ("fdt", 32 * 8)]),
            ("fdtable", &[("max_fds", 0), ("fd", 64)]),
        ]);
        assert_eq!(
            FileOffsets::parse(&data).unwrap(),
            FileOffsets {
                task_files: 1840,
                files_fdt: 32,
                fdt_max_fds: 0,
                fdt_fd: 8,
            }
        );
    }

    #[test]
    fn a_missing_field_or_garbage_is_said() {
        let data = blob(&[("task_struct", &[("files", 64)])]);
        assert!(matches!(
            FileOffsets::parse(&data),
            Err(BtfError::Missing("files_struct.fdt"))
        ));
        assert!(matches!(
            FileOffsets::parse(b"not btf at all, not at all"),
            Err(BtfError::Malformed(_))
        ));
        let mut cut = blob(&[("task_struct", &[("files", 64)])]);
        cut.truncate(30);
        assert!(FileOffsets::parse(&cut).is_err());
    }

    /// The running kernel's BTF, where there is one: every offset found, `max_fds` first in
    /// `fdtable` (as it has been since Linux 2.6).
    #[test]
    fn the_running_kernel_has_them() {
        if !Path::new(VMLINUX_BTF).exists() {
            eprintln!("no {VMLINUX_BTF}: skipped");
            return;
        }
        let o = FileOffsets::of_running_kernel().unwrap();
        assert_eq!(o.fdt_max_fds, 0);
        assert!(o.task_files > 0 && o.files_fdt > 0 && o.fdt_fd > 0, "{o:?}");
    }
}
