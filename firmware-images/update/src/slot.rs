//! The appliance's two boot slots on the EFI system partition, and systemd-boot's boot
//! counting.
//!
//! Layout (the ESP is mounted at `/boot`; systemd-boot reads only the ESP, so the slots are
//! directories there):
//!
//! ```text
//! loader/entries/aisle-a.conf        slot a, blessed (no counter)
//! loader/entries/aisle-b+3.conf      slot b on trial: 3 tries left; systemd-boot renames it
//!                                    +2-1, +1-2, +0-3 on each boot; +0-N = bad, sorted last
//! aisle/a/{vmlinuz,initrd.img,manifest.json}
//! aisle/b/...
//! ```
//!
//! Each entry's `version` line is a generation (+1 on every install): systemd-boot boots the
//! newest non-bad entry first. An install therefore goes to the slot not running, on trial;
//! if the new image never gets healthy, the init reboots it until its tries run out and the
//! old slot boots again ([`SlotStatus::rolled_back`] tells it). The running slot is blessed
//! ([`Boot::bless`]) once it serves.
//!
//! Crash safety: the inactive slot's entry files are removed (and the directory fsynced)
//! before any of its files change, so a half-written slot never boots; its files are written
//! under temporary names, fsynced and renamed; its entry is written last, the same way.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::bundle::{BundleError, VerifiedBundle};
use crate::fsutil;
use crate::manifest::{INITRD_FILE, KERNEL_FILE, Manifest};

/// Entry files live here, relative to the ESP.
pub const ENTRIES_DIR: &str = "loader/entries";
/// Slot directories live here, relative to the ESP.
pub const SLOTS_DIR: &str = "aisle";
/// The manifest kept beside a slot's files (the bundle's signed bytes).
pub const SLOT_MANIFEST_FILE: &str = "manifest.json";
/// Most boot tries an install may give a new slot (systemd-boot counts up to any number,
/// but a box that boots a bad image ten times is down for too long).
pub const MAX_BOOT_TRIES: u32 = 9;
/// Largest entry or slot manifest file read (real ones are under 1 KiB and 64 KiB).
const MAX_READ_BYTES: u64 = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Slot {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "a" => Ok(Slot::A),
            "b" => Ok(Slot::B),
            other => Err(format!("a slot is \"a\" or \"b\", not {other:?}")),
        }
    }
}

/// The running slot, from the kernel command line (`aisle.slot=a|b`, written into each
/// entry's options by the image build and by [`Boot::install`]).
pub fn current_slot_from_cmdline(cmdline: &str) -> Option<Slot> {
    cmdline
        .split_whitespace()
        .find_map(|word| word.strip_prefix("aisle.slot="))
        .and_then(|value| value.parse().ok())
}

/// What systemd-boot's boot counter says about an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum EntryState {
    /// Blessed: no counter.
    Good,
    /// On trial: booted `tries_done` times, `tries_left` more before it counts as bad.
    Trial { tries_left: u32, tries_done: u32 },
    /// Its tries ran out without a bless: sorted last, booted only if nothing else is left.
    Bad { tries_done: u32 },
}

/// One slot as found on the ESP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SlotInfo {
    /// The slot's directory holds a manifest.
    pub present: bool,
    /// Its manifest's version (absent when the manifest is missing or unreadable).
    pub version: Option<String>,
    /// Its boot entry's generation, if it has an entry.
    pub generation: Option<u64>,
    /// Its boot entry's state; absent when it has no entry (it can not boot).
    pub entry: Option<EntryState>,
}

/// Both slots, which one is running, and whether an update was rolled back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SlotStatus {
    pub running: Option<Slot>,
    pub a: SlotInfo,
    pub b: SlotInfo,
    /// The version of the other slot when its entry is newer (a later install) than the
    /// running one's and bad: an update was tried and fell back to this slot.
    pub rolled_back: Option<String>,
}

impl SlotStatus {
    pub fn slot(&self, slot: Slot) -> &SlotInfo {
        match slot {
            Slot::A => &self.a,
            Slot::B => &self.b,
        }
    }

