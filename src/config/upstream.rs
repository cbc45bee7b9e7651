//! `[upstream]`: how the gateway talks to Tencent: timeouts and the bound on calls under way.

use std::time::Duration;

use toml::Table;

use super::reader::Reader;

pub const KEYS: &[&str] = &["connect_timeout", "request_timeout", "max_in_flight"];

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Requests sent to Tencent at once (over HTTP/1.1, the most connections per host); more
    /// wait for a free slot within `request_timeout`.
    pub max_in_flight: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            max_in_flight: 128,
        }
    }
}

pub fn read(r: &mut Reader, t: &Table) -> UpstreamConfig {
    let d = UpstreamConfig::default();
    UpstreamConfig {
        connect_timeout: r
            .duration(t, "upstream", "connect_timeout", false)
            .unwrap_or(d.connect_timeout),
        request_timeout: r
            .duration(t, "upstream", "request_timeout", false)
            .unwrap_or(d.request_timeout),
        max_in_flight: r
            .positive_int(t, "upstream", "max_in_flight", 100_000)
            .map_or(d.max_in_flight, |n| n as usize),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::MINIMAL;
    use crate::config::Config;

    #[test]
    fn upstream_max_in_flight_is_a_bounded_positive_integer() {
        let text = format!("{MINIMAL}[upstream]\nmax_in_flight = 16\n");
        assert_eq!(
            Config::parse(&text).expect("valid").upstream.max_in_flight,
            16
        );
        for value in ["0", "-3", "100001", "\"64\""] {
            let text = format!("{MINIMAL}[upstream]\nmax_in_flight = {value}\n");
            let problems = Config::parse(&text).expect_err("invalid").0;
            assert_eq!(problems.len(), 1, "{value}: {problems:?}");
            assert_eq!(problems[0].key, "upstream.max_in_flight");
            assert!(problems[0].why.contains("positive"), "{}", problems[0]);
        }
    }
}
