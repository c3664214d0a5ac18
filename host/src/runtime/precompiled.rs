//! Compiled components kept on disk, so a restart or a swap back to a known component skips
//! Cranelift. A `.cwasm` file is native code that wasmtime maps and runs as is, so the cache is
//! only used from a directory that this user owns and nobody else can write; anything else
//! disables it (with a warning) rather than trusting it.

use anyhow::Context;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

pub struct PrecompiledCache {
    dir: PathBuf,
    /// Identifies the engine's compiler and settings: artifacts from another build or config
    /// live under other names and are never loaded.
    engine_key: String,
}

impl PrecompiledCache {
    /// The cache directory named by the config, or the user's default cache directory.
    pub fn default_dir() -> Option<PathBuf> {
        std::env::var_os("XDG_CACHE_HOME")
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
            .map(|base| base.join("keygate"))
    }

    /// Open (creating it 0700) a cache directory, refusing one others could write to.
    pub fn open(dir: &Path, engine: &Engine) -> anyhow::Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let meta = fs::metadata(dir).with_context(|| format!("inspecting {}", dir.display()))?;
        check_private(&meta, dir)?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(Self {
            dir: dir.to_path_buf(),
            engine_key: format!("{:016x}", hasher.finish()),
        })
    }

    fn path_for(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}-{}.cwasm", self.engine_key))
    }

    /// The component for `wasm` (whose SHA-256 is `sha256`): from the cache when present,
    /// else compiled and stored.
    pub fn component(
        &self,
        engine: &Engine,
        wasm: &[u8],
        sha256: &str,
    ) -> anyhow::Result<(Component, bool)> {
        let path = self.path_for(sha256);
        if let Ok(meta) = fs::metadata(&path) {
            if check_private(&meta, &path).is_ok() {
                // SAFETY: the file was written by this user into a directory only this user
                // can write, under a name that binds it to the wasm's hash and this engine.
                match unsafe { Component::deserialize_file(engine, &path) } {
                    Ok(component) => return Ok((component, true)),
                    Err(err) => {
                        tracing::warn!(path = %path.display(), "discarding unusable precompiled component: {err}")
                    }
                }
            }
            let _ = fs::remove_file(&path);
        }
        let compiled = engine
            .precompile_component(wasm)
            .map_err(anyhow::Error::from)
            .context("compiling the component")?;
        if let Err(err) = self.store(&path, &compiled) {
            tracing::warn!(path = %path.display(), "could not cache the compiled component: {err:#}");
        }
        // SAFETY: these bytes were produced by `precompile_component` on this engine just now.
        let component = unsafe { Component::deserialize(engine, &compiled) }
            .map_err(anyhow::Error::from)
            .context("loading the compiled component")?;
        Ok((component, false))
    }

    /// Write atomically: a crash never leaves a truncated artifact under the final name.
    fn store(&self, path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
        let mut temp =
            tempfile::NamedTempFile::new_in(&self.dir).context("creating a temporary file")?;
        temp.as_file()
            .set_permissions(fs::Permissions::from_mode(0o600))
            .context("restricting permissions")?;
        temp.write_all(bytes).context("writing")?;
        temp.persist(path).context("renaming into place")?;
        Ok(())
    }
}

/// Owned by the current user and not writable by group or others.
fn check_private(meta: &fs::Metadata, path: &Path) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if meta.uid() != uid {
        anyhow::bail!(
            "{} is owned by uid {}, not by this user ({uid})",
            path.display(),
            meta.uid()
        );
    }
    if meta.mode() & 0o022 != 0 {
        anyhow::bail!(
            "{} is writable by group or others (mode {:o})",
            path.display(),
            meta.mode() & 0o777
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_directory_others_can_write() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let engine = Engine::default();
        let err = PrecompiledCache::open(dir.path(), &engine).err().unwrap();
        assert!(
            format!("{err:#}").contains("writable by group or others"),
            "{err:#}"
        );
    }

    #[test]
    fn compiles_once_then_loads_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::default();
        let cache = PrecompiledCache::open(&dir.path().join("cache"), &engine).unwrap();
        let wasm = wat::parse_str("(component)").unwrap();
        let (_, hit) = cache.component(&engine, &wasm, "abc").unwrap();
        assert!(!hit);
        let (_, hit) = cache.component(&engine, &wasm, "abc").unwrap();
        assert!(hit, "second load comes from the cache");
    }
}
