//! The state of the live view and the one function that changes it, [`update`].
//!
//! Records go into the [`Ledger`] (the project's single accounting path); what the view adds
//! is presentation: selection, sort, filter, a short event log, alerts, a history of used
//! bytes for the sparklines, and a [`View`] brought up to date at most once per tick. The
//! allocation rows follow the Ledger record by record ([`Mirror`]) and the listed ones stay
//! in order as they change ([`AllocList`]): with 100,000 live allocations a tick moves the
//! few rows that changed instead of reading and sorting them all.

use std::collections::{BTreeMap, HashMap, VecDeque};

use ratatui::layout::Rect;

use super::{
    Effect, Msg, ReplayStatus,
    class::ViewClass,
    list::AllocList,
    mirror::{Change, Mirror},
    view,
};
use crate::{
    ledger::{Change as LedgerChange, Ledger},
    procinfo::sanitize,
    stacks::symbolize_offline,
    trace::{Frame, Header, Mem, NvmlSample, Record},
};

/// Recent events kept for the stream pane.
const EVENT_LOG: usize = 2000;
/// Alerts kept.
const ALERT_LOG: usize = 200;
/// Samples of used bytes kept per GPU for the sparkline.
const HISTORY: usize = 1024;
/// Seek step of `+` and `-`.
pub const SEEK_NS: i64 = 10_000_000_000;
/// Changes to the listed allocations kept for the next refresh; past that the list is
/// ordered again from the rows.
const PENDING: usize = 1 << 16;

mod filter;
mod input;
mod model;

pub use filter::{Filter, parse_size};
use input::{on_key, on_mouse};

/// Where the records come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    /// Probes on this machine; `output` names the trace written alongside, if any.
    Live {
        scope: String,
        output: Option<String>,
    },
    /// A trace file, replayed at `speed` times its own pace.
    Replay { file: String, speed: f64 },
}

/// Which pane the arrow keys move in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Focus {
    Processes,
    Allocations,
}

/// Columns of the process table, in the order `s` cycles through them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcCol {
    Pid,
    Name,
    Container,
    Traced,
    Pool,
    Host,
    Mapped,
    Nvml,
    Coverage,
    Rate,
    Peak,
    Ooms,
    HostFallbacks,
}

impl ProcCol {
    pub const ALL: [ProcCol; 13] = [
        ProcCol::Pid,
        ProcCol::Name,
        ProcCol::Container,
        ProcCol::Traced,
        ProcCol::Pool,
        ProcCol::Host,
        ProcCol::Mapped,
        ProcCol::Nvml,
        ProcCol::Coverage,
        ProcCol::Rate,
        ProcCol::Peak,
        ProcCol::Ooms,
        ProcCol::HostFallbacks,
    ];

    pub fn title(self) -> &'static str {
        match self {
            ProcCol::Pid => "PID",
            ProcCol::Name => "NAME",
            ProcCol::Container => "CONTAINER",
            ProcCol::Traced => "TRACED",
            ProcCol::Pool => "POOL",
            ProcCol::Host => "HOST",
            ProcCol::Mapped => "MAPPED",
            ProcCol::Nvml => "NVML",
            ProcCol::Coverage => "COV%",
            ProcCol::Rate => "RATE",
            ProcCol::Peak => "PEAK",
            ProcCol::Ooms => "OOM",
            ProcCol::HostFallbacks => "HOSTFB",
        }
    }

    fn next(self) -> ProcCol {
        let i = ProcCol::ALL.iter().position(|c| *c == self).unwrap_or(0);
        ProcCol::ALL[(i + 1) % ProcCol::ALL.len()]
    }
}

/// Order of the allocation list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AllocOrder {
    #[default]
    Newest,
    Largest,
}

