//! `aisle-image build`: one flashable GPT disk image for an architecture, without root, loop
//! devices or mounts (`mkfs.vfat -C` + mtools for the FAT partitions, `mkfs.ext4 -d` for the
//! data partition, `sfdisk` on a plain file, the partitions copied in at their offsets).
//!
//! The whole operating system of a slot is a kernel and an initramfs (static busybox as init
//! and shell, the static edge binary, the drivers it needs): nothing on the box is written but
//! the data and provisioning partitions and, by an update, the other slot.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

use crate::arch::Arch;
use crate::cpio::Tree;
use crate::{gpt, inputs, modules};

/// Sizes of the partitions, MiB.
pub const ESP_MIB: u64 = 256;
pub const PROVISION_MIB: u64 = 32;
pub const DEFAULT_DATA_MIB: u64 = 512;

/// The files of `firmware-images/rootfs/`, built into this binary so it can build images from
/// anywhere.
const ROOTFS: &[(&str, &str)] = &[
    ("etc/inittab", include_str!("../rootfs/etc/inittab")),
    ("etc/aisle/rcS", include_str!("../rootfs/etc/aisle/rcS")),
    (
        "etc/aisle/udhcpc",
        include_str!("../rootfs/etc/aisle/udhcpc"),
    ),
    (
        "etc/aisle/run-edge",
        include_str!("../rootfs/etc/aisle/run-edge"),
    ),
    (
        "etc/aisle/trial-watchdog",
        include_str!("../rootfs/etc/aisle/trial-watchdog"),
    ),
    (
        "etc/aisle/shutdown",
        include_str!("../rootfs/etc/aisle/shutdown"),
    ),
];

/// `aisle-image build`'s options (the command line parses straight into them).
#[derive(clap::Args)]
pub struct BuildOptions {
    #[arg(long, value_enum)]
    pub arch: Arch,
    /// Output directory.
    #[arg(long, default_value = "target/images")]
    pub out: PathBuf,
    /// The static aisle-edge binary for the architecture (default: built with cargo).
    #[arg(long, value_name = "FILE")]
    pub edge_binary: Option<PathBuf>,
    /// Where downloaded Debian packages are kept between builds.
    #[arg(long, default_value = "target/images/debs")]
    pub cache: PathBuf,
    /// Use only packages already in the cache.
    #[arg(long)]
    pub offline: bool,
    /// Kernel package (default: Debian's cloud kernel; linux-image-amd64 / linux-image-arm64
    /// has the drivers of physical boxes).
    #[arg(long, value_name = "PACKAGE")]
    pub kernel_package: Option<String>,
    /// The image's version (manifest, boot menu, `/healthz`).
    #[arg(long = "image-version", value_name = "VERSION", default_value = env!("CARGO_PKG_VERSION"))]
    pub version: String,
    /// Public key (aisle-image keygen) whose signed update bundles the box installs;
    /// repeatable. Without one, the box refuses every update.
    #[arg(long = "update-key", value_name = "FILE")]
    pub update_keys: Vec<PathBuf>,
    /// Size of the data partition.
    #[arg(long, default_value_t = DEFAULT_DATA_MIB)]
    pub data_mib: u64,
    /// Seconds a newly installed slot has to report healthy before the box falls back
    /// (kernel option `aisle.trial_timeout`).
    #[arg(long, default_value_t = 120)]
    pub trial_timeout_secs: u32,
}

/// What a build wrote.
pub struct Built {
    pub image: PathBuf,
    pub manifest: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

pub fn build(opts: &BuildOptions, progress: &indicatif::ProgressBar) -> anyhow::Result<Built> {
    let arch = opts.arch;
    for tool in ["mkfs.vfat", "mmd", "mcopy", "mkfs.ext4", "sfdisk", "dpkg"] {
        ensure!(
            which(tool),
            "{tool} is missing: run firmware-images/toolchain/setup (docs/field-guide.md)"
        );
    }
    std::fs::create_dir_all(&opts.out)?;
    let work = opts.out.join(format!(".work-{arch}"));
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&work)?;

    progress.set_message("the edge binary");
    let edge = match &opts.edge_binary {
        Some(path) => path.clone(),
        None => cargo_build_edge(arch)?,
    };
    check_static_elf(
        &std::fs::read(&edge).with_context(|| format!("reading {}", edge.display()))?,
        arch,
    )
    .with_context(|| format!("{}", edge.display()))?;
    // Debug info would make the initramfs ten times bigger; symbols stay for backtraces.
    let stripped = work.join("aisle-edge");
    run(Command::new(strip_tool(arch))
        .arg("--strip-debug")
        .arg("-o")
        .arg(&stripped)
        .arg(&edge))?;
    let edge_bytes = std::fs::read(&stripped)?;
    let edge_version = edge_version(&stripped, arch);
    progress.inc(1);

