//! The initramfs archive: "newc" cpio, the format the Linux kernel unpacks at boot
//! (Documentation/driver-api/early-userspace/buffer-format.rst), gzip-compressed.
//!
//! Written here rather than by the `cpio` tool so the build needs no root, sets every owner to
//! root and every time to zero (the same inputs give the same bytes), and runs on any host.

use std::collections::BTreeMap;
use std::io::Write;

/// What one path of the archive is.
#[derive(Clone, Debug)]
pub enum Node {
    Dir,
    File {
        bytes: Vec<u8>,
        executable: bool,
    },
    Symlink(String),
    /// A character device node (`dev/console` must exist before devtmpfs is mounted, or init
    /// starts without a console).
    CharDev {
        major: u32,
        minor: u32,
    },
}

/// A file tree to be archived, by absolute path without the leading `/` (`bin/busybox`).
/// Parent directories are added when the archive is written.
#[derive(Default)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
}

impl Tree {
    pub fn dir(&mut self, path: &str) {
        self.nodes.insert(clean(path), Node::Dir);
    }

    pub fn file(&mut self, path: &str, bytes: Vec<u8>, executable: bool) {
        self.nodes
            .insert(clean(path), Node::File { bytes, executable });
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.nodes.insert(clean(path), Node::Symlink(target.into()));
    }

    pub fn char_dev(&mut self, path: &str, major: u32, minor: u32) {
        self.nodes
            .insert(clean(path), Node::CharDev { major, minor });
    }

    /// The newc archive of the tree (uncompressed): parents before children, then the trailer.
    pub fn to_cpio(&self) -> Vec<u8> {
        let mut all: BTreeMap<String, &Node> = BTreeMap::new();
        for (path, node) in &self.nodes {
            let mut parent = path.as_str();
            while let Some((up, _)) = parent.rsplit_once('/') {
                all.entry(up.to_string()).or_insert(&Node::Dir);
                parent = up;
            }
            all.insert(path.clone(), node);
        }
        let mut out = Vec::new();
        // BTreeMap order puts "a" before "a/b": every parent precedes its children.
        for (ino, (path, node)) in all.iter().enumerate() {
            let mut rdev = (0, 0);
            let (mode, data): (u32, &[u8]) = match node {
                Node::Dir => (0o040755, &[]),
                Node::File { bytes, executable } => {
                    (if *executable { 0o100755 } else { 0o100644 }, bytes)
                }
                Node::Symlink(target) => (0o120777, target.as_bytes()),
                Node::CharDev { major, minor } => {
                    rdev = (*major, *minor);
                    (0o020600, &[])
                }
            };
            entry(&mut out, ino as u32 + 1, mode, rdev, path, data);
        }
        entry(&mut out, 0, 0, (0, 0), "TRAILER!!!", &[]);
        out
    }

    /// The gzip-compressed archive, as the kernel takes it.
    pub fn to_initramfs(&self) -> std::io::Result<Vec<u8>> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        gz.write_all(&self.to_cpio())?;
        gz.finish()
    }
}

fn clean(path: &str) -> String {
    let path = path.trim_start_matches('/').trim_end_matches('/');
    assert!(
        !path.is_empty() && !path.split('/').any(|p| p.is_empty() || p == ".."),
        "archive paths are plain and relative: {path:?}"
    );
    path.to_string()
}

fn entry(out: &mut Vec<u8>, ino: u32, mode: u32, rdev: (u32, u32), name: &str, data: &[u8]) {
    let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
    let name_len = name.len() + 1;
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        u32::try_from(data.len()).expect("an initramfs file is under 4 GiB"),
        0,
        0, // dev major/minor
        rdev.0,
        rdev.1, // rdev major/minor
        name_len as u32,
        0, // check
    ];
    out.extend_from_slice(b"070701");
    for field in fields {
        out.extend_from_slice(format!("{field:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_come_first_and_fields_are_aligned() {
        let mut tree = Tree::default();
        tree.file("usr/bin/aisle-edge", b"\x7fELF".to_vec(), true);
        tree.symlink("bin/sh", "busybox");
        let cpio = tree.to_cpio();
        let text = String::from_utf8_lossy(&cpio);
        let usr = text.find("usr\0").unwrap();
        let usr_bin = text.find("usr/bin\0").unwrap();
        let edge = text.find("usr/bin/aisle-edge\0").unwrap();
        assert!(usr < usr_bin && usr_bin < edge);
        assert!(text.ends_with('\0') && text.contains("TRAILER!!!"));
        assert_eq!(cpio.len() % 4, 0);
        // Every header starts on a 4-byte boundary with the newc magic.
        let mut at = 0;
        let mut entries = 0;
        while at < cpio.len() {
            assert_eq!(&cpio[at..at + 6], b"070701", "header at {at}");
            let field = |i: usize| {
                let s = std::str::from_utf8(&cpio[at + 6 + i * 8..at + 14 + i * 8]).unwrap();
                usize::from_str_radix(s, 16).unwrap()
            };
            let (size, name_len) = (field(6), field(11));
            let name = &cpio[at + 110..at + 110 + name_len - 1];
            entries += 1;
            at = (at + 110 + name_len).next_multiple_of(4);
            at = (at + size).next_multiple_of(4);
            if name == b"TRAILER!!!" {
                break;
            }
        }
        assert_eq!(at, cpio.len());
        assert_eq!(
            entries, 6,
            "bin, bin/sh, usr, usr/bin, the binary, the trailer"
        );
    }

    #[test]
    #[should_panic(expected = "plain and relative")]
    fn refuses_parent_paths() {
        Tree::default().dir("etc/../../x");
    }
}
