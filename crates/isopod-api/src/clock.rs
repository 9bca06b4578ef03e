//! The coarse clock tenant code reads: `Date.now()`, `new Date()`,
//! `performance.now()` and friends.
//!
//! Spectre hygiene, as workerd does it: time does not advance while
//! JavaScript runs. The host sets the clock when it enters the isolate (each
//! window: a request dispatch, one poll of the event loop), so a busy loop,
//! or a chain of microtasks, sees one instant however long it runs, and time
//! moves only between I/O events and timer turns. A tenant cannot build a
//! fine timer from it, and a repeated measurement measures nothing.
//!
//! Design, for a cost of nothing per read and next to nothing per window:
//! the bootstrap hands each isolate's clock buffer (16 bytes: wall-clock and
//! monotonic milliseconds, as two `f64`s) to [`op_isopod_clock`], which
//! keeps its backing store in an isolate slot; [`advance_clock`], called at
//! every window entry with the instant the host read there, writes that
//! time into it; JavaScript reads the `Float64Array` over it, with no op
//! call. Both values are whole milliseconds. The wall clock is read once a
//! second per thread and derived from the monotonic instant in between, so
//! a window's entry costs one clock read, shared with the host.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use deno_core::{op2, v8};

/// The clock buffer's backing store, kept alive by the isolate.
struct ClockSlot(v8::SharedRef<v8::BackingStore>);

/// The size of the clock buffer: two `f64`s.
const CLOCK_BYTES: usize = 16;

/// Sets the isolate's clock to `now_ns` (the window's entry, read once by
/// the host for everything timed there, as [`monotonic_ns`]). Called by the
/// host at every window entry; does nothing for an isolate whose bootstrap
/// has not registered a clock (a snapshot being made).
pub fn advance_clock(isolate: &v8::Isolate, now_ns: u64) {
    if let Some(ClockSlot(store)) = isolate.get_slot::<ClockSlot>() {
        write_time(store, now_ns);
    }
}

/// `at` as nanoseconds of the process's monotonic clock (counted from a base
/// taken once per process): the one scale every window-timed figure uses,
/// so an instant is converted once per window and compared as an integer
/// after that (`Instant` arithmetic costs about 50 instructions a step).
pub fn monotonic_ns(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(base()).as_nanos()).unwrap_or(u64::MAX)
}

/// How long the thread's pairing of the wall clock with the monotonic one
/// serves before the wall clock is read again, in nanoseconds: the wall time
/// tenants see is derived from the window's monotonic instant in between, so
/// it follows a step of the system clock within this long.
const WALL_ANCHOR_FOR_NS: u64 = 1_000_000_000;

thread_local! {
    /// A wall-clock reading (milliseconds since the epoch) and the
    /// monotonic instant it was taken at (nanoseconds since [`base`]).
    static WALL_ANCHOR: Cell<Option<(f64, u64)>> = const { Cell::new(None) };
}

/// The instant monotonic time is counted from, for the whole process.
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// The wall clock at `now_ns` (nanoseconds since [`base`]), in milliseconds
/// since the epoch, from the thread's anchor (read again when older than
/// [`WALL_ANCHOR_FOR_NS`]).
fn wall_millis(now_ns: u64) -> f64 {
    if let Some((wall, at_ns)) = WALL_ANCHOR.get() {
        let since = now_ns.wrapping_sub(at_ns);
        if now_ns >= at_ns && since <= WALL_ANCHOR_FOR_NS {
            return wall + since as f64 / 1e6;
        }
    }
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    WALL_ANCHOR.set(Some((wall, now_ns)));
    wall
}

/// Writes `now_ns` into the clock buffer. Run at every window entry: its
/// arithmetic is in integer nanoseconds, with no `Instant` or `Duration`
/// conversions, which cost more than all the rest.
fn write_time(store: &v8::BackingStore, now_ns: u64) {
    let wall = wall_millis(now_ns).floor();
    let monotonic = (now_ns / 1_000_000) as f64;
    let Some(data) = store.data() else {
        return;
    };
    // SAFETY: the store is exactly CLOCK_BYTES (two f64s) long and not
    // shared with another isolate or thread (both checked by
    // `op_isopod_clock`, the only way in), and its isolate's JavaScript
    // runs only on this thread, never during this write. Unaligned: V8
    // does not promise the data's alignment. One store, not sixteen byte
    // cells (a window entry's largest cost after the isolate's own).
    unsafe { std::ptr::write_unaligned(data.cast::<[f64; 2]>().as_ptr(), [wall, monotonic]) };
}

/// Registers `buffer` (a fresh 16-byte `ArrayBuffer`, kept by the
/// bootstrap's closures) as this isolate's clock and sets it to now. Called
/// once per isolate, so not worth a fast path.
#[op2(nofast)]
pub(crate) fn op_isopod_clock(
    scope: &mut v8::PinScope<'_, '_>,
    buffer: v8::Local<v8::ArrayBuffer>,
) -> Result<(), deno_error::JsErrorBox> {
    let store = buffer.get_backing_store();
    if store.byte_length() != CLOCK_BYTES || store.is_shared() {
        return Err(deno_error::JsErrorBox::type_error(
            "the clock buffer must be a 16-byte ArrayBuffer",
        ));
    }
    write_time(&store, monotonic_ns(Instant::now()));
    scope.set_slot(ClockSlot(store));
    Ok(())
}