    progress.set_message("Debian packages");
    let kernel_name = opts
        .kernel_package
        .clone()
        .unwrap_or_else(|| inputs::kernel_meta_package(arch));
    let kernel = inputs::fetch(&opts.cache, &kernel_name, arch, opts.offline)?;
    let busybox = inputs::fetch(&opts.cache, "busybox-static", arch, opts.offline)?;
    let sdboot = inputs::fetch(&opts.cache, "systemd-boot-efi", arch, opts.offline)?;
    let root = |p: &inputs::Package| work.join(&p.name);
    for package in [&kernel, &busybox, &sdboot] {
        inputs::unpack(package, &root(package))?;
    }
    progress.inc(1);

    progress.set_message("initramfs");
    let mut tree = Tree::default();
    for dir in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "boot",
        "provision",
        "data",
        "etc/aisle/update-keys",
    ] {
        tree.dir(dir);
    }
    tree.char_dev("dev/console", 5, 1);
    tree.char_dev("dev/null", 1, 3);
    let busybox_bin = std::fs::read(root(&busybox).join("bin/busybox"))
        .context("busybox-static has no bin/busybox")?;
    check_static_elf(&busybox_bin, arch).context("busybox")?;
    tree.file("bin/busybox", busybox_bin, true);
    tree.symlink("bin/sh", "busybox");
    tree.symlink("init", "bin/busybox");
    for (path, text) in ROOTFS {
        tree.file(
            path,
            text.as_bytes().to_vec(),
            path.starts_with("etc/aisle/"),
        );
    }
    tree.file("usr/bin/aisle-edge", edge_bytes.clone(), true);
    tree.file(
        "etc/aisle/version",
        format!("{}\n", opts.version).into_bytes(),
        false,
    );
    tree.file(
        "etc/aisle/edge.toml",
        unprovisioned_config().into_bytes(),
        false,
    );
    for key in &opts.update_keys {
        let text =
            std::fs::read_to_string(key).with_context(|| format!("reading {}", key.display()))?;
        aisle_update::key::read_public_key(key).with_context(|| {
            format!(
                "{} is not an update public key (aisle-image keygen writes them)",
                key.display()
            )
        })?;
        let name = key
            .file_name()
            .context("a key file has a name")?
            .to_string_lossy();
        tree.file(
            &format!("etc/aisle/update-keys/{name}"),
            text.into_bytes(),
            false,
        );
    }
    let (kernel_version, module_paths) = modules::load_order(&root(&kernel))?;
    let mut list = String::new();
    for path in &module_paths {
        let bytes = std::fs::read(root(&kernel).join(path))?;
        let path = path.to_string_lossy();
        tree.file(&path, bytes, false);
        list.push('/');
        list.push_str(&path);
        list.push('\n');
    }
    tree.file("etc/aisle/modules", list.into_bytes(), false);

    let inputs_json = json!({
        "kernel": {"package": kernel.name, "version": kernel.version, "sha256": kernel.sha256, "release": kernel_version},
        "busybox": {"package": busybox.name, "version": busybox.version, "sha256": busybox.sha256},
        "systemd_boot": {"package": sdboot.name, "version": sdboot.version, "sha256": sdboot.sha256},
        "edge": {"version": edge_version, "target": arch.rust_target(), "sha256": crate::sha256_bytes(&edge_bytes)},
        "modules": module_paths.len(),
    });
    tree.file(
        "etc/aisle/inputs.json",
        serde_json::to_vec_pretty(&inputs_json)?,
        false,
    );
    let initrd_bytes = tree.to_initramfs()?;
    let initrd = opts.out.join(format!("aisle-{arch}.initrd.img"));
    std::fs::write(&initrd, &initrd_bytes)?;
    let kernel_file = opts.out.join(format!("aisle-{arch}.vmlinuz"));
    std::fs::copy(
        root(&kernel).join(format!("boot/vmlinuz-{kernel_version}")),
        &kernel_file,
    )
    .context("the kernel package has no boot/vmlinuz")?;
    progress.inc(1);

    progress.set_message("boot partition (systemd-boot, slot a)");
    let manifest = aisle_update::describe_files(
        &opts.version,
        arch.into(),
        &kernel_file,
        &initrd,
        inputs_json.clone(),
    )?;
    let manifest_file = work.join("manifest.json");
    std::fs::write(&manifest_file, manifest.to_json())?;
    let loader_conf = work.join("loader.conf");
    std::fs::write(
        &loader_conf,
        "timeout 0\neditor no\nauto-entries no\nauto-firmware no\n",
    )?;
    let entry = work.join("aisle-a.conf");
    std::fs::write(
        &entry,
        format!(
            "title Aisle {} (slot a)\nsort-key aisle\nversion 1\nlinux /aisle/a/vmlinuz\ninitrd /aisle/a/initrd.img\noptions {}\n",
            opts.version,
            kernel_options(arch, 'a', opts.trial_timeout_secs)
        ),
    )?;
    let esp = work.join("esp.img");
    run(Command::new("mkfs.vfat")
        .args(["-C", "-F", "32", "-n", "AISLE-ESP"])
        .arg(&esp)
        .arg((ESP_MIB * 1024).to_string()))?;
    let mdirs = [
        "::/EFI",
        "::/EFI/BOOT",
        "::/loader",
        "::/loader/entries",
        "::/aisle",
        "::/aisle/a",
        "::/aisle/b",
    ];
    run(Command::new("mmd").arg("-i").arg(&esp).args(mdirs))?;
    let copies: [(&Path, String); 6] = [
        (
            &root(&sdboot)
                .join("usr/lib/systemd/boot/efi")
                .join(arch.systemd_boot()),
            format!("::/EFI/BOOT/{}", arch.efi_fallback_loader()),
        ),
        (&loader_conf, "::/loader/loader.conf".into()),
        (&entry, "::/loader/entries/aisle-a.conf".into()),
        (&kernel_file, "::/aisle/a/vmlinuz".into()),
        (&initrd, "::/aisle/a/initrd.img".into()),
        (&manifest_file, "::/aisle/a/manifest.json".into()),
    ];
    for (from, to) in copies {
        run(Command::new("mcopy").arg("-i").arg(&esp).arg(from).arg(to))?;
    }
    progress.inc(1);

    progress.set_message("provisioning and data partitions");
    let provision = work.join("provision.img");
    run(Command::new("mkfs.vfat")
        .args(["-C", "-n", "AISLE-PROV"])
        .arg(&provision)
        .arg((PROVISION_MIB * 1024).to_string()))?;
    let readme = work.join("README.txt");
    std::fs::write(&readme, PROVISION_README)?;
    run(Command::new("mcopy")
        .arg("-i")
        .arg(&provision)
        .arg(&readme)
        .arg("::/README.txt"))?;
    let data = work.join("data.img");
    let empty = work.join("data-root");
    std::fs::create_dir_all(empty.join("aisle"))?;
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "aisle-data", "-E", "root_owner=0:0", "-d"])
        .arg(&empty)
        .arg(&data)
        .arg(format!("{}M", opts.data_mib)))?;
    progress.inc(1);

    progress.set_message("disk image");
    let image = opts.out.join(format!("aisle-{arch}.img"));
    let total = gpt::ALIGN_BYTES * 2 + (ESP_MIB + PROVISION_MIB + opts.data_mib) * (1 << 20);
    {
        let file = File::create(&image)?;
        file.set_len(total)?;
    }
    let mut sfdisk = Command::new("sfdisk");
    sfdisk
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(&image);
    run_with_stdin(
        &mut sfdisk,
        &gpt::sfdisk_script(ESP_MIB, PROVISION_MIB, opts.data_mib),
    )?;
    let mut disk = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&image)?;
    for (name, part) in [
        (gpt::ESP, &esp),
        (gpt::PROVISION, &provision),
        (gpt::DATA, &data),
    ] {
        let at = gpt::find(&mut disk, name)?;
        let len = std::fs::metadata(part)?.len();
        ensure!(
            len <= at.size_bytes,
            "{name}: {len} bytes do not fit in {}",
            at.size_bytes
        );
        copy_sparse(&mut File::open(part)?, &mut disk, at.offset_bytes)?;
    }
    disk.sync_all()?;
    drop(disk);
    progress.inc(1);

    progress.set_message("manifest");
    let image_manifest = json!({
        "image": image.file_name().map(|n| n.to_string_lossy().into_owned()),
        "arch": arch.name(),
        "version": opts.version,
        "size_bytes": total,
        "sha256": crate::sha256_file(&image)?,
        "partitions": [gpt::ESP, gpt::PROVISION, gpt::DATA],
        "slot_a": manifest,
        "update_keys": opts.update_keys.iter().map(|k| k.file_name().map(|n| n.to_string_lossy().into_owned())).collect::<Vec<_>>(),
    });
    let manifest_out = opts.out.join(format!("aisle-{arch}.manifest.json"));
    std::fs::write(&manifest_out, serde_json::to_vec_pretty(&image_manifest)?)?;
    std::fs::remove_dir_all(&work)?;
    progress.inc(1);
    Ok(Built {
        image,
        manifest: manifest_out,
        kernel: kernel_file,
        initrd,
    })
}

