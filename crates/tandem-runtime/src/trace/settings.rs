//! What the Configuration's `spec.tracing` and the `OTEL_*` environment variables ask for.

use std::collections::HashMap;
use std::time::Duration;

use tandem_config::TracingSpec;

/// Where spans go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sink {
    /// OTLP over HTTP, protobuf body, to this URL (`.../v1/traces`).
    OtlpHttp {
        /// The full URL.
        url: String,
        /// Extra request headers.
        headers: Vec<(String, String)>,
    },
    /// OTLP over gRPC to this base URL (`http(s)://host:port`).
    OtlpGrpc {
        /// The base URL.
        url: String,
        /// Extra request metadata.
        headers: Vec<(String, String)>,
    },
    /// Zipkin v2 JSON to this URL.
    Zipkin {
        /// The spans endpoint, e.g. `http://localhost:9411/api/v2/spans`.
        url: String,
    },
    /// One JSON line per span on standard output.
    Stdout,
}

/// Tracing settings, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Whether the tracing middleware runs at all (`samplingRate` not exactly zero).
    pub enabled: bool,
    /// The probability of sampling a new trace.
    pub rate: f64,
    /// The exporters.
    pub sinks: Vec<Sink>,
    /// How long one export may take.
    pub timeout: Duration,
    /// The OTel resource attributes (`service.name` first).
    pub resource: Vec<(String, String)>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            enabled: false,
            rate: 0.0,
            sinks: Vec::new(),
            timeout: Duration::from_secs(10),
            resource: Vec::new(),
        }
    }
}

fn env_first<'a>(env: &'a HashMap<String, String>, keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .filter_map(|k| env.get(*k))
        .map(|v| v.trim())
        .find(|v| !v.is_empty())
}

/// `k=v,k2=v2` (values may be percent-encoded), as the OTel environment variables write headers.
fn parse_header_list(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            let v = percent_encoding::percent_decode_str(v.trim()).decode_utf8_lossy();
            (k.trim().to_owned(), v.into_owned())
        })
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

impl Settings {
    /// Resolves `spec` with the environment: `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT` sets the
    /// OTLP endpoint when the Configuration has none (and the sampling rate to 1 when it is
    /// unset), `..._PROTOCOL` picks `grpc` (default) or `http/*`, `OTEL_EXPORTER_OTLP_INSECURE`,
    /// `..._HEADERS` and `..._TIMEOUT` (milliseconds) complete it; `OTEL_SERVICE_NAME` and
    /// `OTEL_RESOURCE_ATTRIBUTES` shape the resource (`service.name` defaults to the app-id).
    pub fn resolve(spec: &TracingSpec, env: &HashMap<String, String>, app_id: &str) -> Self {
        let mut rate_text = spec.sampling_rate.trim().to_owned();
        let otel = &spec.otel;
        let mut endpoint = otel.endpoint_address.trim().to_owned();
        let mut protocol = otel.protocol.trim().to_ascii_lowercase();
        let mut secure = otel.is_secure;
        let mut headers: Vec<(String, String)> = otel
            .headers
            .iter()
            .filter_map(|h| h.value.as_literal().map(|v| (h.name.clone(), v.to_owned())))
            .collect();
        let mut timeout = otel.timeout;
        if endpoint.is_empty()
            && let Some(ep) = env_first(
                env,
                &[
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                ],
            )
        {
            // The scheme is honoured: `http://` means plain text.
            if let Some(rest) = ep.strip_prefix("http://") {
                endpoint = rest.to_owned();
                secure = false;
            } else {
                endpoint = ep.strip_prefix("https://").unwrap_or(ep).to_owned();
            }
            if rate_text.is_empty() {
                rate_text = "1".to_owned();
            }
            let p = env_first(
                env,
                &[
                    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                    "OTEL_EXPORTER_OTLP_PROTOCOL",
                ],
            )
            .unwrap_or_default();
            protocol = if p.starts_with("http") {
                "http"
            } else {
                "grpc"
            }
            .to_owned();
            if env_first(env, &["OTEL_EXPORTER_OTLP_INSECURE"]) == Some("true") {
                secure = false;
            }
        }
        if let Some(h) = env_first(
            env,
            &[
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                "OTEL_EXPORTER_OTLP_HEADERS",
            ],
        ) {
            headers.extend(parse_header_list(h));
        }
        if let Some(ms) = env_first(
            env,
            &[
                "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
                "OTEL_EXPORTER_OTLP_TIMEOUT",
            ],
        )
        .and_then(|t| t.parse::<u64>().ok())
        {
            timeout = Some(Duration::from_millis(ms));
        }

        let spec_rate = TracingSpec {
            sampling_rate: rate_text,
            ..TracingSpec::default()
        };
        let rate = spec_rate.effective_sampling_rate();
        let mut sinks = Vec::new();
        if spec.stdout {
            sinks.push(Sink::Stdout);
        }
        if let Some(z) = &spec.zipkin
            && !z.endpoint_address.trim().is_empty()
        {
            sinks.push(Sink::Zipkin {
                url: z.endpoint_address.trim().to_owned(),
            });
        }
        if !endpoint.is_empty() {
            let scheme = if secure { "https" } else { "http" };
            let (host, path) = match endpoint.find('/') {
                Some(at) => (&endpoint[..at], &endpoint[at..]),
                None => (endpoint.as_str(), ""),
            };
            match protocol.as_str() {
                "http" => {
                    let path = if path.is_empty() || path == "/" {
                        "/v1/traces"
                    } else {
                        path
                    };
                    sinks.push(Sink::OtlpHttp {
                        url: format!("{scheme}://{host}{path}"),
                        headers,
                    });
                }
                "grpc" => sinks.push(Sink::OtlpGrpc {
                    url: format!("{scheme}://{host}"),
                    headers,
                }),
                other => tracing::warn!(
                    protocol = other,
                    "tracing.otel.protocol must be grpc or http; no OTLP exporter started"
                ),
            }
        }

        let mut service = app_id.to_owned();
        let mut resource = Vec::new();
        if let Some(attrs) = env_first(env, &["OTEL_RESOURCE_ATTRIBUTES"]) {
            for (k, v) in parse_header_list(attrs) {
                if k == "service.name" {
                    service = v;
                } else {
                    resource.push((k, v));
                }
            }
        }
        if let Some(name) = env_first(env, &["OTEL_SERVICE_NAME"]) {
            service = name.to_owned();
        }
        resource.insert(0, ("service.name".to_owned(), service));

        Self {
            enabled: rate != 0.0,
            rate,
            sinks,
            timeout: timeout.unwrap_or(Duration::from_secs(10)),
            resource,
        }
    }
}

