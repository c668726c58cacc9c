//! Drawing: reads the [`App`] and nothing else (no I/O, no clock, no locks).
//!
//! Every table draws only its visible rows, so a process with 100,000 live allocations costs
//! what a screenful costs. Without colors (`NO_COLOR`) every distinction is still there: the
//! memory bar's classes have their own characters, the selection is reverse video, alerts
//! are bold.

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Sparkline, Table, Wrap},
};

use super::{
    app::{AllocOrder, App, Focus, GpuRow, Mode, ProcCol, ProcRow, bytes},
    class::ViewClass,
};
use crate::procinfo::sanitize;
use crate::site::Site;

/// Where each part of the screen goes; shared by render and mouse handling.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Areas {
    pub title: Rect,
    pub alerts: Rect,
    pub gpus: Rect,
    pub procs: Rect,
    pub allocs: Rect,
    pub events: Option<Rect>,
    pub detail: Option<Rect>,
    pub footer: Rect,
}

/// Lines each GPU takes: the bar, and the sparkline when there is room.
fn gpu_lines(app: &App, area: Rect) -> u16 {
    if area.height >= 30 { 2 } else { 1 }.max(u16::from(app.view.gpus.is_empty()))
}

/// Lays the screen out for `area`.
pub fn areas(app: &App, area: Rect) -> Areas {
    let gpus = app.view.gpus.len().max(1) as u16;
    let gpu_h = (gpus * gpu_lines(app, area)).min(area.height / 4).max(1);
    let [title, alerts, gpus, middle, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Length(gpu_h),
        Constraint::Min(6),
        Constraint::Length(1),
    ])
    .areas(area);
    let procs_h = (app.view.procs.len() as u16 + 3)
        .clamp(5, (middle.height * 2 / 5).max(5))
        .min(middle.height.saturating_sub(4));
    let [procs, lower] =
        Layout::vertical([Constraint::Length(procs_h), Constraint::Min(3)]).areas(middle);
    let wide = lower.width >= 120;
    let (list, events) = if wide {
        let [l, e] = Layout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)])
            .areas(lower);
        (l, Some(e))
    } else if app.show_events {
        let [l, e] =
            Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(lower);
        (l, Some(e))
    } else {
        (lower, None)
    };
    let (allocs, detail) = if app.detail {
        let [l, d] =
            Layout::vertical([Constraint::Percentage(40), Constraint::Percentage(60)]).areas(list);
        (l, Some(d))
    } else {
        (list, None)
    };
    Areas {
        title,
        alerts,
        gpus,
        procs,
        allocs,
        events,
        detail,
        footer,
    }
}

/// First row shown of a list whose cursor must stay in `visible` rows.
pub fn scroll_offset(cursor: usize, visible: usize) -> usize {
    (cursor + 1).saturating_sub(visible.max(1))
}

/// Styles, with and without colors.
struct Theme {
    color: bool,
}

impl Theme {
    fn fg(&self, c: Color) -> Style {
        if self.color {
            Style::new().fg(c)
        } else {
            Style::new()
        }
    }
    fn alert(&self, active: bool) -> Style {
        if !active {
            return Style::new();
        }
        self.fg(Color::Red).add_modifier(Modifier::BOLD)
    }
    fn selected(&self, focused: bool) -> Style {
        if focused {
            Style::new().add_modifier(Modifier::REVERSED)
        } else {
            Style::new().add_modifier(Modifier::UNDERLINED)
        }
    }
    fn header(&self) -> Style {
        Style::new().add_modifier(Modifier::BOLD)
    }
    fn bold(&self) -> Style {
        if self.color {
            Style::new().add_modifier(Modifier::BOLD)
        } else {
            Style::new()
        }
    }
    fn dim(&self) -> Style {
        if self.color {
            Style::new().add_modifier(Modifier::DIM)
        } else {
            Style::new()
        }
    }
}

