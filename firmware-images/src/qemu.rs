//! Booting an image under QEMU (software emulation, UEFI firmware, user networking restricted
//! to the host): `aisle-image run` for a field engineer trying an image before flashing it, and
//! the boot tests in CI.
//!
//! Two pitfalls measured before this was written: an orphaned QEMU still holding the forwarded
//! port made later runs pass against the old box, so a taken port is refused and QEMU is killed
//! by its pid when the handle is dropped.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};

use crate::arch::Arch;

/// The address the box reaches the hub on (QEMU's guestfwd, see [`Options::hub_port`]).
pub const HUB_GUEST_ADDR: &str = "10.0.2.100:8090";

pub struct Options {
    pub arch: Arch,
    pub image: PathBuf,
    /// Host port forwarded to the box's 8080 (on 127.0.0.1 only).
    pub port: u16,
    /// A hub on the host's 127.0.0.1 at this port appears to the box at `http://10.0.2.100:8090`;
    /// nothing else outside the VM is reachable.
    pub hub_port: Option<u16>,
    /// Where the serial console goes (a file), or inherit stdout when unset.
    pub serial_log: Option<PathBuf>,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Keep the image unchanged: the box's writes (its database, the removal of a used
    /// token) go to a temporary overlay that QEMU drops at exit. Reboots inside the run keep
    /// them.
    pub snapshot: bool,
}

/// A running QEMU; killed (by pid) when dropped.
pub struct Vm {
    child: Child,
    _vars: tempfile::NamedTempFile,
}

impl Vm {
    pub fn start(opts: &Options) -> anyhow::Result<Vm> {
        // Refuse a taken port rather than talk to whatever holds it.
        TcpListener::bind(("127.0.0.1", opts.port)).with_context(|| {
            format!(
                "port {} on 127.0.0.1 is taken (another QEMU still running?): refusing to start",
                opts.port
            )
        })?;
        let (code, vars) = firmware(opts.arch)?;
        // The firmware's variable store is written at boot: each VM gets its own copy.
        let vars_copy = tempfile::NamedTempFile::new()?;
        std::fs::copy(&vars, vars_copy.path())
            .with_context(|| format!("copying {}", vars.display()))?;

        let mut netdev = format!(
            "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{}-:8080",
            opts.port
        );
        if let Some(hub) = opts.hub_port {
            let (ip, port) = HUB_GUEST_ADDR.split_once(':').expect("host:port");
            netdev.push_str(&format!(",guestfwd=tcp:{ip}:{port}-cmd:nc 127.0.0.1 {hub}"));
        }
        let mut cmd = match opts.arch {
            Arch::X86_64 => {
                let mut c = Command::new("qemu-system-x86_64");
                c.args(["-machine", "q35", "-cpu", "max"]);
                c
            }
            Arch::Aarch64 => {
                let mut c = Command::new("qemu-system-aarch64");
                c.args(["-machine", "virt", "-cpu", "max"]);
                c
            }
        };
        cmd.args(["-accel", "tcg,thread=multi"])
            .args([
                "-m",
                &opts.memory_mib.to_string(),
                "-smp",
                &opts.cpus.to_string(),
            ])
            .args(["-display", "none", "-monitor", "none", "-nodefaults"])
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                code.display()
            ))
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                vars_copy.path().display()
            ))
            .arg("-drive")
            .arg(format!(
                "if=virtio,format=raw,file={}",
                opts.image.display()
            ))
            .args(["-netdev", &netdev, "-device", "virtio-net-pci,netdev=net0"])
            .args(["-device", "virtio-rng-pci"])
            .stdin(Stdio::null());
        match &opts.serial_log {
            Some(path) => {
                cmd.arg("-serial").arg(format!("file:{}", path.display()));
                cmd.stdout(Stdio::null());
            }
            None => {
                cmd.args(["-serial", "stdio"]);
            }
        }
        // QEMU dies with the thread that started it, however it ends (call this from a
        // thread that lives as long as the VM): no orphan keeps the port.
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| {
            format!(
                "starting {:?} (run firmware-images/toolchain/setup)",
                cmd.get_program()
            )
        })?;
        Ok(Vm {
            child,
            _vars: vars_copy,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether QEMU is still running (it exits if the guest powers off).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for QEMU to exit by itself.
    pub fn wait(mut self) -> anyhow::Result<std::process::ExitStatus> {
        Ok(self.child.wait()?)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The UEFI firmware (code, variable store template) for an architecture, from Debian's `ovmf`
/// and `qemu-efi-aarch64`.
fn firmware(arch: Arch) -> anyhow::Result<(PathBuf, PathBuf)> {
    let candidates: &[(&str, &str)] = match arch {
        Arch::X86_64 => &[
            (
                "/usr/share/OVMF/OVMF_CODE_4M.fd",
                "/usr/share/OVMF/OVMF_VARS_4M.fd",
            ),
            (
                "/usr/share/OVMF/OVMF_CODE.fd",
                "/usr/share/OVMF/OVMF_VARS.fd",
            ),
        ],
        Arch::Aarch64 => &[(
            "/usr/share/AAVMF/AAVMF_CODE.fd",
            "/usr/share/AAVMF/AAVMF_VARS.fd",
        )],
    };
    for (code, vars) in candidates {
        if Path::new(code).exists() && Path::new(vars).exists() {
            return Ok((code.into(), vars.into()));
        }
    }
    bail!(
        "no UEFI firmware for {arch} (Debian package {}): run firmware-images/toolchain/setup",
        match arch {
            Arch::X86_64 => "ovmf",
            Arch::Aarch64 => "qemu-efi-aarch64",
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_forwarded_port_that_is_taken() {
        // Whatever holds the port (an orphaned QEMU of an earlier run) must not answer for
        // the new box: refused before QEMU starts.
        let taken = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = taken.local_addr().unwrap().port();
        let err = Vm::start(&Options {
            arch: Arch::X86_64,
            image: PathBuf::from("does-not-matter.img"),
            port,
            hub_port: None,
            serial_log: None,
            memory_mib: 256,
            cpus: 1,
            snapshot: true,
        })
        .err()
        .expect("a taken port is refused");
        assert!(format!("{err:#}").contains("is taken"), "{err:#}");
    }
}
