//! `[tracing]`: OpenTelemetry traces sent to a collector over OTLP/HTTP, and the standard
//! `OTEL_*` environment variables that fill what the file leaves out.

use toml::Value;

use super::reader::{section, Reader, Section};

section! {
    /// Traces, exported over OTLP/HTTP (protobuf). No endpoint (here or in the environment):
    /// no traces at all.
    pub struct TracingConfig in "tracing" {
        /// The collector's base URL (http or https); spans go to `<endpoint>/v1/traces`.
        /// Absent: `OTEL_EXPORTER_OTLP_ENDPOINT`; neither: no traces.
        otlp_endpoint: Option<String> = None, |r, s, k| r.parsed(s, k, endpoint).map(Some);
        /// Share of requests traced among those whose caller sent no `traceparent` (0 to 1).
        /// Absent: `OTEL_TRACES_SAMPLER_ARG`, else 0.01.
        sample_ratio: Option<f64> = None, |r, s, k| ratio(r, s, k).map(Some);
        /// The `service.name` of the spans. Absent: `OTEL_SERVICE_NAME`, else "chat-gateway".
        service_name: Option<String> = None, |r, s, k| r.parsed(s, k, service_name).map(Some);
    }
}

/// The ratio when neither the file nor the environment gives one.
pub const DEFAULT_SAMPLE_RATIO: f64 = 0.01;
/// The service name when neither the file nor the environment gives one.
pub const DEFAULT_SERVICE_NAME: &str = "chat-gateway";

/// The standard variables, read when the file leaves a key out.
pub const ENV_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub const ENV_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
pub const ENV_SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";

/// What tracing runs with: the file's keys, then the environment's, then the defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// Where spans are POSTed: `<endpoint>/v1/traces`.
    pub traces_url: String,
    pub sample_ratio: f64,
    pub service_name: String,
}

impl TracingConfig {
    /// The settings in force, or `None` (no endpoint anywhere: no tracing). `env` reads one
    /// variable; an environment value that is not valid is ignored, with a warning.
    pub fn settings(&self, env: impl Fn(&str) -> Option<String>) -> Option<TraceSettings> {
        let from_env = |name: &str, check: fn(&str) -> Result<String, String>| {
            let value = env(name).filter(|v| !v.is_empty())?;
            match check(&value) {
                Ok(v) => Some(v),
                Err(why) => {
                    tracing::warn!(variable = name, why = %why, "environment variable ignored");
                    None
                }
            }
        };
        let base = self
            .otlp_endpoint
            .clone()
            .or_else(|| from_env(ENV_ENDPOINT, endpoint))?;
        let sample_ratio = self
            .sample_ratio
            .or_else(|| {
                from_env(ENV_SAMPLER_ARG, |v| parse_ratio(v).map(|r| r.to_string()))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(DEFAULT_SAMPLE_RATIO);
        let service_name = self
            .service_name
            .clone()
            .or_else(|| from_env(ENV_SERVICE_NAME, service_name))
            .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_string());
        Some(TraceSettings {
            traces_url: format!("{base}/v1/traces"),
            sample_ratio,
            service_name,
        })
    }
}

/// An http or https URL with a host and nothing after the path; kept without a trailing `/`.
fn endpoint(text: &str) -> Result<String, String> {
    const WHY: &str = "must be an http:// or https:// URL, e.g. \"http://127.0.0.1:4318\"";
    let uri: http::Uri = text.parse().map_err(|_| WHY.to_string())?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    if !scheme_ok || uri.authority().is_none() || uri.query().is_some() {
        return Err(WHY.to_string());
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err("must not hold credentials; send them with OTEL_EXPORTER_OTLP_HEADERS".into());
    }
    Ok(text.trim_end_matches('/').to_string())
}

fn service_name(text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > 255 || text.chars().any(char::is_control) {
        return Err("must be a non-empty name of at most 255 bytes".into());
    }
    Ok(text.to_string())
}

fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err("must be a number from 0 to 1".into()),
    }
}

