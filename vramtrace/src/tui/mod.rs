//! `vramtrace top`: the live terminal view, per GPU, process and allocation, of a recording
//! on this machine or of a trace replayed from a file.
//!
//! One channel of [`Msg`]s (keys, mouse, ticks, batches of records, replay progress) feeds
//! one loop, which alone owns the [`App`] state: [`update`] changes it and may ask for an
//! [`Effect`]; [`render`] only draws it. Records go through the project's one [`Ledger`]
//! whether they come from the probes or from a trace file.
//!
//! [`Ledger`]: crate::ledger::Ledger

pub mod app;
pub mod class;
pub mod list;
pub mod mirror;
pub mod replay;
pub mod synth;
pub mod term;
pub mod view;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::{
    sync::mpsc::{self, Receiver, Sender},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use crossterm::event::{Event, KeyEvent, MouseEvent};
use ratatui::layout::Rect;

pub use app::{App, Mode, update};
pub use view::render;

use crate::{
    cli::TopArgs,
    probe::placement::ProbeAt,
    session::{self, LiveSink, RecordOptions},
    trace::Record,
};

/// How often the view refreshes its figures and redraws without input.
const TICK: Duration = Duration::from_millis(250);

/// Everything that can change the view's state.
#[derive(Debug)]
pub enum Msg {
    Key(KeyEvent),
    Mouse(MouseEvent),
    Resize(u16, u16),
    /// Time passes; `now_ns` on `CLOCK_MONOTONIC`, the clock of live traces.
    Tick {
        now_ns: u64,
    },
    /// Records, in trace order.
    Records(Vec<Record>),
    /// Where the replay stands.
    Replay(ReplayStatus),
    /// The replay starts over: forget every record seen.
    Reset,
    /// A replayed trace was read to its end: the reader's verdict on it.
    Integrity(crate::trace::Integrity),
    /// Where a replayed trace's out-of-memory failures and alerts are, for the jump keys.
    Marks(Marks),
    /// The producer stopped: a recording ended, or could not start (with why).
    Ended(Result<(), String>),
}

/// What the main loop does for [`update`] besides changing state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Leave; with an error to report, if any.
    Exit(Option<String>),
    /// Tell the replay producer.
    Replay(Control),
}

/// Commands to the replay producer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Pause(bool),
    /// One timed record forward (pauses).
    Step,
    Seek(SeekTo),
    /// Seek to this time on the trace clock and pause there.
    Jump(u64),
}

/// Where to seek.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeekTo {
    Start,
    End,
    /// Nanoseconds forward (or back, negative) from the current position.
    Rel(i64),
    /// This time on the trace clock.
    Abs(u64),
}

/// Moments of a replayed trace, found by a first pass of the Ledger over it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Marks {
    /// When all processes together held the most device memory.
    pub peak_ns: Option<u64>,
    /// Each out-of-memory failure.
    pub ooms: Vec<u64>,
    /// Each alert: out-of-memory failures, host-memory findings and anomalies.
    pub alerts: Vec<u64>,
}

impl Marks {
    /// The first of `times` after `pos` (`forward`) or the last before it.
    pub fn next(times: &[u64], pos: u64, forward: bool) -> Option<u64> {
        if forward {
            times.iter().copied().find(|&t| t > pos)
        } else {
            times.iter().rev().copied().find(|&t| t < pos)
        }
    }
}

/// The replay's position on the trace clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayStatus {
    pub start_ns: u64,
    pub pos_ns: u64,
    /// Known once the whole trace was read.
    pub end_ns: Option<u64>,
    pub paused: bool,
    pub finished: bool,
}