/// A part of the memory bar: its character keeps it apart without colors.
struct Segment {
    name: &'static str,
    ch: char,
    color: Color,
}

const SEGMENTS: [Segment; 7] = [
    Segment {
        name: "weights",
        ch: '█',
        color: Color::Blue,
    },
    Segment {
        name: "kv",
        ch: '▓',
        color: Color::Magenta,
    },
    Segment {
        name: "dynamic",
        ch: '▒',
        color: Color::Cyan,
    },
    Segment {
        name: "traced",
        ch: '▚',
        color: Color::Green,
    },
    Segment {
        name: "pool",
        ch: '░',
        color: Color::Yellow,
    },
    Segment {
        name: "driver",
        ch: '#',
        color: Color::Red,
    },
    Segment {
        name: "free",
        ch: '·',
        color: Color::Reset,
    },
];

/// Draws the whole screen.
pub fn render(app: &App, frame: &mut Frame) {
    let theme = Theme { color: app.color };
    let a = areas(app, frame.area());
    render_title(app, &theme, frame, a.title);
    render_alerts(app, &theme, frame, a.alerts);
    render_gpus(app, &theme, frame, a.gpus);
    render_procs(app, &theme, frame, a.procs);
    render_allocs(app, &theme, frame, a.allocs);
    if let Some(r) = a.events {
        render_events(app, &theme, frame, r);
    }
    if let Some(r) = a.detail {
        render_detail(app, &theme, frame, r);
    }
    render_footer(app, &theme, frame, a.footer);
    if app.help {
        render_help(app, frame, a);
    }
}

/// Seconds as `0.042s`, `12.3s`, `5m03s`, `2h01m`.
fn duration(ns: u64) -> String {
    let s = ns / 1_000_000_000;
    if s < 1 {
        format!("{:.3}s", ns as f64 / 1e9)
    } else if s < 60 {
        format!("{:.1}s", ns as f64 / 1e9)
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, s / 60 % 60)
    }
}

/// A trace time relative to the session's start (or, without a header, the first event):
/// `+12.345s`.
fn rel(app: &App, ts: u64) -> String {
    let start = app.start_ns.unwrap_or(ts);
    format!("+{:.3}s", ts.saturating_sub(start) as f64 / 1e9)
}

