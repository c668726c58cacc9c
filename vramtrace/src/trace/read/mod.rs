//! The tolerant trace reader: streams records, and collects what is wrong instead of stopping.
//!
//! Only the header is required ([`TraceReader::new`] fails without a readable one). After it,
//! a bad line is a [`Problem`] with its line number and the next line is read; a line cut
//! short by a crash ends the trace; the footer's digest and counts are checked when it comes.
//! Call [`TraceReader::summary`] once the iterator is exhausted.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::record::{
    Call, Exit, FORMAT_MAJOR, FORMAT_MINOR, FORMAT_NAME, Footer, Header, Lost, Mem, Process,
    Record, Stack,
};

/// Every `type` that [`Record::kind`] returns, in declaration order.
pub const RECORD_TYPES: [&str; 24] = [
    "header",
    "process",
    "stack",
    "alloc",
    "free",
    "failed",
    "vmm_create",
    "vmm_release",
    "vmm_map",
    "vmm_unmap",
    "reserve",
    "unreserve",
    "pool_create",
    "pool_destroy",
    "pool_trim",
    "ctx_create",
    "ctx_destroy",
    "ctx_current",
    "copy",
    "unreturned",
    "exit",
    "lost",
    "nvml",
    "footer",
];

/// A longer line is garbage, not a record (the deepest stack is a few tens of KiB): it is
/// skipped rather than buffered whole.
const MAX_LINE: usize = 16 << 20;

/// Why a trace could not be opened at all.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("opening trace file {path} failed")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading the trace header failed")]
    Io(#[from] io::Error),
    #[error("the file is empty: not a vramtrace trace")]
    Empty,
    #[error("not a vramtrace trace: {reason}")]
    NotATrace { reason: String },
    #[error("not a vramtrace trace: its header says format {found:?}, not {FORMAT_NAME:?}")]
    WrongFormat { found: String },
    #[error("the trace header's version {found:?} is not MAJOR.MINOR")]
    BadVersion { found: String },
    #[error(
        "trace format version {found} is newer than this vramtrace (reads {reads}.x); \
         upgrade vramtrace"
    )]
    NewerMajor { found: String, reads: u32 },
    #[error(
        "trace format version {found} is older than this vramtrace reads ({reads}.x); \
         read it with the vramtrace that recorded it"
    )]
    OlderMajor { found: String, reads: u32 },
    #[error("the trace header is cut short (the recording stopped while writing it)")]
    TruncatedHeader,
    #[error("the trace header is malformed: {message}")]
    BadHeader {
        message: String,
        #[source]
        source: serde_json::Error,
    },
}

/// What kind of thing is wrong with a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// Not JSON at all.
    NotJson,
    /// JSON, but not a record this reader knows (missing field, wrong type, no `type`).
    BadRecord,
    /// A `type` this reader does not know, in a trace of a minor version it should know.
    UnknownType,
    /// A second header.
    UnexpectedHeader,
    /// The last line has no newline: the recording stopped mid-line.
    Truncated,
    /// A line longer than any record can be.
    TooLong,
    /// A line after the footer.
    AfterFooter,
    /// The footer's SHA-256 is not that of the bytes before it: changed or cut and resumed.
    DigestMismatch,
    /// The footer's counts are not the lines read.
    CountMismatch,
    /// Reading failed; nothing after this was read.
    Io,
}

/// Something wrong in a trace, with the 1-based line it is on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub line: u64,
    pub kind: ProblemKind,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// What a read found, once the records are exhausted.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReadSummary {
    pub header: Header,
    pub footer: Option<Footer>,
    /// The footer is there, its digest and counts match, and nothing follows it.
    pub complete: bool,
    /// Whether the footer's digest matched; `None` without a footer.
    pub digest_ok: Option<bool>,
    pub problems: Vec<Problem>,
    /// Lines read, the header, the footer and bad lines included.
    pub lines: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Lines of a `type` this reader does not know, in a trace of a newer minor version:
    /// additions it may ignore, so not problems.
    pub skipped_types: BTreeMap<String, u64>,
}

/// Streams the records of a trace between its header and footer.
///
/// As an [`Iterator`] it yields [`Record`]s; [`next_record`](Self::next_record) also gives
/// their line numbers. Bad lines are skipped and collected as [`Problem`]s.
pub struct TraceReader<R> {
    input: R,
    /// The current line, when it is not whole in `input`'s buffer; reused.
    buf: Vec<u8>,
    /// How far into `input`'s buffer lines were read without consuming them.
    pos: usize,
    /// Where in `input`'s buffer the bytes not yet hashed start (`<= pos`).
    hash_from: usize,
    hasher: BatchedHash,
    names: Names,
    header: Header,
    /// The trace's minor version: types unknown to us are expected when it is newer.
    minor: u32,
    footer: Option<Footer>,
    digest_ok: Option<bool>,
    counts_ok: bool,
    /// Lines after the header, by `type`, to check against the footer.
    counts: Counts,
    skipped_types: BTreeMap<String, u64>,
    problems: Vec<Problem>,
    lines: u64,
    bytes: u64,
    after_footer: bool,
    /// Something followed the footer.
    trailing: bool,
    done: bool,
}

impl TraceReader<BufReader<File>> {
    /// Opens a trace file and reads its header.
    pub fn open(path: &Path) -> Result<Self, ReadError> {
        let file = File::open(path).map_err(|source| ReadError::Open {
            path: path.to_owned(),
            source,
        })?;
        Self::new(BufReader::with_capacity(1 << 20, file))
    }
}

/// How a line read ended.
enum LineEnd {
    Eof,
    /// A complete line, its newline included.
    Newline,
    /// The input ended without a newline.
    Cut,
    /// Longer than [`MAX_LINE`]; `len` bytes were consumed up to and with its newline.
    TooLong {
        len: u64,
    },
}

/// What [`TraceReader::next_in_buffer`] found.
#[expect(
    clippy::large_enum_variant,
    reason = "lives for one line; boxing would cost an allocation per record"
)]
enum InBuffer {
    Line(Result<Parsed, (ProblemKind, String)>),
    /// Longer than [`MAX_LINE`], of this many bytes with its newline.
    TooLong(u64),
    /// A line after the footer.
    AfterFooter,
}

/// A line parsed.
#[expect(
    clippy::large_enum_variant,
    reason = "lives for one line; boxing would cost an allocation per record"
)]
enum Parsed {
    Record(Record),
    /// Valid JSON with a `type` this reader does not know.
    Unknown(String),
}

impl<R: BufRead> TraceReader<R> {
    /// Reads and checks the header from `input`.
    pub fn new(input: R) -> Result<Self, ReadError> {
        let mut reader = TraceReader {
            input,
            buf: Vec::with_capacity(4096),
            pos: 0,
            hash_from: 0,
            hasher: BatchedHash::default(),
            names: Names::default(),
            header: Header::default(),
            minor: 0,
            footer: None,
            digest_ok: None,
            counts_ok: true,
            counts: Counts::default(),
            skipped_types: BTreeMap::new(),
            problems: Vec::new(),
            lines: 0,
            bytes: 0,
            after_footer: false,
            trailing: false,
            done: false,
        };
        match reader.read_line(false)? {
            LineEnd::Eof => return Err(ReadError::Empty),
            LineEnd::Cut => return Err(ReadError::TruncatedHeader),
            LineEnd::TooLong { .. } => {
                return Err(ReadError::NotATrace {
                    reason: "its first line is not JSON".into(),
                });
            }
            LineEnd::Newline => {}
        }
        reader.lines = 1;
        reader.bytes = reader.buf.len() as u64;
        reader.hasher.update(&reader.buf);
        let (header, minor) = parse_header(&reader.buf)?;
        reader.header = header;
        reader.minor = minor;
        Ok(reader)
    }

    /// The trace's header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Problems found so far.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// The next record between header and footer, with its 1-based line number; `None` at the
    /// end of the trace (its footer, a cut line, the end of input, or a read error).
    pub fn next_record(&mut self) -> Option<(u64, Record)> {
        while !self.done {
            match self.next_in_buffer() {
                Ok(Some(InBuffer::Line(parsed))) => {
                    if let Some(rec) = self.take(self.lines, parsed) {
                        return Some(rec);
                    }
                    continue;
                }
                Ok(Some(InBuffer::TooLong(len))) => {
                    self.too_long(self.lines, len);
                    continue;
                }
                Ok(Some(InBuffer::AfterFooter)) => {
                    self.after_footer_line(self.lines);
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    self.read_failed(&e);
                    return None;
                }
            }
            // The next line is not whole in the buffer: read it into `buf`.
            let end = match self.read_line(!self.after_footer) {
                Ok(end) => end,
                Err(e) => {
                    self.read_failed(&e);
                    return None;
                }
            };
            let line = self.lines + 1;
            match end {
                LineEnd::Eof => {
                    self.done = true;
                    return None;
                }
                LineEnd::Cut => {
                    self.lines = line;
                    self.bytes += self.buf.len() as u64;
                    self.done = true;
                    if self.after_footer {
                        self.trailing = true;
                        self.problem(
                            line,
                            ProblemKind::AfterFooter,
                            "bytes after the footer (the trace was appended to)".into(),
                        );
                    } else {
                        self.problem(
                            line,
                            ProblemKind::Truncated,
                            format!(
                                "the last line is cut short after {} bytes (no newline): the \
                                 recording stopped while writing it",
                                self.buf.len()
                            ),
                        );
                    }
                    return None;
                }
                LineEnd::TooLong { len } => {
                    self.lines = line;
                    self.bytes += len;
                    self.too_long(line, len);
                    continue;
                }
                LineEnd::Newline => {
                    self.lines = line;
                    self.bytes += self.buf.len() as u64;
                }
            }
            if self.after_footer {
                self.after_footer_line(line);
                continue;
            }
            let parsed = parse_line(&self.buf, &mut self.names);
            if !matches!(parsed, Ok(Parsed::Record(Record::Footer(_)))) {
                self.hasher.update(&self.buf);
            }
            if let Some(rec) = self.take(line, parsed) {
                return Some(rec);
            }
        }
        None
    }

