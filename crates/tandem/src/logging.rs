//! Log set-up from `--log-level` and `--log-as-json`.
//!
//! With `--log-as-json` every line is one JSON object in daprd's shape: `time` (RFC 3339 with
//! nanoseconds), `level` (`debug`, `info`, `warning`, `error`), `type` (`log`), `msg`,
//! `scope` (`dapr.runtime`, or the API log scopes `dapr.runtime.http-info` /
//! `dapr.runtime.grpc-info`), `instance` (the host name), `app_id` and `ver`, followed by the
//! event's own fields.
//!
//! Nothing logs request or response bodies, state values or secret values, at any level.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::Visit;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The targets of the API logs, which are written at `info` whatever `--log-level` says (as
/// daprd does once API logging is on).
pub(crate) const HTTP_API_LOG: &str = "dapr.runtime.http-info";
/// See [`HTTP_API_LOG`].
pub(crate) const GRPC_API_LOG: &str = "dapr.runtime.grpc-info";

/// Installs the global subscriber. `TANDEM_LOG` (an `EnvFilter` directive) overrides the level.
pub(crate) fn init(level: &str, json: bool, app_id: &str) {
    let level = match level {
        "warning" => "warn",
        "fatal" => "error",
        other => other,
    };
    let filter = EnvFilter::try_from_env("TANDEM_LOG").unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{level},hyper=warn,h2=warn,tower=warn,{HTTP_API_LOG}=info,{GRPC_API_LOG}=info"
        ))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(!json && std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let res = if json {
        builder
            .event_format(DaprJson {
                app_id: app_id.to_owned(),
                instance: host_name(),
            })
            .try_init()
    } else {
        builder.try_init()
    };
    if let Err(e) = res {
        eprintln!("tandem: cannot initialise logging: {e}");
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_default()
}

/// daprd's JSON log line.
struct DaprJson {
    app_id: String,
    instance: String,
}

impl<S, N> FormatEvent<S, N> for DaprJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let level = match *meta.level() {
            Level::ERROR => "error",
            Level::WARN => "warning",
            Level::INFO => "info",
            Level::DEBUG | Level::TRACE => "debug",
        };
        let scope = if meta.target().starts_with("dapr.") {
            meta.target()
        } else {
            "dapr.runtime"
        };
        let time = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let mut fields = JsonFields::default();
        event.record(&mut fields);
        let mut line = serde_json::Map::new();
        line.insert("time".into(), time.into());
        line.insert("level".into(), level.into());
        line.insert("type".into(), "log".into());
        line.insert("msg".into(), fields.message.unwrap_or_default().into());
        line.insert("scope".into(), scope.into());
        line.insert("instance".into(), self.instance.clone().into());
        line.insert("app_id".into(), self.app_id.clone().into());
        line.insert("ver".into(), env!("CARGO_PKG_VERSION").into());
        for (k, v) in fields.fields {
            line.entry(k).or_insert(v);
        }
        writeln!(writer, "{}", serde_json::Value::Object(line))
    }
}

/// An event's message and fields as JSON values.
#[derive(Default)]
struct JsonFields {
    message: Option<String>,
    fields: Vec<(String, serde_json::Value)>,
}

impl Visit for JsonFields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        self.push(field.name(), text.into());
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.push(field.name(), value.into());
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.push(field.name(), value.into());
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.push(field.name(), value.into());
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.push(field.name(), value.into());
    }

    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.push(field.name(), value.into());
    }
}

impl JsonFields {
    fn push(&mut self, name: &str, value: serde_json::Value) {
        if name == "message" {
            self.message = Some(match value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            });
        } else {
            self.fields.push((name.to_owned(), value));
        }
    }
}
