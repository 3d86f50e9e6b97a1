//! The appliance images booted under QEMU, as a field engineer would use them: provisioned and
//! flashed with `aisle-image`, booted (UEFI → systemd-boot → slot a), answering `/healthz` with
//! the provisioned store, enrolling with a real `aisle-hub` on the host and syncing a customer's
//! message to it; a wrongly signed update refused, a broken update rolled back by the boot
//! counter, a good one installed and blessed.
//!
//! Ignored by default (minutes of software emulation): `ci/test` builds the images
//! (`aisle-image build`, into `target/images`, with the key pair `target/images/keys/release`)
//! and runs these with `--ignored`. Each wait is a poll with a deadline; nothing asserts speed
//! (boot times are in docs/benchmarks.md).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use aisle_image::arch::Arch;
use aisle_image::qemu;
use aisle_tests::edge::{find_binary, free_port};
use aisle_tests::*;

/// Software emulation on two shared cores: a boot takes 10–60 s; generous bounds.
const BOOT_DEADLINE: Duration = Duration::from_secs(420);
const ROLLBACK_DEADLINE: Duration = Duration::from_secs(900);
const ADMIN_PASSWORD: &str = "field-engineer-set-this";

fn images() -> PathBuf {
    std::env::var_os("AISLE_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/images"))
}

fn aisle_image() -> PathBuf {
    find_binary("aisle-image", "AISLE_IMAGE_BIN").expect("aisle-image is built")
}