    /// The next line when it lies whole in `input`'s buffer, parsed there without copying it;
    /// `None` when the buffer holds no whole line (the bytes before it are then hashed and
    /// consumed). Lines before the footer are hashed in runs, not one by one.
    fn next_in_buffer(&mut self) -> io::Result<Option<InBuffer>> {
        let chunk = loop {
            match self.input.fill_buf() {
                Ok(chunk) => break chunk,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        let start = self.pos;
        let Some(len) = memchr::memchr(b'\n', &chunk[start..]).map(|i| i + 1) else {
            if !self.after_footer {
                self.hasher.update(&chunk[self.hash_from..start]);
            }
            self.input.consume(start);
            self.pos = 0;
            self.hash_from = 0;
            return Ok(None);
        };
        self.pos += len;
        self.lines += 1;
        self.bytes += len as u64;
        // As when the line is read into `buf`: too long first, wherever it is.
        if len > MAX_LINE {
            return Ok(Some(InBuffer::TooLong(len as u64)));
        }
        if self.after_footer {
            return Ok(Some(InBuffer::AfterFooter));
        }
        let parsed = parse_line(&chunk[start..self.pos], &mut self.names);
        if matches!(parsed, Ok(Parsed::Record(Record::Footer(_)))) {
            // The digest covers what came before the footer, and nothing after.
            self.hasher.update(&chunk[self.hash_from..start]);
            self.hash_from = self.pos;
        }
        Ok(Some(InBuffer::Line(parsed)))
    }

    /// Books a parsed line `line`: the record to hand out, or what is wrong with it.
    fn take(
        &mut self,
        line: u64,
        parsed: Result<Parsed, (ProblemKind, String)>,
    ) -> Option<(u64, Record)> {
        let parsed = match parsed {
            Ok(parsed) => parsed,
            Err((kind, message)) => {
                self.problem(line, kind, message);
                return None;
            }
        };
        match parsed {
            Parsed::Record(Record::Footer(footer)) => self.check_footer(line, footer),
            Parsed::Record(Record::Header(_)) => {
                self.problem(
                    line,
                    ProblemKind::UnexpectedHeader,
                    "a second header, skipped".into(),
                );
            }
            Parsed::Record(rec) => {
                self.counts.known[type_index(&rec)] += 1;
                return Some((line, rec));
            }
            Parsed::Unknown(kind) => {
                self.counts.add(&kind);
                if self.minor > FORMAT_MINOR {
                    count(&mut self.skipped_types, &kind);
                } else {
                    self.problem(
                        line,
                        ProblemKind::UnknownType,
                        format!(
                            "unknown record type {kind:?} in a version {}.{} trace",
                            FORMAT_MAJOR, self.minor
                        ),
                    );
                }
            }
        }
        None
    }

    /// What was read. Meaningful once [`next_record`](Self::next_record) has returned `None`.
    pub fn summary(&self) -> ReadSummary {
        ReadSummary {
            header: self.header.clone(),
            footer: self.footer.clone(),
            complete: self.done
                && self.footer.is_some()
                && self.digest_ok == Some(true)
                && self.counts_ok
                && !self.trailing,
            digest_ok: self.digest_ok,
            problems: self.problems.clone(),
            lines: self.lines,
            bytes: self.bytes,
            skipped_types: self.skipped_types.clone(),
        }
    }

    /// Reading failed: the trace ends here.
    fn read_failed(&mut self, e: &io::Error) {
        self.done = true;
        self.problem(
            self.lines + 1,
            ProblemKind::Io,
            format!("reading failed, nothing after this was read: {e}"),
        );
    }

    /// Line `line`, of `len` bytes, is longer than any record: skipped.
    fn too_long(&mut self, line: u64, len: u64) {
        self.trailing |= self.after_footer;
        self.problem(
            line,
            ProblemKind::TooLong,
            format!("line of {len} bytes skipped: no record is that long"),
        );
    }

    /// Line `line` follows the footer.
    fn after_footer_line(&mut self, line: u64) {
        self.trailing = true;
        self.problem(
            line,
            ProblemKind::AfterFooter,
            "a line after the footer (the trace was appended to)".into(),
        );
    }

    fn problem(&mut self, line: u64, kind: ProblemKind, message: String) {
        self.problems.push(Problem {
            line,
            kind,
            message,
        });
    }

    fn check_footer(&mut self, line: u64, footer: Footer) {
        let digest = self.hasher.finalize_hex();
        let digest_ok = digest.eq_ignore_ascii_case(&footer.sha256);
        if !digest_ok {
            self.problem(
                line,
                ProblemKind::DigestMismatch,
                format!(
                    "the footer's SHA-256 is {}, but the lines before it hash to {digest}: \
                     the trace was changed",
                    footer.sha256
                ),
            );
        }
        let mut diffs = Vec::new();
        let read_counts = self.counts.to_map();
        let kinds = footer.counts.keys().chain(read_counts.keys());
        for kind in kinds.collect::<std::collections::BTreeSet<_>>() {
            let said = footer.counts.get(kind).copied().unwrap_or(0);
            let read = read_counts.get(kind).copied().unwrap_or(0);
            if said != read {
                diffs.push(format!("{kind}: footer says {said}, read {read}"));
            }
        }
        self.counts_ok = diffs.is_empty();
        if !self.counts_ok {
            self.problem(
                line,
                ProblemKind::CountMismatch,
                format!(
                    "the footer's counts are not the lines read ({})",
                    diffs.join(", ")
                ),
            );
        }
        self.digest_ok = Some(digest_ok);
        self.footer = Some(footer);
        self.after_footer = true;
    }

    /// Reads one line into `buf`, at most [`MAX_LINE`] bytes of it; `hash_skipped` says whether
    /// the bytes of a too-long line go into the digest.
    fn read_line(&mut self, hash_skipped: bool) -> io::Result<LineEnd> {
        self.buf.clear();
        let n = (&mut self.input)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut self.buf)?;
        if n == 0 {
            return Ok(LineEnd::Eof);
        }
        if self.buf.last() == Some(&b'\n') {
            return Ok(LineEnd::Newline);
        }
        if n < MAX_LINE {
            return Ok(LineEnd::Cut);
        }
        // Too long: skip to the end of the line without keeping it.
        if hash_skipped {
            self.hasher.update(&self.buf);
        }
        let mut len = n as u64;
        loop {
            let chunk = self.input.fill_buf()?;
            if chunk.is_empty() {
                // A too-long line that is also cut: reported as too long, then the end.
                return Ok(LineEnd::TooLong { len });
            }
            let (used, found) = match memchr_newline(chunk) {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            if hash_skipped {
                self.hasher.update(&chunk[..used]);
            }
            self.input.consume(used);
            len += used as u64;
            if found {
                return Ok(LineEnd::TooLong { len });
            }
        }
    }
}

/// SHA-256 fed in large pieces: hashing line by line costs about twice as much, per byte, as
/// hashing 64 KiB at a time.
#[derive(Default)]
struct BatchedHash {
    hasher: Sha256,
    pending: Vec<u8>,
}

impl BatchedHash {
    const BATCH: usize = 64 << 10;

    fn update(&mut self, bytes: &[u8]) {
        if self.pending.len() + bytes.len() > Self::BATCH {
            self.hasher.update(&self.pending);
            self.pending.clear();
            if bytes.len() > Self::BATCH {
                self.hasher.update(bytes);
                return;
            }
        }
        self.pending.extend_from_slice(bytes);
    }

    /// The hex digest of everything so far; starts over.
    fn finalize_hex(&mut self) -> String {
        self.hasher.update(&self.pending);
        self.pending.clear();
        hex::encode(self.hasher.finalize_reset())
    }
}

impl<R: BufRead> Iterator for TraceReader<R> {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        self.next_record().map(|(_, rec)| rec)
    }
}

impl<R: BufRead> std::iter::FusedIterator for TraceReader<R> {}

fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', bytes)
}

/// The position of `rec`'s type in [`RECORD_TYPES`].
fn type_index(rec: &Record) -> usize {
    match rec {
        Record::Header(_) => 0,
        Record::Process(_) => 1,
        Record::Stack(_) => 2,
        Record::Alloc(_) => 3,
        Record::Free(_) => 4,
        Record::Failed(_) => 5,
        Record::VmmCreate(_) => 6,
        Record::VmmRelease(_) => 7,
        Record::VmmMap(_) => 8,
        Record::VmmUnmap(_) => 9,
        Record::Reserve(_) => 10,
        Record::Unreserve(_) => 11,
        Record::PoolCreate(_) => 12,
        Record::PoolDestroy(_) => 13,
        Record::PoolTrim(_) => 14,
        Record::CtxCreate(_) => 15,
        Record::CtxDestroy(_) => 16,
        Record::CtxCurrent(_) => 17,
        Record::Copy(_) => 18,
        Record::Unreturned(_) => 19,
        Record::Exit(_) => 20,
        Record::Lost(_) => 21,
        Record::Nvml(_) => 22,
        Record::Footer(_) => 23,
    }
}

