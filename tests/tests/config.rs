//! Configuration as an operator meets it: `aisle-edge --config FILE` (TOML), and a file
//! with a typo is refused at start, naming the key.

use std::process::Stdio;
use std::time::Duration;

use aisle_tests::edge::{find_edge_binary, free_port};
use aisle_tests::*;

/// `store_id` from the file shows in `/healthz`.
#[tokio::test]
async fn config_file_sets_the_store_id() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("edge.toml");
    std::fs::write(&file, "store_id = \"sh-01\"\n").unwrap();
    let edge = Edge::start_with(EdgeOptions {
        args: vec!["--config".into(), file.display().to_string()],
        ..EdgeOptions::default()
    })
    .await;
    let r = edge.http().healthz().await;
    let b = r.expect(200);
    assert_eq!(b["status"], "ok", "{}", r.text);
    assert_eq!(b["store_id"], "sh-01", "{}", r.text);
    assert_eq!(b["service"], "aisle-edge", "{}", r.text);

    // Without the file: the default store id.
    let plain = Edge::start().await;
    let r = plain.http().healthz().await;
    assert_eq!(r.expect(200)["store_id"], "store-1", "{}", r.text);
}

/// The first admin's password set by provisioning does not stay in the file once the account
/// exists (on the appliance the file is on a FAT partition anyone holding the disk can read).
/// (The harness also passes the same password by environment, which wins over the file.)
#[tokio::test]
async fn the_first_admin_password_leaves_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("aisle.toml");
    let text = "# provisioned\nstore_id = \"sh-02\"\nfirst_admin_password = \"set-by-the-engineer\"\n\n[routing]\ncapacity_per_staff = 5\n";
    std::fs::write(&file, text).unwrap();
    let edge = Edge::start_with(EdgeOptions {
        args: vec!["--config".into(), file.display().to_string()],
        admin_password: "set-by-the-engineer".into(),
        ..EdgeOptions::default()
    })
    .await;
    edge.http().login("admin", "set-by-the-engineer").await;
    let after = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        after,
        text.replace("first_admin_password = \"set-by-the-engineer\"\n", ""),
        "everything else stays as written"
    );
}

/// Runs `aisle-edge --config FILE` expecting it to refuse to start; returns its exit code
/// and stderr. Panics (after killing it) if it is still running after 20 s.
async fn run_expecting_refusal(toml: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("edge.toml");
    std::fs::write(&file, toml).unwrap();
    let data = dir.path().join("data");
    let child = tokio::process::Command::new(find_edge_binary().unwrap())
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--data")
        .arg(&data)
        .arg("--config")
        .arg(&file)
        .env_remove("AISLE_EDGE_BIN")
        .env("AISLE_FIRST_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn aisle-edge");
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .unwrap_or_else(|_| {
            panic!("aisle-edge with config {toml:?} kept running: it should refuse to start")
        })
        .expect("wait for aisle-edge");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An unknown key (a typo) makes the process exit non-zero, naming the key on stderr, at
/// the top level and inside `[limits]`.
#[tokio::test]
async fn unknown_key_in_the_config_file_is_refused_naming_it() {
    for (toml, key) in [
        ("store_id = \"sh-01\"\nstore_idd = \"sh-02\"\n", "store_idd"),
        ("[limits]\nmax_conections = 5\n", "max_conections"),
    ] {
        let (code, stderr) = run_expecting_refusal(toml).await;
        assert!(
            code.is_some_and(|c| c != 0),
            "config {toml:?}: exit code {code:?} (expected non-zero); stderr:\n{stderr}"
        );
        assert!(
            stderr.contains(key),
            "config {toml:?}: stderr does not name the unknown key {key:?}:\n{stderr}"
        );
    }
}
