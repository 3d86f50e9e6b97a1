//! Update bundles, as a store receives them (`POST /api/update` from an admin, or pulled from
//! its hub) and as the hub reads the ones it offers: the tar layout, the manifest and the
//! signature, through `aisle-update`'s own readers: `read_manifest` (the hub: layout and
//! manifest, unverified), `open_verified` (the store: layout, sizes, signature by a trusted
//! key, manifest, architecture, each file's size and sha256) and copying the verified files
//! out. The first input byte picks the case: a `manifest.json` alone (`Manifest::from_json`)
//! or a whole bundle file.
#![no_main]

use std::path::PathBuf;
use std::sync::LazyLock;

use aisle_update::{Arch, Manifest, PublicKey, open_verified, read_manifest};
use libfuzzer_sys::fuzz_target;

/// One bundle file per fuzzing process, in memory when possible.
static FILE: LazyLock<PathBuf> = LazyLock::new(|| {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    };
    dir.join(format!("aisle-fuzz-bundle-{}.aisle", std::process::id()))
});

/// The one key trusted here: the test key the seed bundle is signed with.
static TRUSTED: LazyLock<Vec<PublicKey>> =
    LazyLock::new(|| vec![aisle_fuzz::bundle_signing_key().public()]);

fuzz_target!(|data: &[u8]| {
    let Some((&case, rest)) = data.split_first() else {
        return;
    };
    if case % 2 == 0 {
        manifest(rest);
    } else {
        bundle(rest);
    }
});

fn manifest(bytes: &[u8]) {
    let Ok(manifest) = Manifest::from_json(bytes) else {
        return;
    };
    // What a valid manifest writes, it reads back as the same manifest.
    let again = Manifest::from_json(&manifest.to_json()).expect("a valid manifest round trips");
    assert_eq!(again, manifest);
}

fn bundle(bytes: &[u8]) {
    let path = FILE.as_path();
    std::fs::write(path, bytes).expect("the fuzz bundle file is writable");
    let offered = read_manifest(path);
    for arch in [Arch::X86_64, Arch::Aarch64] {
        let Ok(verified) = open_verified(path, &TRUSTED, arch) else {
            continue;
        };
        assert_eq!(verified.manifest().arch, arch);
        let offered = offered
            .as_ref()
            .expect("a verified bundle's manifest reads");
        assert_eq!(offered, verified.manifest());
        for entry in &verified.manifest().files {
            let mut copy = Vec::new();
            verified
                .copy_file(&entry.name, &mut copy)
                .expect("a verified file copies out");
            assert_eq!(copy.len() as u64, entry.size_bytes);
        }
    }
}