#[cfg(test)]
mod tests {
    use tandem_config::ZipkinSpec;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_and_zero() {
        let s = Settings::resolve(&TracingSpec::default(), &env(&[]), "app");
        assert!(s.enabled);
        assert_eq!(s.rate, 0.0001);
        assert!(s.sinks.is_empty());
        let off = TracingSpec {
            sampling_rate: "0".into(),
            ..TracingSpec::default()
        };
        assert!(!Settings::resolve(&off, &env(&[]), "app").enabled);
        let zero = TracingSpec {
            sampling_rate: "0.0".into(),
            ..TracingSpec::default()
        };
        assert!(!Settings::resolve(&zero, &env(&[]), "app").enabled);
    }

    #[test]
    fn configuration_exporters() {
        let mut spec = TracingSpec {
            sampling_rate: "1".into(),
            stdout: true,
            zipkin: Some(ZipkinSpec {
                endpoint_address: "http://z:9411/api/v2/spans".into(),
            }),
            ..TracingSpec::default()
        };
        spec.otel.endpoint_address = "collector:4318".into();
        spec.otel.protocol = "http".into();
        spec.otel.is_secure = false;
        let s = Settings::resolve(&spec, &env(&[]), "app");
        assert_eq!(s.rate, 1.0);
        assert_eq!(
            s.sinks,
            [
                Sink::Stdout,
                Sink::Zipkin {
                    url: "http://z:9411/api/v2/spans".into()
                },
                Sink::OtlpHttp {
                    url: "http://collector:4318/v1/traces".into(),
                    headers: vec![]
                }
            ]
        );
        spec.otel.protocol = "grpc".into();
        spec.otel.is_secure = true;
        let s = Settings::resolve(&spec, &env(&[]), "app");
        assert_eq!(
            s.sinks[2],
            Sink::OtlpGrpc {
                url: "https://collector:4318".into(),
                headers: vec![]
            }
        );
    }

    #[test]
    fn environment_overrides() {
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "api-key=a%20b,x=y"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_SERVICE_NAME", "svc"),
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name=ignored,env=prod"),
        ]);
        let s = Settings::resolve(&TracingSpec::default(), &e, "app");
        assert_eq!(s.rate, 1.0);
        assert_eq!(s.timeout, Duration::from_millis(2500));
        assert_eq!(
            s.sinks,
            [Sink::OtlpGrpc {
                url: "http://otel:4317".into(),
                headers: vec![("api-key".into(), "a b".into()), ("x".into(), "y".into())]
            }]
        );
        assert_eq!(
            s.resource,
            [
                ("service.name".to_owned(), "svc".to_owned()),
                ("env".to_owned(), "prod".to_owned())
            ]
        );
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "otel:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_INSECURE", "true"),
        ]);
        let spec = TracingSpec {
            sampling_rate: "0.5".into(),
            ..TracingSpec::default()
        };
        let s = Settings::resolve(&spec, &e, "app");
        assert_eq!(s.rate, 0.5);
        assert_eq!(
            s.sinks,
            [Sink::OtlpHttp {
                url: "http://otel:4318/v1/traces".into(),
                headers: vec![]
            }]
        );
    }
}
