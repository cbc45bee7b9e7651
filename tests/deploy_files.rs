//! The deployment files agree with the binary: the image's ENTRYPOINT runs
//! `serve` with the mounted config, every example `gateway.toml` under
//! deploy/kubernetes passes `check-config`, and the gateway started the way the
//! image starts it answers /healthz and exits 0 on SIGTERM.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_chat-gateway");
/// Where the image expects its config (the `ConfigMap` mount).
const CONFIG_IN_IMAGE: &str = "/etc/chat-gateway/gateway.toml";

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The exec-form ENTRYPOINT of deploy/Dockerfile.
fn entrypoint() -> Vec<String> {
    let dockerfile = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/Dockerfile"));
    let lines: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("ENTRYPOINT"))
        .collect();
    assert_eq!(lines.len(), 1, "one ENTRYPOINT expected: {lines:?}");
    let json = lines[0]["ENTRYPOINT".len()..].trim();
    serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("ENTRYPOINT is not the exec form (a JSON array): {json}: {e}"))
}

/// deploy/kubernetes/* folders whose kustomization makes the `ConfigMap` from
/// the `gateway.toml` beside it.
fn variants() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("listing {}: {e}", root.display()))
        .map(|entry| entry.expect("reading deploy/kubernetes").path())
        .filter(|dir| dir.join("gateway.toml").is_file())
        .collect();
    found.sort();
    assert!(!found.is_empty(), "no deploy/kubernetes/*/gateway.toml");
    for dir in &found {
        let used = read(&dir.join("kustomization.yaml")).contains("- gateway.toml");
        assert!(
            used,
            "{}: kustomization ignores gateway.toml",
            dir.display()
        );
    }
    found
}

/// The variant's deployment.yaml, or for an overlay (`- ../base` in its resources) the
/// base's, which it patches.
fn deployment(variant: &Path) -> PathBuf {
    let own = variant.join("deployment.yaml");
    if own.is_file() {
        return own;
    }
    let kustomization = read(&variant.join("kustomization.yaml"));
    let base = kustomization
        .lines()
        .find_map(|l| l.trim().strip_prefix("- ../"))
        .unwrap_or_else(|| panic!("{}: no deployment.yaml and no base", variant.display()));
    variant.join("..").join(base.trim()).join("deployment.yaml")
}

/// The variable a `redis_url_env` variant reads, set as its Deployment sets it: to a
/// Redis that never answers here, so the gateway starts and limits locally.
const REDIS_URL_ENV: (&str, &str) = ("CHAT_GATEWAY_REDIS_URL", "redis://127.0.0.1:1/0");
/// The variable a `redis_password_env` variant reads (its Redis never answers here either).
const REDIS_PASSWORD_ENV: (&str, &str) = ("CHAT_GATEWAY_REDIS_PASSWORD", "example-password");

/// Index of the one line that sets `key` (a commented-out key starts with `#`).
fn key_line(lines: &[&str], key: &str) -> usize {
    let sets = |line: &str| line.split_once('=').is_some_and(|(k, _)| k.trim() == key);
    let hits: Vec<usize> = (0..lines.len()).filter(|&i| sets(lines[i])).collect();
    assert_eq!(
        hits.len(),
        1,
        "`{key}` set {} times in gateway.toml",
        hits.len()
    );
    hits[0]
}

fn get_string(toml: &str, key: &str) -> String {
    let lines: Vec<&str> = toml.lines().collect();
    let (_, value) = lines[key_line(&lines, key)]
        .split_once('=')
        .expect("key = value");
    value.trim().trim_matches('"').to_string()
}

fn set_string(toml: &str, key: &str, value: &str) -> String {
    let mut lines: Vec<&str> = toml.lines().collect();
    let index = key_line(&lines, key);
    let line = format!("{key} = {}", serde_json::Value::from(value)); // a valid TOML string
    lines[index] = &line;
    lines.join("\n") + "\n"
}

/// The shipped config with the secret key in a temp file; returns the config's path.
fn local_config(variant: &Path, dir: &Path, edits: &[(&str, &str)]) -> PathBuf {
    let secret = dir.join("secret-key");
    std::fs::write(&secret, "example-secret-key-for-tests-only").expect("writing the secret key");
    let secret = secret.to_str().expect("UTF-8 temp path");
    let mut text = read(&variant.join("gateway.toml"));
    for (key, value) in [("secret_key_file", secret)].iter().chain(edits) {
        text = set_string(&text, key, value);
    }
    // The shared variant authenticates callers: its tokens file, too, comes from a Secret.
    if text.lines().any(|l| l.starts_with("tokens_file")) {
        let tokens = dir.join("tokens");
        std::fs::write(&tokens, "example-caller-token\n").expect("writing the tokens file");
        text = set_string(
            &text,
            "tokens_file",
            tokens.to_str().expect("UTF-8 temp path"),
        );
    }
    let config = dir.join("gateway.toml");
    std::fs::write(&config, text).expect("writing the temp config");
    config
}

fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    listener.local_addr().expect("address of a bound listener")
}

