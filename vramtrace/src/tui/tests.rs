//! The view's update logic, and its rendering as snapshots.
//!
//! Fixtures come from [`synth`] with a fixed clock and fixed PIDs, so snapshots hold no time
//! or PID of the machine that runs them.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers, MouseButton, MouseEvent, MouseEventKind};
use ratatui::{Terminal, backend::TestBackend, layout::Rect, style::Color};

use super::{
    Control, Effect, Msg, SeekTo,
    app::{AllocOrder, App, Filter, Focus, Mode, ProcCol, parse_size},
    render,
    synth::{self, T0},
    update,
};
use crate::trace::Record;

const SEC: u64 = 1_000_000_000;

fn live() -> App {
    App::new(Mode::Live {
        scope: "every process".into(),
        output: None,
    })
}

fn replay() -> App {
    App::new(Mode::Replay {
        file: "t.jsonl".into(),
        speed: 1.0,
    })
}

fn key(app: &mut App, code: KeyCode) -> Option<Effect> {
    update(app, Msg::Key(KeyEvent::new(code, KeyModifiers::NONE)))
}

/// An app that has seen the scenario, at `secs` after its start.
fn scenario_app(w: u16, h: u16) -> App {
    let mut app = live();
    app.size = Rect::new(0, 0, w, h);
    update(
        &mut app,
        Msg::Records(vec![Record::Header(Box::new(synth::header()))]),
    );
    update(&mut app, Msg::Records(synth::scenario(5)));
    update(
        &mut app,
        Msg::Tick {
            now_ns: T0 + 7 * SEC,
        },
    );
    app
}

fn draw(app: &App, w: u16, h: u16) -> Terminal<TestBackend> {
    let mut t = Terminal::new(TestBackend::new(w, h)).expect("test terminal");
    t.draw(|f| render(app, f)).expect("draw");
    t
}

fn text(t: &Terminal<TestBackend>) -> String {
    t.backend().to_string()
}

#[test]
fn records_go_through_the_ledger_into_the_view() {
    let app = scenario_app(80, 24);
    assert_eq!(app.view.procs.len(), 2);
    // Sorted by traced bytes, largest first.
    let top = &app.view.procs[0];
    assert_eq!((top.pid, top.name.as_str()), (1001, "trainer"));
    assert_eq!(top.traced, (4 << 30) + 4 * (16 << 20));
    assert_eq!(top.ooms, 1);
    assert_eq!(app.view.procs[1].host_fallbacks, 1);
    assert_eq!(app.seen.ooms, 1);
    assert_eq!(app.view.allocs.len(), 8);
    assert!(
        app.alerts
            .iter()
            .any(|a| a.text.starts_with("OOM: pid 1001 trainer"))
    );
    assert!(
        app.alerts
            .iter()
            .any(|a| a.text.starts_with("host fallback: pid 1002"))
    );
    let gpu = &app.view.gpus[0];
    assert_eq!(gpu.device, Some(0));
    assert_eq!(gpu.traced(), (6 << 30) + 4 * (16 << 20));
    assert_eq!(gpu.overhead(), None);
}

#[test]
fn arrows_move_and_the_allocations_follow_the_process() {
    let mut app = scenario_app(80, 24);
    assert_eq!(app.selected_proc, Some(1));
    key(&mut app, KeyCode::Down);
    assert_eq!(app.selected_proc, Some(2));
    assert_eq!(app.view.allocs.len(), 2);
    key(&mut app, KeyCode::Char('k'));
    assert_eq!(app.selected_proc, Some(1));
    key(&mut app, KeyCode::Up);
    assert_eq!(app.proc_cursor, 0, "stops at the top");
    key(&mut app, KeyCode::Enter);
    assert_eq!(app.focus, Focus::Allocations);
    key(&mut app, KeyCode::End);
    assert_eq!(app.alloc_cursor, 7);
    key(&mut app, KeyCode::Enter);
    assert!(app.detail);
    key(&mut app, KeyCode::Esc);
    assert!(!app.detail);
}

#[test]
fn selection_stays_on_its_row_when_rows_move() {
    let mut app = scenario_app(80, 24);
    key(&mut app, KeyCode::Down);
    assert_eq!(app.selected_proc, Some(2));
    // `server` grows past `trainer`: it moves to the top and stays selected.
    update(
        &mut app,
        Msg::Records(vec![synth::alloc(
            2,
            T0 + 8 * SEC,
            0x7d00_0000_0000,
            8 << 30,
            None,
        )]),
    );
    update(
        &mut app,
        Msg::Tick {
            now_ns: T0 + 9 * SEC,
        },
    );
    assert_eq!(app.view.procs[0].proc, 2);
    assert_eq!(app.selected_proc, Some(2));
    assert_eq!(app.proc_cursor, 0);
}

