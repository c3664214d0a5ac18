//! Reload when the config or component file changes on disk (debounced).

use crate::runtime::reload::{DEBOUNCE, Reloader};
use anyhow::Context;
use notify::{RecursiveMode, Watcher};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Keeps the watch alive; dropping it stops watching.
pub struct FileWatch {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FileWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Watch `files` (their directories, since editors replace files by renaming) and reload.
pub fn watch(reloader: Arc<Reloader>, files: &[PathBuf]) -> anyhow::Result<FileWatch> {
    let files: Vec<PathBuf> = files.iter().map(|f| absolute(f)).collect();
    let dirs: BTreeSet<PathBuf> = files
        .iter()
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect();
    let (changed, mut changes) = tokio::sync::mpsc::unbounded_channel::<()>();
    let watched = files.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && !event.kind.is_access()
            && event.paths.iter().any(|p| watched.iter().any(|f| f == p))
        {
            let _ = changed.send(());
        }
    })
    .context("starting the file watcher")?;
    for dir in &dirs {
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .with_context(|| format!("watching {}", dir.display()))?;
    }
    let task = tokio::spawn(async move {
        while changes.recv().await.is_some() {
            // Debounce: wait until the files have been quiet for a moment.
            loop {
                match tokio::time::timeout(DEBOUNCE, changes.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_quiet) => break,
                }
            }
            // Errors are logged and kept in the status by the reloader.
            let _ = reloader.reload("file change").await;
        }
    });
    tracing::info!(files = ?files, "watching for changes");
    Ok(FileWatch {
        _watcher: watcher,
        task,
    })
}

/// Absolute but not canonical: events name files by the watched directory as given.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}
