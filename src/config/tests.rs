//! The config parser's tests, and the check that the example files parse.

use super::*;

const MINIMAL: &str = r#"
[chat]
sdkappid = 1400000000
region = "singapore"
secret_key_file = "/run/secret"
"#;

#[test]
fn minimal_file_gets_contract_defaults() {
    let c = Config::parse(MINIMAL).expect("valid");
    assert_eq!(c.server.listen, "0.0.0.0:8080".parse().expect("addr"));
    assert_eq!(c.server.admin_listen, "0.0.0.0:9090".parse().expect("addr"));
    assert_eq!(c.server.max_body_bytes, 65536);
    assert_eq!(c.server.drain_delay, Duration::from_secs(5));
    assert_eq!(c.server.shutdown_grace, Duration::from_secs(20));
    assert_eq!(c.chat.identifier, "administrator");
    assert_eq!(c.chat.usersig_ttl, Duration::from_secs(3600));
    assert_eq!(c.chat.endpoint.base(), "https://adminapisgp.im.qcloud.com");
    assert_eq!(
        c.chat
            .backup_endpoint
            .as_ref()
            .map(Endpoint::base)
            .as_deref(),
        Some("https://adminapisgp.my-imcloud.com")
    );
    assert_eq!(c.upstream.connect_timeout, Duration::from_secs(2));
    assert_eq!(c.upstream.request_timeout, Duration::from_secs(5));
    assert_eq!(c.upstream.max_in_flight, 128);
    assert_eq!(c.rate_limit.group_per_second, 20);
    assert_eq!(c.rate_limit.group_burst, 40);
    assert_eq!(c.rate_limit.app_per_second, 200);
    assert_eq!(c.rate_limit.app_burst, 20);
    assert_eq!(c.rate_limit.max_tracked_groups, 100_000);
    assert_eq!(c.rate_limit.cleanup_interval, Duration::from_secs(10));
    assert_eq!(c.apis, ApiAllowList::counters());
    assert_eq!(c.chat.secret, SecretSource::File("/run/secret".into()));
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = r#"
[server]
listen = "nowhere"
colour = "blue"
[chat]
region = "mars"
secret_key_file = "/s"
usersig_ttl = "soon"
[rate_limit]
group_burst = 0
"#;
    let problems = Config::parse(text).expect_err("invalid").0;
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    for key in [
        "server.listen",
        "server.colour",
        "chat.region",
        "chat.sdkappid",
        "chat.usersig_ttl",
        "rate_limit.group_burst",
    ] {
        assert!(keys.contains(&key), "{key} missing from {keys:?}");
    }
    let region = problems
        .iter()
        .find(|p| p.key == "chat.region")
        .expect("region");
    assert_eq!(region.value.as_deref(), Some("\"mars\""));
    assert!(region.why.contains("singapore"));
}

#[test]
fn rates_and_bursts_must_be_positive() {
    for (key, value) in [
        ("group_per_second", "0"),
        ("group_burst", "-1"),
        ("app_per_second", "0"),
        ("app_burst", "0"),
        ("max_tracked_groups", "0"),
        ("cleanup_interval", "\"0s\""),
        ("group_per_second", "2.5"),
        ("app_burst", "\"10\""),
    ] {
        let text = format!("{MINIMAL}[rate_limit]\n{key} = {value}\n");
        let problems = Config::parse(&text).expect_err("invalid").0;
        assert_eq!(problems.len(), 1, "{key} = {value}: {problems:?}");
        assert_eq!(problems[0].key, format!("rate_limit.{key}"));
        assert!(
            problems[0].why.contains("positive")
                || problems[0].why.contains("more than zero")
                || problems[0].why.contains("string"),
            "{}",
            problems[0]
        );
    }
}

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

#[test]
fn unknown_sections_and_keys_are_errors() {
    let text = format!("{MINIMAL}\n[extra]\na = 1\n");
    let problems = Config::parse(&text).expect_err("invalid").0;
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].key, "extra");
}

#[test]
fn secret_never_in_the_toml() {
    let text = format!("{MINIMAL}secret_key = \"abc\"\n");
    let problems = Config::parse(&text).expect_err("invalid").0;
    assert_eq!(problems[0].key, "chat.secret_key");
    assert!(!problems.iter().any(|p| format!("{p}").contains("abc")));
}

#[test]
fn http_endpoint_only_for_loopback() {
    assert!(Endpoint::parse("http://127.0.0.1:18080").is_ok());
    assert!(Endpoint::parse("http://[::1]:18080").is_ok());
    assert!(Endpoint::parse("https://example.com").is_ok());
    assert!(Endpoint::parse("https://127.0.0.1:18443/").is_ok());
    for bad in [
        "http://10.0.0.1:80",
        "http://example.com",
        "http://localhost:80",
        "ftp://127.0.0.1",
        "https://example.com/v4",
        "https://example.com?x=1",
        "https://user@example.com",
        "example.com",
    ] {
        assert!(Endpoint::parse(bad).is_err(), "{bad} accepted");
    }
}

#[test]
fn endpoint_replaces_region_and_drops_its_backup() {
    let text = r#"
[chat]
sdkappid = 1
region = "tokyo"
endpoint = "https://127.0.0.1:18443"
secret_key_env = "KEY"
"#;
    let c = Config::parse(text).expect("valid");
    assert_eq!(c.chat.endpoint.base(), "https://127.0.0.1:18443");
    assert_eq!(c.chat.backup_endpoint, None);
    assert_eq!(c.chat.secret, SecretSource::Env("KEY".into()));
}