#[test]
fn s_cycles_the_sort_and_s_upper_reverses() {
    let mut app = scenario_app(80, 24);
    assert_eq!(app.proc_sort, ProcCol::Traced);
    key(&mut app, KeyCode::Char('s'));
    assert_eq!(app.proc_sort, ProcCol::Pool);
    for _ in 0..ProcCol::ALL.len() - 1 {
        key(&mut app, KeyCode::Char('s'));
    }
    assert_eq!(app.proc_sort, ProcCol::Traced);
    key(&mut app, KeyCode::Char('S'));
    assert_eq!(app.view.procs[0].name, "server", "ascending now");
    key(&mut app, KeyCode::Tab);
    key(&mut app, KeyCode::Char('s'));
    assert_eq!(app.alloc_order, AllocOrder::Largest);
    // The selection stayed on `trainer`, whose largest are its weights.
    assert_eq!(app.view.allocs[0].bytes, 1 << 30);
}

#[test]
fn allocations_are_newest_or_largest_first() {
    let mut app = scenario_app(80, 24);
    let ts: Vec<u64> = app.view.allocs.iter().map(|a| a.ts_ns).collect();
    assert!(ts.windows(2).all(|w| w[0] >= w[1]));
    app.alloc_order = AllocOrder::Largest;
    update(
        &mut app,
        Msg::Tick {
            now_ns: T0 + 8 * SEC,
        },
    );
    let sizes: Vec<u64> = app.view.allocs.iter().map(|a| a.bytes).collect();
    assert!(sizes.windows(2).all(|w| w[0] >= w[1]));
    assert_eq!(sizes[0], 1 << 30);
}

#[test]
fn filter_line_parses_and_filters() {
    assert_eq!(parse_size("1M"), Some(1 << 20));
    assert_eq!(parse_size("1.5G"), Some(3 << 29));
    assert_eq!(parse_size("4096"), Some(4096));
    assert_eq!(parse_size("x"), None);
    let f = Filter::parse("api:memalloc class:unk min:100M").expect("parses");
    assert_eq!(f.api.as_deref(), Some("memalloc"));
    assert_eq!(f.min_bytes, 100 << 20);
    assert!(Filter::parse("min:lots").is_err());
    assert!(Filter::parse("colour:red").is_err());

    let mut app = scenario_app(80, 24);
    key(&mut app, KeyCode::Char('/'));
    for c in "min:1G".chars() {
        key(&mut app, KeyCode::Char(c));
    }
    key(&mut app, KeyCode::Enter);
    assert_eq!(app.input, None);
    assert_eq!(app.view.allocs.len(), 4, "the four weights");
    assert_eq!(app.view.allocs_unfiltered, 8);
    key(&mut app, KeyCode::Char('/'));
    key(&mut app, KeyCode::Char('x'));
    key(&mut app, KeyCode::Char(':'));
    key(&mut app, KeyCode::Enter);
    assert!(
        app.input_error.is_some(),
        "a bad filter is refused, not applied"
    );
    key(&mut app, KeyCode::Esc);
    assert_eq!(app.filter.min_bytes, 1 << 30);
    key(&mut app, KeyCode::Esc);
    assert!(app.filter.is_empty());
    assert_eq!(app.view.allocs.len(), 8);
}

#[test]
fn pause_holds_live_records_until_resumed() {
    let mut app = scenario_app(80, 24);
    key(&mut app, KeyCode::Char('p'));
    assert!(app.paused);
    update(
        &mut app,
        Msg::Records(vec![synth::alloc(1, T0 + 8 * SEC, 0x1000, 1 << 20, None)]),
    );
    update(
        &mut app,
        Msg::Tick {
            now_ns: T0 + 9 * SEC,
        },
    );
    assert_eq!(app.view.allocs.len(), 8, "the screen is frozen");
    assert_eq!(app.now_ns, T0 + 7 * SEC);
    key(&mut app, KeyCode::Char('p'));
    assert!(!app.paused);
    assert_eq!(app.view.allocs.len(), 9);
}

