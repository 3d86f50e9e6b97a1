//! `aisle-image`: build, provision, flash and verify Aisle appliance images; sign updates.
//! docs/field-guide.md walks through the commands.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use aisle_image::arch::Arch;
use aisle_image::{flash, image, provision, qemu, sign, verify};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "aisle-image",
    version,
    about = "Build, provision, flash and verify Aisle store appliances"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the flashable disk image of an architecture (and its manifest).
    Build(image::BuildOptions),
    /// Write a store's configuration into an image (or a flashed disk).
    Provision {
        image: PathBuf,
        #[arg(long)]
        store: String,
        #[arg(long)]
        region: String,
        /// The region's hub, e.g. http://hub.example:8090.
        #[arg(long)]
        hub: String,
        /// The one-time token the hub printed when the store was registered.
        #[arg(long)]
        enroll_token: String,
        /// Password of the store's first admin account (otherwise the box makes one and prints
        /// it on its console).
        #[arg(long, env = "AISLE_ADMIN_PASSWORD", hide_env_values = true)]
        admin_password: Option<String>,
    },
    /// Write an image to a disk, read it back and compare.
    Flash {
        image: PathBuf,
        /// The whole disk (e.g. /dev/sdb) or a file.
        #[arg(long)]
        device: PathBuf,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Ask a booted box (http://ADDRESS:8080) who it is and whether it syncs.
    Verify {
        url: String,
        #[arg(long)]
        expect_store: Option<String>,
        #[arg(long)]
        expect_region: Option<String>,
        /// Also require that the box is enrolled and syncing with its hub.
        #[arg(long)]
        expect_synced: bool,
        /// Keep asking this long while the box boots.
        #[arg(long, default_value_t = 0)]
        wait_secs: u64,
        /// Print the box's health document as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make an update signing key pair: PREFIX.key (secret: keep it off the boxes) and
    /// PREFIX.pub (give it to `build --update-key`).
    Keygen {
        #[arg(long, value_name = "PREFIX")]
        out: PathBuf,
    },
    /// Make a signed update bundle from a build's kernel and initramfs.
    Sign {
        /// The secret key (aisle-image keygen).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        #[arg(long, value_enum)]
        arch: Arch,
        /// The build's output directory (its kernel, initramfs and manifest are used unless
        /// --kernel / --initrd say otherwise).
        #[arg(long, default_value = "target/images")]
        images: PathBuf,
        #[arg(long, value_name = "FILE")]
        kernel: Option<PathBuf>,
        #[arg(long, value_name = "FILE")]
        initrd: Option<PathBuf>,
        /// The version the box will report once it runs the bundle.
        #[arg(long = "image-version", value_name = "VERSION")]
        image_version: String,
        /// The bundle file to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Boot an image under QEMU with its port 8080 forwarded to 127.0.0.1:PORT (until killed).
    Run {
        image: PathBuf,
        #[arg(long, value_enum)]
        arch: Arch,
        #[arg(long, default_value_t = 18080)]
        port: u16,
        /// A hub on this host's port, reachable from the box as http://10.0.2.100:8090.
        #[arg(long)]
        hub_port: Option<u16>,
        #[arg(long, default_value_t = 1024)]
        memory_mib: u32,
        /// Keep what the box writes in the image (by default the image is left as it was, so
        /// it can still be flashed unused).
        #[arg(long)]
        persist: bool,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("aisle-image: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn run(command: Cmd) -> anyhow::Result<()> {
    match command {
        Cmd::Build(opts) => {
            if opts.update_keys.is_empty() {
                eprintln!(
                    "aisle-image: warning: no --update-key: this image will refuse every update"
                );
            }
            let bar = indicatif::ProgressBar::new(image::BUILD_STEPS);
            bar.set_style(
                indicatif::ProgressStyle::with_template("[{pos}/{len}] {msg} {spinner}")
                    .expect("a valid template"),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            let built = image::build(&opts, &bar)?;
            bar.finish_with_message("done");
            println!("{}", built.image.display());
            println!("{}", built.manifest.display());
            Ok(())
        }
        Cmd::Provision {
            image,
            store,
            region,
            hub,
            enroll_token,
            admin_password,
        } => {
            let config = provision::StoreConfig {
                store_id: Some(store),
                region: Some(region),
                hub_url: Some(hub),
                enroll_token: Some(enroll_token),
                admin_password,
            };
            provision::provision(&image, &config)?;
            eprintln!(
                "provisioned {} for store {}",
                image.display(),
                config.store_id.unwrap_or_default()
            );
            Ok(())
        }
        Cmd::Flash { image, device, yes } => {
            let done = flash::flash(&image, &device, yes)?;
            eprintln!(
                "wrote and verified {} MB in {:.1} s (sha256 {})",
                done.bytes / 1_000_000,
                done.seconds,
                done.sha256
            );
            Ok(())
        }
        Cmd::Verify {
            url,
            expect_store,
            expect_region,
            expect_synced,
            wait_secs,
            json,
        } => {
            let expect = verify::Expect {
                store: expect_store,
                region: expect_region,
                synced: expect_synced,
            };
            let health = verify::verify(&url, &expect, Duration::from_secs(wait_secs))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&health)?);
            } else {
                println!("box:       {url}");
                println!(
                    "version:   aisle-edge {}",
                    health["version"].as_str().unwrap_or("?")
                );
                println!(
                    "image:     {} (slot {})",
                    health["image"]["version"].as_str().unwrap_or("-"),
                    health["image"]["slot"].as_str().unwrap_or("-")
                );
                println!("store:     {}", health["store_id"].as_str().unwrap_or("?"));
                println!("region:    {}", health["region"].as_str().unwrap_or("-"));
                println!("enrolled:  {}", health["enrolled"]);
                println!("syncing:   {}", health["syncing"]);
            }
            Ok(())
        }
        Cmd::Keygen { out } => {
            let (secret, public, id) = sign::keygen(&out)?;
            eprintln!(
                "key {id}: secret {} (keep it safe), public {}",
                secret.display(),
                public.display()
            );
            Ok(())
        }
        Cmd::Sign {
            key,
            arch,
            images,
            kernel,
            initrd,
            image_version,
            out,
        } => {
            let manifest = sign::sign(&sign::SignOptions {
                key,
                arch,
                kernel: kernel.unwrap_or_else(|| images.join(format!("aisle-{arch}.vmlinuz"))),
                initrd: initrd.unwrap_or_else(|| images.join(format!("aisle-{arch}.initrd.img"))),
                version: image_version,
                out: out.clone(),
                build_manifest: Some(images.join(format!("aisle-{arch}.manifest.json"))),
            })?;
            eprintln!(
                "signed {} ({} {})",
                out.display(),
                manifest.arch.as_str(),
                manifest.version
            );
            Ok(())
        }
        Cmd::Run {
            image,
            arch,
            port,
            hub_port,
            memory_mib,
            persist,
        } => {
            let vm = qemu::Vm::start(&qemu::Options {
                arch,
                image,
                port,
                hub_port,
                serial_log: None,
                memory_mib,
                cpus: 2,
                snapshot: !persist,
            })?;
            eprintln!(
                "QEMU pid {}; the box answers on http://127.0.0.1:{port}",
                vm.pid()
            );
            let status = vm.wait()?;
            eprintln!("QEMU exited: {status}");
            Ok(())
        }
    }
}
