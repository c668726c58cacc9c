//! Keys and the mouse: what each does to the view's state.

use crossterm::event::{
    KeyCode, KeyEvent, KeyEventKind, KeyModifiers, MouseButton, MouseEvent, MouseEventKind,
};
use ratatui::layout::Position;

use super::{AllocOrder, App, Filter, Focus, SEEK_NS};
use crate::tui::{Control, Effect, SeekTo, view};

pub(super) fn on_key(app: &mut App, k: KeyEvent) -> Option<Effect> {
    if k.kind == KeyEventKind::Release {
        return None;
    }
    if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
        return Some(Effect::Exit(None));
    }
    if let Some(input) = app.input.as_mut() {
        match k.code {
            KeyCode::Esc => {
                app.input = None;
                app.input_error = None;
            }
            KeyCode::Enter => match Filter::parse(input) {
                Ok(f) => {
                    app.filter = f;
                    app.input = None;
                    app.input_error = None;
                    app.alloc_cursor = 0;
                    app.selected_alloc = None;
                    app.refresh_now();
                }
                Err(e) => app.input_error = Some(e),
            },
            KeyCode::Backspace => {
                input.pop();
            }
            KeyCode::Char(c) if !c.is_control() => input.push(c),
            _ => {}
        }
        return None;
    }
    if app.help {
        // Any key closes the help; q still quits.
        app.help = false;
        if k.code != KeyCode::Char('q') {
            return None;
        }
    }
    match k.code {
        KeyCode::Char('q') => return Some(Effect::Exit(None)),
        KeyCode::Char('?') | KeyCode::F(1) => app.help = true,
        KeyCode::Esc => {
            if app.detail {
                app.detail = false;
            } else if !app.filter.is_empty() {
                app.filter = Filter::default();
                app.refresh_now();
            } else {
                app.focus = Focus::Processes;
            }
        }
        KeyCode::Up | KeyCode::Char('k') => app.move_cursor(-1),
        KeyCode::Down | KeyCode::Char('j') => app.move_cursor(1),
        KeyCode::PageUp => app.move_cursor(-app.page()),
        KeyCode::PageDown => app.move_cursor(app.page()),
        KeyCode::Home => app.move_cursor(isize::MIN / 2),
        KeyCode::End => app.move_cursor(isize::MAX / 2),
        KeyCode::Tab | KeyCode::BackTab | KeyCode::Left | KeyCode::Right => {
            app.focus = match app.focus {
                Focus::Processes => Focus::Allocations,
                Focus::Allocations => Focus::Processes,
            };
        }
        KeyCode::Char('h') => app.focus = Focus::Processes,
        KeyCode::Char('l') => app.focus = Focus::Allocations,
        KeyCode::Enter => match app.focus {
            Focus::Processes => app.focus = Focus::Allocations,
            Focus::Allocations => {
                app.detail = !app.detail;
                app.prepare_detail();
            }
        },
        KeyCode::Char('/') => {
            app.input = Some(app.filter.text.clone());
            app.input_error = None;
        }
        KeyCode::Char('s') => {
            match app.focus {
                Focus::Processes => app.proc_sort = app.proc_sort.next(),
                Focus::Allocations => {
                    app.alloc_order = match app.alloc_order {
                        AllocOrder::Newest => AllocOrder::Largest,
                        AllocOrder::Largest => AllocOrder::Newest,
                    }
                }
            }
            app.refresh_now();
        }
        KeyCode::Char('S') | KeyCode::Char('r') => {
            app.proc_desc = !app.proc_desc;
            app.refresh_now();
        }
        KeyCode::Char('e') => app.show_events = !app.show_events,
        KeyCode::Char('x') => {
            app.hide_exited = !app.hide_exited;
            app.refresh_now();
        }
        KeyCode::Char('p') | KeyCode::Char(' ') => {
            if app.is_replay() {
                return Some(Effect::Replay(Control::Pause(!app.paused)));
            }
            app.paused = !app.paused;
            if !app.paused {
                let held = std::mem::take(&mut app.held);
                app.apply(held);
                app.refresh();
            }
        }
        KeyCode::Char('n') | KeyCode::Char('.') if app.is_replay() => {
            return Some(Effect::Replay(Control::Step));
        }
        KeyCode::Char('+') | KeyCode::Char('=') if app.is_replay() => {
            return Some(Effect::Replay(Control::Seek(SeekTo::Rel(SEEK_NS))));
        }
        KeyCode::Char('-') if app.is_replay() => {
            return Some(Effect::Replay(Control::Seek(SeekTo::Rel(-SEEK_NS))));
        }
        KeyCode::Char(c @ ('o' | 'O' | 'a' | 'A')) if app.is_replay() => {
            let Some(marks) = &app.marks else {
                app.alert(
                    app.now_ns,
                    "still looking for OOMs and alerts in the trace".into(),
                );
                return None;
            };
            let times = if c.eq_ignore_ascii_case(&'o') {
                &marks.ooms
            } else {
                &marks.alerts
            };
            let forward = c.is_ascii_lowercase();
            match crate::tui::Marks::next(times, app.now_ns, forward) {
                Some(ts) => return Some(Effect::Replay(Control::Jump(ts))),
                None => {
                    let what = if c.eq_ignore_ascii_case(&'o') {
                        "OOM"
                    } else {
                        "alert"
                    };
                    let dir = if forward { "after" } else { "before" };
                    app.alert(app.now_ns, format!("no {what} {dir} this point"));
                }
            }
        }
        KeyCode::Char('g') if app.is_replay() => {
            return Some(Effect::Replay(Control::Seek(SeekTo::Start)));
        }
        KeyCode::Char('G') if app.is_replay() => {
            return Some(Effect::Replay(Control::Seek(SeekTo::End)));
        }
        _ => {}
    }
    None
}

pub(super) fn on_mouse(app: &mut App, m: MouseEvent) {
    let areas = view::areas(app, app.size);
    let pos = Position::new(m.column, m.row);
    let pane = if areas.procs.contains(pos) {
        Some((Focus::Processes, areas.procs))
    } else if areas.allocs.contains(pos) {
        Some((Focus::Allocations, areas.allocs))
    } else {
        None
    };
    let Some((focus, area)) = pane else { return };
    match m.kind {
        MouseEventKind::ScrollDown => {
            app.focus = focus;
            app.move_cursor(3);
        }
        MouseEventKind::ScrollUp => {
            app.focus = focus;
            app.move_cursor(-3);
        }
        MouseEventKind::Down(MouseButton::Left) => {
            app.focus = focus;
            // Border and header rows come first; the table scrolls to keep the cursor in view.
            let first_row = area.y + 2;
            if m.row < first_row {
                return;
            }
            let visible = usize::from(area.height.saturating_sub(3).max(1));
            let cursor = match focus {
                Focus::Processes => app.proc_cursor,
                Focus::Allocations => app.alloc_cursor,
            };
            let offset = view::scroll_offset(cursor, visible);
            let target = offset + usize::from(m.row - first_row);
            let delta = target as isize - cursor as isize;
            app.move_cursor(delta);
        }
        _ => {}
    }
}
