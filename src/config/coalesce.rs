//! `[coalesce]`: hot-group write coalescing, its defaults and its checks.

use std::time::Duration;

use toml::Table;

use super::reader::Reader;
use super::ServerConfig;

pub const KEYS: &[&str] = &["enabled", "max_wait", "max_callers", "reads"];

/// Hot-group write coalescing: concurrent increments of one group share one upstream call.
#[derive(Debug, Clone, PartialEq)]
pub struct CoalesceConfig {
    /// Merge concurrent `Increase` / `Decrease` of one group.
    pub enabled: bool,
    /// Longest a caller waits for its group's next call; past it: 10006, never applied.
    pub max_wait: Duration,
    /// Callers in one batch at most.
    pub max_callers: usize,
    /// Concurrent identical `get_group_counter` calls of one group share one call.
    pub reads: bool,
}

impl Default for CoalesceConfig {
    fn default() -> Self {
        CoalesceConfig {
            enabled: true,
            max_wait: Duration::from_secs(1),
            max_callers: 1000,
            reads: true,
        }
    }
}

/// Reads `[coalesce]`; problems go to `r`.
pub fn read(r: &mut Reader, t: &Table, server: &ServerConfig) -> CoalesceConfig {
    let defaults = CoalesceConfig::default();
    let coalesce = CoalesceConfig {
        enabled: r
            .boolean(t, "coalesce", "enabled")
            .unwrap_or(defaults.enabled),
        max_wait: r
            .duration(t, "coalesce", "max_wait", false)
            .unwrap_or(defaults.max_wait),
        max_callers: r
            .positive_int(t, "coalesce", "max_callers", 100_000)
            .map_or(defaults.max_callers, |n| n as usize),
        reads: r.boolean(t, "coalesce", "reads").unwrap_or(defaults.reads),
    };
    // Waiting callers are answered within the grace period: sent, or refused at max_wait.
    if coalesce.enabled && coalesce.max_wait > server.shutdown_grace {
        r.problem(
            "coalesce.max_wait",
            Some(humantime::format_duration(coalesce.max_wait).to_string()),
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
        ] {
            let text = format!("{MINIMAL}[coalesce]\n{key} = {value}\n");
            let problems = Config::parse(&text).expect_err("invalid").0;
            assert_eq!(problems.len(), 1, "{key} = {value}: {problems:?}");
            assert_eq!(problems[0].key, format!("coalesce.{key}"));
        }
    }
}