/// A number from 0 to 1 (an integer 0 or 1 too).
fn ratio(r: &mut Reader, s: &Section, key: &str) -> Option<f64> {
    let value = s.table.get(key)?;
    let n = match value {
        Value::Float(f) => Some(*f),
        Value::Integer(i) => Some(*i as f64),
        _ => None,
    };
    match n.filter(|n| (0.0..=1.0).contains(n)) {
        Some(n) => Some(n),
        None => {
            r.problem(
                &s.key(key),
                Some(value.to_string()),
                "must be a number from 0 to 1",
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::MINIMAL;
    use crate::config::Config;

    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn absent_section_and_no_environment_means_no_tracing() {
        let c = Config::parse(MINIMAL).expect("valid");
        assert_eq!(c.tracing, TracingConfig::default());
        assert_eq!(c.tracing.settings(no_env), None);
        let text = format!("{MINIMAL}[tracing]\nsample_ratio = 1\n");
        let c = Config::parse(&text).expect("valid");
        assert_eq!(c.tracing.settings(no_env), None, "no endpoint: no tracing");
    }

    #[test]
    fn the_file_wins_and_the_environment_fills_the_rest() {
        let text = format!(
            "{MINIMAL}[tracing]\notlp_endpoint = \"http://127.0.0.1:4318/\"\nsample_ratio = 0.5\n"
        );
        let c = Config::parse(&text).expect("valid").tracing;
        let env = |name: &str| match name {
            ENV_ENDPOINT => Some("http://elsewhere:4318".to_string()),
            ENV_SAMPLER_ARG => Some("0.25".to_string()),
            ENV_SERVICE_NAME => Some("gw-eu".to_string()),
            _ => None,
        };
        let s = c.settings(env).expect("tracing on");
        assert_eq!(s.traces_url, "http://127.0.0.1:4318/v1/traces");
        assert_eq!(s.sample_ratio, 0.5);
        assert_eq!(s.service_name, "gw-eu");
        let s = TracingConfig::default().settings(env).expect("from env");
        assert_eq!(s.traces_url, "http://elsewhere:4318/v1/traces");
        assert_eq!(s.sample_ratio, 0.25);
        let s = TracingConfig::default()
            .settings(|n| (n == ENV_ENDPOINT).then(|| "https://c.example".to_string()))
            .expect("from env");
        assert_eq!(s.sample_ratio, DEFAULT_SAMPLE_RATIO);
        assert_eq!(s.service_name, DEFAULT_SERVICE_NAME);
        let bad = |n: &str| match n {
            ENV_ENDPOINT => Some("http://c:4318".to_string()),
            ENV_SAMPLER_ARG => Some("2".to_string()),
            _ => None,
        };
        let s = TracingConfig::default().settings(bad).expect("from env");
        assert_eq!(
            s.sample_ratio, DEFAULT_SAMPLE_RATIO,
            "a bad value is ignored"
        );
    }

    #[test]
    fn keys_are_checked() {
        for (key, value) in [
            ("otlp_endpoint", "\"127.0.0.1:4318\""),
            ("otlp_endpoint", "\"ftp://c:4318\""),
            ("otlp_endpoint", "\"http://u:p@c:4318\""),
            ("otlp_endpoint", "4318"),
            ("sample_ratio", "1.5"),
            ("sample_ratio", "-0.1"),
            ("sample_ratio", "\"0.1\""),
            ("service_name", "\"\""),
        ] {
            let text = format!("{MINIMAL}[tracing]\n{key} = {value}\n");
            let problems = Config::parse(&text).expect_err("invalid").0;
            assert_eq!(problems.len(), 1, "{key} = {value}: {problems:?}");
            assert_eq!(problems[0].key, format!("tracing.{key}"));
        }
        let text = format!("{MINIMAL}[tracing]\nsample_ratio = 0\nservice_name = \"gw\"\n");
        let c = Config::parse(&text).expect("valid").tracing;
        assert_eq!(c.sample_ratio, Some(0.0));
        assert_eq!(c.service_name.as_deref(), Some("gw"));
    }
}
