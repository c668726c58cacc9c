//! Writing to stdout and stderr when their reader may go away (`| head`): a report ends at a
//! closed pipe, and a diagnostic never stops a recording.

use std::io::{self, ErrorKind, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether diagnostics are JSON lines (`--log-format json`), set once at start.
static JSON: AtomicBool = AtomicBool::new(false);

/// Makes [`say!`] go through the `tracing` subscriber (which then writes JSON lines) instead
/// of writing its own line, so that stderr holds one format only.
pub fn set_json(on: bool) {
    JSON.store(on, Ordering::Relaxed);
}

/// The `tracing` target of the diagnostics [`say!`] writes in JSON mode; the subscriber lets
/// it through at every verbosity, as the human lines are.
pub const SAY_TARGET: &str = "vramtrace::console";

/// Like `eprintln!`, but a stderr that cannot be written (its reader gone, as under
/// `2>&1 | head`) is ignored: a diagnostic must never end a recording, as `eprintln!`'s panic
/// would.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::console::say_args(::std::format_args!($($arg)*))
    };
}

/// What [`say!`] does: one line on stderr, write errors ignored.
#[doc(hidden)]
pub fn say_args(args: std::fmt::Arguments<'_>) {
    if !JSON.load(Ordering::Relaxed) {
        let _ = writeln!(io::stderr().lock(), "{args}");
        return;
    }
    // The human lines start with "vramtrace: " and, for the worst news, "error: " or
    // "warning: "; in a JSON line those are the level, not part of the message.
    let text = args.to_string();
    let text = text.strip_prefix("vramtrace: ").unwrap_or(&text);
    if let Some(m) = text.strip_prefix("error: ") {
        tracing::error!(target: SAY_TARGET, "{m}");
    } else if let Some(m) = text.strip_prefix("warning: ") {
        tracing::warn!(target: SAY_TARGET, "{m}");
    } else {
        tracing::info!(target: SAY_TARGET, "{text}");
    }
}

/// Writes `text` to stdout and flushes it. A reader that went away ends the output and is not
/// an error, as for other command-line tools (Rust ignores SIGPIPE, so the write says
/// `BrokenPipe` instead of the process being killed).
pub fn print(text: &str) -> io::Result<()> {
    let mut out = stdout();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// Standard output whose reader may go away (`| head`): what is written after that is
/// dropped instead of failing, so that a report or an export ends quietly.
pub struct Stdout {
    out: io::Stdout,
    gone: bool,
}

/// Standard output, as [`Stdout`].
pub fn stdout() -> Stdout {
    Stdout {
        out: io::stdout(),
        gone: false,
    }
}

impl io::Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.gone {
            return Ok(buf.len());
        }
        match self.out.write(buf) {
            Err(e) if e.kind() == ErrorKind::BrokenPipe => {
                self.gone = true;
                Ok(buf.len())
            }
            r => r,
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.gone {
            return Ok(());
        }
        match self.out.flush() {
            Err(e) if e.kind() == ErrorKind::BrokenPipe => {
                self.gone = true;
                Ok(())
            }
            r => r,
        }
    }
}