impl AllocOrder {
    /// The order of two rows of one process. Total: the slot, unique within a process,
    /// breaks the last ties, so that a row has one place and can be found again there.
    pub fn cmp(self, a: &AllocRow, b: &AllocRow) -> std::cmp::Ordering {
        match self {
            AllocOrder::Newest => b
                .ts_ns
                .cmp(&a.ts_ns)
                .then(b.addr.cmp(&a.addr))
                .then(b.handle.cmp(&a.handle)),
            AllocOrder::Largest => b
                .bytes
                .cmp(&a.bytes)
                .then(b.ts_ns.cmp(&a.ts_ns))
                .then(b.addr.cmp(&a.addr)),
        }
        .then(b.slot.cmp(&a.slot))
    }
}

/// One call in the event stream.
#[derive(Clone, Debug, PartialEq)]
pub struct EventRow {
    pub ts_ns: u64,
    pub proc: u32,
    pub kind: &'static str,
    pub api: String,
    pub bytes: Option<u64>,
    pub addr: Option<u64>,
    pub ret: i32,
}

/// Something the user must see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    pub ts_ns: u64,
    pub text: String,
}

/// Counts the view keeps about what it saw (events, not bytes: bytes are the Ledger's).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Seen {
    pub ooms: u64,
    pub host_fallbacks: u64,
    pub failed: u64,
    /// Host-memory allocations per process record id.
    pub host_fallbacks_by_proc: HashMap<u32, u64>,
    /// Out-of-memory failures per process record id, as the Ledger decided them.
    pub ooms_by_proc: HashMap<u32, u64>,
}

/// A row of the process table.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcRow {
    pub proc: u32,
    pub pid: u32,
    pub name: String,
    pub container: String,
    /// Live device bytes (pool-held excluded).
    pub traced: u64,
    /// Live bytes per class, indexed by [`ViewClass::index`].
    pub by_class: [u64; ViewClass::ALL.len()],
    pub pool: u64,
    pub host: u64,
    /// Bytes of other processes' memory this one maps now (IPC handles, pool pointers,
    /// shareable handles): not its own, not in `traced`.
    pub mapped: u64,
    pub nvml: Option<u64>,
    /// Traced device and pool bytes over NVML's figure, in percent.
    pub coverage: Option<f64>,
    /// Allocations per second over the last rate window.
    pub rate: f64,
    pub peak: u64,
    pub ooms: u64,
    pub host_fallbacks: u64,
    pub exited: bool,
    pub live: usize,
}

/// Where the Ledger keeps a live allocation of a process: unique within the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Slot {
    /// Device, stream-ordered or host memory, by address.
    Addr(u64),
    /// A CUDA array, by handle.
    Array(u64),
    /// A VMM handle's physical memory, by handle.
    Vmm(u64),
}

/// A row of the allocation list: what is shown, and the key to find it again.
#[derive(Clone, Debug, PartialEq)]
pub struct AllocRow {
    pub slot: Slot,
    pub addr: Option<u64>,
    pub handle: Option<u64>,
    pub bytes: u64,
    /// Index into [`App::apis`].
    pub api: u16,
    pub class: ViewClass,
    pub mem: Mem,
    pub ts_ns: u64,
    pub tid: u32,
    pub stack: Option<u32>,
    pub device: Option<i32>,
    pub filled_from_host: u64,
}

impl AllocRow {
    /// The allocation, not only its place: an address used again is another allocation.
    fn key(&self) -> (Slot, u64) {
        (self.slot, self.ts_ns)
    }
}

/// One GPU's line.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuRow {
    pub device: Option<i32>,
    /// Traced live bytes per class on this GPU.
    pub by_class: [u64; ViewClass::ALL.len()],
    pub pool: u64,
    pub nvml_total: Option<u64>,
    pub nvml_used: Option<u64>,
    pub nvml_free: Option<u64>,
    pub peak: u64,
}

impl GpuRow {
    /// Traced device and pool bytes.
    pub fn traced(&self) -> u64 {
        self.by_class
            .iter()
            .take(ViewClass::HostFallback.index())
            .sum::<u64>()
            .saturating_add(self.pool)
    }

