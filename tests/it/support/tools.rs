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
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
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
