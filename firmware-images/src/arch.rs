//! The two appliance architectures and what differs between them.

use std::fmt;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    #[value(name = "x86_64")]
    X86_64,
    #[value(name = "aarch64")]
    Aarch64,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// Debian's name for the architecture.
    pub fn deb(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// The Rust target the edge binary is built for: static, so the initramfs needs no libc.
    pub fn rust_target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-musl",
            Arch::Aarch64 => "aarch64-unknown-linux-musl",
        }
    }

    /// ELF `e_machine` of binaries for this architecture.
    pub fn elf_machine(self) -> u16 {
        match self {
            Arch::X86_64 => 0x3e,
            Arch::Aarch64 => 0xb7,
        }
    }

    /// Where UEFI firmware looks for a boot loader on removable media / a fresh disk.
    pub fn efi_fallback_loader(self) -> &'static str {
        match self {
            Arch::X86_64 => "BOOTX64.EFI",
            Arch::Aarch64 => "BOOTAA64.EFI",
        }
    }

    /// systemd-boot's file in Debian's `systemd-boot-efi`.
    pub fn systemd_boot(self) -> &'static str {
        match self {
            Arch::X86_64 => "systemd-bootx64.efi",
            Arch::Aarch64 => "systemd-bootaa64.efi",
        }
    }

    /// The serial console: a box without a screen still tells the field engineer what it does.
    pub fn serial_console(self) -> &'static str {
        match self {
            Arch::X86_64 => "ttyS0,115200",
            Arch::Aarch64 => "ttyAMA0,115200",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
