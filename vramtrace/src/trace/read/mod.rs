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

use serde::{Deserialize, Serialize};

mod fast;

use fast::{api_value, fast_call, fill_after_api, fill_in_order, leading_api, leading_tag};

use super::digest::{Algorithm, Hasher};
use super::name::ApiName;
use super::record::{
    Call, Exit, FORMAT_MAJOR, FORMAT_MINOR, FORMAT_NAME, Footer, Header, Lost, Process, Record,
    Stack,
};

pub use super::record::RECORD_TYPES;

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
    /// The footer's digest is not that of the bytes before it: changed or cut and resumed.
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

/// Whether a trace is the whole of what was recorded, and nothing else: one verdict, decided
/// by [`TraceReader::summary`] alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Integrity {
    /// The footer is there, its digest and counts match, and nothing follows it.
    Complete,
    /// No footer: the recording stopped before writing it (a crash, a kill, a full disk), or
    /// the file was cut. The records read are all there is.
    #[default]
    CutShort,
    /// A footer is there, but its digest or its counts are not those of the lines before
    /// it: the file was changed after it was written.
    Altered,
    /// A valid footer, then more lines: something was appended to a finished trace.
    Appended,
}

impl Integrity {
    /// One line for a person: what the verdict means for the figures read from the trace.
    pub fn describe(self) -> &'static str {
        match self {
            Integrity::Complete => "trace complete: footer present, digest and counts verified",
            Integrity::CutShort => {
                "TRACE CUT SHORT: no footer, the recording stopped before it ended; \
                 figures cover only what was recorded"
            }
            Integrity::Altered => {
                "TRACE ALTERED: the footer's digest or counts do not match the lines \
                 before it; do not trust these figures"
            }
            Integrity::Appended => {
                "TRACE APPENDED TO: lines follow a valid footer; they were not read"
            }
        }
    }
}

impl fmt::Display for Integrity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Integrity::Complete => "complete",
            Integrity::CutShort => "cut_short",
            Integrity::Altered => "altered",
            Integrity::Appended => "appended",
        })
    }
}

impl ProblemKind {
    /// Whether this is about the trace as a whole (its footer, or what follows it), which
    /// the [`Integrity`] verdict reports, rather than a line that could not be read.
    pub fn is_integrity(self) -> bool {
        matches!(
            self,
            ProblemKind::DigestMismatch | ProblemKind::CountMismatch | ProblemKind::AfterFooter
        )
    }
}

/// What a read found, once the records are exhausted.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReadSummary {
    pub header: Header,
    pub footer: Option<Footer>,
    /// The one verdict on the file as a whole.
    pub integrity: Integrity,
    /// `integrity` is [`Integrity::Complete`].
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

/// Where a reader is in its trace: lines and (decompressed) bytes read so far, the header's
/// included. Reading on from here is [`TraceReader::resume`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Position {
    pub lines: u64,
    pub bytes: u64,
}

/// What a reader needs to read on from a [`Position`] of a trace it already read once: the
/// header, which is not read again.
#[derive(Clone, Debug)]
pub struct ResumeFrom {
    pub header: Header,
    minor: u32,
}

/// A trace file's bytes as the reader reads them: decompressed, when the file is gzip.
pub type Input = BufReader<Box<dyn Read + Send>>;

/// The first bytes of every gzip member ([RFC 1952](https://www.rfc-editor.org/rfc/rfc1952),
/// 2.3.1).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Opens a trace file for reading: the one way every command opens one. `-` is standard
/// input. A gzip-compressed trace is decompressed as it is read, found by its first bytes
/// rather than its name.
pub fn open_input(path: &Path) -> Result<Box<dyn Read + Send>, ReadError> {
    decompressed(open_file(path)?.0).map_err(|source| ReadError::Open {
        path: path.to_owned(),
        source,
    })
}

/// Whether `path` names standard input.
pub fn is_stdin(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// Opens the file itself (`-`: standard input), with its length when it is a regular file,
/// for a caller that counts the bytes read from the disk (a progress bar) before they go to
/// [`decompressed`]; otherwise [`open_input`] does both.
pub fn open_file(path: &Path) -> Result<(Box<dyn Read + Send>, Option<u64>), ReadError> {
    if is_stdin(path) {
        return Ok((Box::new(io::stdin()), None));
    }
    let file = File::open(path).map_err(|source| ReadError::Open {
        path: path.to_owned(),
        source,
    })?;
    let len = file
        .metadata()
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len());
    Ok((Box::new(file), len))
}