    /// What NVML says is used beyond what was traced: the driver's own share, and whatever
    /// untraced processes hold.
    pub fn overhead(&self) -> Option<u64> {
        self.nvml_used.map(|u| u.saturating_sub(self.traced()))
    }
}

/// What render shows, derived from the Ledger when it changed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct View {
    pub gpus: Vec<GpuRow>,
    pub procs: Vec<ProcRow>,
    /// The selected process's allocations, filtered and ordered.
    pub allocs: AllocList,
    /// Its live allocations before filtering.
    pub allocs_unfiltered: usize,
    pub host_bytes: u64,
}

/// Everything the view knows. Only the main loop holds it.
pub struct App {
    pub mode: Mode,
    pub ledger: Ledger,
    pub header: Option<Header>,
    pub nvml: Option<NvmlSample>,
    /// The clock of the trace: now (live), or the replay position.
    pub now_ns: u64,
    /// Where the trace's clock starts, for relative times: the session's start from the
    /// header, else the first call.
    pub start_ns: Option<u64>,
    pub replay: Option<ReplayStatus>,
    /// A replay's out-of-memory failures and alerts, for the jump keys, once found.
    pub marks: Option<crate::tui::Marks>,
    /// Live mode: records that arrived while paused, applied on resume.
    pub held: Vec<Record>,
    pub paused: bool,
    pub events: VecDeque<EventRow>,
    pub alerts: VecDeque<Alert>,
    pub seen: Seen,
    pub history: BTreeMap<Option<i32>, VecDeque<u64>>,
    /// Every process's live allocations as rows, following the Ledger.
    pub mirror: Mirror,
    /// What `view.allocs` lists: the process, the order and the filter.
    list_for: Option<(u32, AllocOrder, Filter)>,
    /// Changes to the listed process's rows, applied to the list at the next refresh.
    pending: Vec<Change>,
    /// More changes than that rebuild the list instead.
    pending_overflow: bool,
    rate_mark: HashMap<u32, (u64, u64)>,
    pub rates: HashMap<u32, f64>,
    pub view: View,
    dirty: bool,
    /// Stacks symbolized on demand (replay of a trace recorded without symbols).
    pub symbolized: HashMap<u32, Vec<Frame>>,

    // The user's choices.
    pub size: Rect,
    pub focus: Focus,
    pub proc_sort: ProcCol,
    pub proc_desc: bool,
    pub alloc_order: AllocOrder,
    pub selected_proc: Option<u32>,
    pub proc_cursor: usize,
    pub alloc_cursor: usize,
    selected_alloc: Option<(Slot, u64)>,
    pub detail: bool,
    pub help: bool,
    pub show_events: bool,
    pub filter: Filter,
    /// Processes that exited are left out of the table.
    pub hide_exited: bool,
    /// The filter line being typed.
    pub input: Option<String>,
    /// Why the last filter was refused.
    pub input_error: Option<String>,
    /// Colors on (off under `NO_COLOR`).
    pub color: bool,
}

impl App {
    pub fn new(mode: Mode) -> Self {
        App {
            mode,
            ledger: Ledger::new(),
            header: None,
            nvml: None,
            now_ns: 0,
            start_ns: None,
            replay: None,
            marks: None,
            held: Vec::new(),
            paused: false,
            events: VecDeque::new(),
            alerts: VecDeque::new(),
            seen: Seen::default(),
            history: BTreeMap::new(),
            mirror: Mirror::default(),
            list_for: None,
            pending: Vec::new(),
            pending_overflow: false,
            rate_mark: HashMap::new(),
            rates: HashMap::new(),
            view: View::default(),
            dirty: true,
            symbolized: HashMap::new(),
            size: Rect::new(0, 0, 80, 24),
            focus: Focus::Processes,
            proc_sort: ProcCol::Traced,
            proc_desc: true,
            alloc_order: AllocOrder::Newest,
            selected_proc: None,
            proc_cursor: 0,
            alloc_cursor: 0,
            selected_alloc: None,
            detail: false,
            help: false,
            show_events: false,
            filter: Filter::default(),
            hide_exited: false,
            input: None,
            input_error: None,
            color: true,
        }
    }