/// Status code of `GET path`, or None while nothing answers.
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split(' ').nth(1)?.parse().ok()
}

/// Kills the gateway if the test fails while it runs.
struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn dockerfile_entrypoint_serves_the_mounted_config() {
    let args = entrypoint();
    assert_eq!(args.len(), 4, "ENTRYPOINT: {args:?}");
    assert!(
        args[0].starts_with('/') && args[0].ends_with("/chat-gateway"),
        "{args:?}"
    );
    assert_eq!(
        args[1..],
        ["serve", "--config", CONFIG_IN_IMAGE],
        "ENTRYPOINT arguments"
    );
}

#[test]
fn manifests_mount_what_the_config_and_the_image_expect() {
    for variant in variants() {
        let manifest = read(&deployment(&variant));
        let toml = read(&variant.join("gateway.toml"));
        let mut files = vec![get_string(&toml, "secret_key_file")];
        if toml.lines().any(|l| l.starts_with("tokens_file")) {
            files.push(get_string(&toml, "tokens_file"));
        }
        let dirs: Vec<String> = files
            .iter()
            .map(|f| {
                let dir = Path::new(f).parent().expect("a file in a folder");
                dir.to_str().expect("UTF-8 path").to_string()
            })
            .collect();
        for key in ["redis_url_env", "redis_password_env"] {
            if !toml.lines().any(|l| l.starts_with(key)) {
                continue;
            }
            let var = get_string(&toml, key);
            let set = format!("- name: {var}\n");
            let kustomization = read(&variant.join("kustomization.yaml"));
            assert!(
                manifest.contains(&set) || kustomization.contains(&set),
                "{}: nothing sets {var}",
                variant.display()
            );
        }
        for mount in std::iter::once(CONFIG_IN_IMAGE).chain(dirs.iter().map(String::as_str)) {
            let line = format!("mountPath: {mount}\n");
            assert!(
                manifest.contains(&line),
                "{}: nothing at {mount}",
                variant.display()
            );
        }
    }
}

#[test]
fn every_example_config_passes_check_config() {
    for variant in variants() {
        let dir = tempfile::tempdir().expect("creating a temp dir");
        let config = local_config(&variant, dir.path(), &[]);
        let out = Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(&config)
            .env(REDIS_URL_ENV.0, REDIS_URL_ENV.1)
            .env(REDIS_PASSWORD_ENV.0, REDIS_PASSWORD_ENV.1)
            .output()
            .expect("running chat-gateway check-config");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        let name = variant.display();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}/gateway.toml:\n{stdout}{stderr}"
        );
    }
}

#[test]
fn entrypoint_serves_and_exits_0_on_sigterm() {
    let args = entrypoint();
    for variant in variants() {
        let name = variant.display();
        let dir = tempfile::tempdir().expect("creating a temp dir");
        let (listen, admin) = (free_port().to_string(), free_port());
        let admin_text = admin.to_string();
        let edits = [
            ("listen", listen.as_str()),
            ("admin_listen", &admin_text),
            ("drain_delay", "1s"),
        ];
        let config = local_config(&variant, dir.path(), &edits);
        let log_path = dir.path().join("gateway.log");
        let log = std::fs::File::create(&log_path).expect("creating the log file");
        let log_text = || std::fs::read_to_string(&log_path).unwrap_or_default();

        let mut command = Command::new(BIN);
        for arg in &args[1..] {
            if arg == CONFIG_IN_IMAGE {
                command.arg(&config)
            } else {
                command.arg(arg)
            };
        }
        command
            .env_remove("CHAT_GATEWAY_CONFIG")
            .env(REDIS_URL_ENV.0, REDIS_URL_ENV.1)
            .env(REDIS_PASSWORD_ENV.0, REDIS_PASSWORD_ENV.1)
            .stdin(Stdio::null());
        command
            .stdout(log.try_clone().expect("cloning the log handle"))
            .stderr(log);
        let mut gateway = Gateway(command.spawn().expect("starting chat-gateway serve"));

        let deadline = Instant::now() + Duration::from_secs(10);
        while http_status(admin, "/healthz") != Some(200) {
            if let Some(status) = gateway.0.try_wait().expect("polling the gateway") {
                panic!(
                    "{name}: gateway exited ({status}) before /healthz answered:\n{}",
                    log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{name}: no 200 from /healthz in 10s:\n{}",
                log_text()
            );
            sleep(Duration::from_millis(100));
        }

        let pid = gateway.0.id().to_string();
        let kill = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("running kill");
        assert!(kill.success(), "kill -TERM {pid} failed");
        // drain_delay (1s) + 5s.
        let deadline = Instant::now() + Duration::from_secs(6);
        let status = loop {
            if let Some(status) = gateway.0.try_wait().expect("polling the gateway") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: running 6s after SIGTERM:\n{}",
                log_text()
            );
            sleep(Duration::from_millis(50));
        };
        assert_eq!(
            status.code(),
            Some(0),
            "{name}: exit after SIGTERM:\n{}",
            log_text()
        );
    }
}