    /// The running slot's info.
    pub fn running_slot(&self) -> Option<&SlotInfo> {
        self.running.map(|s| self.slot(s))
    }
}

/// What [`Boot::install`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InstallOutcome {
    pub slot: Slot,
    pub version: String,
    pub generation: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("slot {0} is running; an update goes to the other slot")]
    RunningSlot(Slot),
    #[error("the running slot {0} has no boot entry in loader/entries to copy its options from")]
    NoRunningEntry(Slot),
    #[error("{path}: not a boot entry this appliance understands ({reason})")]
    BadEntry { path: PathBuf, reason: String },
    #[error(
        "slot {0} is still on trial (not blessed yet): the other slot is the only one known to work, and is not replaced until this one serves"
    )]
    RunningOnTrial(Slot),
    #[error("boot tries must be 1 to {MAX_BOOT_TRIES}, not {0}")]
    Tries(u32),
    #[error(transparent)]
    Bundle(#[from] BundleError),
}

/// An entry file's name, parsed: `aisle-<slot>[+<left>[-<done>]].conf`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EntryName {
    slot: Slot,
    state: EntryState,
}

fn parse_entry_name(name: &str) -> Option<EntryName> {
    let stem = name.strip_prefix("aisle-")?.strip_suffix(".conf")?;
    let (slot, counter) = match stem.split_once('+') {
        Some((slot, counter)) => (slot, Some(counter)),
        None => (stem, None),
    };
    let slot: Slot = slot.parse().ok()?;
    let number = |s: &str| -> Option<u32> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let state = match counter {
        None => EntryState::Good,
        Some(counter) => {
            let (left, done) = match counter.split_once('-') {
                Some((left, done)) => (number(left)?, number(done)?),
                None => (number(counter)?, 0),
            };
            if left == 0 {
                EntryState::Bad { tries_done: done }
            } else {
                EntryState::Trial {
                    tries_left: left,
                    tries_done: done,
                }
            }
        }
    };
    Some(EntryName { slot, state })
}

/// An entry file found on the ESP.
#[derive(Clone, Debug)]
struct Entry {
    path: PathBuf,
    name: EntryName,
    generation: u64,
    options: String,
}

/// The boot partition (the mounted ESP).
#[derive(Clone, Debug)]
pub struct Boot {
    esp: PathBuf,
}

impl Boot {
    pub fn new(esp: impl Into<PathBuf>) -> Boot {
        Boot { esp: esp.into() }
    }

    pub fn esp(&self) -> &Path {
        &self.esp
    }

    fn entries_dir(&self) -> PathBuf {
        self.esp.join(ENTRIES_DIR)
    }

