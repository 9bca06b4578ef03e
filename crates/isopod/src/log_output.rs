//! Where log records go: stderr, written in batches by a thread of its own,
//! as JSON lines (the default) or readable lines.
//!
//! Every request to an app writes an access record, so the cost of one
//! record is a cost per request. Two things keep it small:
//!
//! - [`JsonLines`] writes each field straight into the line, with no map of
//!   values built first and no UTF-8 check of each piece (what
//!   `tracing-subscriber`'s own JSON format does).
//! - [`BatchedStderr`] appends the line to a shared buffer under a lock
//!   held for a copy; the writing thread is woken once per batch (when the
//!   buffer stops being empty), gathers lines for a few milliseconds, and
//!   writes them with one `write`. No request waits for stderr, and no
//!   record wakes a thread of its own.
//!
//! Invariant: a record is never dropped. Past [`MAX_PENDING`] bytes not yet
//! written (stderr is not being read), writers wait for the writing thread.

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// How long the writing thread gathers lines before it writes them.
const BATCH_WINDOW: Duration = Duration::from_millis(10);

/// Bytes not yet written past which a writer waits.
const MAX_PENDING: usize = 8 << 20;

/// Log records as JSON lines: `timestamp`, `level`, `target`, then the
/// event's fields (`message` among them) at the top level.
///
/// The line is built in a buffer of the thread's with plain pushes and
/// handed to the writer in one call: each piece written through
/// `fmt::Write` would be a dynamic call of its own.
pub(crate) struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        thread_local! {
            static LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        LINE.with(|line| {
            // A record made while formatting one (a field's `Debug` that
            // logs) gets a buffer of its own.
            let mut own = String::new();
            let mut borrowed = line.try_borrow_mut();
            let line = match &mut borrowed {
                Ok(line) => &mut **line,
                Err(_) => &mut own,
            };
            line.clear();
            json_line(line, event);
            writer.write_str(line)
        })
    }
}

/// `event` as one JSON line, into `line`.
fn json_line(line: &mut String, event: &Event<'_>) {
    let metadata = event.metadata();
    line.push_str("{\"timestamp\":\"");
    push_timestamp(line, std::time::SystemTime::now());
    line.push_str("\",\"level\":\"");
    line.push_str(metadata.level().as_str());
    line.push_str("\",\"target\":");
    push_json_string(line, metadata.target());
    event.record(&mut JsonFields(line));
    line.push_str("}\n");
}

/// An event's fields written as `,"name":value` pairs.
struct JsonFields<'a>(&'a mut String);

