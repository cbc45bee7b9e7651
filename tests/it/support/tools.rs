//! External programs the tests run. A missing one fails the test, naming the command that
//! installs it: a test that quietly skipped would pass on a machine that checks nothing.

use std::path::PathBuf;

/// Each command the tests run and the Debian package that has it (what `scripts/test`
/// installs).
const PACKAGES: &[(&str, &str)] = &[
    ("curl", "curl"),
    ("prometheus", "prometheus"),
    ("promtool", "prometheus"),
    ("redis-server", "redis-server"),
    ("redis-cli", "redis-tools"),
    ("redis-sentinel", "redis-sentinel"),
];

/// The path of `name` on `PATH` (or in /usr/bin); panics, naming what installs it, when it is
/// missing.
pub fn require_tool(name: &str) -> PathBuf {
    let dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect())
        .unwrap_or_default();
    let dirs: Vec<PathBuf> = dirs
        .into_iter()
        .chain([PathBuf::from("/usr/bin")])
        .collect();
    require_tool_in(name, &dirs)
}

/// [`require_tool`] looking in `dirs` only.
fn require_tool_in(name: &str, dirs: &[PathBuf]) -> PathBuf {
    let found = dirs.iter().map(|dir| dir.join(name)).find(|p| p.is_file());
    match found {
        Some(path) => path,
        None => {
            let package = PACKAGES
                .iter()
                .find(|(command, _)| *command == name)
                .map_or(name, |(_, package)| package);
            panic!(
                "{name} is missing: run scripts/test (it installs what the tests need), \
                 or apt-get install {package}"
            )
        }
    }
}

#[test]
#[should_panic(
    expected = "redis-cli is missing: run scripts/test (it installs what the tests need), or apt-get install redis-tools"
)]
fn a_missing_program_fails_naming_what_installs_it() {
    // No directory to look in stands for a fresh machine.
    require_tool_in("redis-cli", &[]);
}

#[test]
fn scripts_test_installs_every_program_the_tests_run() {
    let script = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/test"))
        .expect("scripts/test");
    for (command, package) in PACKAGES {
        assert!(
            script.lines().any(|l| l == format!("{command} {package}")),
            "scripts/test does not install {package} for {command}"
        );
    }
}