    fn is_replay(&self) -> bool {
        matches!(self.mode, Mode::Replay { .. })
    }

    /// The selected allocation, if any.
    pub fn selected_alloc(&self) -> Option<&AllocRow> {
        self.view.allocs.get(self.alloc_cursor)
    }

    /// The selected process's row.
    pub fn selected_proc_row(&self) -> Option<&ProcRow> {
        self.view.procs.get(self.proc_cursor)
    }

    /// The frames of a stack: symbolized here when the trace had none, else as recorded.
    pub fn frames(&self, stack: u32) -> Option<&[Frame]> {
        if let Some(f) = self.symbolized.get(&stack) {
            return Some(f);
        }
        self.ledger.stack(stack).map(|s| s.frames.as_slice())
    }

    pub fn api_name(&self, i: u16) -> &str {
        self.mirror.apis.name(i)
    }

    fn alert(&mut self, ts_ns: u64, text: String) {
        if self.alerts.len() == ALERT_LOG {
            self.alerts.pop_front();
        }
        self.alerts.push_back(Alert { ts_ns, text });
    }

    fn name_of(&self, proc: u32) -> String {
        self.ledger
            .process(proc)
            .map_or_else(|| "?".into(), |p| sanitize(p.comm()))
    }

    /// Takes records into the Ledger and notes what the view shows besides.
    fn apply(&mut self, recs: Vec<Record>) {
        let watch = self.list_for.as_ref().map(|l| l.0);
        for rec in recs {
            self.ledger.apply(&rec);
            self.mirror.track(&self.ledger, watch, &mut self.pending);
            self.note(&rec);
            self.note_changes();
        }
        if self.pending.len() > PENDING {
            // A burst (a replay catching up): ordering the list again costs less.
            self.pending.clear();
            self.pending_overflow = true;
        }
        self.dirty = true;
    }

    fn note(&mut self, rec: &Record) {
        match rec {
            Record::Header(h) => {
                if let Some(n) = &h.nvml
                    && !n.available
                {
                    let why = n.reason.as_deref().map(sanitize).unwrap_or_default();
                    self.alert(0, format!("NVML unavailable: {why}"));
                }
                // Times count from the session's start, as the trace's header gives it, not
                // from the first call: a program started minutes into a live session would
                // otherwise show +0.000s on every event of its burst.
                if h.start_monotonic_ns > 0 {
                    self.start_ns = Some(h.start_monotonic_ns);
                }
                self.header = Some((**h).clone());
            }
            Record::Nvml(s) => self.nvml = Some(s.clone()),
            Record::Lost(l) if l.events() > 0 => {
                self.alert(l.ts_ns, format!("{} events lost in the kernel", l.events()));
            }
            Record::Exit(e) => {
                self.log_event(EventRow {
                    ts_ns: e.ts_ns,
                    proc: e.proc,
                    kind: "exit",
                    api: String::new(),
                    bytes: None,
                    addr: None,
                    ret: 0,
                });
            }
            _ => {}
        }
        let Some(c) = rec.call() else { return };
        self.start_ns.get_or_insert(c.ts_ns);
        if matches!(rec, Record::Failed(_)) {
            self.seen.failed += 1;
        }
        let kind = rec.kind();
        if !matches!(kind, "ctx_current") {
            self.log_event(EventRow {
                ts_ns: c.ts_ns,
                proc: c.proc,
                kind,
                api: c.api.to_string(),
                bytes: c.bytes,
                addr: c.addr,
                ret: c.ret,
            });
        }
    }

