//! The configuration files: the edge's `aisle.toml` (on the appliance it sits on the FAT
//! provisioning partition, which anyone holding the disk can write) and the hub's config.
//! Each goes through the product's own loading: `Config::load` (figment: embedded defaults,
//! then the TOML file, then the environment; then `validate`). For the edge also what it does
//! to that file after enrolling: `config::forget_setting` removes the used token with
//! `toml_edit`, and the file it leaves must still load.
#![no_main]

use std::path::PathBuf;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;

/// One file per fuzzing process (several may run with `-jobs`), in memory when possible.
static FILE: LazyLock<PathBuf> = LazyLock::new(|| {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    };
    dir.join(format!("aisle-fuzz-config-{}.toml", std::process::id()))
});

fuzz_target!(|data: &[u8]| {
    let path = FILE.as_path();
    std::fs::write(path, data).expect("the fuzz config file is writable");

    let _ = aisle_hub::config::Config::load(Some(path), &aisle_hub::config::Overrides::default());

    let overrides = aisle_edge::config::Overrides::default();
    let Ok(config) = aisle_edge::config::Config::load(Some(path), &overrides) else {
        return;
    };
    if config.hub.enroll_token.is_some() {
        // The edge forgets the token it used; what is left must be the same configuration
        // without it.
        let forgot = aisle_edge::config::forget_setting(path, &["hub", "enroll_token"])
            .expect("a loaded config file can be rewritten");
        assert!(forgot, "the token the config holds is found in the file");
        let again = aisle_edge::config::Config::load(Some(path), &overrides)
            .expect("the config without its token still loads");
        assert_eq!(again.hub.enroll_token, None);
        assert_eq!(again.hub.url, config.hub.url);
        assert_eq!(again.limits, config.limits);
        assert_eq!(again.store_id, config.store_id);
    }
});