/// Lines by `type`: the known types in an array, for the price of a match per line.
#[derive(Default)]
struct Counts {
    known: [u64; RECORD_TYPES.len()],
    other: BTreeMap<String, u64>,
}

impl Counts {
    fn add(&mut self, kind: &str) {
        match RECORD_TYPES.iter().position(|&k| k == kind) {
            Some(i) => self.known[i] += 1,
            None => count(&mut self.other, kind),
        }
    }

    /// The counts that are not zero, by type.
    fn to_map(&self) -> BTreeMap<String, u64> {
        let mut map = self.other.clone();
        for (kind, &n) in RECORD_TYPES.iter().zip(&self.known) {
            if n > 0 {
                map.insert((*kind).to_owned(), n);
            }
        }
        map
    }
}

/// The entry-point names read so far: a trace names a handful of them millions of times, and
/// each call shares its name instead of allocating it.
#[derive(Default)]
struct Names(Vec<Arc<str>>);

impl Names {
    /// More distinct names than any driver exports: past this, names are not kept.
    const MAX: usize = 512;

    fn get(&mut self, bytes: &[u8]) -> Option<Arc<str>> {
        if let Some(name) = self.0.iter().find(|n| n.as_bytes() == bytes) {
            return Some(name.clone());
        }
        let name: Arc<str> = std::str::from_utf8(bytes).ok()?.into();
        if self.0.len() < Self::MAX {
            self.0.push(name.clone());
        }
        Some(name)
    }
}

fn count(counts: &mut BTreeMap<String, u64>, kind: &str) {
    match counts.get_mut(kind) {
        Some(n) => *n += 1,
        None => {
            counts.insert(kind.to_owned(), 1);
        }
    }
}

/// Checks the first line: a header of this format and major version. Returns it and the
/// trace's minor version.
fn parse_header(line: &[u8]) -> Result<(Header, u32), ReadError> {
    // A loose look first, so that a wrong format or version gets its own message even when
    // the rest of the header is not what this version expects.
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|_| ReadError::NotATrace {
            reason: "its first line is not JSON".into(),
        })?;
    let Some(obj) = value.as_object() else {
        return Err(ReadError::NotATrace {
            reason: "its first line is not a JSON object".into(),
        });
    };
    if obj.get("type").and_then(|t| t.as_str()) != Some("header") {
        return Err(ReadError::NotATrace {
            reason: "its first line is not a header".into(),
        });
    }
    match obj.get("format").and_then(|f| f.as_str()) {
        Some(FORMAT_NAME) => {}
        Some(other) => {
            return Err(ReadError::WrongFormat {
                found: other.to_owned(),
            });
        }
        None => {
            return Err(ReadError::NotATrace {
                reason: "its header has no format".into(),
            });
        }
    }
    let version =
        obj.get("version")
            .and_then(|v| v.as_str())
            .ok_or_else(|| ReadError::BadVersion {
                found: obj
                    .get("version")
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
            })?;
    let bad_version = || ReadError::BadVersion {
        found: version.to_owned(),
    };
    let (major, minor) = version.split_once('.').ok_or_else(bad_version)?;
    let major: u32 = major.parse().map_err(|_| bad_version())?;
    if major > FORMAT_MAJOR {
        return Err(ReadError::NewerMajor {
            found: version.to_owned(),
            reads: FORMAT_MAJOR,
        });
    }
    if major < FORMAT_MAJOR {
        return Err(ReadError::OlderMajor {
            found: version.to_owned(),
            reads: FORMAT_MAJOR,
        });
    }
    let minor: u32 = minor.parse().map_err(|_| bad_version())?;
    match serde_json::from_value::<Record>(value) {
        Ok(Record::Header(header)) => Ok((*header, minor)),
        Ok(_) => Err(ReadError::NotATrace {
            reason: "its first line is not a header".into(),
        }),
        Err(source) => Err(ReadError::BadHeader {
            message: describe(&source),
            source,
        }),
    }
}

/// Parses one line (its newline included).
fn parse_line(line: &[u8], names: &mut Names) -> Result<Parsed, (ProblemKind, String)> {
    // Fast path for what the writer produces: `{"type":"KIND",...}`. Each record struct ignores
    // the `type` key it does not know, so it can be read straight from the line, skipping
    // serde's buffering of internally tagged enums (which doubles the cost of a line).
    if let Some(tag) = leading_tag(line) {
        fn as_rec<T: for<'de> Deserialize<'de>>(
            line: &[u8],
            wrap: fn(T) -> Record,
        ) -> Result<Record, serde_json::Error> {
            serde_json::from_slice::<T>(line).map(wrap)
        }
        let parsed = match tag {
            b"alloc" => Some(as_call(line, names, Record::Alloc)),
            b"free" => Some(as_call(line, names, Record::Free)),
            b"failed" => Some(as_call(line, names, Record::Failed)),
            b"vmm_create" => Some(as_call(line, names, Record::VmmCreate)),
            b"vmm_release" => Some(as_call(line, names, Record::VmmRelease)),
            b"vmm_map" => Some(as_call(line, names, Record::VmmMap)),
            b"vmm_unmap" => Some(as_call(line, names, Record::VmmUnmap)),
            b"reserve" => Some(as_call(line, names, Record::Reserve)),
            b"unreserve" => Some(as_call(line, names, Record::Unreserve)),
            b"pool_create" => Some(as_call(line, names, Record::PoolCreate)),
            b"pool_destroy" => Some(as_call(line, names, Record::PoolDestroy)),
            b"pool_trim" => Some(as_call(line, names, Record::PoolTrim)),
            b"ctx_create" => Some(as_call(line, names, Record::CtxCreate)),
            b"ctx_destroy" => Some(as_call(line, names, Record::CtxDestroy)),
            b"ctx_current" => Some(as_call(line, names, Record::CtxCurrent)),
            b"copy" => Some(as_call(line, names, Record::Copy)),
            b"unreturned" => Some(as_call(line, names, Record::Unreturned)),
            b"process" => Some(as_rec::<Process>(line, Record::Process)),
            b"stack" => Some(as_rec::<Stack>(line, Record::Stack)),
            b"exit" => Some(as_rec::<Exit>(line, Record::Exit)),
            b"lost" => Some(as_rec::<Lost>(line, Record::Lost)),
            b"footer" => Some(as_rec::<Footer>(line, Record::Footer)),
            b"header" => Some(as_rec::<Header>(line, |h| Record::Header(Box::new(h)))),
            _ => None,
        };
        match parsed {
            Some(Ok(rec)) => return Ok(Parsed::Record(rec)),
            Some(Err(e)) => return Err(classify(&e, Some(tag))),
            None => {}
        }
    }
    match serde_json::from_slice::<Record>(line) {
        Ok(rec) => Ok(Parsed::Record(rec)),
        Err(e) => {
            #[derive(Deserialize)]
            struct Tag {
                #[serde(rename = "type")]
                ty: String,
            }
            match serde_json::from_slice::<Tag>(line) {
                Ok(Tag { ty }) if !RECORD_TYPES.contains(&ty.as_str()) => Ok(Parsed::Unknown(ty)),
                Ok(Tag { ty }) => Err(classify(&e, Some(ty.as_bytes()))),
                Err(_) => Err(classify(&e, None)),
            }
        }
    }
}

/// A call record: by [`fast_call`] when the line is as the writer writes it, else by serde.
fn as_call(
    line: &[u8],
    names: &mut Names,
    wrap: fn(Call) -> Record,
) -> Result<Record, serde_json::Error> {
    match fast_call(line, names) {
        Some(call) => Ok(wrap(call)),
        None => serde_json::from_slice::<Call>(line).map(wrap),
    }
}

