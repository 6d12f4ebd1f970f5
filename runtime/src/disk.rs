//! Compiled components on local disk, so a process that starts again does
//! not compile them again.
//!
//! Loading a compiled artifact is `unsafe`: it is native code, and whoever
//! can write the cache chooses what this process runs. So the cache is
//! local only, never the object store, and trusted only as far as its files
//! are this user's: every file is checked on the open handle it is read
//! from (a regular file of this user's that no one else may write), so a
//! directory removed and planted again by someone else, or a symlink, is
//! refused. A file is named by the SHA-256 of the bytes compiled and the
//! engine's `precompile_compatibility_hash()`, so another wasmtime version
//! or engine configuration looks for another name; it is written to a new
//! temporary file and renamed, so a reader sees only whole files.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use wasmtime::component::Component;
use wasmtime::Engine;

use crate::Digest;

/// Compiled components kept on disk, the most recently used first...
pub(crate) const MAX_FILES: usize = 256;
/// ...and at most this many bytes of them.
const MAX_BYTES: u64 = 2 << 30;

pub(crate) struct DiskCache {
    dir: PathBuf,
    /// The engine's compatibility hash, as hex: part of every file name.
    engine: String,
    uid: u32,
}

/// How compiled components were obtained, for tests and figures.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Read from the disk cache.
    pub(crate) loaded: std::sync::atomic::AtomicU64,
    /// Compiled from the upload's bytes.
    pub(crate) compiled: std::sync::atomic::AtomicU64,
}

impl CacheStats {
    pub fn loaded(&self) -> u64 {
        self.loaded.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn compiled(&self) -> u64 {
        self.compiled.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Whether `meta` is this user's and no one else may write it.
fn private(meta: &fs::Metadata, uid: u32) -> bool {
    meta.uid() == uid && meta.permissions().mode() & 0o022 == 0
}

/// This process's effective user id (Linux: `/proc/self/status`).
fn euid() -> Result<u32, String> {
    let status =
        fs::read_to_string("/proc/self/status").map_err(|e| format!("/proc/self/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| "no effective uid in /proc/self/status".into())
}

impl DiskCache {
    /// Opens (creating, mode 0700) `dir`: a directory, not a link, of this
    /// user's, that no one else may write.
    pub fn open(dir: &Path, engine: &Engine) -> Result<Self, String> {
        let uid = euid()?;
        fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(dir)
            .map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let meta =
            fs::symlink_metadata(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
        if !meta.is_dir() || !private(&meta, uid) {
            return Err(format!(
                "{} must be a directory of this user's that others cannot write",
                dir.display()
            ));
        }
        let mut h = Sha256Hasher(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256));
        engine.precompile_compatibility_hash().hash(&mut h);
        let engine = hex(h.0.finish().as_ref());
        Ok(Self {
            dir: dir.to_path_buf(),
            engine,
            uid,
        })
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.dir
            .join(format!("{}-{}.cwasm", digest.0, &self.engine[..32]))
    }

    /// The component compiled earlier from bytes of SHA-256 `digest`, if
    /// this engine kept it. A file that does not load is removed.
    pub fn load(&self, engine: &Engine, digest: &Digest) -> Option<Component> {
        let path = self.path(digest);
        let mut f = fs::File::open(&path).ok()?;
        // Checked on the handle read from, not the name: what is read is
        // what was checked.
        let meta = f.metadata().ok()?;
        if !meta.is_file() || !private(&meta, self.uid) {
            tracing::warn!(path = %path.display(), "compiled component not this user's alone: ignored");
            return None;
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        f.read_to_end(&mut bytes).ok()?;
        // SAFETY: the bytes come from a file only this user could have
        // written, and this program writes there only what
        // `Component::serialize` made. They are read, not mapped, so the
        // file changing later cannot affect the engine; wasmtime checks
        // the artifact's header and engine settings before using it.
        #[allow(unsafe_code)]
        let loaded = unsafe { Component::deserialize(engine, &bytes) };
        match loaded {
            Ok(c) => {
                // Used: the last to be evicted.
                let _ = f.set_modified(SystemTime::now());
                Some(c)
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), "compiled component unusable, compiling again: {e:#}");
                let _ = fs::remove_file(&path);
                None
            }
        }
    }

    /// Keeps a compiled component for the next process. Failing to is not
    /// an error: it is compiled again then.
    pub fn store(&self, digest: &Digest, component: &Component) {
        let path = self.path(digest);
        // A new file (O_EXCL, mode 0600) per writer, renamed into place.
        let written = component
            .serialize()
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                let mut tmp = tempfile::Builder::new()
                    .prefix(".")
                    .suffix(".tmp")
                    .tempfile_in(&self.dir)
                    .map_err(|e| e.to_string())?;
                tmp.write_all(&bytes).map_err(|e| e.to_string())?;
                tmp.as_file().sync_all().map_err(|e| e.to_string())?;
                tmp.persist(&path).map_err(|e| e.to_string())?;
                Ok(())
            });
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), "compiled component not kept: {e}");
        }
        self.evict();
    }

    /// Keeps the most recently used [`MAX_FILES`] artifacts, within
    /// [`MAX_BYTES`]: uploads of new versions would otherwise fill the disk.
    pub(crate) fn evict(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(SystemTime, u64, PathBuf)> = entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, m.len(), e.path()))
            })
            .collect();
        files.sort_by(|a, b| b.cmp(a));
        let mut bytes = 0;
        for (i, (_, len, path)) in files.iter().enumerate() {
            bytes += len;
            if i >= MAX_FILES || bytes > MAX_BYTES {
                let _ = fs::remove_file(path);
            }
        }
    }
}

/// Feeds what `Hash` writes into SHA-256: a key that stays the same from
/// one build of this program to the next, unlike `DefaultHasher`'s.
struct Sha256Hasher(aws_lc_rs::digest::Context);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        unreachable!("only the digest is read")
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
