//! `bindings.cron`: fires on a schedule (metadata `schedule`, see [`crate::schedule`]).
//!
//! Each firing hands the app an empty event with metadata `timeZone` (`Local`, as daprd
//! reports its scheduler's zone) and `readTimeUTC` (the firing time in Go's `time.String`
//! form). Firings are delivered one at a time; a firing that comes due while the previous
//! event is still being handled is skipped, not queued.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use jiff::Timestamp;
use tandem_components::bindings::{BindingEvent, EventHandler, InputBinding};
use tandem_components::pubsub::Subscription;
use tandem_components::{Error, Metadata, Result};

use crate::schedule::Schedule;

/// A `bindings.cron` component.
#[derive(Debug)]
pub struct CronBinding {
    name: String,
    schedule: Schedule,
}

impl CronBinding {
    /// Reads `schedule`.
    pub async fn build(meta: &Metadata) -> Result<Self> {
        let spec = meta
            .get("schedule")
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| Error::invalid_metadata("schedule", "schedule not set"))?;
        let schedule = Schedule::parse(spec).map_err(|e| {
            Error::invalid_metadata("schedule", format!("invalid schedule format: {e}"))
        })?;
        Ok(Self {
            name: meta.name.clone(),
            schedule,
        })
    }
}

/// Go's `time.Time.String()` for a UTC instant: `2006-01-02 15:04:05.999999999 +0000 UTC`.
fn go_time_string(t: Timestamp) -> String {
    let dt = t.to_zoned(jiff::tz::TimeZone::UTC).datetime();
    let mut s = dt.strftime("%Y-%m-%d %H:%M:%S").to_string();
    let nanos = dt.subsec_nanosecond();
    if nanos > 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push_str(" +0000 UTC");
    s
}

#[async_trait]
impl InputBinding for CronBinding {
    async fn read(&self, handler: Arc<dyn EventHandler>) -> Result<Subscription> {
        let (stop_tx, mut stop) = Subscription::channel();
        let schedule = self.schedule.clone();
        let name = self.name.clone();
        let task = tokio::spawn(async move {
            let mut last = Timestamp::now();
            loop {
                let Some(next) = schedule.next_after(last) else {
                    tracing::warn!(binding = %name, "the schedule has no further firing");
                    return;
                };
                let wait = (next - Timestamp::now())
                    .try_into()
                    .unwrap_or(std::time::Duration::ZERO);
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                let fired = Timestamp::now();
                let event = BindingEvent {
                    data: Bytes::new(),
                    metadata: HashMap::from([
                        ("timeZone".to_owned(), "Local".to_owned()),
                        ("readTimeUTC".to_owned(), go_time_string(fired)),
                    ]),
                };
                tracing::debug!(binding = %name, "schedule fired");
                if let Err(e) = handler.handle(event).await {
                    tracing::warn!(binding = %name, error = %e, "the app did not accept the cron event");
                }
                // Skip firings missed while the app was handling this one.
                last = next.max(Timestamp::now());
            }
        });
        Ok(Subscription::new(stop_tx, task))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Collect(Mutex<Vec<BindingEvent>>);

    #[async_trait]
    impl EventHandler for Collect {
        async fn handle(&self, event: BindingEvent) -> std::result::Result<Option<Bytes>, String> {
            self.0.lock().unwrap().push(event);
            Ok(None)
        }
    }

    #[test]
    fn go_time_strings() {
        let t: Timestamp = "2026-01-02T03:04:05.5Z".parse().unwrap();
        assert_eq!(go_time_string(t), "2026-01-02 03:04:05.5 +0000 UTC");
        let t: Timestamp = "2026-01-02T03:04:05Z".parse().unwrap();
        assert_eq!(go_time_string(t), "2026-01-02 03:04:05 +0000 UTC");
    }

    #[tokio::test]
    async fn fires_every_second_until_closed() {
        let mut meta = Metadata::new("tick", "app");
        meta.insert("schedule", "@every 1s");
        let b = CronBinding::build(&meta).await.unwrap();
        let sink = Arc::new(Collect(Mutex::new(Vec::new())));
        let sub = b.read(sink.clone()).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(2300)).await;
        sub.close().await;
        let n = sink.0.lock().unwrap().len();
        assert!((2..=3).contains(&n), "{n} firings in 2.3 s");
        let first = sink.0.lock().unwrap()[0].clone();
        assert_eq!(first.metadata["timeZone"], "Local");
        assert!(first.metadata["readTimeUTC"].ends_with("+0000 UTC"));
        tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
        assert_eq!(sink.0.lock().unwrap().len(), n, "no firing after close");
    }

    #[tokio::test]
    async fn bad_metadata_is_refused() {
        let meta = Metadata::new("tick", "app");
        assert!(CronBinding::build(&meta).await.is_err());
        let mut meta = Metadata::new("tick", "app");
        meta.insert("schedule", "every day");
        let err = CronBinding::build(&meta).await.unwrap_err().to_string();
        assert!(err.contains("schedule"), "{err}");
    }
}
