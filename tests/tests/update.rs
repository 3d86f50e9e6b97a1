//! Firmware updates as a store admin and the appliance meet them: a real `aisle-edge` with a
//! temporary directory as its boot partition (ESP), the running slot given by
//! `update.current_slot` instead of `/proc/cmdline`, and a reboot command that only leaves a
//! mark. Bundles are made and signed with `aisle-update`, as `aisle-image` makes them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use aisle_tests::edge::find_edge_binary;
use aisle_tests::*;
use aisle_update::{Arch, PublicKey, SecretKey};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(10);

/// A boot partition, trusted keys and a config file for one appliance.
struct Appliance {
    dir: tempfile::TempDir,
    key: SecretKey,
}

impl Appliance {
    /// An ESP as the image build leaves it: slot a (version 1.0) blessed, generation 1.
    fn new() -> Appliance {
        let dir = tempfile::tempdir().unwrap();
        let (key, public) = aisle_update::generate();
        let keys = dir.path().join("update-keys");
        std::fs::create_dir_all(&keys).unwrap();
        aisle_update::key::write_public_key(&keys.join("release.pub"), &public).unwrap();
        let appliance = Appliance { dir, key };
        let a = appliance.esp().join("aisle/a");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(appliance.entries()).unwrap();
        let old = appliance.bundle("1.0", &appliance.key);
        let verified = aisle_update::open_verified(&old, &[public], host_arch()).unwrap();
        std::fs::write(a.join("manifest.json"), verified.manifest_bytes()).unwrap();
        std::fs::write(a.join("vmlinuz"), b"old kernel").unwrap();
        std::fs::write(a.join("initrd.img"), b"old initrd").unwrap();
        appliance.write_entry("aisle-a.conf", "1.0", Slot::A, 1);
        appliance
    }

    fn esp(&self) -> PathBuf {
        self.dir.path().join("esp")
    }

    fn entries(&self) -> PathBuf {
        self.esp().join("loader/entries")
    }

    fn rebooted_mark(&self) -> PathBuf {
        self.dir.path().join("rebooted")
    }

    fn write_entry(&self, name: &str, version: &str, slot: Slot, generation: u64) {
        let s = slot.0;
        std::fs::write(
            self.entries().join(name),
            format!(
                "title Aisle {version} (slot {s})\nsort-key aisle\nversion {generation}\n\
                 linux /aisle/{s}/vmlinuz\ninitrd /aisle/{s}/initrd.img\n\
                 options console=ttyS0 aisle.slot={s}\n"
            ),
        )
        .unwrap();
    }

    /// A bundle of `version` for this machine's architecture, signed by `key`.
    fn bundle(&self, version: &str, key: &SecretKey) -> PathBuf {
        let work = self.dir.path().join(format!("build-{version}"));
        std::fs::create_dir_all(&work).unwrap();
        std::fs::write(work.join("vmlinuz"), format!("kernel {version}")).unwrap();
        std::fs::write(work.join("initrd.img"), vec![b'i'; 3000]).unwrap();
        let out = work.join(format!("aisle-{version}-{}.aisle", key.public().key_id()));
        aisle_update::write_bundle(
            &out,
            version,
            host_arch(),
            &work.join("vmlinuz"),
            &work.join("initrd.img"),
            json!({"edge": {"version": "0.1.0"}}),
            key,
        )
        .unwrap();
        out
    }