#[test]
fn replay_keys_become_controls() {
    let mut app = replay();
    assert_eq!(
        key(&mut app, KeyCode::Char('p')),
        Some(Effect::Replay(Control::Pause(true)))
    );
    assert_eq!(
        key(&mut app, KeyCode::Char('n')),
        Some(Effect::Replay(Control::Step))
    );
    assert_eq!(
        key(&mut app, KeyCode::Char('-')),
        Some(Effect::Replay(Control::Seek(SeekTo::Rel(-10 * SEC as i64))))
    );
    assert_eq!(
        key(&mut app, KeyCode::Char('G')),
        Some(Effect::Replay(Control::Seek(SeekTo::End)))
    );
    assert_eq!(key(&mut app, KeyCode::Char('q')), Some(Effect::Exit(None)));
    assert_eq!(
        update(
            &mut app,
            Msg::Key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL))
        ),
        Some(Effect::Exit(None))
    );
    // Live mode has no replay controls.
    let mut app = live();
    assert_eq!(key(&mut app, KeyCode::Char('n')), None);
}

#[test]
fn reset_starts_from_a_fresh_ledger() {
    let mut app = scenario_app(80, 24);
    update(&mut app, Msg::Reset);
    update(&mut app, Msg::Tick { now_ns: T0 });
    assert!(app.view.procs.is_empty());
    assert_eq!(app.ledger.processes().count(), 0);
    assert_eq!(app.seen.ooms, 0);
}

#[test]
fn a_failed_start_ends_the_view_with_its_reason() {
    let mut app = live();
    assert_eq!(
        update(&mut app, Msg::Ended(Err("no permission".into()))),
        Some(Effect::Exit(Some("no permission".into())))
    );
}

#[test]
fn a_click_selects_the_row_under_it() {
    let mut app = scenario_app(80, 24);
    let areas = super::view::areas(&app, app.size);
    // Second data row of the process table: border, header, row 0, row 1.
    let row = areas.procs.y + 3;
    update(
        &mut app,
        Msg::Mouse(MouseEvent {
            kind: MouseEventKind::Down(MouseButton::Left),
            column: 5,
            row,
            modifiers: KeyModifiers::NONE,
        }),
    );
    assert_eq!(app.selected_proc, Some(2));
    let row = areas.allocs.y + 2;
    update(
        &mut app,
        Msg::Mouse(MouseEvent {
            kind: MouseEventKind::Down(MouseButton::Left),
            column: 5,
            row,
            modifiers: KeyModifiers::NONE,
        }),
    );
    assert_eq!(app.focus, Focus::Allocations);
    assert_eq!(app.alloc_cursor, 0);
}

#[test]
fn snapshot_80x24() {
    let app = scenario_app(80, 24);
    insta::assert_snapshot!(text(&draw(&app, 80, 24)));
}

#[test]
fn snapshot_160x40_with_stack() {
    let mut app = scenario_app(160, 40);
    key(&mut app, KeyCode::Enter);
    key(&mut app, KeyCode::Enter);
    insta::assert_snapshot!(text(&draw(&app, 160, 40)));
}

#[test]
fn snapshot_help() {
    let mut app = scenario_app(80, 24);
    key(&mut app, KeyCode::Char('?'));
    insta::assert_snapshot!(text(&draw(&app, 80, 24)));
}

#[test]
fn snapshot_empty_replay() {
    let mut app = replay();
    update(
        &mut app,
        Msg::Replay(super::ReplayStatus {
            start_ns: T0,
            pos_ns: T0,
            ..Default::default()
        }),
    );
    insta::assert_snapshot!(text(&draw(&app, 80, 24)));
}

#[test]
fn no_color_draws_the_same_text_without_colors() {
    let app = scenario_app(80, 24);
    let colored = draw(&app, 80, 24);
    let mut plain_app = scenario_app(80, 24);
    plain_app.color = false;
    let plain = draw(&plain_app, 80, 24);
    assert_eq!(text(&colored), text(&plain));
    let buf = plain.backend().buffer();
    assert!(
        buf.content()
            .iter()
            .all(|c| c.fg == Color::Reset && c.bg == Color::Reset),
        "NO_COLOR: no colors at all"
    );
    assert!(
        colored
            .backend()
            .buffer()
            .content()
            .iter()
            .all(|c| c.bg == Color::Reset),
        "no background colors: readable on light and dark terminals"
    );
}

