//! The `yatai-build` binary's argument checks: no registry, no fixtures, nothing built.

use std::process::Command;

#[test]
fn an_upper_case_tag_is_refused_with_the_servers_reason_before_anything_runs() {
    let cache = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_yatai-build"))
        .args(["Iris:ABC", "--registry", "127.0.0.1:1/bentos", "--cache-dir"])
        .arg(cache.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "clap's usage error, not a failed build: {stderr}");
    let core = yatai_core::Tag::parse("Iris:ABC").unwrap_err().to_string();
    assert!(stderr.contains(&format!("bento tag \"Iris:ABC\": {core}")), "{stderr}");
    assert!(out.stdout.is_empty());
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 0, "nothing was started");
}
