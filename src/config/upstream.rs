//! `[upstream]`: how the gateway talks to Tencent: timeouts and the bound on calls under way.

use std::time::Duration;

use super::reader::section;

section! {
    /// How the gateway talks to Tencent.
    pub struct UpstreamConfig in "upstream" {
        /// Time to set up a connection to Tencent (TCP and TLS).
        connect_timeout: Duration = Duration::from_secs(2), |r, s, k| r.duration(s, k, false);
        /// Time for one attempt, from sending to the last byte of the answer.
        request_timeout: Duration = Duration::from_secs(5), |r, s, k| r.duration(s, k, false);
        /// Requests sent to Tencent at once (over HTTP/1.1, the most connections per host);
        /// more wait for a free slot within `request_timeout`.
        max_in_flight: usize = 128, |r, s, k| r.positive_int(s, k, 100_000);
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