    /// What the Ledger decided with the record just applied that the alerts show: an
    /// out-of-memory failure (on which GPU), memory placed in host RAM.
    fn note_changes(&mut self) {
        let mut alerts = Vec::new();
        for ch in self.ledger.changes() {
            match ch {
                LedgerChange::Oom { proc, oom } => {
                    self.seen.ooms += 1;
                    *self.seen.ooms_by_proc.entry(*proc).or_insert(0) += 1;
                    let what = oom
                        .requested_bytes
                        .map_or_else(String::new, |b| format!(" {}", bytes(b)));
                    let gpu = oom
                        .device
                        .map_or_else(String::new, |d| format!(" on GPU {d}"));
                    let text = format!(
                        "OOM: pid {} {} {}{} failed{gpu}",
                        self.ledger.process(*proc).map_or(0, |p| p.pid),
                        self.name_of(*proc),
                        sanitize(&oom.api),
                        what
                    );
                    alerts.push((oom.ts_ns, text));
                }
                LedgerChange::HostFinding { proc, finding: f } => {
                    self.seen.host_fallbacks += 1;
                    let n = self.seen.host_fallbacks_by_proc.entry(*proc).or_insert(0);
                    *n += 1;
                    // One alert per process at first, then every thousandth: visible without
                    // flooding the log.
                    if *n == 1 || n.is_multiple_of(1000) {
                        let text = format!(
                            "host fallback: pid {} {} {} {}",
                            self.ledger.process(*proc).map_or(0, |p| p.pid),
                            self.name_of(*proc),
                            sanitize(&f.api),
                            bytes(f.bytes)
                        );
                        alerts.push((f.ts_ns, text));
                    }
                }
                _ => {}
            }
        }
        for (ts, text) in alerts {
            self.alert(ts, text);
        }
    }

    fn log_event(&mut self, ev: EventRow) {
        if self.events.len() == EVENT_LOG {
            self.events.pop_front();
        }
        self.events.push_back(ev);
    }

    /// Forgets everything the records built (a replay starting over).
    fn reset(&mut self) {
        self.ledger = Ledger::new();
        self.header = None;
        self.nvml = None;
        self.start_ns = None;
        self.events.clear();
        self.alerts.clear();
        self.seen = Seen::default();
        self.history.clear();
        self.rate_mark.clear();
        self.rates.clear();
        self.symbolized.clear();
        self.mirror = Mirror::default();
        self.list_for = None;
        self.pending.clear();
        self.pending_overflow = false;
        self.dirty = true;
    }

    /// Brings [`App::view`] up to date, if anything changed: the rows follow the Ledger
    /// record by record; what is left to do here is the tables' sums, the process table,
    /// and the listed allocations' changes since the last refresh.
    pub fn refresh(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        self.update_rates();
        self.build_procs();
        self.build_allocs();
    }

    fn update_rates(&mut self) {
        let now = self.now_ns;
        for p in self.ledger.processes() {
            let count: u64 = p.allocs.values().map(|a| a.count).sum();
            match self.rate_mark.get(&p.proc).copied() {
                None => {
                    self.rate_mark.insert(p.proc, (now, count));
                }
                Some((t, c)) if now >= t.saturating_add(1_000_000_000) => {
                    let dt = (now - t) as f64 / 1e9;
                    self.rates
                        .insert(p.proc, count.saturating_sub(c) as f64 / dt);
                    self.rate_mark.insert(p.proc, (now, count));
                }
                Some((t, _)) if now < t => {
                    // The clock went back (a replay restarted): start the window again.
                    self.rate_mark.insert(p.proc, (now, count));
                }
                Some(_) => {}
            }
        }
    }