    /// The edge's config file: this ESP, running slot a, the reboot command leaving a mark.
    fn config_file(&self, extra: &str) -> PathBuf {
        let path = self.dir.path().join("aisle.toml");
        let text = format!(
            "{extra}\n[update]\nboot_dir = {esp:?}\ntrusted_keys_dir = {keys:?}\n\
             current_slot = \"a\"\nreboot_command = [\"touch\", {mark:?}]\n",
            esp = self.esp().display().to_string(),
            keys = self.dir.path().join("update-keys").display().to_string(),
            mark = self.rebooted_mark().display().to_string(),
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    async fn start_edge(&self, extra: &str) -> Edge {
        let file = self.config_file(extra);
        Edge::start_with(EdgeOptions {
            args: vec!["--config".into(), file.display().to_string()],
            ..EdgeOptions::default()
        })
        .await
    }

    /// Slot b holds `version` (generation 2), tried three times and never blessed: the box
    /// is back on slot a, a rollback.
    fn fail_slot_b(&self, version: &str) {
        let b = self.esp().join("aisle/b");
        std::fs::create_dir_all(&b).unwrap();
        let manifest = std::fs::read_to_string(self.esp().join("aisle/a/manifest.json")).unwrap();
        std::fs::write(
            b.join("manifest.json"),
            manifest.replace("\"1.0\"", &format!("\"{version}\"")),
        )
        .unwrap();
        self.write_entry("aisle-b+0-3.conf", version, Slot::B, 2);
    }

    /// Every file under the ESP with its bytes (to tell that nothing changed).
    fn esp_snapshot(&self) -> Vec<(String, Vec<u8>)> {
        fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, Vec<u8>)>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, root, out);
                } else {
                    let name = path.strip_prefix(root).unwrap().display().to_string();
                    out.push((name, std::fs::read(&path).unwrap()));
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.esp(), &self.esp(), &mut out);
        out.sort();
        out
    }

    fn entry_names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.entries())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }
}

