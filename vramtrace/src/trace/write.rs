//! The trace writer: one JSON line per record, a running digest (BLAKE3; SHA-256 for a header
//! of version 1.8 or older), and a footer that seals it.
//!
//! A writer dropped without [`TraceWriter::finish`] leaves a trace without a footer, which is
//! exactly how a crashed recording looks; readers take it up to its last complete line.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::digest::{Algorithm, Hasher};
use super::record::{FORMAT_MINOR, Footer, Record};

/// Size of the write buffer: big enough that a peak of ~10^6 lines/s costs a few hundred
/// `write(2)` calls a second, not a million, and that the digest is fed in large pieces
/// (per line, a digest costs about twice as much per byte).
const BUF_SIZE: usize = 1 << 20;

/// Traces name processes, command lines and paths: only their owner may read them.
const FILE_MODE: u32 = 0o600;

/// Why a trace could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The file could not be created (or its mode set).
    #[error("creating trace file {path} failed")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Writing, flushing or syncing failed.
    #[error("writing the trace failed")]
    Io(#[from] io::Error),
    /// A record could not be serialized (a map key that is not a string, say).
    #[error("serializing a `{kind}` record failed")]
    Serialize {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// The first record must be the header.
    #[error("the first record of a trace must be a header, not `{kind}`")]
    NoHeader { kind: &'static str },
    /// A trace has one header.
    #[error("the trace already has a header")]
    SecondHeader,
    /// The footer is written by [`TraceWriter::finish`], which computes it.
    #[error("the footer is written by finish(), not write()")]
    FooterNotAllowed,
}

/// Writes a trace file. See `docs/trace-format.md`.
pub struct TraceWriter {
    out: File,
    /// Lines not yet written nor hashed. Records are serialized straight into it, so a line
    /// costs no allocation and no copy of ours; it is hashed and written when it is full.
    buf: Vec<u8>,
    /// Of the algorithm the header's version names.
    hasher: Hasher,
    /// Lines after the header, by `type`: the footer's `counts`.
    counts: BTreeMap<String, u64>,
    lines: u64,
    finished: bool,
    violations: u64,
    stopped_by: Option<String>,
    untraced_after: Vec<u32>,
}

impl TraceWriter {
    /// Creates (or truncates) `path` with mode 0600.
    pub fn create(path: &Path) -> Result<Self, WriteError> {
        let create_err = |source| WriteError::Create {
            path: path.to_owned(),
            source,
        };
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .open(path)
            .map_err(create_err)?;
        // `mode` only applies to a new file: an existing one keeps its permissions unless told.
        file.set_permissions(Permissions::from_mode(FILE_MODE))
            .map_err(create_err)?;
        Ok(Self {
            out: file,
            buf: Vec::with_capacity(BUF_SIZE + 64 * 1024),
            hasher: Hasher::new(Algorithm::of_minor(FORMAT_MINOR)),
            counts: BTreeMap::new(),
            lines: 0,
            finished: false,
            violations: 0,
            stopped_by: None,
            untraced_after: Vec::new(),
        })
    }

    /// Appends one record. The first must be the [`Record::Header`]; a footer is refused (it
    /// is [`finish`](Self::finish)'s to write).
    pub fn write(&mut self, rec: &Record) -> Result<(), WriteError> {
        let kind = rec.kind();
        match (self.lines, rec) {
            (_, Record::Footer(_)) => return Err(WriteError::FooterNotAllowed),
            (0, Record::Header(h)) => {
                // Nothing is hashed before the header: it is the first line.
                self.hasher = Hasher::new(Algorithm::of_version(&h.version));
            }
            (0, _) => return Err(WriteError::NoHeader { kind }),
            (_, Record::Header(_)) => return Err(WriteError::SecondHeader),
            _ => {}
        }
        let start = self.buf.len();
        if let Err(source) = serde_json::to_writer(&mut self.buf, rec) {
            self.buf.truncate(start);
            return Err(WriteError::Serialize { kind, source });
        }
        self.buf.push(b'\n');
        self.lines += 1;
        if self.lines > 1 {
            // Look up by `&str` first: a `String` key is allocated once per kind, not per line.
            match self.counts.get_mut(kind) {
                Some(n) => *n += 1,
                None => {
                    self.counts.insert(kind.to_owned(), 1);
                }
            }
        }
        if self.buf.len() >= BUF_SIZE {
            self.write_buf()?;
        }
        Ok(())
    }

    /// Pushes buffered lines to the file (not to the disk: that is `finish`'s fsync).
    pub fn flush(&mut self) -> Result<(), WriteError> {
        self.write_buf()?;
        Ok(())
    }

    /// Hashes and writes the buffered lines. They are dropped even when writing fails, so
    /// that no byte is hashed twice.
    fn write_buf(&mut self) -> io::Result<()> {
        self.hasher.update(&self.buf);
        let written = self.out.write_all(&self.buf);
        self.buf.clear();
        written
    }

    /// Lines written so far, the header included.
    pub fn lines_written(&self) -> u64 {
        self.lines
    }

    /// What the footer says of how the recording stopped: why, and which traced processes
    /// were still running then (they go on untraced).
    pub fn stopped(&mut self, why: &str, untraced_after: Vec<u32>) {
        self.stopped_by = Some(why.to_owned());
        self.untraced_after = untraced_after;
    }

    /// Counts host-memory allocations that broke the `vram-only` policy: the footer's
    /// `violations`.
    pub fn count_violations(&mut self, n: u64) {
        self.violations = self.violations.saturating_add(n);
    }

    /// Writes the footer, flushes and fsyncs, and returns the footer.
    ///
    /// `lost_events` and `stack_failed` are the totals over the recording (the sums of the
    /// `lost` records' deltas).
    pub fn finish(
        mut self,
        end_ts_ns: u64,
        lost_events: u64,
        stack_failed: u64,
    ) -> Result<Footer, WriteError> {
        if self.lines == 0 {
            return Err(WriteError::NoHeader { kind: "footer" });
        }
        self.write_buf()?;
        let mut footer = Footer {
            end_ts_ns,
            counts: std::mem::take(&mut self.counts),
            lost_events,
            stack_failed,
            violations: self.violations,
            stopped_by: self.stopped_by.take(),
            untraced_after: std::mem::take(&mut self.untraced_after),
            ..Default::default()
        };
        self.hasher
            .algorithm()
            .set_in(&mut footer, self.hasher.finalize_hex());
        let rec = Record::Footer(footer.clone());
        let mut line = serde_json::to_vec(&rec).map_err(|source| WriteError::Serialize {
            kind: "footer",
            source,
        })?;
        line.push(b'\n');
        self.finished = true;
        self.out.write_all(&line)?;
        self.lines += 1;
        self.out.sync_all()?;
        Ok(footer)
    }
}

impl Drop for TraceWriter {
    fn drop(&mut self) {
        // An unfinished trace keeps every line that was handed to `write`: it reads like a
        // crash-cut trace. There is no one to report an error to here.
        if !self.finished {
            let _ = self.write_buf();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::trace::digest::hex_digest;
    use crate::trace::read::tests::{alloc, body, free, header, write_trace};

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn the_file_is_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("new.jsonl");
        drop(TraceWriter::create(&path).expect("create"));
        assert_eq!(mode(&path), 0o600);

        let old = dir.path().join("old.jsonl");
        std::fs::write(&old, "an older, longer file\n").expect("write");
        std::fs::set_permissions(&old, Permissions::from_mode(0o644)).expect("chmod");
        drop(TraceWriter::create(&old).expect("create"));
        assert_eq!(mode(&old), 0o600);
        assert_eq!(std::fs::read(&old).expect("read"), b"", "truncated");
    }

    #[test]
    fn create_names_the_path_it_failed_on() {
        let path = Path::new("/nonexistent-dir/t.jsonl");
        let err = TraceWriter::create(path).err().expect("an error");
        assert_eq!(
            err.to_string(),
            "creating trace file /nonexistent-dir/t.jsonl failed"
        );
    }

    #[test]
    fn the_header_comes_first_and_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = TraceWriter::create(&dir.path().join("t.jsonl")).expect("create");
        assert!(matches!(
            w.write(&alloc(0)),
            Err(WriteError::NoHeader { kind: "alloc" })
        ));
        w.write(&Record::Header(Box::new(header())))
            .expect("header");
        assert!(matches!(
            w.write(&Record::Header(Box::new(header()))),
            Err(WriteError::SecondHeader)
        ));
        assert!(matches!(
            w.write(&Record::Footer(Footer::default())),
            Err(WriteError::FooterNotAllowed)
        ));
        w.write(&alloc(0)).expect("alloc");
        assert_eq!(w.lines_written(), 2);
    }

    #[test]
    fn finish_without_header_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = TraceWriter::create(&dir.path().join("t.jsonl")).expect("create");
        assert!(matches!(
            w.finish(0, 0, 0),
            Err(WriteError::NoHeader { .. })
        ));
    }

    #[test]
    fn the_footer_counts_and_seals_the_lines_before_it() {
        let recs = body();
        let (bytes, footer) = write_trace(&recs, true);
        let footer = footer.expect("footer");
        let body_end = bytes[..bytes.len() - 1]
            .iter()
            .rposition(|b| *b == b'\n')
            .expect("a line before the footer")
            + 1;
        assert_eq!(
            footer.blake3.as_deref(),
            Some(hex_digest(Algorithm::Blake3, &bytes[..body_end]).as_str())
        );
        assert_eq!(footer.sha256, None);
        let footer_line: Record =
            serde_json::from_slice(&bytes[body_end..]).expect("the footer parses");
        assert_eq!(footer_line, Record::Footer(footer.clone()));
        assert_eq!(
            (footer.end_ts_ns, footer.lost_events, footer.stack_failed),
            (6_000_000_000, 4, 2)
        );
        let mut expected = BTreeMap::new();
        for rec in &recs {
            *expected.entry(rec.kind().to_owned()).or_insert(0u64) += 1;
        }
        assert_eq!(footer.counts, expected);
        assert!(!footer.counts.contains_key("header"));
    }

    #[test]
    fn each_record_is_one_line() {
        let (bytes, _) = write_trace(&[alloc(0), free(0)], true);
        let text = String::from_utf8(bytes).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("{\"type\":\"header\","));
        assert!(lines[1].starts_with("{\"type\":\"alloc\","));
        assert!(lines[3].starts_with("{\"type\":\"footer\","));
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn a_dropped_writer_keeps_its_lines_and_has_no_footer() {
        let (bytes, _) = write_trace(&[alloc(0), free(0)], false);
        let text = String::from_utf8(bytes).expect("utf-8");
        assert_eq!(text.lines().count(), 3);
        assert!(!text.contains("\"footer\""));
        assert!(text.ends_with('\n'));
    }
}