    fn move_cursor(&mut self, delta: isize) {
        match self.focus {
            Focus::Processes => {
                let n = self.view.procs.len();
                self.proc_cursor = step(self.proc_cursor, delta, n);
                let sel = self.view.procs.get(self.proc_cursor).map(|r| r.proc);
                if sel != self.selected_proc {
                    self.selected_proc = sel;
                    self.alloc_cursor = 0;
                    self.selected_alloc = None;
                    self.detail = false;
                    self.dirty = true;
                    self.refresh_now();
                }
            }
            Focus::Allocations => {
                let n = self.view.allocs.len();
                self.alloc_cursor = step(self.alloc_cursor, delta, n);
                self.selected_alloc = self.view.allocs.get(self.alloc_cursor).map(AllocRow::key);
                self.prepare_detail();
            }
        }
    }

    /// Rebuilds the view at once after a choice of the user (not waiting for the tick).
    fn refresh_now(&mut self) {
        self.dirty = true;
        self.refresh();
    }

    /// Symbolizes the selected allocation's stack, once, when the trace carried file
    /// offsets but no names (I/O belongs here, not in render).
    fn prepare_detail(&mut self) {
        if !self.detail {
            return;
        }
        let Some(id) = self.selected_alloc().and_then(|a| a.stack) else {
            return;
        };
        if self.symbolized.contains_key(&id) {
            return;
        }
        if let Some(s) = self.ledger.stack(id)
            && s.frames
                .iter()
                .any(|f| f.sym.is_none() && f.unknown.is_none() && f.file.is_some())
        {
            let mut frames = s.frames.clone();
            symbolize_offline(&mut frames);
            self.symbolized.insert(id, frames);
        }
    }

    fn page(&self) -> isize {
        let areas = view::areas(self, self.size);
        let rows = match self.focus {
            Focus::Processes => areas.procs.height,
            Focus::Allocations => areas.allocs.height,
        };
        rows.saturating_sub(3).max(1) as isize
    }
}

fn step(cur: usize, delta: isize, n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    cur.saturating_add_signed(delta).min(n - 1)
}

/// Bytes in binary units, short: `512B`, `1.5K`, `12M`, `80G`.
pub fn bytes(b: u64) -> String {
    const UNITS: [&str; 6] = ["B", "K", "M", "G", "T", "P"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b}B")
    } else if v < 10.0 {
        format!("{v:.1}{}", UNITS[u])
    } else {
        format!("{v:.0}{}", UNITS[u])
    }
}

/// Changes the state for one message; what the main loop must do besides, if anything.
pub fn update(app: &mut App, msg: Msg) -> Option<Effect> {
    match msg {
        Msg::Tick { now_ns } => {
            if !app.is_replay() && !app.paused {
                app.now_ns = now_ns;
            }
            if !app.paused {
                app.dirty = true;
            }
            app.refresh();
            None
        }
        Msg::Records(recs) => {
            if app.paused && !app.is_replay() {
                app.held.extend(recs);
            } else {
                app.apply(recs);
            }
            None
        }
        Msg::Replay(status) => {
            app.now_ns = status.pos_ns;
            app.paused = status.paused;
            app.replay = Some(status);
            None
        }
        Msg::Reset => {
            app.reset();
            None
        }
        Msg::Marks(marks) => {
            app.marks = Some(marks);
            None
        }
        Msg::Resize(w, h) => {
            app.size = Rect::new(0, 0, w, h);
            None
        }
        Msg::Integrity(integrity) => {
            // Told as `analyze` and `export` tell it; a complete trace needs no alert.
            if integrity != crate::trace::Integrity::Complete {
                app.alert(app.now_ns, integrity.describe().to_owned());
            }
            None
        }
        Msg::Ended(Err(e)) => Some(Effect::Exit(Some(e))),
        Msg::Ended(Ok(())) => {
            app.alert(app.now_ns, "recording ended".into());
            None
        }
        Msg::Key(k) => on_key(app, k),
        Msg::Mouse(m) => {
            on_mouse(app, m);
            None
        }
    }
}