/// `input`, decompressed when it starts with gzip's magic bytes, else as it is. Every member
/// of a multi-member file is read (`cat a.gz b.gz`, `pigz`). A gzip stream that is cut short
/// fails the read where it ends, which the reader reports as the end of the trace.
pub fn decompressed<R: Read + Send + 'static>(mut input: R) -> io::Result<Box<dyn Read + Send>> {
    let mut magic = [0u8; GZIP_MAGIC.len()];
    let mut got = 0;
    while got < magic.len() {
        match input.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let input = io::Cursor::new(magic[..got].to_vec()).chain(input);
    Ok(if magic[..got] == GZIP_MAGIC {
        Box::new(flate2::read::MultiGzDecoder::new(input))
    } else {
        Box::new(input)
    })
}

impl TraceReader<Input> {
    /// Opens a trace file, gzip-compressed or not, and reads its header.
    pub fn open(path: &Path) -> Result<Self, ReadError> {
        Self::new(BufReader::with_capacity(1 << 20, open_input(path)?))
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
        let mut reader = Self::at(input, Header::default(), 0, Position::default(), true);
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
        let (header, minor) = parse_header(&reader.buf)?;
        // The version says the footer's digest, and the header is its first line.
        reader.hasher.hasher = Hasher::new(Algorithm::of_minor(minor));
        reader.hasher.update(&reader.buf);
        reader.header = header;
        reader.minor = minor;
        Ok(reader)
    }

    /// Reads on from `at` of a trace this process already read once (and judged: the digest,
    /// the counts against the footer): `input` starts at `at.bytes`, the line after a record.
    /// Nothing is hashed, the footer ends the records, and [`summary`](Self::summary) says
    /// nothing about the file as a whole.
    pub fn resume(input: R, from: &ResumeFrom, at: Position) -> Self {
        Self::at(input, from.header.clone(), from.minor, at, false)
    }

    /// A reader of `input` standing at `at`, hashing what it reads or not.
    fn at(input: R, header: Header, minor: u32, at: Position, hashing: bool) -> Self {
        TraceReader {
            input,
            buf: Vec::with_capacity(4096),
            pos: 0,
            hash_from: 0,
            hasher: BatchedHash {
                hasher: Hasher::new(Algorithm::of_minor(minor)),
                pending: Vec::new(),
                off: !hashing,
            },
            names: Names::default(),
            header,
            minor,
            footer: None,
            digest_ok: None,
            counts_ok: true,
            counts: Counts::default(),
            skipped_types: BTreeMap::new(),
            problems: Vec::new(),
            lines: at.lines,
            bytes: at.bytes,
            after_footer: false,
            trailing: false,
            done: false,
        }
    }

    /// What [`TraceReader::resume`] needs, besides a position.
    pub fn resume_from(&self) -> ResumeFrom {
        ResumeFrom {
            header: self.header.clone(),
            minor: self.minor,
        }
    }

    /// Lines and bytes read so far: after the last record handed out, once the caller has
    /// taken it.
    pub fn read_position(&self) -> Position {
        Position {
            lines: self.lines,
            bytes: self.bytes,
        }
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
    #[inline(always)]
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
    #[inline(always)]
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
                self.counts.known[rec.type_index()] += 1;
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
        let integrity = self.integrity();
        ReadSummary {
            header: self.header.clone(),
            footer: self.footer.clone(),
            integrity,
            complete: integrity == Integrity::Complete,
            digest_ok: self.digest_ok,
            problems: self.problems.clone(),
            lines: self.lines,
            bytes: self.bytes,
            skipped_types: self.skipped_types.clone(),
        }
    }

