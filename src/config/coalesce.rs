//! `[coalesce]`: hot-group write coalescing, its defaults and its checks.

use std::time::Duration;

use toml::Table;

use super::reader::{section, Reader};
use super::ServerConfig;

section! {
    /// Hot-group write coalescing: concurrent increments of one group share one upstream call.
    pub struct CoalesceConfig in "coalesce" {
        /// Merge concurrent `Increase` / `Decrease` of one group.
        enabled: bool = true, |r, s, k| r.boolean(s, k);
        /// Longest a caller waits for its group's next call; past it: 10006, never applied.
        max_wait: Duration = Duration::from_secs(1), |r, s, k| r.duration(s, k, false);
        /// Callers in one batch at most.
        max_callers: usize = 1000, |r, s, k| r.positive_int(s, k, 100_000);
        /// Concurrent identical `get_group_counter` calls of one group share one call.
        reads: bool = true, |r, s, k| r.boolean(s, k);
    }
}

/// The shortest `max_wait`: the runtime's timers count whole milliseconds, and an upstream
/// call takes far longer, so a shorter wait would refuse (10006) nearly every increment that
/// finds its group's call in flight.
pub const MIN_MAX_WAIT: Duration = Duration::from_millis(1);

/// Reads `[coalesce]`; problems go to `r`.
pub fn read(r: &mut Reader, t: &Table, server: &ServerConfig) -> CoalesceConfig {
    let coalesce = CoalesceConfig::read_keys(r, t);
    let shown = || Some(humantime::format_duration(coalesce.max_wait).to_string());
    if coalesce.max_wait < MIN_MAX_WAIT {
        r.problem(
            "coalesce.max_wait",
            shown(),
            "must be at least 1ms: timers count whole milliseconds, and a shorter wait would refuse (10006) nearly every increment that finds its group's call in flight",
        );
    }
    // Waiting callers are answered within the grace period: sent, or refused at max_wait.
    if coalesce.enabled && coalesce.max_wait > server.shutdown_grace {
        r.problem(
            "coalesce.max_wait",
            shown(),
            "must be at most server.shutdown_grace, so that callers waiting at shutdown are answered",
        );
    }
    coalesce
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    const MINIMAL: &str = r#"
[chat]
sdkappid = 1400000000
region = "singapore"
secret_key_file = "/run/secret"
"#;

    #[test]
    fn defaults() {
        let c = Config::parse(MINIMAL).expect("valid").coalesce;
        assert_eq!(c, CoalesceConfig::default());
        assert!(c.enabled && c.reads);
        assert_eq!(c.max_wait, Duration::from_secs(1));
        assert_eq!(c.max_callers, 1000);
    }

    #[test]
    fn keys_are_checked() {
        let text = format!(
            "{MINIMAL}[coalesce]\nenabled = false\nmax_wait = \"250ms\"\nmax_callers = 50\nreads = false\n"
        );
        let c = Config::parse(&text).expect("valid").coalesce;
        assert_eq!(
            c,
            CoalesceConfig {
                enabled: false,
                max_wait: Duration::from_millis(250),
                max_callers: 50,
                reads: false,
            }
        );
        for (key, value) in [
            ("enabled", "1"),
            ("max_wait", "\"0s\""),
            ("max_callers", "0"),
            ("reads", "\"yes\""),
            ("max_wait", "\"30s\""),
            ("max_wait", "\"1ns\""),
            ("max_wait", "\"999us\""),
        ] {
            let text = format!("{MINIMAL}[coalesce]\n{key} = {value}\n");
            let problems = Config::parse(&text).expect_err("invalid").0;
            assert_eq!(problems.len(), 1, "{key} = {value}: {problems:?}");
            assert_eq!(problems[0].key, format!("coalesce.{key}"));
        }
    }

    #[test]
    fn max_wait_is_at_least_a_millisecond() {
        let text = format!("{MINIMAL}[coalesce]\nmax_wait = \"1ns\"\n");
        let problems = Config::parse(&text).expect_err("invalid").0;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].value.as_deref(), Some("1ns"));
        assert!(problems[0].why.contains("at least 1ms"), "{}", problems[0]);
        let text = format!("{MINIMAL}[coalesce]\nmax_wait = \"1ms\"\n");
        assert_eq!(
            Config::parse(&text).expect("valid").coalesce.max_wait,
            MIN_MAX_WAIT
        );
    }
}