#[test]
fn escape_sequences_from_traced_programs_are_not_drawn() {
    let mut app = live();
    update(
        &mut app,
        Msg::Records(vec![
            synth::process(1, 1001, "evil\x1b]0;pwned\x07\x1b[2J"),
            synth::alloc(1, T0, 0x1000, 4096, None),
        ]),
    );
    update(&mut app, Msg::Tick { now_ns: T0 + SEC });
    let screen = text(&draw(&app, 80, 24));
    assert!(screen.contains("evil"));
    assert!(!screen.contains('\x1b'));
    assert!(!screen.contains("pwned"));
}

#[test]
fn small_and_large_terminals_draw() {
    let app = scenario_app(80, 24);
    for (w, h) in [(20, 5), (40, 10), (80, 24), (300, 100)] {
        let screen = text(&draw(&app, w, h));
        // The backend's text is every cell, blank or not: something must be drawn in them.
        let drawn = screen
            .lines()
            .any(|l| l.chars().any(|c| !c.is_whitespace() && c != '"'));
        assert!(drawn, "{w}x{h} drew nothing:\n{screen}");
        if w >= 80 && h >= 24 {
            assert!(screen.contains("trainer"), "{w}x{h}:\n{screen}");
        }
    }
}

#[test]
fn long_lists_are_ordered_and_read_from_any_row() {
    let mut app = live();
    update(&mut app, Msg::Records(synth::many(2000)));
    update(
        &mut app,
        Msg::Tick {
            now_ns: T0 + 10 * SEC,
        },
    );
    key(&mut app, KeyCode::Tab);
    let ts: Vec<u64> = app.view.allocs.iter().map(|a| a.ts_ns).collect();
    assert_eq!(ts.len(), 2000);
    assert!(ts.windows(2).all(|w| w[0] > w[1]));
    assert_eq!(ts[0], T0 + 1999 * 1000, "the newest first");
    let from: Vec<u64> = app.view.allocs.iter_from(1500).map(|a| a.ts_ns).collect();
    assert_eq!(from, ts[1500..]);
    key(&mut app, KeyCode::End);
    assert_eq!(app.selected_alloc().map(|a| a.ts_ns), Some(T0));
    key(&mut app, KeyCode::Home);
    for _ in 0..100 {
        key(&mut app, KeyCode::Down);
    }
    assert_eq!(
        app.selected_alloc().map(|a| a.ts_ns),
        Some(T0 + 1899 * 1000)
    );
}

#[test]
fn the_selection_stays_when_many_newer_come_and_the_top_follows_them() {
    let mut app = live();
    update(&mut app, Msg::Records(synth::many(2000)));
    update(
        &mut app,
        Msg::Tick {
            now_ns: T0 + 10 * SEC,
        },
    );
    key(&mut app, KeyCode::Tab);
    let newer = |from: u64| -> Vec<Record> {
        (0..200)
            .map(|i| {
                synth::alloc(
                    1,
                    T0 + SEC + from + i,
                    0x100_0000 + (from + i) * 4096,
                    4096,
                    None,
                )
            })
            .collect()
    };
    update(&mut app, Msg::Records(newer(0)));
    update(
        &mut app,
        Msg::Tick {
            now_ns: T0 + 11 * SEC,
        },
    );
    assert_eq!(app.alloc_cursor, 0);
    assert_eq!(
        app.selected_alloc().map(|a| a.ts_ns),
        Some(T0 + SEC + 199),
        "the top follows the newest"
    );
    for _ in 0..5 {
        key(&mut app, KeyCode::Down);
    }
    let picked = app.selected_alloc().map(|a| a.ts_ns);
    update(&mut app, Msg::Records(newer(1000)));
    update(
        &mut app,
        Msg::Tick {
            now_ns: T0 + 12 * SEC,
        },
    );
    assert_eq!(app.selected_alloc().map(|a| a.ts_ns), picked);
    assert_eq!(app.alloc_cursor, 205);
}