impl JsonFields<'_> {
    fn name(&mut self, field: &Field) -> &mut String {
        self.0.push(',');
        push_json_string(self.0, field.name());
        self.0.push(':');
        self.0
    }
}

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        push_json_string(self.name(field), value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.name(field)
            .push_str(if value { "true" } else { "false" });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.name(field).push_str(itoa::Buffer::new().format(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.name(field).push_str(itoa::Buffer::new().format(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        let line = self.name(field);
        if value.is_finite() {
            // The shortest form that reads back as the same number,
            // without `core::fmt`'s float machinery.
            line.push_str(zmij::Buffer::new().format_finite(value));
        } else {
            // JSON has no NaN or infinity.
            line.push_str("null");
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let line = self.name(field);
        line.push('"');
        // Writing into a `String` cannot fail.
        let _ = write!(Escaping(&mut *line), "{value:?}");
        line.push('"');
    }
}

/// `text` as a JSON string, quotes included.
fn push_json_string(line: &mut String, text: &str) {
    line.push('"');
    push_escaped(line, text);
    line.push('"');
}

/// Whether a byte must be escaped in a JSON string.
fn needs_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

/// `text` with JSON's string escapes.
fn push_escaped(line: &mut String, text: &str) {
    let bytes = text.as_bytes();
    // Most text needs no escape: one scan, one copy.
    let Some(first) = bytes.iter().position(|&b| needs_escape(b)) else {
        line.push_str(text);
        return;
    };
    let mut start = 0;
    for (i, &byte) in bytes.iter().enumerate().skip(first) {
        if !needs_escape(byte) {
            continue;
        }
        // Escapes replace ASCII bytes, so `i` is a char boundary.
        line.push_str(&text[start..i]);
        match byte {
            b'"' => line.push_str("\\\""),
            b'\\' => line.push_str("\\\\"),
            b'\n' => line.push_str("\\n"),
            b'\r' => line.push_str("\\r"),
            b'\t' => line.push_str("\\t"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                line.push_str("\\u00");
                line.push(char::from(HEX[usize::from(byte >> 4)]));
                line.push(char::from(HEX[usize::from(byte & 0xf)]));
            }
        }
        start = i + 1;
    }
    line.push_str(&text[start..]);
}

/// A `fmt::Write` that escapes what it is given (for `Debug` fields).
struct Escaping<'a>(&'a mut String);

impl fmt::Write for Escaping<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        push_escaped(self.0, text);
        Ok(())
    }
}

/// `at` in RFC 3339 UTC with microseconds (`2026-12-02T21:21:15.123456Z`).
fn push_timestamp(line: &mut String, at: std::time::SystemTime) {
    let since = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let seconds = since.as_secs();
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    let second_of_day = seconds % 86_400;
    // Digits by hand: `core::fmt`'s padding costs more than the rest of a
    // record's fixed fields together.
    let mut text = *b"0000-00-00T00:00:00.000000Z";
    let mut put = |at: usize, width: usize, mut value: u64| {
        for slot in text[at..at + width].iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year.clamp(0, 9999) as u64);
    put(5, 2, u64::from(month));
    put(8, 2, u64::from(day));
    put(11, 2, second_of_day / 3600);
    put(14, 2, second_of_day / 60 % 60);
    put(17, 2, second_of_day % 60);
    put(20, 6, u64::from(since.subsec_micros()));
    // ASCII digits and punctuation.
    line.push_str(std::str::from_utf8(&text).unwrap_or_default());
}

/// The proleptic Gregorian date of a day counted from 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// stderr, written in batches by a thread of its own.
#[derive(Clone)]
pub(crate) struct BatchedStderr {
    shared: Arc<Shared>,
}

struct Shared {
    pending: Mutex<Vec<u8>>,
    /// Lines arrived in an empty buffer, or the process is stopping.
    arrived: Condvar,
    /// The buffer was written out (for writers waiting on a full one).
    drained: Condvar,
    stopping: AtomicBool,
}

/// Stops the writing thread and writes what is left, when dropped.
pub(crate) struct FlushOnDrop {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BatchedStderr {
    /// The writer, and the guard that flushes it.
    pub(crate) fn start() -> (BatchedStderr, FlushOnDrop) {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Vec::with_capacity(64 * 1024)),
            arrived: Condvar::new(),
            drained: Condvar::new(),
            stopping: AtomicBool::new(false),
        });
        let writer_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("isopod-log".into())
            .spawn(move || write_batches(&writer_shared))
            .ok();
        (
            BatchedStderr {
                shared: shared.clone(),
            },
            FlushOnDrop { shared, thread },
        )
    }
}

fn write_batches(shared: &Shared) {
    let mut batch = Vec::with_capacity(64 * 1024);
    let mut stderr = std::io::stderr();
    loop {
        {
            let mut pending = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
            while pending.is_empty() && !shared.stopping.load(Ordering::Acquire) {
                pending = shared
                    .arrived
                    .wait(pending)
                    .unwrap_or_else(|e| e.into_inner());
            }
            if pending.is_empty() {
                return;
            }
        }
        // Gather what else arrives for a moment: one write for the lot.
        if !shared.stopping.load(Ordering::Acquire) {
            std::thread::sleep(BATCH_WINDOW);
        }
        {
            let mut pending = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::swap(&mut *pending, &mut batch);
        }
        shared.drained.notify_all();
        // Nothing to do if stderr is gone.
        let _ = stderr.write_all(&batch);
        batch.clear();
    }
}

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.arrived.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One record's write into the shared buffer.
pub(crate) struct BatchWriter<'a> {
    shared: &'a Shared,
}

impl std::io::Write for BatchWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        while pending.len() > MAX_PENDING && !self.shared.stopping.load(Ordering::Acquire) {
            pending = self
                .shared
                .drained
                .wait(pending)
                .unwrap_or_else(|e| e.into_inner());
        }
        let was_empty = pending.is_empty();
        pending.extend_from_slice(bytes);
        drop(pending);
        if was_empty {
            self.shared.arrived.notify_one();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchedStderr {
    type Writer = BatchWriter<'a>;

    fn make_writer(&'a self) -> BatchWriter<'a> {
        BatchWriter {
            shared: &self.shared,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc_3339() {
        let at = std::time::UNIX_EPOCH + Duration::from_micros(1_796_246_475_123_456);
        let mut text = String::new();
        push_timestamp(&mut text, at);
        assert_eq!(text, "2026-12-02T21:21:15.123456Z");
        let mut text = String::new();
        push_timestamp(
            &mut text,
            std::time::UNIX_EPOCH + Duration::from_secs(951_782_400),
        );
        assert_eq!(text, "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn strings_are_escaped() {
        let mut text = String::new();
        push_json_string(&mut text, "a \"b\" \\ c\nd\u{1}é");
        assert_eq!(text, r#""a \"b\" \\ c\nd\u0001é""#);
        let parsed: String = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed, "a \"b\" \\ c\nd\u{1}é");
    }
}