/// Steps `build` reports progress in.
pub const BUILD_STEPS: u64 = 7;

/// The kernel command line of a slot: the serial console, reboot 5 s after a panic (so a
/// crashing slot uses up its tries instead of hanging), and the slot the init reports.
pub fn kernel_options(arch: Arch, slot: char, trial_timeout_secs: u32) -> String {
    format!(
        "console=tty0 console={} panic=5 quiet aisle.slot={slot} aisle.trial_timeout={trial_timeout_secs}",
        arch.serial_console()
    )
}

/// The config the edge runs with before the box is provisioned: it serves the store on the
/// network on its own, with no hub.
fn unprovisioned_config() -> String {
    crate::provision::config_toml(&crate::provision::StoreConfig::default())
}

const PROVISION_README: &str = "\
This is the provisioning partition of an Aisle store appliance.

aisle.toml here is the store's configuration (store id, region, hub, enrollment token).
Write it with `aisle-image provision`, or edit it with any text editor: the box reads it
at every start. The enrollment token is used once; the box removes it after enrolling.
";

fn cargo_build_edge(arch: Arch) -> anyhow::Result<PathBuf> {
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "aisle-edge",
            "--target",
            arch.rust_target(),
            "--message-format=json-render-diagnostics",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo (build from the repository, or pass --edge-binary)")?;
    if !output.status.success() {
        bail!(
            "cargo build of aisle-edge for {} failed (run firmware-images/toolchain/setup first)",
            arch.rust_target()
        );
    }
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if message["reason"] == "compiler-artifact"
            && message["target"]["name"] == "aisle-edge"
            && let Some(exe) = message["executable"].as_str()
        {
            return Ok(PathBuf::from(exe));
        }
    }
    bail!("cargo built no aisle-edge executable")
}