#[test]
fn x_hides_the_processes_that_exited_and_shows_them_again() {
    let mut app = scenario_app(120, 40);
    update(&mut app, Msg::Records(vec![synth::exit(2, T0 + 7 * SEC)]));
    update(
        &mut app,
        Msg::Tick {
            now_ns: T0 + 8 * SEC,
        },
    );
    let procs = |app: &App| app.view.procs.iter().map(|r| r.proc).collect::<Vec<_>>();
    assert_eq!(procs(&app).len(), 2, "the exited process is still listed");
    // Select the process that exited, then hide it: the selection moves to one that runs.
    app.selected_proc = Some(2);
    key(&mut app, KeyCode::Char('x'));
    assert!(app.hide_exited);
    assert_eq!(procs(&app), vec![1]);
    assert_eq!(app.selected_proc, Some(1));
    assert!(!app.view.allocs.is_empty(), "its allocations are listed");
    assert!(!text(&draw(&app, 120, 40)).contains("server"));
    key(&mut app, KeyCode::Char('x'));
    assert!(!app.hide_exited);
    assert_eq!(procs(&app).len(), 2);
}

#[test]
fn live_event_times_count_from_the_session_start() {
    let mut app = live();
    app.show_events = true;
    update(
        &mut app,
        Msg::Records(vec![Record::Header(Box::new(synth::header()))]),
    );
    // A program that starts five seconds into the session and makes a burst of calls.
    update(
        &mut app,
        Msg::Records(vec![
            synth::process(1, 1001, "late"),
            synth::alloc(1, T0 + 5 * SEC, 0x1000, 4096, None),
            synth::alloc(1, T0 + 5 * SEC + 250_000_000, 0x2000, 4096, None),
        ]),
    );
    update(
        &mut app,
        Msg::Tick {
            now_ns: T0 + 6 * SEC,
        },
    );
    let screen = text(&draw(&app, 160, 40));
    assert!(screen.contains("+5.000s alloc"), "{screen}");
    assert!(screen.contains("+5.250s alloc"), "{screen}");
    assert!(screen.contains("live: every process │ 6.0s"), "{screen}");
}

#[test]
fn a_replayed_trace_that_is_not_complete_is_an_alert() {
    use crate::trace::Integrity;
    let mut app = replay();
    update(&mut app, Msg::Integrity(Integrity::Complete));
    assert!(app.alerts.is_empty());
    for (verdict, text) in [
        (Integrity::CutShort, "TRACE CUT SHORT"),
        (Integrity::Altered, "TRACE ALTERED"),
        (Integrity::Appended, "TRACE APPENDED TO"),
    ] {
        update(&mut app, Msg::Integrity(verdict));
        let last = app.alerts.back().map(|a| a.text.as_str()).unwrap_or("");
        assert!(last.starts_with(text), "{verdict}: {last}");
    }
}

#[test]
fn a_process_that_maps_another_ones_memory_shows_it_apart_from_its_own() {
    use crate::testing::Sim;
    use crate::trace::Call;
    let (mut a, mut b) = (Sim::new(1, 100), Sim::new(2, 200));
    let share = "ab".to_owned();
    let recs = vec![
        a.process("exporter"),
        b.process("importer"),
        a.alloc(0x7000_0000, 24 << 20),
        Record::Export(Call {
            addr: Some(0x7000_0000),
            share: Some(share.clone()),
            ..a.call("cuIpcGetMemHandle")
        }),
        Record::Import(Call {
            addr: Some(0x9000_0000),
            share: Some(share),
            ..b.call("cuIpcOpenMemHandle_v2")
        }),
    ];
    let mut app = live();
    app.size = Rect::new(0, 0, 120, 30);
    update(&mut app, Msg::Records(recs));
    update(&mut app, Msg::Tick { now_ns: T0 + SEC });
    let row = |app: &App, pid: u32| app.view.procs.iter().find(|r| r.pid == pid).cloned();
    let importer = row(&app, 200).expect("the importer is listed");
    assert_eq!((importer.traced, importer.mapped), (0, 24 << 20));
    let exporter = row(&app, 100).expect("the exporter is listed");
    assert_eq!((exporter.traced, exporter.mapped), (24 << 20, 0));
    let screen = text(&draw(&app, 120, 30));
    assert!(screen.contains("MAPPED"), "{screen}");
    let line = screen
        .lines()
        .find(|l| l.contains("importer"))
        .expect("the importer's row");
    assert!(line.contains("24M"), "{line}");
    // Closed: nothing mapped any more.
    update(
        &mut app,
        Msg::Records(vec![Record::ImportClose(Call {
            addr: Some(0x9000_0000),
            ..b.call("cuIpcCloseMemHandle")
        })]),
    );
    update(
        &mut app,
        Msg::Tick {
            now_ns: T0 + 2 * SEC,
        },
    );
    assert_eq!(row(&app, 200).map(|r| r.mapped), Some(0));
}
