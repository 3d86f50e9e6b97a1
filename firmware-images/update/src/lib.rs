//! Signed update bundles and the A/B boot slots of an Aisle appliance (see ARCHITECTURE.md,
//! "Firmware images").
//!
//! - [`manifest`]: what a bundle says it holds (version, architecture, each file's size and
//!   sha256, the image build's provenance), validated before anything trusts it.
//! - [`key`]: ed25519 signing keys and their one-line file formats; the appliance trusts the
//!   public keys built into its initramfs (`/etc/aisle/update-keys/*.pub`).
//! - [`bundle`]: the bundle file (an uncompressed tar: `manifest.json`, `manifest.sig`,
//!   `vmlinuz`, `initrd.img`), written by `aisle-image` and verified by the appliance before
//!   one byte of it reaches the boot partition.
//! - [`slot`]: the two boot slots on the EFI system partition and systemd-boot's boot
//!   counting: install into the inactive slot on trial, bless the running slot once healthy,
//!   tell a rollback.
//!
//! Everything here is blocking file I/O: async callers run it in `spawn_blocking`.

pub mod bundle;
mod fsutil;
pub mod key;
pub mod manifest;
pub mod slot;

pub use bundle::{
    BundleError, MAX_BUNDLE_BYTES, VerifiedBundle, describe_files, open_verified, read_manifest,
    write_bundle,
};
pub use key::{KeyError, PublicKey, SecretKey, generate, load_trusted_keys};
pub use manifest::{Arch, FileEntry, Manifest, ManifestError};
pub use slot::{
    Boot, EntryState, InstallOutcome, Slot, SlotError, SlotInfo, SlotStatus,
    current_slot_from_cmdline,
};