fn render_title(app: &App, theme: &Theme, frame: &mut Frame, area: Rect) {
    let mut spans = vec![Span::styled("vramtrace top", theme.header())];
    match &app.mode {
        Mode::Live { scope, output } => {
            spans.push(Span::raw(format!(" │ live: {scope}")));
            if let Some(o) = output {
                spans.push(Span::raw(format!(" → {o}")));
            }
            if let Some(s) = app.start_ns {
                spans.push(Span::raw(format!(
                    " │ {}",
                    duration(app.now_ns.saturating_sub(s))
                )));
            }
        }
        Mode::Replay { file, speed } => {
            spans.push(Span::raw(format!(" │ replay {file} ×{speed}")));
            if let Some(r) = &app.replay {
                // The same clock as the events': from the session's start (the replay itself
                // starts at the first event, skipping the idle time before it).
                let origin = app.start_ns.unwrap_or(r.start_ns).min(r.start_ns);
                let pos = duration(r.pos_ns.saturating_sub(origin));
                let end = r
                    .end_ns
                    .map(|e| duration(e.saturating_sub(origin)))
                    .unwrap_or_else(|| "…".into());
                spans.push(Span::raw(format!(" │ {pos} / {end}")));
                if r.finished {
                    spans.push(Span::raw(" │ end of trace"));
                }
            }
        }
    }
    if app.paused {
        spans.push(Span::styled(" │ PAUSED", theme.alert(true)));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn render_alerts(app: &App, theme: &Theme, frame: &mut Frame, area: Rect) {
    let lost = app.ledger.lost_events();
    let nvml = match (&app.nvml, app.header.as_ref().and_then(|h| h.nvml.as_ref())) {
        (Some(_), _) => None,
        (None, Some(n)) if !n.available => Some("NVML unavailable"),
        _ => Some("NVML: n/a"),
    };
    let mut spans = vec![
        Span::styled(
            format!("OOM {}", app.seen.ooms),
            theme.alert(app.seen.ooms > 0),
        ),
        Span::raw(" │ "),
        Span::styled(
            format!("host fallback {}", app.seen.host_fallbacks),
            theme.alert(app.seen.host_fallbacks > 0),
        ),
        Span::raw(" │ "),
        Span::styled(format!("lost {lost}"), theme.alert(lost > 0)),
    ];
    if let Some(n) = nvml {
        spans.push(Span::raw(" │ "));
        spans.push(Span::styled(n, theme.alert(true)));
    }
    if let Some(last) = app.alerts.back() {
        spans.push(Span::raw(" │ "));
        spans.push(Span::styled(last.text.clone(), theme.alert(true)));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn render_gpus(app: &App, theme: &Theme, frame: &mut Frame, area: Rect) {
    if app.view.gpus.is_empty() {
        frame.render_widget(
            Paragraph::new(Line::styled("no GPU memory traced yet", theme.dim())),
            area,
        );
        return;
    }
    let per = gpu_lines(app, frame.area());
    for (i, g) in app.view.gpus.iter().enumerate() {
        let y = area.y + (i as u16) * per;
        if y >= area.bottom() {
            break;
        }
        let line = Rect::new(area.x, y, area.width, 1);
        render_gpu_bar(app, theme, frame, line, g);
        if per > 1 && y + 1 < area.bottom() {
            let spark = Rect::new(area.x + 7, y + 1, area.width.saturating_sub(7), 1);
            render_sparkline(app, theme, frame, spark, g);
        }
    }
}

fn render_gpu_bar(app: &App, theme: &Theme, frame: &mut Frame, area: Rect, g: &GpuRow) {
    let label = match g.device {
        Some(d) => format!("GPU{d:<3}"),
        None => "GPU? ".to_string(),
    };
    let traced = g.traced();
    let text = match (g.nvml_used, g.nvml_total) {
        (Some(u), Some(t)) => format!(
            " {}/{} traced {} driver {}",
            bytes(u),
            bytes(t),
            bytes(traced),
            bytes(g.overhead().unwrap_or(0))
        ),
        // Without NVML the GPU's size is not known: the bar is scaled to the traced peak,
        // and says so, so that a small process at its peak does not read as a full GPU.
        _ => format!(
            " traced {} / peak {} (no NVML: GPU size unknown) host {}",
            bytes(traced),
            bytes(g.peak),
            bytes(app.view.host_bytes)
        ),
    };
    let bar_w = area
        .width
        .saturating_sub(label.chars().count() as u16 + text.chars().count() as u16 + 2)
        .max(4) as u64;
    // Parts in the order of SEGMENTS; without NVML the bar is traced bytes against the peak.
    let parts: [u64; 7] = [
        g.by_class[ViewClass::Weights.index()],
        g.by_class[ViewClass::KvCache.index()],
        g.by_class[ViewClass::Dynamic.index()],
        g.by_class[ViewClass::Unknown.index()],
        g.pool,
        g.overhead().unwrap_or(0),
        match g.nvml_total {
            Some(t) => g
                .nvml_free
                .unwrap_or_else(|| t.saturating_sub(g.nvml_used.unwrap_or(traced))),
            None => g.peak.saturating_sub(traced),
        },
    ];
    let total = g.nvml_total.unwrap_or_else(|| parts.iter().sum()).max(1);
    let mut spans = vec![Span::styled(label, theme.header()), Span::raw("▕")];
    let mut used = 0u64;
    for (seg, part) in SEGMENTS.iter().zip(parts) {
        // Round so that a non-empty part shows at least one cell.
        let mut w = (part as u128 * bar_w as u128 / total as u128) as u64;
        if part > 0 && w == 0 {
            w = 1;
        }
        let w = w.min(bar_w - used);
        used += w;
        if w > 0 {
            spans.push(Span::styled(
                seg.ch.to_string().repeat(w as usize),
                theme.fg(seg.color),
            ));
        }
    }
    if used < bar_w {
        spans.push(Span::raw(" ".repeat((bar_w - used) as usize)));
    }
    spans.push(Span::raw("▏"));
    spans.push(Span::raw(text));
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn render_sparkline(app: &App, theme: &Theme, frame: &mut Frame, area: Rect, g: &GpuRow) {
    let Some(h) = app.history.get(&g.device) else {
        return;
    };
    let n = usize::from(area.width);
    let data: Vec<u64> = h.iter().skip(h.len().saturating_sub(n)).copied().collect();
    let max = g
        .nvml_total
        .unwrap_or_else(|| data.iter().copied().max().unwrap_or(1))
        .max(1);
    frame.render_widget(
        Sparkline::default()
            .data(&data)
            .max(max)
            .style(theme.fg(Color::Green)),
        area,
    );
}

/// Which process columns fit in `width`, with their widths.
fn proc_columns(width: u16) -> Vec<(ProcCol, u16)> {
    let mut cols = vec![(ProcCol::Pid, 7), (ProcCol::Name, 10)];
    if width >= 100 {
        cols.push((ProcCol::Container, 12));
    }
    cols.extend([(ProcCol::Traced, 7), (ProcCol::Pool, 6), (ProcCol::Host, 6)]);
    if width >= 100 {
        cols.push((ProcCol::Mapped, 6));
    }
    cols.extend([
        (ProcCol::Nvml, 6),
        (ProcCol::Coverage, 5),
        (ProcCol::Rate, 6),
        (ProcCol::Peak, 6),
        (ProcCol::Ooms, 3),
        (ProcCol::HostFallbacks, 6),
    ]);
    cols
}

fn proc_cell(r: &ProcRow, col: ProcCol) -> String {
    match col {
        ProcCol::Pid => r.pid.to_string(),
        ProcCol::Name => r.name.clone(),
        ProcCol::Container => r.container.clone(),
        ProcCol::Traced => bytes(r.traced),
        ProcCol::Pool => bytes(r.pool),
        ProcCol::Host => bytes(r.host),
        ProcCol::Mapped => bytes(r.mapped),
        ProcCol::Nvml => r.nvml.map_or_else(|| "n/a".into(), bytes),
        ProcCol::Coverage => r.coverage.map_or_else(|| "-".into(), |c| format!("{c:.0}")),
        ProcCol::Rate => format!("{:.0}", r.rate),
        ProcCol::Peak => bytes(r.peak),
        ProcCol::Ooms => r.ooms.to_string(),
        ProcCol::HostFallbacks => r.host_fallbacks.to_string(),
    }
}

/// Per-class columns, on terminals wide enough for them.
fn class_columns(width: u16) -> &'static [ViewClass] {
    if width >= 150 {
        &[ViewClass::Weights, ViewClass::KvCache, ViewClass::Dynamic]
    } else {
        &[]
    }
}

fn block<'a>(title: String, focused: bool, theme: &Theme) -> Block<'a> {
    let b = Block::default().borders(Borders::ALL).title(title);
    if focused {
        b.border_style(theme.header()).title_style(theme.header())
    } else {
        b.border_style(theme.dim())
    }
}

fn render_procs(app: &App, theme: &Theme, frame: &mut Frame, area: Rect) {
    let focused = app.focus == Focus::Processes;
    let cols = proc_columns(area.width);
    let classes = class_columns(area.width);
    let arrow = if app.proc_desc { '▼' } else { '▲' };
    let mut header: Vec<Cell> = cols
        .iter()
        .map(|(c, _)| {
            if *c == app.proc_sort {
                Cell::from(format!("{}{arrow}", c.title()))
            } else {
                Cell::from(c.title())
            }
        })
        .collect();
    header.extend(classes.iter().map(|c| Cell::from(c.label().to_uppercase())));
    let visible = usize::from(area.height.saturating_sub(3).max(1));
    let offset = scroll_offset(app.proc_cursor, visible);
    let rows = app
        .view
        .procs
        .iter()
        .enumerate()
        .skip(offset)
        .take(visible)
        .map(|(i, r)| {
            let mut cells: Vec<Cell> = cols
                .iter()
                .map(|(c, _)| Cell::from(proc_cell(r, *c)))
                .collect();
            cells.extend(
                classes
                    .iter()
                    .map(|c| Cell::from(bytes(r.by_class[c.index()]))),
            );
            let mut style = if r.exited { theme.dim() } else { Style::new() };
            if r.ooms > 0 {
                style = style.patch(theme.alert(true));
            }
            if i == app.proc_cursor {
                style = style.patch(theme.selected(focused));
            }
            Row::new(cells).style(style)
        });
    let mut widths: Vec<Constraint> = cols
        .iter()
        .map(|(c, w)| {
            if *c == ProcCol::Name {
                Constraint::Min(*w)
            } else {
                Constraint::Length(*w)
            }
        })
        .collect();
    widths.extend(classes.iter().map(|_| Constraint::Length(8)));
    let title = format!(" Processes ({}) ", app.view.procs.len());
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(theme.header()))
        .block(block(title, focused, theme))
        .column_spacing(1);
    frame.render_widget(table, area);
}

/// An allocation's address, or its handle when it has none (an array, an unmapped VMM handle).
fn location(addr: Option<u64>, handle: Option<u64>) -> String {
    match (addr, handle) {
        (Some(a), _) => format!("{a:#x}"),
        (None, Some(h)) => format!("h:{h:#x}"),
        (None, None) => "?".into(),
    }
}

fn render_allocs(app: &App, theme: &Theme, frame: &mut Frame, area: Rect) {
    let focused = app.focus == Focus::Allocations;
    let order = match app.alloc_order {
        AllocOrder::Newest => "newest first",
        AllocOrder::Largest => "largest first",
    };
    let who = app.selected_proc_row().map_or_else(
        || "no process".into(),
        |r| format!("pid {} {}", r.pid, r.name),
    );
    let count = if app.filter.is_empty() {
        format!("{} live", app.view.allocs.len())
    } else {
        format!(
            "{} of {} live, filter: {}",
            app.view.allocs.len(),
            app.view.allocs_unfiltered,
            app.filter.text
        )
    };
    let title = format!(" Allocations: {who}: {count}, {order} ");
    let wide = area.width >= 90;
    let mut header = vec!["ADDRESS", "SIZE", "API", "CLASS", "AGE", "TID"];
    let mut widths = vec![
        Constraint::Length(15),
        Constraint::Length(7),
        Constraint::Min(14),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(7),
    ];
    if wide {
        header.extend(["DEV", "MEM"]);
        widths.extend([Constraint::Length(3), Constraint::Length(15)]);
    }
    let visible = usize::from(area.height.saturating_sub(3).max(1));
    let offset = scroll_offset(app.alloc_cursor, visible);
    let rows = app
        .view
        .allocs
        .iter_from(offset)
        .zip(offset..)
        .take(visible)
        .map(|(r, i)| {
            let mut cells = vec![
                location(r.addr, r.handle),
                bytes(r.bytes),
                sanitize(app.api_name(r.api)),
                r.class.label().to_string(),
                duration(app.now_ns.saturating_sub(r.ts_ns)),
                r.tid.to_string(),
            ];
            if wide {
                cells.push(r.device.map_or_else(|| "?".into(), |d| d.to_string()));
                cells.push(r.mem.name().to_string());
            }
            let style = if i == app.alloc_cursor {
                theme.selected(focused)
            } else {
                Style::new()
            };
            Row::new(cells).style(style)
        });
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(theme.header()))
        .block(block(title, focused, theme))
        .column_spacing(1);
    frame.render_widget(table, area);
}

fn render_events(app: &App, theme: &Theme, frame: &mut Frame, area: Rect) {
    let visible = usize::from(area.height.saturating_sub(2));
    let proc = app.selected_proc;
    let f = &app.filter;
    let lines: Vec<Line> = app
        .events
        .iter()
        .rev()
        .filter(|e| proc.is_none_or(|p| p == e.proc))
        .filter(|e| {
            e.bytes.unwrap_or(0) >= f.min_bytes
                && f.api
                    .as_ref()
                    .is_none_or(|a| e.api.to_ascii_lowercase().contains(a.as_str()))
        })
        .take(visible)
        .map(|e| {
            let mut s = format!("{} {:<7} {}", rel(app, e.ts_ns), e.kind, sanitize(&e.api));
            if let Some(b) = e.bytes {
                s.push_str(&format!(" {}", bytes(b)));
            }
            if let Some(a) = e.addr {
                s.push_str(&format!(" {a:#x}"));
            }
            let style = if e.ret != 0 {
                s.push_str(&format!(" ret {}", e.ret));
                theme.alert(true)
            } else {
                Style::new()
            };
            Line::styled(s, style)
        })
        .collect();
    frame.render_widget(
        Paragraph::new(lines).block(block(" Events ".into(), false, theme)),
        area,
    );
}

fn render_detail(app: &App, theme: &Theme, frame: &mut Frame, area: Rect) {
    let mut lines = Vec::new();
    match app.selected_alloc() {
        None => lines.push(Line::raw("no allocation selected")),
        Some(a) => {
            lines.push(Line::raw(format!(
                "{} {} ({} bytes) {} {} class {} device {}",
                location(a.addr, a.handle),
                bytes(a.bytes),
                a.bytes,
                sanitize(app.api_name(a.api)),
                a.mem.name(),
                a.class.label(),
                a.device.map_or_else(|| "?".into(), |d| d.to_string()),
            )));
            lines.push(Line::raw(format!(
                "made {} by tid {}, age {}, filled from host {}",
                rel(app, a.ts_ns),
                a.tid,
                duration(app.now_ns.saturating_sub(a.ts_ns)),
                bytes(a.filled_from_host),
            )));
            match a.stack.and_then(|s| app.frames(s)) {
                None => lines.push(Line::styled("no stack recorded", theme.dim())),
                Some(frames) => {
                    let site = Site::of(frames);
                    if let Some(site) = &site {
                        let whose = if site.user {
                            ""
                        } else {
                            ", no frame in the user's code"
                        };
                        lines.push(Line::raw(format!(
                            "from {} (#{}{whose})",
                            sanitize(&site.title),
                            site.frame
                        )));
                    }
                    for (i, f) in frames.iter().enumerate() {
                        let style = if site.as_ref().is_some_and(|s| s.frame == i) {
                            theme.bold()
                        } else {
                            Style::new()
                        };
                        if f.python {
                            let name = sanitize(f.sym.as_deref().unwrap_or("<python>"));
                            let at = f.src.as_deref().or(f.file.as_deref()).unwrap_or("?");
                            lines.push(Line::styled(
                                format!("#{i:<2} {:<14} {name} {}", "python", sanitize(at)),
                                style,
                            ));
                            continue;
                        }
                        let name = f
                            .sym
                            .as_deref()
                            .map(sanitize)
                            .or_else(|| f.unknown.as_deref().map(|u| format!("[{}]", sanitize(u))))
                            .unwrap_or_else(|| "?".into());
                        // An inlined call shares the address of the frame it is in.
                        let mut s = if f.inlined {
                            format!("#{i:<2} {:<14} {name}", "inlined")
                        } else {
                            format!("#{i:<2} {:#014x} {name}", f.addr)
                        };
                        if let Some(file) = &f.file {
                            let base = file.rsplit('/').next().unwrap_or(file);
                            s.push_str(&format!(" ({}", sanitize(base)));
                            if let Some(o) = f.offset {
                                s.push_str(&format!("+{o:#x}"));
                            }
                            s.push(')');
                        }
                        if let Some(src) = &f.src {
                            s.push_str(&format!(" {}", sanitize(src)));
                        }
                        lines.push(Line::styled(s, style));
                    }
                }
            }
        }
    }
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(block(" Stack (Esc closes) ".into(), true, theme)),
        area,
    );
}

fn render_footer(app: &App, theme: &Theme, frame: &mut Frame, area: Rect) {
    let line = if let Some(input) = &app.input {
        let mut spans = vec![
            Span::styled("filter: ", theme.header()),
            Span::raw(input.clone()),
            Span::styled("█", theme.dim()),
            Span::styled("  api:NAME class:NAME min:SIZE, Enter applies", theme.dim()),
        ];
        if let Some(e) = &app.input_error {
            spans.push(Span::styled(format!("  {e}"), theme.alert(true)));
        }
        Line::from(spans)
    } else {
        let mut s = String::from("q quit ? help / filter s sort p pause ⏎ stack");
        if matches!(app.mode, Mode::Replay { .. }) {
            s.push_str(" n step +/- 10s g/G ends");
        } else {
            s.push_str(" ⇥ pane e events");
        }
        if !app.filter.is_empty() {
            s.push_str(&format!(" │ filter: {}", app.filter.text));
        }
        Line::styled(s, theme.dim())
    };
    frame.render_widget(Paragraph::new(line), area);
}

const HELP: &[(&str, &str)] = &[
    ("↑↓ j k", "move the selection (PgUp PgDn Home End)"),
    ("Tab ← → h l", "processes / allocations"),
    ("Enter", "process: its allocations; allocation: its stack"),
    ("Esc", "close the stack, clear the filter"),
    ("/", "filter: api:NAME class:NAME min:SIZE (1M, 2G)"),
    ("s", "sort by the next column (allocations: newest/largest)"),
    ("S r", "reverse the process order (RATE: allocations/s)"),
    ("p space", "pause (live: the screen; replay: the replay)"),
    ("e", "event stream (always shown on wide terminals)"),
    ("x", "hide / show processes that exited"),
    ("n .", "replay: one event forward"),
    ("+ -", "replay: seek 10 s"),
    ("g G", "replay: start / end"),
    (
        "o O",
        "replay: next / previous out-of-memory failure (paused there)",
    ),
    ("a A", "replay: next / previous alert (paused there)"),
    ("q", "quit"),
];

fn render_help(app: &App, frame: &mut Frame, a: Areas) {
    let theme = Theme { color: app.color };
    let mut lines: Vec<Line> = HELP
        .iter()
        .map(|(k, v)| {
            Line::from(vec![
                Span::styled(format!("{k:>12}  "), theme.header()),
                Span::raw(*v),
            ])
        })
        .collect();
    lines.push(Line::raw(""));
    let legend: Vec<String> = SEGMENTS
        .iter()
        .map(|s| format!("{} {}", s.ch, s.name))
        .collect();
    lines.push(Line::raw(format!("GPU bar: {}", legend.join("  "))));
    let full = Rect::new(
        0,
        a.gpus.y,
        a.footer.width,
        a.footer.y.saturating_sub(a.gpus.y),
    );
    let w = full.width.min(84);
    let h = (lines.len() as u16 + 2).min(full.height);
    let area = Rect::new(full.x + (full.width - w) / 2, full.y, w, h);
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(block(" Help (any key closes) ".into(), true, &theme)),
        area,
    );
}