#[derive(Clone, Copy)]
struct Slot(&'static str);
impl Slot {
    const A: Slot = Slot("a");
    const B: Slot = Slot("b");
}

fn host_arch() -> Arch {
    Arch::host().expect("tests run on x86_64 or aarch64")
}

fn other_key() -> (SecretKey, PublicKey) {
    aisle_update::generate()
}

/// `POST /api/update` with raw bytes.
async fn post_bundle(edge: &Edge, token: Option<&str>, content_type: &str, body: Vec<u8>) -> Resp {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut request = client
        .post(format!("{}/api/update", edge.base_url()))
        .header("content-type", content_type)
        .body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("POST /api/update");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    Resp {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
        what: "POST /api/update".into(),
    }
}

async fn image(edge: &Edge) -> Value {
    edge.http().healthz().await.expect(200)["image"].clone()
}

/// An admin uploads a signed bundle: it lands in slot b on trial (3 tries, generation 2), slot
/// a is untouched, the answer is 202 and the reboot command runs. A bundle signed by a key the
/// appliance does not trust is 422 `bundle_rejected` and changes nothing; staff who are not
/// admins are 403; an oversize body is 413; another content type 415.
#[tokio::test]
async fn an_admin_installs_a_signed_bundle_and_the_box_reboots_into_it() {
    let box_ = Appliance::new();
    let edge = box_
        .start_edge("[limits]\nmax_bundle_bytes = 65536\n")
        .await;
    assert_eq!(
        image(&edge).await,
        json!({"slot": "a", "version": "1.0", "trial": false, "rolled_back": null})
    );
    let admin = edge.http().login_admin().await;
    let staff = edge
        .http()
        .create_and_login_staff(&admin, "staff1", "Staff", 8)
        .await;
    let before = box_.esp_snapshot();

    let good = std::fs::read(box_.bundle("2.0", &box_.key)).unwrap();
    post_bundle(
        &edge,
        Some(&staff.token),
        "application/octet-stream",
        good.clone(),
    )
    .await
    .expect_error(403, "forbidden");
    post_bundle(&edge, None, "application/octet-stream", good.clone())
        .await
        .expect_error(401, "unauthorized");
    post_bundle(&edge, Some(&admin.token), "application/json", good.clone())
        .await
        .expect_error(415, "unsupported_media_type");
    post_bundle(
        &edge,
        Some(&admin.token),
        "application/octet-stream",
        vec![0; 70_000],
    )
    .await
    .expect_error(413, "payload_too_large");

    let (stranger, _) = other_key();
    let forged = std::fs::read(box_.bundle("6.6.6", &stranger)).unwrap();
    let r = post_bundle(
        &edge,
        Some(&admin.token),
        "application/octet-stream",
        forged,
    )
    .await;
    r.expect_error(422, "bundle_rejected");
    assert!(
        r.text.contains("does not trust"),
        "the message names why: {}",
        r.text
    );
    let mut tampered = good.clone();
    let last = tampered.len() - 2048; // inside initrd.img, before the tar's end blocks
    tampered[last] ^= 1;
    let r = post_bundle(
        &edge,
        Some(&admin.token),
        "application/octet-stream",
        tampered,
    )
    .await;
    r.expect_error(422, "bundle_rejected");
    assert!(r.text.contains("sha256"), "{}", r.text);
    assert!(
        before == box_.esp_snapshot(),
        "a refused bundle changed the boot partition"
    );
    assert!(!box_.rebooted_mark().exists());

    // Downgrade protection: while the running image was built after this bundle, the
    // correctly signed bundle is refused and the boot partition left as it was.
    let running = box_.esp().join("aisle/a/manifest.json");
    let original = std::fs::read(&running).unwrap();
    let mut newer: Value = serde_json::from_slice(&original).unwrap();
    newer["created_at_ms"] = json!(newer["created_at_ms"].as_u64().unwrap() + 86_400_000);
    std::fs::write(&running, serde_json::to_vec(&newer).unwrap()).unwrap();
    let before_downgrade = box_.esp_snapshot();
    let r = post_bundle(
        &edge,
        Some(&admin.token),
        "application/octet-stream",
        good.clone(),
    )
    .await;
    r.expect_error(422, "bundle_rejected");
    assert!(r.text.contains("built before"), "{}", r.text);
    assert!(before_downgrade == box_.esp_snapshot());
    std::fs::write(&running, original).unwrap();

    let r = post_bundle(&edge, Some(&admin.token), "application/octet-stream", good).await;
    assert_eq!(
        r.expect(202),
        &json!({"slot": "b", "version": "2.0", "generation": 2, "rebooting": true})
    );
    assert_eq!(box_.entry_names(), ["aisle-a.conf", "aisle-b+3.conf"]);
    let entry = std::fs::read_to_string(box_.entries().join("aisle-b+3.conf")).unwrap();
    assert!(entry.contains("version 2\n"), "{entry}");
    assert!(
        entry.contains("options console=ttyS0 aisle.slot=b\n"),
        "{entry}"
    );
    assert_eq!(
        std::fs::read(box_.esp().join("aisle/b/vmlinuz")).unwrap(),
        b"kernel 2.0"
    );
    assert_eq!(
        std::fs::read(box_.esp().join("aisle/a/vmlinuz")).unwrap(),
        b"old kernel"
    );
    eventually("the reboot command ran", DEADLINE, async || {
        if box_.rebooted_mark().exists() {
            Ok(())
        } else {
            Err("no mark".into())
        }
    })
    .await;

    let status = edge
        .http()
        .get("/api/update", Some(&admin.token))
        .await
        .expect(200)
        .clone();
    assert_eq!(status["running"], "a", "{status}");
    assert_eq!(status["b"]["version"], "2.0", "{status}");
    assert_eq!(status["b"]["entry"]["state"], "trial", "{status}");
    edge.http()
        .get("/api/update", Some(&staff.token))
        .await
        .expect_error(403, "forbidden");
    let metrics = edge.http().metrics().await;
    assert_eq!(
        metric_value(&metrics, "aisle_update_events_total{event=\"installed\"}"),
        1.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            "aisle_update_events_total{event=\"rejected_unknown_key\"}"
        ),
        1.0
    );
    // No upload is left behind in the data directory.
    let leftovers: Vec<_> = std::fs::read_dir(edge.data_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("update-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// The new slot boots on trial; once the edge serves it blesses its entry. A slot whose trial
/// ran out shows as rolled back on the slot that booted instead.
#[tokio::test]
async fn a_slot_on_trial_is_blessed_once_serving_and_a_rollback_is_shown() {
    let box_ = Appliance::new();
    std::fs::rename(
        box_.entries().join("aisle-a.conf"),
        box_.entries().join("aisle-a+2-1.conf"),
    )
    .unwrap();
    let edge = box_.start_edge("").await;
    eventually("the running slot is blessed", DEADLINE, async || {
        let image = image(&edge).await;
        let metrics = edge.http().metrics().await;
        let blessed = metric_value(&metrics, "aisle_update_events_total{event=\"blessed\"}");
        if image["trial"] == false && box_.entry_names() == ["aisle-a.conf"] && blessed == 1.0 {
            Ok(())
        } else {
            Err(format!(
                "{image} {:?} blessed={blessed}",
                box_.entry_names()
            ))
        }
    })
    .await;

    // Slot b (2.0, generation 2) was tried three times and never blessed: a booted again.
    box_.fail_slot_b("2.0");
    assert_eq!(
        image(&edge).await,
        json!({"slot": "a", "version": "1.0", "trial": false, "rolled_back": "2.0"})
    );
}

/// An update migrated the database and then failed its trial: the old edge finds a schema it
/// does not know. With the rollback shown by the boot entries it puts back the copy taken
/// before the migration and starts (the newer database kept beside it); without one (a
/// deliberate downgrade) it refuses, losing nothing.
#[tokio::test]
async fn after_a_rollback_the_database_copied_before_the_migration_is_restored() {
    let box_ = Appliance::new();
    let mut edge = box_.start_edge("").await;
    let admin = edge.http().login_admin().await;
    edge.http()
        .create_staff(&admin, "lin", "Lin", "lin-password-1", 4)
        .await;
    edge.terminate().await;

    // What the newer edge did at its start: copied the database, then migrated it further.
    let db = edge.data_dir().join("aisle-edge.db");
    let version: u32 = {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let version: u32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        let backup = format!("{}.schema-{version}.bak", db.display());
        conn.execute("VACUUM INTO ?1", [&backup]).unwrap();
        conn.execute_batch("CREATE TABLE from_the_future (x INTEGER)")
            .unwrap();
        conn.pragma_update(None, "user_version", version + 1)
            .unwrap();
        version
    };

    // No rollback on the boot partition: the newer database is refused, untouched.
    assert!(
        edge.try_restart().await.is_err(),
        "a newer schema is refused"
    );
    let conn = rusqlite::Connection::open(&db).unwrap();
    let still: u32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(still, version + 1);
    drop(conn);

    // The update (2.0) was rolled back: the edge restores the copy and serves.
    box_.fail_slot_b("2.0");
    edge.restart().await;
    assert_eq!(image(&edge).await["rolled_back"], "2.0");
    edge.http().login("lin", "lin-password-1").await;
    let conn = rusqlite::Connection::open(&db).unwrap();
    let now: u32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(now, version);
    let kept: Vec<String> = std::fs::read_dir(edge.data_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(&format!(".schema-{}.rolled-back-", version + 1)))
        .collect();
    assert!(!kept.is_empty(), "the newer database is kept beside it");
}

/// Off an appliance image (no `update.boot_dir`): `/healthz` shows no image and an install
/// is refused with `updates_unavailable`.
#[tokio::test]
async fn without_a_boot_partition_updates_are_unavailable() {
    let edge = Edge::start().await;
    let h = edge.http().healthz().await.expect(200).clone();
    assert_eq!(h["image"], Value::Null, "{h}");
    assert_eq!(h["enrolled"], false, "{h}");
    assert_eq!(h["syncing"], false, "{h}");
    assert_eq!(h["region"], Value::Null, "{h}");
    let admin = edge.http().login_admin().await;
    post_bundle(
        &edge,
        Some(&admin.token),
        "application/octet-stream",
        vec![1, 2, 3],
    )
    .await
    .expect_error(409, "updates_unavailable");
    edge.http()
        .get("/api/update", Some(&admin.token))
        .await
        .expect_error(409, "updates_unavailable");
}

/// `aisle-edge update install FILE` installs and prints `{slot, version, generation}`; a
/// refused bundle exits 2 with one line; `update status` prints both slots.
#[test]
fn the_command_line_installs_and_tells_the_status() {
    let box_ = Appliance::new();
    let config = box_.config_file("");
    let bin = find_edge_binary().unwrap();
    let run = |args: &[&str]| {
        Command::new(&bin)
            .arg("--config")
            .arg(&config)
            .args(args)
            .env_remove("AISLE_EDGE_BIN")
            .env_remove("AISLE_HUB_BIN")
            .output()
            .unwrap()
    };
    let (stranger, _) = other_key();
    let forged = box_.bundle("9.9", &stranger);
    let out = run(&["update", "install", forged.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("bundle rejected (unknown_key)"), "{stderr}");
    assert_eq!(box_.entry_names(), ["aisle-a.conf"]);

    let good = box_.bundle("2.0", &box_.key);
    let out = run(&["update", "install", good.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        printed,
        json!({"slot": "b", "version": "2.0", "generation": 2})
    );
    assert!(!box_.rebooted_mark().exists(), "no --reboot, no reboot");

    let out = run(&["update", "status"]);
    assert!(out.status.success(), "{out:?}");
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["running"], "a", "{status}");
    assert_eq!(status["a"]["entry"]["state"], "good", "{status}");
    assert_eq!(
        status["b"]["entry"],
        json!({"state": "trial", "tries_left": 3, "tries_done": 0}),
        "{status}"
    );

    let out = run(&["update", "install", "--reboot", good.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        box_.rebooted_mark().exists(),
        "--reboot runs the reboot command"
    );
}

/// A store with `update.pull_interval_secs` takes the newest bundle its hub offers for its
/// architecture, installs it into the inactive slot and reboots; a hub offering the version
/// the store runs costs no download (304).
#[tokio::test]
async fn a_store_pulls_the_hubs_newest_bundle_and_reboots_into_it() {
    let mut hub = Hub::start("eu-west").await;
    let offered = tempfile::tempdir().unwrap();
    let arch_dir = offered.path().join(host_arch().as_str());
    std::fs::create_dir_all(&arch_dir).unwrap();
    hub.set_env("AISLE_HUB_UPDATES_DIR", offered.path().display());
    hub.restart().await;

    let box_ = Appliance::new();
    // The version the store runs: offered first, so nothing happens.
    std::fs::copy(box_.bundle("1.0", &box_.key), arch_dir.join("1.0.aisle")).unwrap();
    let token = hub.register_store("store-u").await;
    let file = box_.config_file(&format!(
        "store_id = \"store-u\"\nregion = \"eu-west\"\n[hub]\nurl = \"{}\"\nenroll_token = \"{token}\"\n",
        hub.url()
    ));
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("[update]\n", "[update]\npull_interval_secs = 1\n");
    std::fs::write(&file, text).unwrap();
    let mut edge = Edge::start_with(EdgeOptions {
        args: vec!["--config".into(), file.display().to_string()],
        ..EdgeOptions::default()
    })
    .await;
    wait_connected(&edge, DEADLINE).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        box_.entry_names(),
        ["aisle-a.conf"],
        "the running version again"
    );
    assert!(!box_.rebooted_mark().exists());

    // A newer bundle is offered: installed into b, then the reboot command runs.
    let newer = arch_dir.join("2.0.aisle");
    std::fs::copy(box_.bundle("2.0", &box_.key), &newer).unwrap();
    let later = std::time::SystemTime::now() + Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&newer)
        .unwrap()
        .set_modified(later)
        .unwrap();
    eventually(
        "the store installed 2.0 and rebooted",
        DEADLINE,
        async || {
            if box_.entry_names() == ["aisle-a.conf", "aisle-b+3.conf"]
                && box_.rebooted_mark().exists()
            {
                Ok(())
            } else {
                Err(format!("{:?}", box_.entry_names()))
            }
        },
    )
    .await;
    assert_eq!(
        std::fs::read(box_.esp().join("aisle/b/vmlinuz")).unwrap(),
        b"kernel 2.0"
    );

    // 2.0 fails its trial (its tries used up) and the box is back on a: the hub still offers
    // 2.0, and the store does not install it again (else three failed boots every interval).
    let entries = box_.esp().join("loader/entries");
    std::fs::rename(
        entries.join("aisle-b+3.conf"),
        entries.join("aisle-b+0-3.conf"),
    )
    .unwrap();
    std::fs::remove_file(box_.rebooted_mark()).unwrap();
    edge.restart().await;
    assert_eq!(image(&edge).await["rolled_back"], "2.0");
    wait_connected(&edge, DEADLINE).await;
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(
        box_.entry_names(),
        ["aisle-a.conf", "aisle-b+0-3.conf"],
        "2.0 not installed again"
    );
    assert!(!box_.rebooted_mark().exists(), "no reboot");

    // Without the store's credential the hub sends nothing.
    let r = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{}/api/updates/{}/latest", hub.url(), host_arch()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
}
