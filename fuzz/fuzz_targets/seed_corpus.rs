//! Writes the seed corpora `fuzz/corpus/<target>/`: a few valid inputs per target, made with
//! the product's own APIs (documents and sync messages by `aisle-sync`, a signed bundle by
//! `aisle-update::write_bundle`), plus hand-written frames and config files.
//!
//! `cargo +nightly fuzz run -s none seed_corpus` (from the repository root): a fuzz binary only
//! because every binary of this crate is built with the coverage instrumentation, which links
//! against libFuzzer; it writes the seeds in its `init` and exits before fuzzing anything.
//! Re-running replaces the seeds; documents carry random actor ids, so their bytes differ
//! from run to run.
#![no_main]
// `init` exits: the empty fuzz body after it is never reached, by design.
#![allow(unreachable_code)]

use std::path::{Path, PathBuf};

use aisle_fuzz::{CONVERSATION, STORE_ID};
use aisle_sync::{
    Conversation, Credential, DocumentKey, Frame, Head, Settings, SyncedDoc, encode_frame,
};
use automerge::sync::{Message, State};

libfuzzer_sys::fuzz_target!(
    init: {
        write_seeds();
        std::process::exit(0);
    },
    |_data: &[u8]| {}
);

fn write_seeds() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    ws_frame(&root.join("ws_frame"));
    let messages = automerge_load(&root.join("automerge_load"));
    sync_envelope(&root.join("sync_envelope"), &messages);
    config(&root.join("config"));
    bundle_manifest(&root.join("bundle_manifest"));
}

fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) {
    std::fs::create_dir_all(dir).expect("corpus directory");
    std::fs::write(dir.join(name), bytes).expect("seed written");
}