    fn slot_dir(&self, slot: Slot) -> PathBuf {
        self.esp.join(SLOTS_DIR).join(slot.as_str())
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SlotError + '_ {
        move |source| SlotError::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// Every `aisle-*` entry file (others in the directory are not ours and are left alone).
    fn entries(&self) -> Result<Vec<Entry>, SlotError> {
        let dir = self.entries_dir();
        let mut entries = Vec::new();
        let listing = match std::fs::read_dir(&dir) {
            Ok(listing) => listing,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(entries),
            Err(err) => return Err(Self::io(&dir)(err)),
        };
        for item in listing {
            let item = item.map_err(Self::io(&dir))?;
            let file_name = item.file_name();
            let Some(name) = file_name.to_str().and_then(parse_entry_name) else {
                continue;
            };
            let path = item.path();
            let text = read_small(&path)?;
            let bad = |reason: &str| SlotError::BadEntry {
                path: path.clone(),
                reason: reason.to_owned(),
            };
            let field = |key: &str| {
                text.lines().find_map(|line| {
                    let (k, v) = line.trim().split_once(char::is_whitespace)?;
                    (k == key).then(|| v.trim().to_owned())
                })
            };
            let generation = field("version")
                .ok_or_else(|| bad("no version line"))?
                .parse()
                .map_err(|_| bad("its version is not a generation number"))?;
            let options = field("options").unwrap_or_default();
            entries.push(Entry {
                path,
                name,
                generation,
                options,
            });
        }
        Ok(entries)
    }

    /// The newest entry of `slot` (one is normal; two only after a crash mid-rename).
    fn entry_of(entries: &[Entry], slot: Slot) -> Option<&Entry> {
        entries
            .iter()
            .filter(|e| e.name.slot == slot)
            .max_by_key(|e| e.generation)
    }

    fn slot_manifest(&self, slot: Slot) -> Option<Manifest> {
        let path = self.slot_dir(slot).join(SLOT_MANIFEST_FILE);
        let text = read_small(&path).ok()?;
        Manifest::from_json(text.as_bytes()).ok()
    }

    /// Both slots as found on the ESP, with `current` (from [`current_slot_from_cmdline`]) as
    /// the running one.
    pub fn status(&self, current: Option<Slot>) -> Result<SlotStatus, SlotError> {
        let entries = self.entries()?;
        let info = |slot: Slot| {
            let entry = Self::entry_of(&entries, slot);
            SlotInfo {
                present: self.slot_dir(slot).join(SLOT_MANIFEST_FILE).is_file(),
                version: self.slot_manifest(slot).map(|m| m.version),
                generation: entry.map(|e| e.generation),
                entry: entry.map(|e| e.name.state),
            }
        };
        let (a, b) = (info(Slot::A), info(Slot::B));
        let rolled_back = current.and_then(|running| {
            let (mine, other) = match running {
                Slot::A => (&a, &b),
                Slot::B => (&b, &a),
            };
            let newer = other.generation > mine.generation;
            let bad = matches!(other.entry, Some(EntryState::Bad { .. }));
            if newer && bad {
                other.version.clone()
            } else {
                None
            }
        });
        Ok(SlotStatus {
            running: current,
            a,
            b,
            rolled_back,
        })
    }

    /// Installs `bundle` into the slot not running, on trial with `tries` boots; the next
    /// boot starts it (it is the newest generation). The running slot is never touched, and
    /// must be blessed: while it is on trial the other slot is the only one known to boot.
    pub fn install(
        &self,
        bundle: &VerifiedBundle,
        current: Slot,
        tries: u32,
    ) -> Result<InstallOutcome, SlotError> {
        self.install_into(bundle, current.other(), current, tries)
    }

    fn install_into(
        &self,
        bundle: &VerifiedBundle,
        target: Slot,
        current: Slot,
        tries: u32,
    ) -> Result<InstallOutcome, SlotError> {
        if target == current {
            return Err(SlotError::RunningSlot(current));
        }
        if tries == 0 || tries > MAX_BOOT_TRIES {
            return Err(SlotError::Tries(tries));
        }
        let entries = self.entries()?;
        let running =
            Self::entry_of(&entries, current).ok_or(SlotError::NoRunningEntry(current))?;
        if running.name.state != EntryState::Good {
            return Err(SlotError::RunningOnTrial(current));
        }
        // Downgrade protection: never an image built before the one running (a slot without a
        // readable manifest, e.g. hand-made, is not compared).
        if let Some(running_manifest) = self.slot_manifest(current) {
            let offered = bundle.manifest();
            if offered.created_at_ms < running_manifest.created_at_ms {
                return Err(SlotError::Bundle(BundleError::Older {
                    version: offered.version.clone(),
                    created_at_ms: offered.created_at_ms,
                    running_version: running_manifest.version,
                    running_created_at_ms: running_manifest.created_at_ms,
                }));
            }
        }
        let options = slot_options(&running.options, target);
        let generation = entries.iter().map(|e| e.generation).max().unwrap_or(0) + 1;

        // 1. The target can no longer boot: its entries go first.
        let entries_dir = self.entries_dir();
        for entry in entries.iter().filter(|e| e.name.slot == target) {
            std::fs::remove_file(&entry.path).map_err(Self::io(&entry.path))?;
        }
        fsutil::sync_dir(&entries_dir).map_err(Self::io(&entries_dir))?;

        // 2. Its files, each complete before its name exists.
        let dir = self.slot_dir(target);
        std::fs::create_dir_all(&dir).map_err(Self::io(&dir))?;
        for name in [KERNEL_FILE, INITRD_FILE] {
            let path = dir.join(name);
            let (mut file, temporary) = fsutil::create_temporary(&path).map_err(Self::io(&path))?;
            if let Err(err) = bundle.copy_file(name, &mut file) {
                let _ = std::fs::remove_file(&temporary);
                return Err(err.into());
            }
            fsutil::commit(file, &temporary, &path).map_err(Self::io(&path))?;
        }
        let manifest_path = dir.join(SLOT_MANIFEST_FILE);
        fsutil::write_atomically(&manifest_path, bundle.manifest_bytes())
            .map_err(Self::io(&manifest_path))?;
        if let Some(parent) = dir.parent() {
            fsutil::sync_dir(parent).map_err(Self::io(parent))?;
        }

        // 3. The entry, last: from here on the next boot tries the new slot.
        let version = bundle.manifest().version.clone();
        let text = format!(
            "title Aisle {version} (slot {target})\n\
             sort-key aisle\n\
             version {generation}\n\
             linux /{SLOTS_DIR}/{target}/{KERNEL_FILE}\n\
             initrd /{SLOTS_DIR}/{target}/{INITRD_FILE}\n\
             options {options}\n"
        );
        let path = entries_dir.join(format!("aisle-{target}+{tries}.conf"));
        fsutil::write_atomically(&path, text.as_bytes()).map_err(Self::io(&path))?;
        Ok(InstallOutcome {
            slot: target,
            version,
            generation,
        })
    }

    /// Marks the running slot good: its counted entry is renamed to `aisle-<slot>.conf`.
    /// `Ok(false)` when it was good already.
    pub fn bless(&self, current: Slot) -> Result<bool, SlotError> {
        let entries = self.entries()?;
        let entry = Self::entry_of(&entries, current).ok_or(SlotError::NoRunningEntry(current))?;
        if entry.name.state == EntryState::Good {
            return Ok(false);
        }
        let blessed = self.entries_dir().join(format!("aisle-{current}.conf"));
        std::fs::rename(&entry.path, &blessed).map_err(Self::io(&entry.path))?;
        fsutil::sync_parent(&blessed).map_err(Self::io(&blessed))?;
        Ok(true)
    }
}

/// The running entry's kernel options with `aisle.slot=` naming `target` (added if missing).
fn slot_options(options: &str, target: Slot) -> String {
    let mut words: Vec<String> = options
        .split_whitespace()
        .filter(|w| !w.starts_with("aisle.slot="))
        .map(str::to_owned)
        .collect();
    words.push(format!("aisle.slot={target}"));
    words.join(" ")
}

fn read_small(path: &Path) -> Result<String, SlotError> {
    use std::io::Read;
    let mut text = String::new();
    File::open(path)
        .and_then(|f| f.take(MAX_READ_BYTES).read_to_string(&mut text))
        .map_err(|source| SlotError::Io {
            path: path.to_owned(),
            source,
        })?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::{open_verified, tests::fixture};
    use crate::manifest::Arch;

    /// An ESP as the image build leaves it: slot a installed and blessed, generation 1.
    fn esp() -> (tempfile::TempDir, Boot) {
        let dir = tempfile::tempdir().unwrap();
        let esp = dir.path().to_owned();
        let esp = esp.as_path();
        std::fs::create_dir_all(esp.join(ENTRIES_DIR)).unwrap();
        std::fs::create_dir_all(esp.join("aisle/a")).unwrap();
        std::fs::write(esp.join("aisle/a/vmlinuz"), b"old kernel").unwrap();
        std::fs::write(esp.join("aisle/a/initrd.img"), b"old initrd").unwrap();
        std::fs::write(
            esp.join(ENTRIES_DIR).join("aisle-a.conf"),
            "title Aisle 1.0 (slot a)\nsort-key aisle\nversion 1\nlinux /aisle/a/vmlinuz\n\
             initrd /aisle/a/initrd.img\noptions console=ttyS0 quiet aisle.slot=a\n",
        )
        .unwrap();
        (dir, Boot::new(esp))
    }

    fn entry_names(boot: &Boot) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(boot.entries_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn entry_names_parse() {
        let parse = |n| parse_entry_name(n).map(|e| (e.slot, e.state));
        assert_eq!(parse("aisle-a.conf"), Some((Slot::A, EntryState::Good)));
        assert_eq!(
            parse("aisle-b+3.conf"),
            Some((
                Slot::B,
                EntryState::Trial {
                    tries_left: 3,
                    tries_done: 0
                }
            ))
        );
        assert_eq!(
            parse("aisle-a+2-1.conf"),
            Some((
                Slot::A,
                EntryState::Trial {
                    tries_left: 2,
                    tries_done: 1
                }
            ))
        );
        assert_eq!(
            parse("aisle-b+0-3.conf"),
            Some((Slot::B, EntryState::Bad { tries_done: 3 }))
        );
        for bad in [
            "aisle-c.conf",
            "aisle-a+.conf",
            "aisle-a+-1.conf",
            "aisle-a+1-.conf",
            "aisle-a+x.conf",
            "aisle-a.conf.tmp",
            "other.conf",
            "aisle-a+1-2-3.conf",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        assert_eq!(
            current_slot_from_cmdline("quiet aisle.slot=b x"),
            Some(Slot::B)
        );
        assert_eq!(current_slot_from_cmdline("quiet aisle.slot=c"), None);
        assert_eq!(current_slot_from_cmdline("quiet"), None);
    }

    #[test]
    fn install_bless_and_rollback() {
        let (_dir, boot) = esp();
        let f = fixture("2.0");
        let bundle =
            open_verified(&f.bundle, std::slice::from_ref(&f.public), Arch::X86_64).unwrap();

        let outcome = boot.install(&bundle, Slot::A, 3).unwrap();
        assert_eq!(
            outcome,
            InstallOutcome {
                slot: Slot::B,
                version: "2.0".into(),
                generation: 2
            }
        );
        assert_eq!(entry_names(&boot), ["aisle-a.conf", "aisle-b+3.conf"]);
        let entry = std::fs::read_to_string(boot.entries_dir().join("aisle-b+3.conf")).unwrap();
        assert_eq!(
            entry,
            "title Aisle 2.0 (slot b)\nsort-key aisle\nversion 2\nlinux /aisle/b/vmlinuz\n\
             initrd /aisle/b/initrd.img\noptions console=ttyS0 quiet aisle.slot=b\n"
        );
        assert_eq!(
            std::fs::read(boot.esp().join("aisle/b/vmlinuz")).unwrap(),
            b"kernel bytes"
        );
        assert_eq!(
            std::fs::read(boot.esp().join("aisle/b/manifest.json")).unwrap(),
            bundle.manifest_bytes()
        );
        assert_eq!(
            std::fs::read(boot.esp().join("aisle/a/vmlinuz")).unwrap(),
            b"old kernel"
        );

        // The new slot boots, on trial, and serves: blessed once.
        std::fs::rename(
            boot.entries_dir().join("aisle-b+3.conf"),
            boot.entries_dir().join("aisle-b+2-1.conf"),
        )
        .unwrap();
        let status = boot.status(Some(Slot::B)).unwrap();
        assert_eq!(
            status.b.entry,
            Some(EntryState::Trial {
                tries_left: 2,
                tries_done: 1
            })
        );
        assert_eq!(status.b.version.as_deref(), Some("2.0"));
        assert_eq!(status.rolled_back, None);
        assert!(boot.bless(Slot::B).unwrap());
        assert!(!boot.bless(Slot::B).unwrap());
        assert_eq!(entry_names(&boot), ["aisle-a.conf", "aisle-b.conf"]);

        // Installing again goes to a, with the next generation; b keeps running.
        let outcome = boot.install(&bundle, Slot::B, 2).unwrap();
        assert_eq!((outcome.slot, outcome.generation), (Slot::A, 3));
        assert_eq!(entry_names(&boot), ["aisle-a+2.conf", "aisle-b.conf"]);
    }

    #[test]
    fn a_failed_trial_shows_the_rollback() {
        let (_dir, boot) = esp();
        let f = fixture("2.0");
        let bundle =
            open_verified(&f.bundle, std::slice::from_ref(&f.public), Arch::X86_64).unwrap();
        boot.install(&bundle, Slot::A, 3).unwrap();
        std::fs::rename(
            boot.entries_dir().join("aisle-b+3.conf"),
            boot.entries_dir().join("aisle-b+0-3.conf"),
        )
        .unwrap();
        let status = boot.status(Some(Slot::A)).unwrap();
        assert_eq!(status.b.entry, Some(EntryState::Bad { tries_done: 3 }));
        assert_eq!(status.rolled_back.as_deref(), Some("2.0"));
        assert_eq!(status.a.entry, Some(EntryState::Good));
        assert!(!boot.bless(Slot::A).unwrap());
        // The next install replaces the bad entry and still is the newest.
        let outcome = boot.install(&bundle, Slot::A, 3).unwrap();
        assert_eq!(outcome.generation, 3);
        assert_eq!(entry_names(&boot), ["aisle-a.conf", "aisle-b+3.conf"]);
    }

    #[test]
    fn an_image_built_before_the_running_one_is_refused() {
        let (_dir, boot) = esp();
        let f = fixture("2.0");
        let bundle =
            open_verified(&f.bundle, std::slice::from_ref(&f.public), Arch::X86_64).unwrap();
        let mut running = bundle.manifest().clone();
        running.version = "3.0".into();
        running.created_at_ms += 86_400_000;
        std::fs::write(boot.esp().join("aisle/a/manifest.json"), running.to_json()).unwrap();
        let before = entry_names(&boot);
        let err = boot.install(&bundle, Slot::A, 3).unwrap_err();
        assert!(
            matches!(&err, SlotError::Bundle(BundleError::Older { running_version, .. }) if running_version == "3.0"),
            "{err}"
        );
        assert_eq!(entry_names(&boot), before, "nothing was installed");
        assert!(!boot.esp().join("aisle/b").exists());

        // The same build as the running one installs again (a re-install).
        running.created_at_ms = bundle.manifest().created_at_ms;
        std::fs::write(boot.esp().join("aisle/a/manifest.json"), running.to_json()).unwrap();
        boot.install(&bundle, Slot::A, 3).unwrap();
    }

    #[test]
    fn the_running_slot_is_never_installed_over() {
        let (_dir, boot) = esp();
        let f = fixture("2.0");
        let bundle =
            open_verified(&f.bundle, std::slice::from_ref(&f.public), Arch::X86_64).unwrap();
        let err = boot.install_into(&bundle, Slot::A, Slot::A, 3).unwrap_err();
        assert!(matches!(err, SlotError::RunningSlot(Slot::A)), "{err}");
        assert!(matches!(
            boot.install(&bundle, Slot::A, 0),
            Err(SlotError::Tries(0))
        ));
        // Running a slot still on trial: the other one is the only known-good one, kept.
        std::fs::rename(
            boot.entries_dir().join("aisle-a.conf"),
            boot.entries_dir().join("aisle-a+2-1.conf"),
        )
        .unwrap();
        let err = boot.install(&bundle, Slot::A, 3).unwrap_err();
        assert!(matches!(err, SlotError::RunningOnTrial(Slot::A)), "{err}");
        assert_eq!(entry_names(&boot), ["aisle-a+2-1.conf"]);
        assert!(boot.bless(Slot::A).unwrap());
        // Running b, which has no entry: nothing to copy the options from, nothing written.
        let err = boot.install(&bundle, Slot::B, 3).unwrap_err();
        assert!(matches!(err, SlotError::NoRunningEntry(Slot::B)), "{err}");
        assert_eq!(entry_names(&boot), ["aisle-a.conf"]);
        assert_eq!(
            std::fs::read(boot.esp().join("aisle/a/vmlinuz")).unwrap(),
            b"old kernel"
        );
    }
}
