//! Watching one file for edits (the model file, the configuration file): its directory is
//! watched, because editors and `mv` replace a file rather than write into it, and each
//! settled batch of writes calls the owner's reload once.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};

/// How long after a write the file is read: editors write in several steps, and every event
/// of that time is covered by one reload.
const SETTLE_MS: u64 = 200;

/// Calls `reload` after each settled batch of writes to `path`. Returns the watcher, which
/// stops when dropped; None (logged) when the directory cannot be watched.
pub fn watch_file<F, Fut>(
    path: &Path,
    what: &'static str,
    reload: F,
) -> Option<notify::RecommendedWatcher>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let name = path.file_name().map(|n| n.to_owned());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && writes(&event.kind)
            && event.paths.iter().any(|p| p.file_name() == name.as_deref())
        {
            // A full channel already holds a pending reload that covers this change.
            let _ = tx.try_send(());
        }
    })
    .map_err(|err| tracing::warn!(error = %err, "cannot watch the {what}"))
    .ok()?;
    if let Err(err) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        tracing::warn!(error = %err, dir = %dir.display(), "cannot watch the {what}");
        return None;
    }
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            tokio::time::sleep(Duration::from_millis(SETTLE_MS)).await;
            while rx.try_recv().is_ok() {}
            reload().await;
        }
    });
    Some(watcher)
}

/// Whether a file-system event can have changed a file's contents. Reads (open, close
/// without writing) and metadata are left out: the reload reads the file itself, and reacting
/// to that would reload forever.
fn writes(kind: &EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, ModifyKind};
    match kind {
        EventKind::Create(_) | EventKind::Remove(_) => true,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Modify(_) => true,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, ModifyKind};

    #[test]
    fn reads_are_not_edits() {
        assert!(!writes(&EventKind::Access(AccessKind::Open(
            AccessMode::Read
        ))));
        assert!(!writes(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(writes(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(writes(&EventKind::Create(CreateKind::File)));
        assert!(writes(&EventKind::Modify(ModifyKind::Data(
            DataChange::Content
        ))));
    }
}