#[test]
fn allow_list_entries_are_checked() {
    let text = format!("{MINIMAL}[apis]\nallow = [\"a/b\", \"*\", \"../x\", 3]\n");
    let problems = Config::parse(&text).expect_err("invalid").0;
    assert_eq!(problems.len(), 2, "{problems:?}");
    let text = format!("{MINIMAL}[apis]\nallow = [\"*\"]\n");
    assert_eq!(Config::parse(&text).expect("valid").apis, ApiAllowList::Any);
}

#[test]
fn api_names() {
    assert!(is_api_name("group_open_http_svc/get_group_counter"));
    for bad in ["", "a", "a/", "/b", "a/b/c", "a/b%2e", "a/..", "a b/c"] {
        assert!(!is_api_name(bad), "{bad}");
    }
}

#[test]
fn both_secret_sources_is_an_error() {
    let text = r#"
[chat]
sdkappid = 1
region = "tokyo"
secret_key_file = "/a"
secret_key_env = "B"
"#;
    let problems = Config::parse(text).expect_err("invalid").0;
    assert_eq!(problems[0].key, "chat.secret_key_env");
}

#[test]
fn api_names_are_lowercase_only() {
    assert!(is_api_name("group_open_http_svc/update_group_counter"));
    for bad in [
        "Group_Open_Http_Svc/Update_Group_Counter",
        "group_open_http_svc/Update_group_counter",
        "OPENIM/sendmsg",
    ] {
        assert!(!is_api_name(bad), "{bad}");
    }
    let text = format!("{MINIMAL}[apis]\nallow = [\"Openim/sendmsg\"]\n");
    let problems = Config::parse(&text).expect_err("invalid").0;
    assert_eq!(problems[0].key, "apis.allow");
    assert!(problems[0].why.contains("lowercase"), "{}", problems[0]);
}

#[test]
fn durations_are_capped_at_a_year() {
    for key in [
        "drain_delay",
        "shutdown_grace",
        "header_read_timeout",
        "write_timeout",
    ] {
        let text = format!("{MINIMAL}[server]\n{key} = \"300000000000years\"\n");
        let problems = Config::parse(&text).expect_err("invalid").0;
        let p = problems
            .iter()
            .find(|p| p.key == format!("server.{key}"))
            .unwrap_or_else(|| panic!("{key}: {problems:?}"));
        assert_eq!(p.value.as_deref(), Some("\"300000000000years\""));
        assert!(p.why.contains("at most 365 days"), "{p}");
    }
    let text = format!("{MINIMAL}[server]\ndrain_delay = \"1day\"\nshutdown_grace = \"2days\"\n");
    assert!(Config::parse(&text).is_ok());
}

#[test]
fn connection_and_tls_keys() {
    let c = Config::parse(MINIMAL).expect("valid");
    assert_eq!(c.server.max_connections, 10_000);
    assert_eq!(c.server.write_timeout, Duration::from_secs(10));
    assert_eq!(c.server.tls, None);
    let text = format!(
        "{MINIMAL}[server]\nmax_connections = 5\ntls_cert_file = \"/c\"\ntls_key_file = \"/k\"\ntls_client_ca_file = \"/ca\"\n"
    );
    let c = Config::parse(&text).expect("valid");
    assert_eq!(c.server.max_connections, 5);
    assert_eq!(
        c.server.tls,
        Some(TlsFiles {
            cert_file: "/c".into(),
            key_file: "/k".into(),
            client_ca_file: Some("/ca".into()),
        })
    );
    for (extra, key) in [
        ("tls_cert_file = \"/c\"", "server.tls_key_file"),
        ("tls_key_file = \"/k\"", "server.tls_cert_file"),
        ("tls_client_ca_file = \"/ca\"", "server.tls_cert_file"),
        ("max_connections = 0", "server.max_connections"),
    ] {
        let text = format!("{MINIMAL}[server]\n{extra}\n");
        let problems = Config::parse(&text).expect_err("invalid").0;
        assert_eq!(problems.len(), 1, "{extra}: {problems:?}");
        assert_eq!(problems[0].key, key);
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    #[test]
    fn the_example_file_parses_with_the_contract_defaults() {
        let text = include_str!("../../config/gateway.example.toml");
        let c = Config::parse(text).expect("example is valid");
        assert_eq!(c.chat.sdkappid, 1400000000);
        assert_eq!(c.chat.region, Some(Region::Singapore));
        assert_eq!(
            c.chat.secret,
            SecretSource::File("/var/run/secrets/chat/secret-key".into())
        );
        assert_eq!(c.apis, ApiAllowList::counters());
        assert_eq!(c.server.max_body_bytes, 65536);
    }

    #[test]
    fn every_key_of_the_schema_is_documented_in_the_example() {
        let text = include_str!("../../config/gateway.example.toml");
        for (section, keys) in SCHEMA {
            assert!(
                text.contains(&format!("[{section}]")),
                "[{section}] missing"
            );
            for key in *keys {
                assert!(
                    text.lines()
                        .any(|l| l.trim_start_matches("# ").starts_with(&format!("{key} ="))),
                    "{section}.{key} is not documented in the example"
                );
            }
        }
    }
}