/// Runs `aisle-image ARGS`, panicking with its output when it fails.
fn cli(args: &[&str]) -> String {
    let out = Command::new(aisle_image())
        .args(args)
        .output()
        .expect("aisle-image runs");
    assert!(
        out.status.success(),
        "aisle-image {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A booted box: QEMU, its serial log, its forwarded port.
struct Box_ {
    vm: Option<qemu::Vm>,
    log: PathBuf,
    port: u16,
    http: Http,
}

impl Box_ {
    fn boot(arch: Arch, disk: &Path, hub_port: Option<u16>, log: PathBuf) -> Box_ {
        let port = free_port();
        let vm = qemu::Vm::start(&qemu::Options {
            arch,
            image: disk.to_path_buf(),
            port,
            hub_port,
            serial_log: Some(log.clone()),
            memory_mib: 1024,
            cpus: 2,
            // The disk keeps what the box writes: the test reads the provisioning partition
            // after the box is off.
            snapshot: false,
        })
        .expect("QEMU starts");
        Box_ {
            vm: Some(vm),
            log,
            port,
            http: Http::with_base(format!("http://127.0.0.1:{port}")),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn serial_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Polls `/healthz` until `check` accepts it.
    async fn health_until(
        &self,
        what: &str,
        deadline: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let end = Instant::now() + deadline;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let mut last = Value::Null;
        loop {
            if let Ok(r) = client.get(format!("{}/healthz", self.url())).send().await
                && let Ok(v) = r.json::<Value>().await
            {
                if check(&v) {
                    return v;
                }
                last = v;
            }
            assert!(
                Instant::now() < end,
                "{what}: not within {deadline:?}; last /healthz: {last}\n--- serial console ---\n{}",
                self.serial_tail()
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    fn shut_off(&mut self) {
        self.vm.take();
    }
}

/// Copies a built image to a scratch file (the built one stays pristine for other tests).
fn scratch_image(arch: Arch, dir: &Path) -> PathBuf {
    let built = images().join(format!("aisle-{arch}.img"));
    assert!(
        built.is_file(),
        "{} is missing: ci/test builds it (aisle-image build --arch {arch})",
        built.display()
    );
    let copy = dir.join(format!("aisle-{arch}.img"));
    std::fs::copy(&built, &copy).expect("copy the image");
    copy
}

fn log_path(name: &str) -> PathBuf {
    let dir = images().join("logs");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[tokio::test]
#[ignore = "boots QEMU for minutes: ci/test runs it after building the images"]
async fn aarch64_box_boots_as_its_provisioned_store() {
    let dir = tempfile::tempdir().unwrap();
    let image = scratch_image(Arch::Aarch64, dir.path());
    cli(&[
        "provision",
        image.to_str().unwrap(),
        "--store",
        "arm-store-07",
        "--region",
        "r-test",
        "--hub",
        "http://10.0.2.100:8090",
        "--enroll-token",
        "no-hub-in-this-test",
    ]);
    let started = Instant::now();
    let b = Box_::boot(Arch::Aarch64, &image, None, log_path("aarch64-boot.log"));
    let health = b
        .health_until("the aarch64 box answers", BOOT_DEADLINE, |h| {
            h["status"] == "ok"
        })
        .await;
    eprintln!(
        "aarch64: boot to healthy in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(health["store_id"], "arm-store-07", "{health}");
    assert_eq!(health["region"], "r-test", "{health}");
    assert_eq!(health["image"]["slot"], "a", "{health}");
    assert_eq!(health["enrolled"], false, "no hub is reachable: {health}");
}

#[tokio::test]
#[ignore = "boots QEMU for minutes: ci/test runs it after building the images"]
async fn x86_64_box_enrolls_syncs_and_updates_with_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let mut hub = Hub::start("r-test").await;
    let token = hub.register_store("store-x86-01").await;
    let image = scratch_image(Arch::X86_64, dir.path());
    cli(&[
        "provision",
        image.to_str().unwrap(),
        "--store",
        "store-x86-01",
        "--region",
        "r-test",
        "--hub",
        &format!("http://{}", qemu::HUB_GUEST_ADDR),
        "--enroll-token",
        &token,
        "--admin-password",
        ADMIN_PASSWORD,
    ]);
    // Flash it as onto a disk (a plain file here): written, read back, compared.
    let disk = dir.path().join("disk.img");
    cli(&[
        "flash",
        image.to_str().unwrap(),
        "--device",
        disk.to_str().unwrap(),
        "--yes",
    ]);

    let started = Instant::now();
    let mut b = Box_::boot(
        Arch::X86_64,
        &disk,
        Some(hub.addr().port()),
        log_path("x86_64-boot.log"),
    );
    let health = b
        .health_until("the x86_64 box enrolls with the hub", BOOT_DEADLINE, |h| {
            h["enrolled"] == true
        })
        .await;
    eprintln!(
        "x86_64: boot to enrolled in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(health["store_id"], "store-x86-01", "{health}");
    assert_eq!(health["region"], "r-test", "{health}");
    assert_eq!(health["image"]["slot"], "a", "{health}");
    // The field engineer's check passes too.
    let said = cli(&[
        "verify",
        &b.url(),
        "--expect-store",
        "store-x86-01",
        "--expect-region",
        "r-test",
        "--expect-synced",
        "--wait-secs",
        "120",
    ]);
    assert!(said.contains("store-x86-01"), "{said}");

    // A customer at the box; the message reaches the hub on the host.
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], b.port).into();
    let mut ws = Ws::connect(addr, "customer at the QEMU box").await;
    ws.hello_customer("Li Wei").await;
    let started_conv = ws.start(&format!("r-{}", ulid::Ulid::new())).await;
    let conv = started_conv["conversation_id"]
        .as_str()
        .unwrap()
        .to_string();
    let ack = ws
        .send_msg(
            &conv,
            &cmid(),
            "这件外套有大号吗？ (sent to the box in QEMU)",
        )
        .await;
    let id = ack["message_id"].as_str().unwrap().to_string();
    eventually(
        "the hub holds the box's message",
        Duration::from_secs(60),
        async || {
            let held = hub.messages_of(&conv);
            if held.iter().any(|(mid, _)| *mid == id) {
                Ok(())
            } else {
                Err(format!("hub has {held:?}"))
            }
        },
    )
    .await;

    let admin = b.http.login("admin", ADMIN_PASSWORD).await;
    let keys = images().join("keys");
    let kernel = images().join("aisle-x86_64.vmlinuz");
    let initrd = images().join("aisle-x86_64.initrd.img");
    let status_before = b
        .http
        .get("/api/update", Some(&admin.token))
        .await
        .expect(200)
        .clone();

    // 1. A bundle signed by a key the box does not trust: refused, nothing changes.
    let rogue = dir.path().join("rogue");
    cli(&["keygen", "--out", rogue.to_str().unwrap()]);
    let rogue_bundle = dir.path().join("rogue.bundle");
    sign(
        &format!("{}.key", rogue.display()),
        &kernel,
        &initrd,
        "9.9.9-rogue",
        &rogue_bundle,
    );
    let r = post_bundle(&b, &admin.token, &rogue_bundle).await;
    assert_eq!(r.0, 422, "{}", r.1);
    assert_eq!(r.1["error"]["code"], "bundle_rejected", "{}", r.1);
    let status_after = b
        .http
        .get("/api/update", Some(&admin.token))
        .await
        .expect(200)
        .clone();
    assert_eq!(
        status_after, status_before,
        "a refused bundle changes nothing"
    );

    // 2. A correctly signed bundle whose edge cannot start: the box tries it, its boot counter
    //    runs out, and it comes back on slot a, saying it rolled back.
    let broken_initrd = dir.path().join("broken-initrd.img");
    let mut overlay = aisle_image::cpio::Tree::default();
    overlay.file(
        "usr/bin/aisle-edge",
        b"#!/bin/sh\necho 'aisle-edge: broken on purpose'\nexit 1\n".to_vec(),
        true,
    );
    let mut bytes = std::fs::read(&initrd).unwrap();
    bytes.extend(overlay.to_initramfs().unwrap()); // a later archive overrides the earlier file
    std::fs::write(&broken_initrd, bytes).unwrap();
    let bad = dir.path().join("bad.bundle");
    sign(
        &format!("{}/release.key", keys.display()),
        &kernel,
        &broken_initrd,
        "0.1.0-broken",
        &bad,
    );
    let r = post_bundle(&b, &admin.token, &bad).await;
    assert_eq!(r.0, 202, "{}", r.1);
    assert_eq!(r.1["slot"], "b", "{}", r.1);
    let started = Instant::now();
    let health = b
        .health_until("the box rolls back to slot a", ROLLBACK_DEADLINE, |h| {
            h["image"]["slot"] == "a" && h["image"]["rolled_back"] == "0.1.0-broken"
        })
        .await;
    eprintln!(
        "x86_64: broken update to rolled back in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(health["store_id"], "store-x86-01");

    // 3. A good bundle: installed into b, booted on trial, blessed by the edge's health check.
    let admin = b.http.login("admin", ADMIN_PASSWORD).await;
    let good = dir.path().join("good.bundle");
    sign(
        &format!("{}/release.key", keys.display()),
        &kernel,
        &initrd,
        "0.1.0-update2",
        &good,
    );
    let r = post_bundle(&b, &admin.token, &good).await;
    assert_eq!(r.0, 202, "{}", r.1);
    let started = Instant::now();
    let health = b
        .health_until(
            "the box runs the update on slot b, blessed",
            BOOT_DEADLINE,
            |h| {
                h["image"]["slot"] == "b"
                    && h["image"]["version"] == "0.1.0-update2"
                    && h["image"]["trial"] == false
            },
        )
        .await;
    eprintln!(
        "x86_64: good update to blessed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(health["enrolled"], true, "{health}");

    // The single-use token is gone from the provisioning partition.
    b.shut_off();
    let config = aisle_image::provision::read_config(&disk)
        .unwrap()
        .expect("aisle.toml is there");
    assert!(
        !config.contains("enroll_token"),
        "the token was not removed:\n{config}"
    );
    assert!(config.contains("store-x86-01"), "{config}");
}

fn sign(key: &str, kernel: &Path, initrd: &Path, version: &str, out: &Path) {
    cli(&[
        "sign",
        "--key",
        key,
        "--arch",
        "x86_64",
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--image-version",
        version,
        "--out",
        out.to_str().unwrap(),
    ]);
}

async fn post_bundle(b: &Box_, token: &str, bundle: &Path) -> (u16, Value) {
    let body = std::fs::read(bundle).unwrap();
    let r = reqwest::Client::new()
        .post(format!("{}/api/update", b.url()))
        .bearer_auth(token)
        .header("content-type", "application/octet-stream")
        .body(body)
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .expect("POST /api/update");
    let status = r.status().as_u16();
    let v = r.json::<Value>().await.unwrap_or(json!(null));
    (status, v)
}
