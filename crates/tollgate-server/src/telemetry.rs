//! Logging: `tracing` to stderr, as text or JSON lines. Secrets, keys, emails and prompt or
//! completion bodies are never logged (see docs in ARCHITECTURE.md).
//!
//! A serving process logs a line per request. Written one `write` each, those lines were a
//! system call per request; when stderr is not a terminal, lines below `WARN` are gathered
//! instead and written together once they have waited [`LINGER`] or filled [`FLUSH_AT`]. A
//! warning or an error is written at once, after what waits before it, so order is kept and
//! nothing that matters waits. What a crash (SIGKILL) can lose is the last [`LINGER`] of
//! information lines.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

use crate::config::LogFormat;

/// How long a gathered line waits at most before it is written.
const LINGER: Duration = Duration::from_millis(100);
/// Gathered lines written at once past this size.
const FLUSH_AT: usize = 64 << 10;

/// Installs the global subscriber. `RUST_LOG`, when set, overrides the configured filter.
/// `gather` gathers lines as the module says (for a serving process), unless stderr is a
/// terminal, where a person reads each line as it comes.
pub fn init(format: LogFormat, filter: &str, gather: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    let terminal = std::io::stderr().is_terminal();
    let gather = gather && !terminal;
    if gather {
        let started = std::thread::Builder::new()
            .name("log-writer".to_owned())
            .spawn(|| SPOOL.write_when_due());
        if started.is_err() {
            // Without the thread nothing would write gathered lines: write each at once.
            return init_with(format, filter, terminal, Stderr { gather: false });
        }
        // A panic's message comes after the lines logged before it.
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |panic| {
            // Not if the panic struck while the spool was held (that would deadlock).
            if let Ok(mut lines) = SPOOL.lines.try_lock() {
                let _ = SPOOL.write_out(&mut lines);
            }
            report(panic);
        }));
    }
    init_with(format, filter, terminal, Stderr { gather });
}

fn init_with(format: LogFormat, filter: EnvFilter, terminal: bool, writer: Stderr) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_timer(LineTime)
        // Colour only for a person at a terminal, never in files or log collectors.
        .with_ansi(terminal);
    // A second init (tests) keeps the first subscriber; that is fine.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
}

/// A line's time as the default timer writes it (RFC 3339, UTC, to the microsecond), with the
/// part down to the second formatted once a second on each thread instead of for every line
/// (a tenth of what formatting a request's log line cost).
struct LineTime;

impl FormatTime for LineTime {
    #[expect(
        clippy::disallowed_methods,
        reason = "a log line's time is the wall clock's, as the default timer's is"
    )]
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        thread_local! {
            static SECOND: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
        }
        let now = chrono::Utc::now();
        let (secs, micros) = (now.timestamp(), now.timestamp_subsec_micros().min(999_999));
        SECOND.with_borrow_mut(|(second, text)| {
            if *second != secs {
                text.clear();
                write!(text, "{}", now.format("%Y-%m-%dT%H:%M:%S"))?;
                *second = secs;
            }
            write!(w, "{text}.{micros:06}Z")
        })
    }
}

/// Writes every gathered line: before the process exits.
pub fn flush() {
    let _ = SPOOL.write_out(&mut SPOOL.lines());
}

/// Lines gathered for stderr.
static SPOOL: Spool = Spool {
    lines: Mutex::new(Vec::new()),
    waiting: Condvar::new(),
    out: write_to_stderr,
};

struct Spool {
    lines: Mutex<Vec<u8>>,
    /// Signalled when a line arrives to an empty spool.
    waiting: Condvar,
    /// Where lines go (stderr; a buffer in tests).
    out: fn(&[u8]) -> std::io::Result<()>,
}

fn write_to_stderr(lines: &[u8]) -> std::io::Result<()> {
    std::io::stderr().lock().write_all(lines)
}