fn ws_frame(dir: &Path) {
    let c = CONVERSATION;
    let frames = [
        (
            "hello-customer",
            r#"{"type":"hello","role":"customer","display_name":"Wang"}"#.to_owned(),
        ),
        (
            "hello-resume",
            r#"{"type":"hello","role":"customer","resume_token":"v1.abc.def"}"#.to_owned(),
        ),
        (
            "hello-staff",
            r#"{"type":"hello","role":"staff","token":"s3cr3t"}"#.to_owned(),
        ),
        (
            "start",
            r#"{"type":"start","request_id":"r1","display_name":"Fang"}"#.to_owned(),
        ),
        (
            "send",
            format!(
                r#"{{"type":"send","conversation_id":"{c}","client_msg_id":"m-1","body":"你好, size 42?"}}"#
            ),
        ),
        (
            "send-attachment",
            format!(
                r#"{{"type":"send","conversation_id":"{c}","client_msg_id":"m-2","body":"","attachment_id":"01J9ZK3M4X8Q2W5T7V6B0C1D2E"}}"#
            ),
        ),
        (
            "typing",
            format!(r#"{{"type":"typing","conversation_id":"{c}","active":true}}"#),
        ),
        (
            "read",
            format!(r#"{{"type":"read","conversation_id":"{c}","seq":12}}"#),
        ),
        (
            "resume",
            format!(r#"{{"type":"resume","conversation_id":"{c}","after_seq":3}}"#),
        ),
        (
            "claim",
            format!(r#"{{"type":"claim","conversation_id":"{c}","request_id":"q"}}"#),
        ),
        (
            "transfer",
            format!(
                r#"{{"type":"transfer","conversation_id":"{c}","to":"01J9ZK3M4X8Q2W5T7V6B0C1D2F","note":"shoes"}}"#
            ),
        ),
        (
            "snooze",
            format!(r#"{{"type":"snooze","conversation_id":"{c}","until_ms":1700000000000}}"#),
        ),
        (
            "resolve",
            format!(r#"{{"type":"resolve","conversation_id":"{c}"}}"#),
        ),
        (
            "handoff",
            format!(r#"{{"type":"handoff","conversation_id":"{c}"}}"#),
        ),
        ("ping", r#"{"type":"ping"}"#.to_owned()),
        (
            "bad-frame",
            r#"{"type":"send","conversation_id":"nope","client_msg_id":"c1"}"#.to_owned(),
        ),
    ];
    for (name, text) in frames {
        write(dir, &format!("{name}.json"), text);
    }
}

/// Seeds for `automerge_load` (first byte = the case, see the target); returns the sync
/// messages of a first round, for the envelope's seeds.
fn automerge_load(dir: &Path) -> Vec<Vec<u8>> {
    let with_case = |case: u8, bytes: &[u8]| {
        let mut out = vec![case];
        out.extend_from_slice(bytes);
        out
    };
    let mut doc = aisle_fuzz::conversation();
    let saved = doc.save();
    write(dir, "load-saved", with_case(0, &saved));
    // A compacted save followed by an incremental chunk: the edge's storage format.
    let mut more = Conversation::load(&saved).expect("loads");
    more.add_message(&aisle_sync::MessageRecord {
        id: aisle_sync::MessageId::from_ulid(ulid::Ulid(300)),
        client_msg_id: "c9".into(),
        sender: aisle_sync::Participant::Bot,
        body: "Opening hours: 9:00 to 21:00".into(),
        sent_at_ms: 1_700_000_009_000,
        attachment: None,
        intent: None,
    })
    .expect("message");
    let incremental = more.save_incremental();
    let stored = [saved.clone(), incremental].concat();
    write(dir, "load-incremental", with_case(0, &stored));
    write(
        dir,
        "load-chunks",
        with_case(1, &aisle_fuzz::chunk_records(&stored)),
    );

    // A first round: the holder's messages to a replica that has none.
    let mut fresh = Conversation::empty_for_sync(CONVERSATION);
    let messages = exchange(&mut doc, &mut fresh);
    for (n, message) in messages.iter().enumerate() {
        write(dir, &format!("receive-{n}"), with_case(2, message));
        let decoded = Message::decode(message).expect("decodes");
        if !decoded.changes.is_empty() {
            let records: Vec<u8> = decoded
                .changes
                .iter()
                .flat_map(aisle_fuzz::chunk_records)
                .collect();
            write(dir, &format!("receive-chunks-{n}"), with_case(3, &records));
        }
    }

    let mut settings = aisle_fuzz::settings();
    let saved = settings.save();
    write(dir, "settings-saved", with_case(4, &saved));
    write(
        dir,
        "settings-chunks",
        with_case(5, &aisle_fuzz::chunk_records(&saved)),
    );
    let mut fresh = Settings::empty_for_sync(STORE_ID);
    for (n, message) in exchange(&mut settings, &mut fresh).iter().enumerate() {
        write(dir, &format!("settings-receive-{n}"), with_case(6, message));
        let decoded = Message::decode(message).expect("decodes");
        if !decoded.changes.is_empty() {
            let records: Vec<u8> = decoded
                .changes
                .iter()
                .flat_map(aisle_fuzz::chunk_records)
                .collect();
            write(
                dir,
                &format!("settings-receive-chunks-{n}"),
                with_case(7, &records),
            );
        }
    }
    messages
}

/// Runs a sync between `from` and `to` to the end; every message sent, in order.
fn exchange<D: SyncedDoc>(from: &mut D, to: &mut D) -> Vec<Vec<u8>> {
    let (mut a, mut b) = (State::new(), State::new());
    let mut sent = Vec::new();
    for _ in 0..10 {
        let mut quiet = true;
        if let Some(m) = from.generate_sync_message(&mut a) {
            to.receive_sync_message(&mut b, &m).expect("receives");
            sent.push(m);
            quiet = false;
        }
        if let Some(m) = to.generate_sync_message(&mut b) {
            from.receive_sync_message(&mut a, &m).expect("receives");
            sent.push(m);
            quiet = false;
        }
        if quiet {
            break;
        }
    }
    sent
}

fn sync_envelope(dir: &Path, messages: &[Vec<u8>]) {
    let key = DocumentKey::from(CONVERSATION);
    let settings = DocumentKey::settings(STORE_ID).expect("key");
    let mut frames = vec![
        Frame::Hello {
            store_id: STORE_ID.into(),
            region: "eu-west".into(),
            credential: Credential("k7Q2pX9vLm3sT8wR4yZ1bN6cD0fH5jG2aE7uI9oP3qW".into()),
            edge_version: "0.1.0".into(),
        },
        Frame::Welcome {
            region: "eu-west".into(),
            hub_id: "hub-eu-west-1".into(),
        },
        Frame::Refused {
            code: "wrong_region".into(),
            message: "store-fuzz is enrolled in us-east".into(),
        },
        Frame::Manifest {
            docs: vec![
                (key.clone(), vec![Head([0xc9; 32])]),
                (settings.clone(), vec![Head([1; 32]), Head([2; 32])]),
            ],
            more: true,
        },
        Frame::Manifest {
            docs: vec![],
            more: false,
        },
        Frame::Ack {
            doc: key.clone(),
            heads: vec![Head([7; 32])],
        },
        Frame::Ping,
        Frame::Pong,
        Frame::Error {
            code: "foreign_document".into(),
            message: "the conversation was created twice".into(),
            doc: Some(key.clone()),
        },
        Frame::Error {
            code: "bad_frame".into(),
            message: "no".into(),
            doc: None,
        },
    ];
    for message in messages {
        frames.push(Frame::Sync {
            doc: key.clone(),
            message: message.clone(),
        });
    }
    for (n, frame) in frames.iter().enumerate() {
        let bytes = encode_frame(frame, usize::MAX).expect("encodes");
        write(dir, &format!("{n:02}-{}", frame.kind()), bytes);
    }
}

fn config(dir: &Path) {
    write(
        dir,
        "edge.toml",
        r#"listen = "0.0.0.0:8080"
data = "/var/lib/aisle"
store_id = "sh-jingan-01"
region = "eu-west"
first_admin_password = "correct horse battery"

[routing]
capacity_per_staff = 6

[hub]
url = "http://hub.example:8090"
enroll_token = "et_0123456789abcdef"

[limits]
max_frame_bytes = 16384
max_message_chars = 4000

[update]
boot_dir = "/boot"
boot_tries = 3
reboot_command = ["/sbin/reboot", "-f"]
pull_interval_secs = 3600
current_slot = "a"

[model]
workers = 2
"#,
    );
    write(
        dir,
        "edge-inline.toml",
        "store_id = 'x'\nhub = { url = 'https://h', enroll_token = 't' }\n",
    );
    write(
        dir,
        "hub.toml",
        r#"listen = "0.0.0.0:8090"
data = "/var/lib/aisle-hub"
region = "eu-west"
session_ttl_secs = 43200
updates_dir = "/srv/updates"

[limits]
max_frame_bytes = 8454144
"#,
    );
}

fn bundle_manifest(dir: &Path) {
    let work = std::env::temp_dir().join(format!("aisle-fuzz-seed-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("work dir");
    let (kernel, initrd) = (work.join("vmlinuz"), work.join("initrd.img"));
    std::fs::write(&kernel, b"MZ kernel of the fuzz seed\n").expect("kernel");
    std::fs::write(&initrd, b"070701 initramfs of the fuzz seed\n").expect("initrd");
    let key = aisle_fuzz::bundle_signing_key();
    for arch in [aisle_update::Arch::X86_64, aisle_update::Arch::Aarch64] {
        let out = work.join(format!("{arch}.aisle"));
        let manifest = aisle_update::write_bundle(
            &out,
            "2026.11.27-fuzz",
            arch,
            &kernel,
            &initrd,
            serde_json::json!({"kernel": "6.12.48-1", "busybox": "1.37.0"}),
            &key,
        )
        .expect("a bundle is written");
        let bundle = std::fs::read(&out).expect("bundle");
        write(
            dir,
            &format!("bundle-{arch}"),
            [&[1u8][..], &bundle].concat(),
        );
        write(
            dir,
            &format!("manifest-{arch}.json"),
            [&[0u8][..], &manifest.to_json()].concat(),
        );
    }
    std::fs::remove_dir_all(&work).expect("work dir removed");
}