/// A static ELF executable for `arch`: the initramfs has no dynamic loader and no libc.
fn check_static_elf(bytes: &[u8], arch: Arch) -> anyhow::Result<()> {
    ensure!(
        bytes.len() > 64 && &bytes[..4] == b"\x7fELF",
        "not an ELF executable"
    );
    ensure!(
        bytes[4] == 2 && bytes[5] == 1,
        "not a 64-bit little-endian ELF"
    );
    let machine = u16::from_le_bytes([bytes[18], bytes[19]]);
    ensure!(
        machine == arch.elf_machine(),
        "built for ELF machine {machine:#x}, not {arch}"
    );
    let phoff = u64::from_le_bytes(bytes[32..40].try_into().expect("8 bytes")) as usize;
    let phentsize = u16::from_le_bytes([bytes[54], bytes[55]]) as usize;
    let phnum = u16::from_le_bytes([bytes[56], bytes[57]]) as usize;
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        ensure!(at + 4 <= bytes.len(), "program headers cut off");
        let kind = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        ensure!(
            kind != 3,
            "dynamically linked (has an interpreter): build for {}",
            arch.rust_target()
        );
    }
    Ok(())
}

/// The edge's version: `aisle-edge --version` when the binary runs here (same architecture),
/// else the workspace version this tool was built with (the same source, in a normal build).
fn edge_version(binary: &Path, arch: Arch) -> String {
    let ran = (std::env::consts::ARCH == arch.name())
        .then(|| Command::new(binary).arg("--version").output().ok())
        .flatten()
        .filter(|out| out.status.success())
        .and_then(|out| {
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .strip_prefix("aisle-edge ")
                .map(str::to_string)
        });
    ran.unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string())
}

/// binutils' strip for `arch` (Debian: `binutils-aarch64-linux-gnu` comes with the cross gcc).
fn strip_tool(arch: Arch) -> String {
    if std::env::consts::ARCH == arch.name() {
        "strip".into()
    } else {
        format!("{}-linux-gnu-strip", arch.name())
    }
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
                .any(|p| p.join(tool).is_file())
        })
        .unwrap_or(false)
}

fn command_path(cmd: &mut Command) -> &mut Command {
    // mkfs and sfdisk live in /usr/sbin, not always on a user's PATH.
    let path = std::env::var("PATH").unwrap_or_default();
    cmd.env("PATH", format!("{path}:/usr/sbin:/sbin"))
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    run_with_stdin(cmd, "")
}

fn run_with_stdin(cmd: &mut Command, input: &str) -> anyhow::Result<()> {
    let mut child = command_path(cmd)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "{:?} failed: {}",
            cmd.get_program(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Copies `from` into `to` at `offset`, seeking over all-zero blocks so the image file stays
/// sparse (a 512 MiB empty data partition costs no disk space until flashed).
fn copy_sparse(from: &mut File, to: &mut File, offset: u64) -> anyhow::Result<()> {
    const BLOCK_BYTES: usize = 1 << 16;
    let mut buf = vec![0u8; BLOCK_BYTES];
    let mut at = offset;
    loop {
        let n = crate::read_full(from, &mut buf)?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|&b| b != 0) {
            to.seek(SeekFrom::Start(at))?;
            to.write_all(&buf[..n])?;
        }
        at += n as u64;
    }
    Ok(())
}