/// `vramtrace top`: runs the view until the user quits.
pub fn top(args: TopArgs) -> Result<()> {
    if let Some(speed) = args.speed
        && !(speed.is_finite() && speed > 0.0)
    {
        bail!("--speed must be a positive number");
    }
    let (tx, rx) = mpsc::channel();
    let color = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    match args.replay {
        Some(path) if crate::trace::read::is_stdin(&path) => {
            bail!(
                "top --replay needs a trace file: it reads its keys from the terminal (and \
                 replays from the start on request), not from standard input"
            )
        }
        Some(path) => {
            let speed = args.speed.unwrap_or(1.0);
            let (ctl_tx, ctl_rx) = mpsc::channel();
            let mode = Mode::Replay {
                file: path.file_name().map_or_else(
                    || path.display().to_string(),
                    |n| n.to_string_lossy().into(),
                ),
                speed,
            };
            let producer = replay::Replayer::new(path, speed, tx.clone(), ctl_rx).at(args.at);
            thread::Builder::new()
                .name("replay".into())
                .spawn(move || producer.run())
                .context("starting the replay thread")?;
            run_loop(App::new(mode), color, tx, rx, Some(ctl_tx))
        }
        None => {
            let scope = if args.pids.is_empty() {
                "every process".to_string()
            } else {
                format!("pids {:?}", args.pids)
            };
            let mode = Mode::Live {
                scope,
                output: args.output.as_ref().map(|p| p.display().to_string()),
            };
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
            let opts = RecordOptions {
                output: args.output,
                force: args.force,
                pids: args.pids,
                libcuda: args.libcuda,
                duration: None,
                command: Vec::new(),
                stacks: args.stack.mode(),
                hold_new: args.stack.hold_new,
                ring_bytes: 32 << 20,
                probe_at: ProbeAt::Auto,
                verbose: false,
                quiet: true,
                nvml_interval: Some(std::time::Duration::from_millis(500)),
                policy: crate::session::Policy::Report,
                host_signal: 0,
            };
            let sink_tx = tx.clone();
            let end_tx = tx.clone();
            let session = thread::Builder::new()
                .name("session".into())
                .spawn(move || {
                    let live = LiveSink {
                        on_records: Box::new(move |batch| {
                            let _ = sink_tx.send(Msg::Records(batch));
                        }),
                        stop: stop_rx,
                    };
                    let outcome = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .context("starting the runtime")
                        .and_then(|rt| rt.block_on(session::record_with(opts, Some(live))));
                    let _ = end_tx.send(Msg::Ended(
                        outcome.as_ref().map(|_| ()).map_err(|e| format!("{e:#}")),
                    ));
                    outcome
                })
                .context("starting the recording thread")?;
            let result = run_loop(App::new(mode), color, tx, rx, None);
            // Hanging up stops the recording, which then seals the trace file.
            drop(stop_tx);
            match session.join() {
                Ok(Ok(outcome)) => {
                    if outcome.lost_events > 0 {
                        eprintln!("vramtrace: {} events lost", outcome.lost_events);
                    }
                }
                // Already reported through the loop when it ended it.
                Ok(Err(e)) if result.is_ok() => return Err(e),
                Ok(Err(_)) => {}
                Err(_) => bail!("the recording thread panicked"),
            }
            result
        }
    }
}

fn spawn_input(tx: Sender<Msg>) -> Result<()> {
    thread::Builder::new()
        .name("input".into())
        .spawn(move || {
            loop {
                let msg = match crossterm::event::read() {
                    Ok(Event::Key(k)) => Msg::Key(k),
                    Ok(Event::Mouse(m)) => Msg::Mouse(m),
                    Ok(Event::Resize(w, h)) => Msg::Resize(w, h),
                    Ok(_) => continue,
                    Err(_) => return,
                };
                if tx.send(msg).is_err() {
                    return;
                }
            }
        })
        .context("starting the input thread")?;
    Ok(())
}

fn spawn_ticker(tx: Sender<Msg>) -> Result<()> {
    thread::Builder::new()
        .name("tick".into())
        .spawn(move || {
            while tx
                .send(Msg::Tick {
                    now_ns: session::monotonic_ns(),
                })
                .is_ok()
            {
                thread::sleep(TICK);
            }
        })
        .context("starting the ticker")?;
    Ok(())
}

/// The main loop: the only owner of `app`.
fn run_loop(
    mut app: App,
    color: bool,
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
    replay: Option<Sender<Control>>,
) -> Result<()> {
    app.color = color;
    let mut guard = term::TerminalGuard::enter().context("setting up the terminal")?;
    let size = guard.terminal.size().context("reading the terminal size")?;
    app.size = Rect::new(0, 0, size.width, size.height);
    spawn_input(tx.clone())?;
    spawn_ticker(tx)?;
    guard.terminal.draw(|f| render(&app, f))?;
    loop {
        let msg = rx.recv().context("every producer stopped")?;
        // Records and replay progress arrive often; drawing on input and ticks is enough.
        let redraw = matches!(
            msg,
            Msg::Key(_) | Msg::Mouse(_) | Msg::Resize(..) | Msg::Tick { .. } | Msg::Reset
        );
        match update(&mut app, msg) {
            None => {}
            Some(Effect::Exit(None)) => break,
            Some(Effect::Exit(Some(e))) => {
                drop(guard);
                return Err(anyhow!(e));
            }
            Some(Effect::Replay(c)) => {
                if let Some(r) = &replay {
                    // A replay that ended already cannot be told anything; nothing to do then.
                    let _ = r.send(c);
                }
            }
        }
        if redraw {
            guard.terminal.draw(|f| render(&app, f))?;
        }
    }
    drop(guard);
    Ok(())
}