/// Parses a call line in exactly the shape the writer gives it: `{"type":"KIND",` then known
/// keys without whitespace, integers without sign (but `ret`, `device`), strings without
/// escapes, no `null`, each key once, the required ones present. Anything else is `None`, and
/// serde decides (it accepts the same lines and more, and explains what it refuses).
///
/// Calls are nearly every line of a trace and serde's generic path spends most of the reading
/// time on them: this is what gets the reader past 10^6 lines a second.
fn fast_call(line: &[u8], names: &mut Names) -> Option<Call> {
    // What call_key returns.
    const API: usize = 0;
    const PROC: usize = 1;
    const PID: usize = 2;
    const TID: usize = 3;
    const TS_NS: usize = 4;
    const RET: usize = 5;
    const DUR_NS: usize = 6;
    const BYTES: usize = 7;
    const ADDR: usize = 8;
    const MEM: usize = 9;
    const HANDLE: usize = 10;
    const DEVICE: usize = 11;
    const POOL: usize = 12;
    const STREAM: usize = 13;
    const OFFSET: usize = 14;
    const FLAGS: usize = 15;
    const PITCH: usize = 16;
    const STACK: usize = 17;
    const REQUIRED: u32 =
        (1 << API) | (1 << PROC) | (1 << PID) | (1 << TID) | (1 << TS_NS) | (1 << RET);

    let mut cur = Cursor {
        bytes: line.strip_prefix(b"{\"type\":")?,
        at: 0,
    };
    cur.raw_string()?;
    let mut call = Call::default();
    let mut seen = 0u32;
    loop {
        match cur.next()? {
            b',' => {}
            b'}' => break,
            _ => return None,
        }
        let (field, len) = call_key(&cur.bytes[cur.at..])?;
        cur.at += len;
        match field {
            API => {
                call.api = names.get(cur.raw_string()?)?;
            }
            PROC => {
                call.proc = cur.unsigned()?.try_into().ok()?;
            }
            PID => {
                call.pid = cur.unsigned()?.try_into().ok()?;
            }
            TID => {
                call.tid = cur.unsigned()?.try_into().ok()?;
            }
            TS_NS => {
                call.ts_ns = cur.unsigned()?;
            }
            DUR_NS => {
                call.dur_ns = cur.unsigned()?;
            }
            RET => {
                call.ret = cur.signed()?.try_into().ok()?;
            }
            BYTES => {
                call.bytes = Some(cur.unsigned()?);
            }
            ADDR => {
                call.addr = Some(cur.unsigned()?);
            }
            MEM => {
                call.mem = Some(match cur.raw_string()? {
                    b"device" => Mem::Device,
                    b"device_async" => Mem::DeviceAsync,
                    b"array" => Mem::Array,
                    b"vmm_device" => Mem::VmmDevice,
                    b"vmm_host" => Mem::VmmHost,
                    b"managed" => Mem::Managed,
                    b"host_pinned" => Mem::HostPinned,
                    b"host_registered" => Mem::HostRegistered,
                    _ => return None,
                });
            }
            HANDLE => {
                call.handle = Some(cur.unsigned()?);
            }
            DEVICE => {
                call.device = Some(cur.signed()?.try_into().ok()?);
            }
            POOL => {
                call.pool = Some(cur.unsigned()?);
            }
            STREAM => {
                call.stream = Some(cur.unsigned()?);
            }
            OFFSET => {
                call.offset = Some(cur.unsigned()?);
            }
            FLAGS => {
                call.flags = Some(cur.unsigned()?);
            }
            PITCH => {
                call.pitch = Some(cur.unsigned()?);
            }
            STACK => {
                call.stack = Some(cur.unsigned()?.try_into().ok()?);
            }
            _ => unreachable!("call_key returns no other index"),
        }
        let bit = 1u32 << field;
        if seen & bit != 0 {
            return None;
        }
        seen |= bit;
    }
    let rest = &cur.bytes[cur.at..];
    (seen & REQUIRED == REQUIRED && (rest.is_empty() || rest == b"\n")).then_some(call)
}

/// The key a call line has at the start of `rest`, `"KEY":` with its quotes and colon: its
/// index (`api` 0, `proc` 1, ... as below) and its length. Told apart by its first three
/// bytes, then compared whole with one literal, without scanning for the closing quote.
/// `None` for any other key (`unreadable` is rare, and keys of later minor versions are
/// serde's to skip).
fn call_key(rest: &[u8]) -> Option<(usize, usize)> {
    let (i, lit): (usize, &[u8]) = match rest.get(..4)? {
        [b'"', b'a', b'p', _] => (0, b"\"api\":"),
        [b'"', b'p', b'r', _] => (1, b"\"proc\":"),
        [b'"', b'p', b'i', b'd'] => (2, b"\"pid\":"),
        [b'"', b't', b'i', _] => (3, b"\"tid\":"),
        [b'"', b't', b's', _] => (4, b"\"ts_ns\":"),
        [b'"', b'r', b'e', _] => (5, b"\"ret\":"),
        [b'"', b'd', b'u', _] => (6, b"\"dur_ns\":"),
        [b'"', b'b', b'y', _] => (7, b"\"bytes\":"),
        [b'"', b'a', b'd', _] => (8, b"\"addr\":"),
        [b'"', b'm', b'e', _] => (9, b"\"mem\":"),
        [b'"', b'h', b'a', _] => (10, b"\"handle\":"),
        [b'"', b'd', b'e', _] => (11, b"\"device\":"),
        [b'"', b'p', b'o', _] => (12, b"\"pool\":"),
        [b'"', b's', b't', b'r'] => (13, b"\"stream\":"),
        [b'"', b'o', b'f', _] => (14, b"\"offset\":"),
        [b'"', b'f', b'l', _] => (15, b"\"flags\":"),
        [b'"', b'p', b'i', b't'] => (16, b"\"pitch\":"),
        [b'"', b's', b't', b'a'] => (17, b"\"stack\":"),
        _ => return None,
    };
    rest.starts_with(lit).then_some((i, lit.len()))
}