impl Spool {
    fn lines(&self) -> MutexGuard<'_, Vec<u8>> {
        // Bytes only ever appended whole or taken whole: a panic cannot leave half a change.
        self.lines.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, line: &[u8], urgent: bool) -> std::io::Result<()> {
        let mut lines = self.lines();
        let first = lines.is_empty();
        lines.extend_from_slice(line);
        if urgent || lines.len() >= FLUSH_AT {
            return self.write_out(&mut lines);
        }
        if first {
            self.waiting.notify_one();
        }
        Ok(())
    }

    /// Writes and empties `lines` (held locked, so lines keep their order).
    fn write_out(&self, lines: &mut Vec<u8>) -> std::io::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let written = (self.out)(lines);
        lines.clear();
        written
    }

    /// The writer thread: asleep while nothing waits; otherwise writes what gathered over
    /// [`LINGER`] after the first line.
    #[expect(
        clippy::disallowed_methods,
        reason = "a thread of its own, not the runtime's; log lines wait in real time"
    )]
    fn write_when_due(&self) {
        loop {
            let mut lines = self.lines();
            while lines.is_empty() {
                lines = self.waiting.wait(lines).unwrap_or_else(PoisonError::into_inner);
            }
            drop(lines);
            std::thread::sleep(LINGER);
            let _ = self.write_out(&mut self.lines());
        }
    }
}

/// stderr as the subscriber's writer: each event's line written at once, or gathered.
struct Stderr {
    gather: bool,
}

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line { urgent: true }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Line {
        // Levels order by verbosity: ERROR < WARN < INFO.
        Line {
            urgent: !self.gather || *meta.level() <= tracing::Level::WARN,
        }
    }
}

/// One event's line (the subscriber writes each whole, with one `write_all`).
struct Line {
    urgent: bool,
}

impl std::io::Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        SPOOL.push(buf, self.urgent)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static WRITTEN: Mutex<Vec<u8>> = Mutex::new(Vec::new());

    fn written() -> MutexGuard<'static, Vec<u8>> {
        WRITTEN.lock().unwrap()
    }

    #[test]
    fn lines_wait_until_a_warning_or_a_full_spool_and_keep_their_order() {
        let spool = Spool {
            lines: Mutex::new(Vec::new()),
            waiting: Condvar::new(),
            out: |lines| {
                written().extend_from_slice(lines);
                Ok(())
            },
        };
        spool.push(b"one\n", false).unwrap();
        spool.push(b"two\n", false).unwrap();
        assert!(written().is_empty(), "information waits");
        spool.push(b"warned\n", true).unwrap();
        assert_eq!(
            written().as_slice(),
            b"one\ntwo\nwarned\n",
            "a warning writes it all, in order"
        );
        assert!(spool.lines().is_empty());
        spool.push(b"three\n", false).unwrap();
        spool.push(&vec![b'x'; FLUSH_AT], false).unwrap();
        assert_eq!(written().len(), 15 + 6 + FLUSH_AT, "a full spool is written");
        assert!(spool.lines().is_empty());
    }

    #[test]
    #[expect(
        clippy::disallowed_methods,
        reason = "the wall clock, as the log line's time reads it"
    )]
    fn a_line_time_is_rfc_3339_to_the_microsecond_and_current() {
        let time = || {
            let mut text = String::new();
            LineTime.format_time(&mut Writer::new(&mut text)).unwrap();
            text
        };
        for _ in 0..2 {
            // The second call takes the second's text from the thread's cache.
            let before = chrono::Utc::now();
            let text = time();
            let after = chrono::Utc::now();
            assert_eq!(text.len(), "2026-12-02T13:04:50.678599Z".len(), "{text}");
            assert!(text.ends_with('Z'), "{text}");
            let at = chrono::DateTime::parse_from_rfc3339(&text).unwrap();
            let truncated = |t: chrono::DateTime<chrono::Utc>| t.timestamp_micros();
            assert!(
                (truncated(before)..=truncated(after)).contains(&at.timestamp_micros()),
                "{text} outside {before} ..= {after}"
            );
        }
    }
}
