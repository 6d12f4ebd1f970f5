//! Compiled components on local disk, so a process that starts again (a
//! restart, or a scale-up on the same node) does not compile them again.
//!
//! Loading a compiled artifact is `unsafe`: it is native code. So the cache
//! is local only, never the object store, in a directory that this user
//! alone may write (checked at open). A file is named by the component's
//! SHA-256 and the engine's `precompile_compatibility_hash()`, so another
//! wasmtime version or engine configuration never reads it; it is written
//! under a temporary name and renamed, so a reader sees only whole files.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use wasmtime::component::Component;
use wasmtime::Engine;

use crate::Digest;

/// Compiled components kept on disk, newest first.
pub(crate) const MAX_FILES: usize = 256;

pub(crate) struct DiskCache {
    dir: PathBuf,
    /// The engine's compatibility hash, as hex: part of every file name.
    engine: String,
}

/// How compiled components were obtained, for tests and figures.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Read from the disk cache.
    pub loaded: AtomicU64,
    /// Compiled from the upload's bytes.
    pub compiled: AtomicU64,
}

impl CacheStats {
    pub fn loaded(&self) -> u64 {
        self.loaded.load(Ordering::Relaxed)
    }

    pub fn compiled(&self) -> u64 {
        self.compiled.load(Ordering::Relaxed)
    }
}

impl DiskCache {
    /// Opens (creating, mode 0700) `dir`. Refused when it is not a
    /// directory owned by this user that no one else may write: whoever can
    /// write there chooses what native code this process runs.
    pub fn open(dir: &Path, engine: &Engine) -> Result<Self, String> {
        match fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(dir)
        {
            Ok(()) => {}
            Err(e) => return Err(format!("creating {}: {e}", dir.display())),
        }
        let meta =
            fs::symlink_metadata(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
        // A file made here is owned by this process's user: the directory
        // must be too, and be writable by no one else.
        let probe = dir.join(format!(".probe.{}", std::process::id()));
        let mine = fs::File::create(&probe)
            .and_then(|f| f.metadata())
            .map(|m| m.uid());
        let _ = fs::remove_file(&probe);
        let safe = meta.is_dir()
            && meta.permissions().mode() & 0o022 == 0
            && mine.as_ref().is_ok_and(|&uid| uid == meta.uid());
        if !safe {
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
        })
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.dir
            .join(format!("{}-{}.cwasm", digest.0, &self.engine[..32]))
    }

    /// The component compiled earlier, if this engine wrote it. A file that
    /// does not load (cut short by a full disk, say) is removed.
    pub fn load(&self, engine: &Engine, digest: &Digest) -> Option<Component> {
        let path = self.path(digest);
        // Read, not mapped: a file changed in place later (by hand, say)
        // cannot then fault the process.
        let bytes = fs::read(&path).ok()?;
        // SAFETY: the bytes are this engine's own serialization of the
        // component: the file's name carries the component's hash and the
        // engine's compatibility hash, and only this user can write the
        // directory. wasmtime checks the artifact's header and engine
        // settings before using it.
        #[allow(unsafe_code)]
        let loaded = unsafe { Component::deserialize(engine, &bytes) };
        match loaded {
            Ok(c) => Some(c),
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
        // Unique among writers: other processes, and other runtimes here.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let tmp = self.dir.join(format!(
            ".{}.{}.{}.tmp",
            digest.0,
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let written = component
            .serialize()
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(|e| e.to_string())?;
                f.write_all(&bytes).map_err(|e| e.to_string())?;
                f.sync_all().map_err(|e| e.to_string())?;
                fs::rename(&tmp, &path).map_err(|e| e.to_string())
            });
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            tracing::warn!(path = %path.display(), "compiled component not kept: {e}");
        }
        self.evict();
    }

    /// Keeps the newest [`MAX_FILES`] artifacts: uploads of new versions
    /// would otherwise fill the disk.
    pub(crate) fn evict(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        if files.len() <= MAX_FILES {
            return;
        }
        files.sort();
        for (_, path) in &files[..files.len() - MAX_FILES] {
            let _ = fs::remove_file(path);
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