/// A position in a line, for [`fast_call`].
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn next(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    fn eat(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    /// The bytes of a string without escapes or control characters, not checked as UTF-8
    /// (keys and kinds are compared with ASCII; names are checked when first seen).
    fn raw_string(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let rest = &self.bytes[self.at..];
        let len = rest
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        if rest[len] != b'"' {
            return None;
        }
        self.at += len + 1;
        Some(&rest[..len])
    }

    /// Digits, no sign, no leading zero, then `,` or `}`.
    fn unsigned(&mut self) -> Option<u64> {
        let rest = &self.bytes[self.at..];
        let mut n = 0u64;
        let mut len = 0;
        for &b in rest {
            let d = b.wrapping_sub(b'0');
            if d > 9 {
                break;
            }
            // 19 digits always fit in a u64; the 20th may not.
            n = if len < 19 {
                n * 10 + u64::from(d)
            } else {
                n.checked_mul(10)?.checked_add(u64::from(d))?
            };
            len += 1;
        }
        if len == 0 || (len > 1 && rest[0] == b'0') || !matches!(rest.get(len)?, b',' | b'}') {
            return None;
        }
        self.at += len;
        Some(n)
    }

    /// An integer that may be negative (not `-0`: serde reads that as a float).
    fn signed(&mut self) -> Option<i64> {
        if self.bytes.get(self.at) == Some(&b'-') {
            self.at += 1;
            let n = self.unsigned()?;
            if n == 0 {
                return None;
            }
            0i64.checked_sub_unsigned(n)
        } else {
            self.unsigned()?.try_into().ok()
        }
    }
}

/// The `type` of a line that starts `{"type":"KIND"`, as the writer writes it.
fn leading_tag(line: &[u8]) -> Option<&[u8]> {
    const PREFIX: &[u8] = b"{\"type\":\"";
    let rest = line.strip_prefix(PREFIX)?;
    let end = rest.iter().take(32).position(|&b| b == b'"')?;
    Some(&rest[..end])
}

fn classify(e: &serde_json::Error, tag: Option<&[u8]>) -> (ProblemKind, String) {
    match e.classify() {
        serde_json::error::Category::Data => {
            let what = match tag {
                Some(tag) => format!("a bad `{}` record", String::from_utf8_lossy(tag)),
                None => "JSON but not a record".to_owned(),
            };
            (ProblemKind::BadRecord, format!("{what}: {}", describe(e)))
        }
        _ => (ProblemKind::NotJson, format!("not JSON: {}", describe(e))),
    }
}

/// serde_json's message with its column, without its "line 1" (each line is parsed alone).
fn describe(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    match full.strip_suffix(&position) {
        Some(msg) if e.column() > 0 => format!("{msg} (column {})", e.column()),
        Some(msg) => msg.to_owned(),
        None => full,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Cursor;

    use proptest::prelude::*;

    use super::*;
    use crate::trace::record::{Frame, Library, Mem, Probe, Scope};
    use crate::trace::write::TraceWriter;

    pub(crate) fn header() -> Header {
        Header {
            format: FORMAT_NAME.into(),
            version: format!("{FORMAT_MAJOR}.{FORMAT_MINOR}"),
            tool_version: "0.1.0".into(),
            host: "gpu-box".into(),
            kernel: "6.8.0-45-generic".into(),
            libraries: vec![Library {
                path: "/usr/lib/x86_64-linux-gnu/libcuda.so.1".into(),
                build_id: Some("5e1c2f0a".into()),
                probes: vec![Probe {
                    symbol: "cuMemAlloc_v2".into(),
                    symbol_offset: 0x2b_4f10,
                    probe_offset: 0,
                }],
            }],
            start_unix_ns: 1_767_225_600_000_000_000,
            start_monotonic_ns: 5_000_000_000,
            scope: Scope {
                all: true,
                ..Scope::default()
            },
            nvml: None,
            policy: None,
            extra: BTreeMap::new(),
        }
    }

    pub(crate) fn alloc(i: u64) -> Record {
        Record::Alloc(Call {
            api: "cuMemAlloc_v2".into(),
            proc: 1,
            pid: 4242,
            tid: 4243,
            ts_ns: 5_000_000_000 + i * 1000,
            dur_ns: 2100,
            ret: 0,
            bytes: Some(1 << 20),
            addr: Some(0x7f00_0000_0000 + i * (1 << 20)),
            mem: Some(Mem::Device),
            device: Some(0),
            stack: Some(1),
            ..Call::default()
        })
    }

    pub(crate) fn free(i: u64) -> Record {
        Record::Free(Call {
            api: "cuMemFree_v2".into(),
            proc: 1,
            pid: 4242,
            tid: 4243,
            ts_ns: 5_000_000_500 + i * 1000,
            dur_ns: 900,
            ret: 0,
            addr: Some(0x7f00_0000_0000 + i * (1 << 20)),
            device: Some(0),
            stack: Some(1),
            ..Call::default()
        })
    }

    /// One record of every type but header and footer, optional fields filled.
    pub(crate) fn body() -> Vec<Record> {
        let full = Call {
            api: "cuMemAllocFromPoolAsync_ptsz".into(),
            proc: 1,
            pid: 4242,
            tid: 4243,
            ts_ns: 5_000_001_000,
            dur_ns: 1200,
            ret: 0,
            bytes: Some(4096),
            addr: Some(0x7f00_0010_0000),
            mem: Some(Mem::DeviceAsync),
            handle: Some(0x55aa),
            device: Some(1),
            pool: Some(0x5600_0000),
            stream: Some(0x5700_0000),
            offset: Some(0),
            flags: Some(1),
            pitch: Some(512),
            stack: Some(1),
            unreadable: vec!["pitch".into()],
            signalled: Some(6),
        };
        let call = |api: &str| Call {
            api: api.into(),
            ..full.clone()
        };
        vec![
            Record::Process(Process {
                id: 1,
                pid: 4242,
                start_time: Some(123_456),
                ppid: Some(1),
                comm: "python3".into(),
                cmdline: vec!["python3".into(), "train.py".into()],
                exe: Some("/usr/bin/python3.12".into()),
                container: Some("3f2a".into()),
                cuda_visible_devices: Some("1,GPU-5f2e".into()),
            }),
            Record::Process(Process {
                id: 2,
                pid: 4250,
                comm: "?".into(),
                ..Process::default()
            }),
            Record::Stack(Stack {
                id: 1,
                frames: vec![
                    Frame {
                        addr: 0x7f12_3456_7890,
                        file: Some("/usr/lib/libtorch_cuda.so".into()),
                        build_id: Some("ab12".into()),
                        offset: Some(0x12_3456),
                        sym: Some("c10::cuda::CUDACachingAllocator::malloc".into()),
                        src: Some("CUDACachingAllocator.cpp:1234".into()),
                        unknown: None,
                    },
                    Frame {
                        addr: 0x1234,
                        unknown: Some("no mapping".into()),
                        ..Frame::default()
                    },
                ],
                truncated: Some("frame pointer walk stopped".into()),
            }),
            alloc(0),
            free(0),
            Record::Failed(Call {
                ret: 2,
                ..call("cuMemAlloc_v2")
            }),
            Record::VmmCreate(call("cuMemCreate")),
            Record::VmmRelease(call("cuMemRelease")),
            Record::VmmMap(call("cuMemMap")),
            Record::VmmUnmap(call("cuMemUnmap")),
            Record::Reserve(call("cuMemAddressReserve")),
            Record::Unreserve(call("cuMemAddressFree")),
            Record::PoolCreate(call("cuMemPoolCreate")),
            Record::PoolDestroy(call("cuMemPoolDestroy")),
            Record::PoolTrim(call("cuMemPoolTrimTo")),
            Record::CtxCreate(call("cuCtxCreate_v2")),
            Record::CtxDestroy(call("cuCtxDestroy_v2")),
            Record::CtxCurrent(call("cuCtxSetCurrent")),
            Record::Copy(call("cuMemcpyHtoD_v2")),
            Record::Unreturned(Call {
                mem: Some(Mem::Managed),
                signalled: Some(6),
                ..call("cuMemAllocManaged")
            }),
            Record::Lost(Lost {
                ts_ns: 5_000_002_000,
                ringbuf_full: 3,
                entry_map_full: 1,
                exit_dropped: 0,
                stack_failed: 2,
                return_without_entry: 1,
                ..Lost::default()
            }),
            Record::Nvml(crate::trace::record::NvmlSample {
                ts_ns: 5_000_002_500,
                gpus: vec![crate::trace::record::GpuSample {
                    index: 0,
                    total_bytes: Some(80 << 30),
                    used_bytes: Some(3 << 30),
                    free_bytes: Some(77 << 30),
                    reserved_bytes: None,
                    processes: vec![crate::trace::record::GpuProcess {
                        pid: 4242,
                        used_bytes: Some(2 << 30),
                    }],
                }],
            }),
            Record::Exit(Exit {
                proc: 1,
                pid: 4242,
                ts_ns: 5_000_003_000,
            }),
        ]
    }

    /// Writes a trace of `records` and returns its bytes and footer.
    pub(crate) fn write_trace(records: &[Record], finish: bool) -> (Vec<u8>, Option<Footer>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.jsonl");
        let mut w = TraceWriter::create(&path).expect("create");
        w.write(&Record::Header(Box::new(header())))
            .expect("header");
        for rec in records {
            w.write(rec).expect("write");
        }
        let footer = if finish {
            Some(w.finish(6_000_000_000, 4, 2).expect("finish"))
        } else {
            drop(w);
            None
        };
        (std::fs::read(&path).expect("read back"), footer)
    }

    fn read_all(bytes: &[u8]) -> (Vec<(u64, Record)>, ReadSummary) {
        let mut r = TraceReader::new(Cursor::new(bytes)).expect("header");
        let recs = std::iter::from_fn(|| r.next_record()).collect();
        (recs, r.summary())
    }

    fn open_err(bytes: &[u8]) -> String {
        match TraceReader::new(bytes) {
            Ok(_) => panic!("opened {:?}", String::from_utf8_lossy(bytes)),
            Err(e) => e.to_string(),
        }
    }

    fn header_line(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut v = serde_json::to_value(Record::Header(Box::new(header()))).expect("to_value");
        edit(&mut v);
        let mut line = serde_json::to_vec(&v).expect("to_vec");
        line.push(b'\n');
        line
    }

    fn kinds(problems: &[Problem]) -> Vec<(u64, ProblemKind)> {
        problems.iter().map(|p| (p.line, p.kind)).collect()
    }

    #[test]
    fn record_types_are_every_kind() {
        // No wildcard: a new variant fails to compile here until RECORD_TYPES has it.
        fn _exhaustive(r: &Record) {
            match r {
                Record::Header(_)
                | Record::Process(_)
                | Record::Stack(_)
                | Record::Alloc(_)
                | Record::Free(_)
                | Record::Failed(_)
                | Record::VmmCreate(_)
                | Record::VmmRelease(_)
                | Record::VmmMap(_)
                | Record::VmmUnmap(_)
                | Record::Reserve(_)
                | Record::Unreserve(_)
                | Record::PoolCreate(_)
                | Record::PoolDestroy(_)
                | Record::PoolTrim(_)
                | Record::CtxCreate(_)
                | Record::CtxDestroy(_)
                | Record::CtxCurrent(_)
                | Record::Copy(_)
                | Record::Unreturned(_)
                | Record::Exit(_)
                | Record::Lost(_)
                | Record::Nvml(_)
                | Record::Footer(_) => {}
            }
        }
        let mut all = body();
        all.insert(0, Record::Header(Box::new(header())));
        all.push(Record::Footer(Footer::default()));
        let seen: std::collections::BTreeSet<&str> = all.iter().map(Record::kind).collect();
        let listed = std::collections::BTreeSet::from(RECORD_TYPES);
        assert_eq!(seen, listed);
        assert_eq!(listed.len(), RECORD_TYPES.len(), "no duplicates");
        for r in &all {
            assert_eq!(RECORD_TYPES[type_index(r)], r.kind());
        }
    }

    /// The keys `fast_call` reads, at their indices from `call_key`.
    const CALL_KEYS: [&[u8]; 18] = [
        b"api", b"proc", b"pid", b"tid", b"ts_ns", b"ret", b"dur_ns", b"bytes", b"addr", b"mem",
        b"handle", b"device", b"pool", b"stream", b"offset", b"flags", b"pitch", b"stack",
    ];

    #[test]
    fn numbers_of_every_length_parse() {
        for len in 1..=21usize {
            for first in *b"19" {
                let mut digits = vec![first; 1];
                digits.extend(std::iter::repeat_n(b'7', len - 1));
                let text = String::from_utf8(digits).expect("ascii");
                let want: Option<u64> = text.parse().ok();
                for end in [",", "}"] {
                    let line = format!("{text}{end}");
                    let mut cur = super::Cursor {
                        bytes: line.as_bytes(),
                        at: 0,
                    };
                    assert_eq!(cur.unsigned(), want, "{line}");
                    if want.is_some() {
                        assert_eq!(cur.at, len);
                    }
                }
                let mut cur = super::Cursor {
                    bytes: text.as_bytes(),
                    at: 0,
                };
                assert_eq!(cur.unsigned(), None, "no end: {text}");
            }
        }
        for bad in ["0123,", "-1,", ",", "12a,", "18446744073709551616,"] {
            let mut cur = super::Cursor {
                bytes: bad.as_bytes(),
                at: 0,
            };
            assert_eq!(cur.unsigned(), None, "{bad}");
        }
        let mut cur = super::Cursor {
            bytes: b"18446744073709551615}",
            at: 0,
        };
        assert_eq!(cur.unsigned(), Some(u64::MAX));
    }

    #[test]
    fn call_keys_are_told_apart() {
        for (i, key) in CALL_KEYS.iter().enumerate() {
            let quoted = [b"\"", *key, b"\":1,"].concat();
            assert_eq!(
                call_key(&quoted),
                Some((i, key.len() + 3)),
                "{}",
                String::from_utf8_lossy(key)
            );
        }
        for other in [
            &b"\"apo\":"[..],
            b"\"prod\":",
            b"\"dur_nz\":",
            b"\"devic\":",
            b"\"pid\" :",
            b"\"pid\"",
            b"\"",
            b"",
            b"\"a\":",
            b"\"unreadable\":",
            b"\"api\\u0000\":",
            b"api\":",
        ] {
            assert_eq!(call_key(other), None, "{}", String::from_utf8_lossy(other));
        }
    }

    #[test]
    fn the_fast_path_agrees_with_serde() {
        let mut all = body();
        all.insert(0, Record::Header(Box::new(header())));
        all.push(Record::Footer(Footer {
            counts: BTreeMap::from([("alloc".into(), 3)]),
            ..Footer::default()
        }));
        for rec in all {
            let line = serde_json::to_vec(&rec).expect("to_vec");
            assert!(
                leading_tag(&line).is_some(),
                "the writer's lines take the fast path"
            );
            let Ok(Parsed::Record(fast)) = parse_line(&line, &mut Names::default()) else {
                panic!("{rec:?} did not parse");
            };
            let slow: Record = serde_json::from_slice(&line).expect("serde");
            assert_eq!(fast, slow);
            assert_eq!(fast, rec);
            // `type` elsewhere than first takes serde's way, to the same record.
            let mut obj = serde_json::to_value(&rec).expect("to_value");
            let ty = obj.as_object_mut().and_then(|o| o.remove("type"));
            obj["type"] = ty.expect("a type");
            let moved = serde_json::to_vec(&obj).expect("to_vec");
            assert!(leading_tag(&moved).is_none());
            assert!(
                matches!(parse_line(&moved, &mut Names::default()), Ok(Parsed::Record(r)) if r == rec)
            );
        }
    }

    #[test]
    fn fast_call_takes_what_the_writer_writes() {
        for rec in body() {
            let Some(call) = rec.call() else { continue };
            let line = serde_json::to_vec(&rec).expect("to_vec");
            let expected = call.unreadable.is_empty().then(|| call.clone());
            assert_eq!(
                fast_call(&line, &mut Names::default()),
                expected,
                "{}",
                String::from_utf8_lossy(&line)
            );
        }
        let edge = Call {
            ret: i32::MIN,
            device: Some(-1),
            ts_ns: u64::MAX,
            bytes: Some(0),
            ..Call::default()
        };
        let line = serde_json::to_vec(&Record::Alloc(edge.clone())).expect("to_vec");
        assert_eq!(fast_call(&line, &mut Names::default()), Some(edge));
    }

    #[test]
    fn fast_call_leaves_the_rest_to_serde() {
        let line =
            String::from_utf8(serde_json::to_vec(&alloc(3)).expect("to_vec")).expect("utf-8");
        for (from, to) in [
            ("\"ret\":0", "\"ret\":-0"),
            ("\"ret\":0", "\"ret\": 0"),
            ("\"ret\":0", "\"ret\":0.0"),
            ("\"ret\":0", "\"ret\":00"),
            ("\"ret\":0", "\"ret\":0,\"ret\":0"),
            ("\"ret\":0", "\"ret\":0,\"later\":1"),
            ("\"ret\":0,", ""),
            ("\"pid\":4242", "\"pid\":4294967296"),
            ("\"pid\":4242", "\"pid\":-1"),
            ("\"stack\":1", "\"stack\":null"),
            ("cuMemAlloc_v2", "cuMem\\u0041lloc"),
            ("\"mem\":\"device\"", "\"mem\":\"vram\""),
        ] {
            assert!(line.contains(from), "{from}");
            let changed = line.replacen(from, to, 1);
            assert_eq!(
                fast_call(changed.as_bytes(), &mut Names::default()),
                None,
                "{changed}"
            );
        }
        assert_eq!(
            fast_call(format!("{line} \n").as_bytes(), &mut Names::default()),
            None
        );
        assert!(fast_call(format!("{line}\n").as_bytes(), &mut Names::default()).is_some());
    }

    #[test]
    fn round_trip() {
        let recs = body();
        let (bytes, footer) = write_trace(&recs, true);
        let (read, s) = read_all(&bytes);
        let read: Vec<Record> = read.into_iter().map(|(_, r)| r).collect();
        assert_eq!(read, recs);
        assert!(s.complete, "{:?}", s.problems);
        assert_eq!(s.digest_ok, Some(true));
        assert_eq!(s.problems, []);
        assert_eq!(s.header, header());
        assert_eq!(s.footer, footer);
        assert_eq!(s.lines, recs.len() as u64 + 2);
        assert_eq!(s.bytes, bytes.len() as u64);
    }

    #[test]
    fn line_numbers_count_from_the_header() {
        let (bytes, _) = write_trace(&[alloc(0), free(0)], true);
        let (read, _) = read_all(&bytes);
        let lines: Vec<u64> = read.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, [2, 3]);
    }

    #[test]
    fn open_reads_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.jsonl");
        let (bytes, _) = write_trace(&[alloc(0)], true);
        std::fs::write(&path, bytes).expect("write");
        let mut r = TraceReader::open(&path).expect("open");
        assert_eq!(r.by_ref().count(), 1);
        assert!(r.summary().complete);
        let missing = TraceReader::open(&dir.path().join("nope")).err();
        assert!(matches!(missing, Some(ReadError::Open { .. })));
    }

    #[test]
    fn empty_file_is_refused() {
        assert!(matches!(TraceReader::new(&b""[..]), Err(ReadError::Empty)));
        assert_eq!(
            open_err(b""),
            "the file is empty: not a vramtrace trace",
            "the message names what the file is not"
        );
    }

    #[test]
    fn a_first_line_that_is_not_a_header_is_refused() {
        for bad in [
            &b"hello world\n"[..],
            b"\n",
            b"[1,2]\n",
            b"{\"format\":\"vramtrace\"}\n",
            b"{\"type\":\"alloc\",\"api\":\"x\"}\n",
            b"\xff\xfe\n",
        ] {
            let msg = open_err(bad);
            assert!(msg.starts_with("not a vramtrace trace"), "{msg}");
        }
    }

    #[test]
    fn a_header_cut_short_is_refused() {
        let line = header_line(|_| {});
        let cut = &line[..line.len() - 1];
        assert!(matches!(
            TraceReader::new(cut),
            Err(ReadError::TruncatedHeader)
        ));
    }

    #[test]
    fn another_format_is_refused() {
        let line = header_line(|v| v["format"] = "perf".into());
        assert_eq!(
            open_err(&line),
            "not a vramtrace trace: its header says format \"perf\", not \"vramtrace\""
        );
    }

    #[test]
    fn a_newer_major_version_is_refused() {
        // Also when the rest of the header has changed beyond recognition.
        let line = header_line(|v| {
            v["version"] = "2.0".into();
            v.as_object_mut().map(|o| o.remove("libraries"));
        });
        assert_eq!(
            open_err(&line),
            "trace format version 2.0 is newer than this vramtrace (reads 1.x); upgrade vramtrace"
        );
        let line = header_line(|v| v["version"] = "0.9".into());
        assert!(matches!(
            TraceReader::new(&line[..]),
            Err(ReadError::OlderMajor { .. })
        ));
    }

    #[test]
    fn a_bad_version_is_refused() {
        for version in [
            serde_json::json!("1"),
            serde_json::json!("one.two"),
            serde_json::json!(1.0),
        ] {
            let line = header_line(|v| v["version"] = version.clone());
            assert!(
                matches!(
                    TraceReader::new(&line[..]),
                    Err(ReadError::BadVersion { .. })
                ),
                "{version}"
            );
        }
    }

    #[test]
    fn a_malformed_header_is_refused() {
        let line = header_line(|v| v["start_unix_ns"] = "yesterday".into());
        let msg = open_err(&line);
        assert!(msg.starts_with("the trace header is malformed"), "{msg}");
    }

    #[test]
    fn a_newer_minor_version_is_read_and_its_additions_skipped() {
        let mut bytes = header_line(|v| {
            v["version"] = format!("{FORMAT_MAJOR}.{}", FORMAT_MINOR + 1).into();
            v["gpus"] = serde_json::json!([{"name": "H100"}]);
        });
        let mut alloc_line = serde_json::to_value(alloc(0)).expect("to_value");
        alloc_line["numa_node"] = 1.into();
        bytes.extend(serde_json::to_vec(&alloc_line).expect("to_vec"));
        bytes.extend(b"\n{\"type\":\"kernel_launch\",\"ts_ns\":5}\n");
        bytes.extend(serde_json::to_vec(&free(0)).expect("to_vec"));
        bytes.push(b'\n');
        let (read, s) = read_all(&bytes);
        let read: Vec<Record> = read.into_iter().map(|(_, r)| r).collect();
        assert_eq!(read, [alloc(0), free(0)]);
        assert_eq!(s.problems, []);
        assert_eq!(
            s.skipped_types,
            BTreeMap::from([("kernel_launch".into(), 1)])
        );
        assert!(!s.complete, "no footer");
    }

    #[test]
    fn an_unknown_type_in_a_known_version_is_a_problem() {
        let mut bytes = header_line(|_| {});
        bytes.extend(b"{\"type\":\"kernel_launch\",\"ts_ns\":5}\n");
        let (read, s) = read_all(&bytes);
        assert!(read.is_empty());
        assert_eq!(kinds(&s.problems), [(2, ProblemKind::UnknownType)]);
    }

    #[test]
    fn a_flipped_byte_fails_the_digest() {
        let recs: Vec<Record> = (0..10).flat_map(|i| [alloc(i), free(i)]).collect();
        let (mut bytes, _) = write_trace(&recs, true);
        // A digit of the 6th line's address: still a valid record, now a wrong one.
        let line_start = bytes
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .nth(4)
            .map(|(i, _)| i + 1)
            .expect("6 lines");
        let at = line_start
            + bytes[line_start..]
                .windows(7)
                .position(|w| w == b"\"addr\":")
                .expect("an addr")
            + 8;
        bytes[at] = if bytes[at] == b'1' { b'2' } else { b'1' };
        let (read, s) = read_all(&bytes);
        assert_eq!(read.len(), recs.len(), "every line still reads");
        assert_ne!(read[4].1, recs[4]);
        assert_eq!(s.digest_ok, Some(false));
        assert!(!s.complete);
        assert_eq!(
            kinds(&s.problems),
            [(recs.len() as u64 + 2, ProblemKind::DigestMismatch)]
        );
    }

    #[test]
    fn a_trace_without_footer_reads_to_its_last_line() {
        let recs: Vec<Record> = (0..5).flat_map(|i| [alloc(i), free(i)]).collect();
        let (bytes, footer) = write_trace(&recs, false);
        assert_eq!(footer, None);
        let (read, s) = read_all(&bytes);
        let read: Vec<Record> = read.into_iter().map(|(_, r)| r).collect();
        assert_eq!(read, recs);
        assert!(!s.complete);
        assert_eq!(s.footer, None);
        assert_eq!(s.digest_ok, None);
        assert_eq!(s.problems, []);
    }

    #[test]
    fn a_cut_last_line_is_truncated_even_if_it_parses() {
        let (mut bytes, _) = write_trace(&[alloc(0), free(0)], false);
        assert_eq!(bytes.pop(), Some(b'\n'));
        let (read, s) = read_all(&bytes);
        let read: Vec<Record> = read.into_iter().map(|(_, r)| r).collect();
        assert_eq!(read, [alloc(0)]);
        assert_eq!(kinds(&s.problems), [(3, ProblemKind::Truncated)]);
        assert_eq!(s.lines, 3);
        assert_eq!(s.bytes, bytes.len() as u64);
    }

    #[test]
    fn a_garbage_line_is_reported_and_skipped() {
        let (bytes, _) = write_trace(&[alloc(0), free(0), alloc(1), free(1)], true);
        let mut lines: Vec<&[u8]> = bytes.split_inclusive(|b| *b == b'\n').collect();
        lines.insert(3, b"\x00\x01 not json at all\n");
        lines.insert(4, b"{\"type\":\"alloc\",\"api\":7}\n");
        lines.insert(5, b"{\"no\":\"type\"}\n");
        let bytes = lines.concat();
        let (read, s) = read_all(&bytes);
        let read: Vec<(u64, Record)> = read;
        assert_eq!(
            read,
            [(2, alloc(0)), (3, free(0)), (7, alloc(1)), (8, free(1))]
        );
        assert_eq!(
            kinds(&s.problems),
            [
                (4, ProblemKind::NotJson),
                (5, ProblemKind::BadRecord),
                (6, ProblemKind::BadRecord),
                (9, ProblemKind::DigestMismatch),
            ]
        );
        assert!(
            s.problems[1].message.contains("`alloc`"),
            "{}",
            s.problems[1]
        );
        assert!(s.problems[0].to_string().starts_with("line 4: not JSON"));
        assert!(!s.complete);
    }

    #[test]
    fn counts_that_disagree_are_a_problem() {
        let (bytes, _) = write_trace(&[alloc(0), free(0)], true);
        let text = String::from_utf8(bytes).expect("utf-8");
        let text = text.replace("\"alloc\":1", "\"alloc\":2");
        let (_, s) = read_all(text.as_bytes());
        assert_eq!(s.digest_ok, Some(true), "the footer is not hashed");
        assert_eq!(kinds(&s.problems), [(4, ProblemKind::CountMismatch)]);
        assert!(
            s.problems[0]
                .message
                .contains("alloc: footer says 2, read 1")
        );
        assert!(!s.complete);
    }

    #[test]
    fn lines_after_the_footer_are_a_problem() {
        let (mut bytes, _) = write_trace(&[alloc(0)], true);
        bytes.extend(serde_json::to_vec(&free(0)).expect("to_vec"));
        bytes.extend(b"\npartial");
        let (read, s) = read_all(&bytes);
        assert_eq!(read.len(), 1);
        assert_eq!(s.digest_ok, Some(true));
        assert_eq!(
            kinds(&s.problems),
            [(4, ProblemKind::AfterFooter), (5, ProblemKind::AfterFooter)]
        );
        assert!(!s.complete);
    }

    #[test]
    fn a_second_header_is_a_problem() {
        let (bytes, _) = write_trace(&[alloc(0)], false);
        let mut bytes = [bytes, header_line(|_| {})].concat();
        bytes.extend(serde_json::to_vec(&free(0)).expect("to_vec"));
        bytes.push(b'\n');
        let (read, s) = read_all(&bytes);
        assert_eq!(read, [(2, alloc(0)), (4, free(0))]);
        assert_eq!(kinds(&s.problems), [(3, ProblemKind::UnexpectedHeader)]);
    }

    #[test]
    fn an_overlong_line_is_skipped() {
        let mut bytes = header_line(|_| {});
        bytes.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
        bytes.push(b'\n');
        bytes.extend(serde_json::to_vec(&free(0)).expect("to_vec"));
        bytes.push(b'\n');
        let (read, s) = read_all(&bytes);
        assert_eq!(read, [(3, free(0))]);
        assert_eq!(kinds(&s.problems), [(2, ProblemKind::TooLong)]);
        assert_eq!(s.bytes, bytes.len() as u64);
    }

    #[test]
    fn an_overlong_line_reads_the_same_whole_or_through_a_small_buffer() {
        let (mut bytes, _) = write_trace(&[alloc(0)], true);
        bytes.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
        bytes.push(b'\n');
        let mut whole = TraceReader::new(bytes.as_slice()).expect("header");
        let mut small =
            TraceReader::new(BufReader::with_capacity(4096, bytes.as_slice())).expect("header");
        assert_eq!(whole.by_ref().count(), 1);
        assert_eq!(small.by_ref().count(), 1);
        let s = whole.summary();
        assert_eq!(s, small.summary());
        // After the footer: too long, and the trace was appended to.
        assert_eq!(kinds(&s.problems), [(4, ProblemKind::TooLong)]);
        assert!(!s.complete);
    }

    #[test]
    fn a_read_error_ends_the_trace_with_a_problem() {
        struct FailAfter(Cursor<Vec<u8>>);
        impl Read for FailAfter {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                match self.0.read(buf)? {
                    0 => Err(io::Error::other("disk on fire")),
                    n => Ok(n),
                }
            }
        }
        let (bytes, _) = write_trace(&[alloc(0)], false);
        let r = BufReader::new(FailAfter(Cursor::new(bytes)));
        let mut r = TraceReader::new(r).expect("header");
        assert_eq!(r.by_ref().count(), 1);
        assert_eq!(r.next(), None, "fused");
        let s = r.summary();
        assert_eq!(kinds(&s.problems), [(3, ProblemKind::Io)]);
        assert!(s.problems[0].message.contains("disk on fire"));
    }

    // --- the documentation ---

    const SCHEMA: &str = include_str!("../../../docs/trace-format.schema.json");
    const FORMAT_DOC: &str = include_str!("../../../docs/trace-format.md");

    /// The schema's definitions of the line types, as (types, definition).
    fn schema_defs(schema: &serde_json::Value) -> Vec<(Vec<String>, &serde_json::Value)> {
        let refs = schema["oneOf"].as_array().expect("oneOf");
        refs.iter()
            .map(|r| {
                let name = r["$ref"]
                    .as_str()
                    .and_then(|r| r.strip_prefix("#/$defs/"))
                    .expect("a local $ref");
                let def = &schema["$defs"][name];
                let ty = &def["properties"]["type"];
                let types = match (ty["const"].as_str(), ty["enum"].as_array()) {
                    (Some(t), _) => vec![t.to_owned()],
                    (None, Some(ts)) => ts
                        .iter()
                        .map(|t| t.as_str().expect("a string").to_owned())
                        .collect(),
                    _ => panic!("$defs/{name} has no type const or enum"),
                };
                (types, def)
            })
            .collect()
    }

    #[test]
    fn the_schema_names_every_record_type() {
        let schema: serde_json::Value = serde_json::from_str(SCHEMA).expect("valid JSON");
        let mut types: Vec<String> = schema_defs(&schema)
            .into_iter()
            .flat_map(|(types, _)| types)
            .collect();
        types.sort();
        let mut expected: Vec<String> = RECORD_TYPES.iter().map(|t| t.to_string()).collect();
        expected.sort();
        assert_eq!(types, expected);
    }

    #[test]
    fn the_schema_declares_every_field_written() {
        let schema: serde_json::Value = serde_json::from_str(SCHEMA).expect("valid JSON");
        let defs = schema_defs(&schema);
        let mut all = body();
        all.insert(0, Record::Header(Box::new(header())));
        all.push(Record::Footer(Footer {
            violations: 1,
            ..Footer::default()
        }));
        for rec in all {
            let line = serde_json::to_value(&rec).expect("to_value");
            let kind = rec.kind();
            let (_, def) = defs
                .iter()
                .find(|(types, _)| types.iter().any(|t| t == kind))
                .expect("a definition");
            let props = def["properties"].as_object().expect("properties");
            let obj = line.as_object().expect("an object");
            for key in obj.keys() {
                assert!(props.contains_key(key), "{kind}.{key} is not in the schema");
            }
            for req in def["required"].as_array().expect("required") {
                let req = req.as_str().expect("a string");
                assert!(obj.contains_key(req), "{kind} lacks required {req}");
            }
        }
    }

    #[test]
    fn the_documented_example_is_a_complete_trace() {
        let example = FORMAT_DOC
            .split("```jsonl\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("a ```jsonl block");
        let (read, s) = read_all(example.as_bytes());
        assert!(s.complete, "{:?}", s.problems);
        assert_eq!(s.problems, []);
        assert_eq!(read.len() + 2, example.lines().count());
    }

    // --- property tests ---

    fn text() -> impl Strategy<Value = String> {
        // Quotes, backslashes, control and non-ASCII characters exercise the escaping.
        "[a-zA-Z0-9_ ./\"\\\\\n\té漢]{0,12}"
    }

    fn mem() -> impl Strategy<Value = Mem> {
        prop::sample::select(vec![
            Mem::Device,
            Mem::DeviceAsync,
            Mem::Array,
            Mem::VmmDevice,
            Mem::VmmHost,
            Mem::Managed,
            Mem::HostPinned,
            Mem::HostRegistered,
        ])
    }

    fn call() -> impl Strategy<Value = Call> {
        use prop::option::of;
        (
            (
                prop::sample::select(vec!["cuMemAlloc_v2", "cuMemFree_v2", "cuMemMap", "x\"y"]),
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                any::<u64>(),
                any::<u64>(),
                any::<i32>(),
            ),
            (
                of(any::<u64>()),
                of(any::<u64>()),
                of(mem()),
                of(any::<u64>()),
                of(any::<i32>()),
                of(any::<u64>()),
                of(any::<u64>()),
            ),
            (
                of(any::<u64>()),
                of(any::<u64>()),
                of(any::<u64>()),
                of(any::<u32>()),
                prop::collection::vec(text(), 0..3),
            ),
        )
            .prop_map(
                |(
                    (api, proc, pid, tid, ts_ns, dur_ns, ret),
                    (bytes, addr, mem, handle, device, pool, stream),
                    (offset, flags, pitch, stack, unreadable),
                )| Call {
                    api: api.into(),
                    proc,
                    pid,
                    tid,
                    ts_ns,
                    dur_ns,
                    ret,
                    bytes,
                    addr,
                    mem,
                    handle,
                    device,
                    pool,
                    stream,
                    offset,
                    flags,
                    pitch,
                    stack,
                    unreadable,
                    signalled: None,
                },
            )
    }

    fn record() -> impl Strategy<Value = Record> {
        prop_oneof![
            3 => call().prop_map(Record::Alloc),
            3 => call().prop_map(Record::Free),
            1 => call().prop_map(Record::Failed),
            1 => call().prop_map(Record::VmmMap),
            1 => call().prop_map(Record::PoolTrim),
            1 => call().prop_map(Record::Copy),
            1 => (any::<u32>(), any::<u32>(), any::<u64>())
                .prop_map(|(proc, pid, ts_ns)| Record::Exit(Exit { proc, pid, ts_ns })),
            1 => (any::<u32>(), any::<u32>(), text(), prop::option::of(text()))
                .prop_map(|(id, pid, comm, exe)| Record::Process(Process {
                    id,
                    pid,
                    comm,
                    exe,
                    ..Process::default()
                })),
            1 => (
                any::<u32>(),
                prop::collection::vec((any::<u64>(), prop::option::of(text())), 0..4),
                prop::option::of(text()),
            )
                .prop_map(|(id, frames, truncated)| Record::Stack(Stack {
                    id,
                    frames: frames
                        .into_iter()
                        .map(|(addr, sym)| Frame {
                            addr,
                            sym,
                            ..Frame::default()
                        })
                        .collect(),
                    truncated,
                })),
            1 => (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(ts_ns, a, b)| {
                Record::Lost(Lost {
                    ts_ns,
                    ringbuf_full: a,
                    stack_failed: b,
                    ..Lost::default()
                })
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn fast_call_never_disagrees_with_serde(
            rec in record(),
            edits in prop::collection::vec(
                (any::<prop::sample::Index>(), prop::sample::select(b"0123456789-.,:}{\"\\ enulx".to_vec())),
                0..3,
            ),
        ) {
            let mut line = serde_json::to_vec(&rec).expect("to_vec");
            for (at, byte) in edits {
                let at = at.index(line.len());
                line[at] = byte;
            }
            if let Some(fast) = fast_call(&line, &mut Names::default()) {
                let slow = serde_json::from_slice::<Call>(&line);
                prop_assert!(slow.is_ok(), "{}: {:?}", String::from_utf8_lossy(&line), slow);
                prop_assert_eq!(Ok(fast), slow.map_err(|e| e.to_string()));
            }
        }

        #[test]
        fn any_records_read_back_the_same(recs in prop::collection::vec(record(), 0..40)) {
            let (bytes, _) = write_trace(&recs, true);
            let (read, s) = read_all(&bytes);
            let read: Vec<Record> = read.into_iter().map(|(_, r)| r).collect();
            prop_assert_eq!(read, recs);
            prop_assert!(s.complete, "{:?}", s.problems);
        }

        #[test]
        fn the_buffer_size_changes_nothing(
            recs in prop::collection::vec(record(), 0..30),
            cap in 1usize..400,
            junk in prop::option::of((any::<prop::sample::Index>(), prop::collection::vec(any::<u8>(), 1..40))),
            appended in prop::option::of(prop::collection::vec(any::<u8>(), 1..40)),
        ) {
            // Lines straddle the reader's buffer at every place: what is read, what is wrong
            // and the digest must be what reading the whole input at once gives.
            let (mut bytes, _) = write_trace(&recs, true);
            if let Some((at, junk)) = junk {
                let at = at.index(bytes.len());
                bytes.splice(at..at, junk);
            }
            if let Some(tail) = appended {
                bytes.extend(tail);
            }
            let Ok(mut whole) = TraceReader::new(bytes.as_slice()) else {
                prop_assert!(TraceReader::new(BufReader::with_capacity(cap, bytes.as_slice())).is_err());
                return Ok(());
            };
            let mut small = TraceReader::new(BufReader::with_capacity(cap, bytes.as_slice()))
                .expect("the same header");
            let a: Vec<_> = std::iter::from_fn(|| whole.next_record()).collect();
            let b: Vec<_> = std::iter::from_fn(|| small.next_record()).collect();
            prop_assert_eq!(a, b);
            prop_assert_eq!(format!("{:?}", whole.summary()), format!("{:?}", small.summary()));
        }

        #[test]
        fn a_corrupted_line_costs_only_that_line(
            recs in prop::collection::vec(record(), 1..20),
            which in any::<prop::sample::Index>(),
            junk in prop::collection::vec(any::<u8>().prop_filter("no newline", |b| *b != b'\n'), 1..64),
        ) {
            prop_assume!(junk.iter().any(|b| !b.is_ascii_whitespace()));
            let (bytes, _) = write_trace(&recs, true);
            let which = which.index(recs.len());
            // Line 1 is the header; record k is on line k + 2.
            let bad_line = which as u64 + 2;
            let mut lines: Vec<&[u8]> = bytes.split_inclusive(|b| *b == b'\n').collect();
            let replaced = [junk.as_slice(), b"\n"].concat();
            lines[which + 1] = &replaced;
            let corrupted = lines.concat();
            let (read, s) = read_all(&corrupted);
            let expected: Vec<(u64, Record)> = recs
                .iter()
                .cloned()
                .enumerate()
                .map(|(i, r)| (i as u64 + 2, r))
                .filter(|(line, _)| *line != bad_line)
                .collect();
            prop_assert_eq!(read, expected);
            // Besides the bad line, only the footer may disagree (its counts and digest).
            let footer = recs.len() as u64 + 2;
            let lines_of: Vec<u64> = kinds(&s.problems)
                .into_iter()
                .map(|(l, _)| l)
                .filter(|l| *l != footer)
                .collect();
            prop_assert_eq!(lines_of, vec![bad_line]);
            prop_assert!(!s.complete || s.digest_ok == Some(false));
        }

        #[test]
        fn a_trace_cut_anywhere_reads_to_its_last_complete_line(
            recs in prop::collection::vec(record(), 0..20),
            cut in any::<prop::sample::Index>(),
        ) {
            let (bytes, _) = write_trace(&recs, true);
            let cut = cut.index(bytes.len() + 1);
            let cut_bytes = &bytes[..cut];
            // Ends of lines, newline included: the header, each record, the footer.
            let ends: Vec<usize> = bytes
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .map(|(i, _)| i + 1)
                .collect();
            prop_assert_eq!(ends.len(), recs.len() + 2);
            if cut < ends[0] {
                let opened = TraceReader::new(cut_bytes);
                prop_assert!(matches!(
                    opened,
                    Err(ReadError::Empty | ReadError::TruncatedHeader)
                ));
                return Ok(());
            }
            let (read, s) = read_all(cut_bytes);
            let whole = ends.iter().filter(|e| **e <= cut).count();
            let expected: Vec<(u64, Record)> = recs
                .iter()
                .take(whole - 1)
                .cloned()
                .enumerate()
                .map(|(i, r)| (i as u64 + 2, r))
                .collect();
            prop_assert_eq!(read, expected);
            prop_assert_eq!(s.complete, cut == bytes.len());
            prop_assert_eq!(s.bytes, cut as u64);
            if ends.contains(&cut) {
                prop_assert_eq!(s.problems, vec![]);
            } else {
                prop_assert_eq!(kinds(&s.problems), vec![(whole as u64 + 1, ProblemKind::Truncated)]);
            }
        }
    }
}
