//! Each app's log records, for `GET /apps/NAME/logs`: the recent ones, and
//! a live tail.
//!
//! [`LogTail`] is a `tracing` layer beside the process's log output. It
//! keeps the last [`RECENT`] console, handler-error and kill records of
//! each app, and sends those and the app's access records to whoever
//! follows the app.
//!
//! Invariant: with nobody following, an access record costs this layer one
//! comparison of its target and one atomic load; only the rarer console,
//! handler and kill records are formatted here unconditionally.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};
use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;

/// How many records of each app are kept for a reader who does not follow.
pub(crate) const RECENT: usize = 100;

/// How many records a slow follower may fall behind before it misses some.
const FOLLOW_BUFFER: usize = 1024;

/// Each app's recent records and live followers; a `tracing` layer.
#[derive(Default)]
pub struct LogTail {
    /// Followers across all apps: zero on a server nobody tails.
    followers: AtomicUsize,
    apps: Mutex<HashMap<String, AppLog>>,
}

impl std::fmt::Debug for LogTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogTail")
            .field("followers", &self.followers.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

struct AppLog {
    recent: VecDeque<Arc<str>>,
    live: broadcast::Sender<Arc<str>>,
}

impl AppLog {
    fn new() -> AppLog {
        AppLog {
            recent: VecDeque::new(),
            live: broadcast::channel(FOLLOW_BUFFER).0,
        }
    }
}

/// A follower of one app's records; stops counting as one when dropped.
pub(crate) struct Following {
    tail: Arc<LogTail>,
    /// The app's records from the moment it began to follow.
    pub(crate) records: broadcast::Receiver<Arc<str>>,
}

impl Drop for Following {
    fn drop(&mut self) {
        self.tail.followers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl LogTail {
    /// A tail with no records yet; install it with
    /// [`LogTail::layer`].
    pub fn new() -> Arc<LogTail> {
        Arc::default()
    }

    /// The layer that feeds this tail, to add to the process's subscriber.
    pub fn layer(self: &Arc<Self>) -> LogTailLayer {
        LogTailLayer(self.clone())
    }

    /// `app`'s recent records, oldest first, as JSON lines.
    pub(crate) fn recent(&self, app: &str) -> Vec<Arc<str>> {
        let apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        apps.get(app)
            .map(|log| log.recent.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// `app`'s recent records, and a follower of its records from now on
    /// (taken under one lock, so none falls between the two).
    pub(crate) fn follow(self: &Arc<Self>, app: &str) -> (Vec<Arc<str>>, Following) {
        let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        let log = apps.entry(app.to_string()).or_insert_with(AppLog::new);
        self.followers.fetch_add(1, Ordering::Relaxed);
        let following = Following {
            tail: self.clone(),
            records: log.live.subscribe(),
        };
        (log.recent.iter().cloned().collect(), following)
    }

    /// Forgets a removed app's records.
    pub(crate) fn forget(&self, app: &str) {
        let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        if apps
            .get(app)
            .is_some_and(|log| log.live.receiver_count() == 0)
        {
            apps.remove(app);
        }
    }

    fn publish(&self, app: &str, line: Arc<str>, keep: bool) {
        let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        let log = match apps.get_mut(app) {
            Some(log) => log,
            None if keep => apps.entry(app.to_string()).or_insert_with(AppLog::new),
            None => return,
        };
        if keep {
            if log.recent.len() == RECENT {
                log.recent.pop_front();
            }
            log.recent.push_back(line.clone());
        }
        // No receiver is not an error: nobody follows this app.
        let _ = log.live.send(line);
    }
}

/// The `tracing` layer of a [`LogTail`].
pub struct LogTailLayer(Arc<LogTail>);

/// Which records an app's log holds: the kept ones, and access records,
/// which only go to followers.
fn kind(target: &str) -> Option<bool> {
    match target {
        "isopod::console" | "isopod::handler" | "isopod::kill" => Some(true),
        "isopod::access" => Some(false),
        _ => None,
    }
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for LogTailLayer {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let metadata = event.metadata();
        let Some(keep) = kind(metadata.target()) else {
            return;
        };
        if !keep && self.0.followers.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut fields = JsonFields(Map::new());
        event.record(&mut fields);
        let Some(Value::String(app)) = fields.0.get("app").cloned() else {
            return;
        };
        let mut record = Map::new();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        record.insert("ts_ms".into(), now.into());
        record.insert("level".into(), metadata.level().as_str().into());
        record.insert("target".into(), metadata.target().into());
        record.append(&mut fields.0);
        let line: Arc<str> = Value::Object(record).to_string().into();
        self.0.publish(&app, line, keep);
    }
}

/// An event's fields as JSON values.
struct JsonFields(Map<String, Value>);

impl Visit for JsonFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt as _;

    #[test]
    fn console_records_are_kept_and_access_records_only_followed() {
        let tail = LogTail::new();
        let subscriber = tracing_subscriber::registry().with(tail.layer());
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "isopod::access", app = "a", status = 200u16, "access");
            tracing::info!(target: "isopod::console", app = "a", "before");
            let (recent, mut following) = tail.follow("a");
            assert_eq!(recent.len(), 1);
            assert!(
                recent[0].contains("\"message\":\"before\""),
                "{}",
                recent[0]
            );
            tracing::info!(target: "isopod::console", app = "a", "after");
            tracing::info!(target: "isopod::access", app = "a", status = 200u16, "access");
            tracing::info!(target: "isopod::console", app = "b", "elsewhere");
            let first = following.records.try_recv().unwrap();
            assert!(first.contains("\"message\":\"after\""), "{first}");
            let second = following.records.try_recv().unwrap();
            assert!(second.contains("\"status\":200"), "{second}");
            assert!(following.records.try_recv().is_err());
        });
        assert_eq!(tail.recent("a").len(), 2);
    }
}