    /// The verdict on the file: an altered footer outweighs lines appended after it.
    fn integrity(&self) -> Integrity {
        if !self.done || self.footer.is_none() {
            Integrity::CutShort
        } else if self.digest_ok != Some(true) || !self.counts_ok {
            Integrity::Altered
        } else if self.trailing {
            Integrity::Appended
        } else {
            Integrity::Complete
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
        if self.hasher.off {
            // A resumed read: the file was judged when it was read whole.
            self.done = true;
            return;
        }
        let algorithm = self.hasher.hasher.algorithm();
        let digest = self.hasher.finalize_hex();
        let digest_ok = match algorithm.of_footer(&footer) {
            Some(said) if said.eq_ignore_ascii_case(&digest) => true,
            Some(said) => {
                self.problem(
                    line,
                    ProblemKind::DigestMismatch,
                    format!(
                        "the footer's {} is {said}, but the lines before it hash to {digest}: \
                         the trace was changed",
                        algorithm.name()
                    ),
                );
                false
            }
            None => {
                self.problem(
                    line,
                    ProblemKind::DigestMismatch,
                    format!(
                        "the footer has no {} digest (`{}`), which a version {}.{} trace \
                         seals its lines with: the trace was changed",
                        algorithm.name(),
                        algorithm.key(),
                        FORMAT_MAJOR,
                        self.minor
                    ),
                );
                false
            }
        };
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

/// The footer's digest, fed in large pieces: hashing line by line costs about twice as much,
/// per byte, as hashing 64 KiB at a time.
struct BatchedHash {
    hasher: Hasher,
    pending: Vec<u8>,
    /// Nothing is hashed (a resumed read).
    off: bool,
}

impl BatchedHash {
    const BATCH: usize = 64 << 10;

    fn update(&mut self, bytes: &[u8]) {
        if self.off {
            return;
        }
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
        self.hasher.finalize_hex()
    }
}

impl<R: BufRead> TraceReader<R> {
    /// Appends the next records to `out` until it holds `max` or the trace ends: what
    /// [`Iterator::next`] would give, pushed where they are parsed rather than moved through
    /// an iterator's adaptors (a record is a few hundred bytes).
    pub fn read_into(&mut self, out: &mut Vec<Record>, max: usize) {
        out.reserve(max.saturating_sub(out.len()));
        while out.len() < max {
            if self.call_into(out) {
                continue;
            }
            match self.next_record() {
                Some((_, rec)) => out.push(rec),
                None => break,
            }
        }
    }

    /// Reads the next line into `out` when it is a call line in the writer's shape that lies
    /// whole in the buffer (nearly every line of a trace), parsed straight into the record
    /// that is pushed; `false`, having read nothing, for any other line: then
    /// [`next_record`](Self::next_record) reads it and says what is wrong with it.
    #[inline(always)]
    fn call_into(&mut self, out: &mut Vec<Record>) -> bool {
        if self.done || self.after_footer {
            return false;
        }
        let Ok(chunk) = self.input.fill_buf() else {
            return false;
        };
        // The line is read where it starts, up to its newline: a string ends before a
        // control character, a number before anything but a digit, so nothing read here
        // crosses a newline. A line cut by the end of the buffer fails, and is read whole
        // by `next_record`.
        let line = &chunk[self.pos.min(chunk.len())..];
        let Some(tag) = leading_tag(line) else {
            return false;
        };
        // A name seen before is known by its first bytes; a new one is read and learnt.
        let Some(value) = api_value(line, tag) else {
            return false;
        };
        let at = line.len() - value.len();
        let Some((name, len)) = self.names.known_at(value).or_else(|| {
            let (name, rest) = leading_api(line, tag)?;
            Some((self.names.index(name)?, value.len() - rest.len()))
        }) else {
            return false;
        };
        let head = at + len;
        let rest = &line[head..];
        // Made where it lies in the batch, not moved there: a record is a few hundred bytes,
        // and a move is a copy.
        out.reserve(1);
        let Some(slot) = out.spare_capacity_mut().first_mut() else {
            return false;
        };
        let Some(empty) = Record::empty_call(tag) else {
            return false;
        };
        let rec = slot.write(empty);
        let index = rec.type_index();
        let Some(len) = rec
            .call_mut()
            .and_then(|call| {
                // The name goes straight to where it is kept: moved into the record before
                // `write`, it went by the stack, in pieces the processor could not join again.
                call.api = self.names.0[name].1.clone();
                fill_in_order(rest, call).or_else(|| {
                    // Keys in another order: the call is read again from the start.
                    *call = Call {
                        api: call.api.clone(),
                        ..Call::default()
                    };
                    fill_after_api(rest, &mut self.names, call)
                })
            })
            .map(|tail| head + tail)
            .filter(|&len| len <= MAX_LINE)
        else {
            // SAFETY: `slot` was initialized by `write` above and is not part of `out`: it
            // is dropped here once, and `out` never sees it.
            unsafe { slot.assume_init_drop() };
            return false;
        };
        // SAFETY: the first spare slot, the one at `out.len()`, was initialized by `write`
        // above; the capacity was reserved for it.
        unsafe { out.set_len(out.len() + 1) };
        self.counts.known[index] += 1;
        self.pos += len;
        self.lines += 1;
        self.bytes += len as u64;
        true
    }
}

impl<R: BufRead> Iterator for TraceReader<R> {
    type Item = Record;

    #[inline(always)]
    fn next(&mut self) -> Option<Record> {
        self.next_record().map(|(_, rec)| rec)
    }
}

impl<R: BufRead> std::iter::FusedIterator for TraceReader<R> {}

fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', bytes)
}

/// Lines by `type`: the known types in an array, for the price of a match per line.
struct Counts {
    known: [u64; RECORD_TYPES.len()],
    other: BTreeMap<String, u64>,
}

// Arrays longer than 32 have no derived `Default`.
impl Default for Counts {
    fn default() -> Self {
        Counts {
            known: [0; RECORD_TYPES.len()],
            other: BTreeMap::new(),
        }
    }
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
/// each is looked up here, by this reader alone, rather than in [`ApiName`]'s table, which
/// every reader shares behind a lock.
#[derive(Default)]
struct Names(Vec<(NameKey, ApiName, Option<Quoted>)>);

/// A name's length with its first and last eight bytes (which overlap when it is shorter
/// than 16): the whole of a name of 8 to 16 bytes (most entry points), told apart in two
/// comparisons of words instead of a call to compare bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
struct NameKey(usize, u64, u64);

impl NameKey {
    fn of(bytes: &[u8]) -> NameKey {
        let n = bytes.len();
        match (bytes.first_chunk::<8>(), bytes.last_chunk::<8>()) {
            (Some(first), Some(last)) => {
                NameKey(n, u64::from_le_bytes(*first), u64::from_le_bytes(*last))
            }
            _ => NameKey(n, 0, 0),
        }
    }

    /// Whether the key alone says that the name is the one it was made from.
    fn whole(self) -> bool {
        (8..=16).contains(&self.0)
    }
}

/// A name of at most 15 bytes with its closing quote, as a 16-byte word and the mask of the
/// bytes that it fills: a JSON string value that starts with it is that name, whatever
/// follows, with no need to look for where the string ends.
#[derive(Clone, Copy)]
struct Quoted {
    word: u128,
    mask: u128,
}

impl Quoted {
    fn of(name: &[u8]) -> Option<Quoted> {
        let mut bytes = [0u8; 16];
        bytes
            .get_mut(..=name.len())?
            .copy_from_slice(&[name, b"\""].concat());
        let len = 8 * (name.len() as u32 + 1);
        Some(Quoted {
            word: u128::from_le_bytes(bytes),
            mask: u128::MAX >> (128 - len),
        })
    }

    #[inline(always)]
    fn starts(&self, at: u128) -> bool {
        at & self.mask == self.word
    }
}

impl Names {
    /// More distinct names than any driver exports: past this, names are not kept.
    const MAX: usize = 512;

    fn get(&mut self, bytes: &[u8]) -> Option<ApiName> {
        match self.index(bytes) {
            Some(i) => Some(self.0[i].1.clone()),
            // Not kept: past `MAX` names, or not UTF-8 (then `new` is not reached).
            None => Some(ApiName::new(std::str::from_utf8(bytes).ok()?)),
        }
    }

    /// Which of the names already read the string value `value` (from its opening quote,
    /// with at least 16 bytes after it) holds: its index, and where the rest of `value`
    /// starts after the closing quote. Indices, not the name: the caller clones the name
    /// into the record where it lies, rather than moving it there through the stack.
    #[inline(always)]
    fn known_at(&self, value: &[u8]) -> Option<(usize, usize)> {
        let inner = value.strip_prefix(b"\"")?;
        let at = u128::from_le_bytes(*inner.first_chunk::<16>()?);
        let i = self
            .0
            .iter()
            .position(|(_, _, q)| q.is_some_and(|q| q.starts(at)))?;
        Some((i, self.0[i].1.len() + 2))
    }

    /// The index of name `bytes`, learnt now if it is new; `None` when it is not UTF-8 or
    /// not kept (past [`Names::MAX`]).
    fn index(&mut self, bytes: &[u8]) -> Option<usize> {
        let key = NameKey::of(bytes);
        if let Some(i) = self
            .0
            .iter()
            .position(|(k, n, _)| *k == key && (key.whole() || n.as_bytes() == bytes))
        {
            return Some(i);
        }
        if self.0.len() >= Self::MAX {
            return None;
        }
        let name = ApiName::new(std::str::from_utf8(bytes).ok()?);
        self.0.push((key, name, Quoted::of(bytes)));
        Some(self.0.len() - 1)
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
#[inline(always)]
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
        let parsed = match Record::call_kind(tag) {
            Some(wrap) => Some(as_call(line, names, wrap)),
            None => match tag {
                b"process" => Some(as_rec::<Process>(line, Record::Process)),
                b"stack" => Some(as_rec::<Stack>(line, Record::Stack)),
                b"exit" => Some(as_rec::<Exit>(line, Record::Exit)),
                b"lost" => Some(as_rec::<Lost>(line, Record::Lost)),
                b"footer" => Some(as_rec::<Footer>(line, Record::Footer)),
                b"header" => Some(as_rec::<Header>(line, |h| Record::Header(Box::new(h)))),
                _ => None,
            },
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
#[inline(always)]
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
pub(crate) mod tests;
