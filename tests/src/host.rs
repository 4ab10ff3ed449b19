//! Real host faults for tests: a small filesystem (tmpfs) that can be
//! filled, and the rule for tests that cannot run here.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Command,
};

pub use anxin_host::skip::skip;

/// A tmpfs of a fixed size, unmounted on drop.
pub struct SmallDisk {
    pub path: PathBuf,
}

impl SmallDisk {
    /// Mounts a `size_mib` tmpfs at `path` (needs root), or says why not.
    pub fn mount(path: &Path, size_mib: u64) -> Result<Self, String> {
        std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mounting a tmpfs needs root: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    /// Fills this filesystem with `filler.bin` until `ENOSPC`, as another
    /// program on the box would; returns the filler's path (delete it to
    /// give the space back) and the bytes written.
    pub async fn fill(&self) -> (PathBuf, u64) {
        let filler = self.path.join("filler.bin");
        let path = filler.clone();
        let written = tokio::task::spawn_blocking(move || fill_until_full(&path))
            .await
            .expect("the filler task");
        (filler, written)
    }

    /// Fills this filesystem with `filler.bin` until about `leave` bytes
    /// are free (a disk held low, not full); returns the filler's path.
    pub fn fill_leaving(&self, leave: u64) -> PathBuf {
        let filler = self.path.join("filler.bin");
        let mut file = std::fs::File::create(&filler).expect("creating the filler");
        let chunk = vec![0x5a_u8; 1024 * 1024];
        while self.free() > leave + chunk.len() as u64 {
            file.write_all(&chunk).expect("writing the filler");
            file.sync_data().expect("syncing the filler");
        }
        filler
    }

    /// Free bytes now.
    pub fn free(&self) -> u64 {
        let out = Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(&self.path)
            .output()
            .expect("df");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Writes `path` until the filesystem says `ENOSPC`, the way another
/// program on the box would; returns the bytes written.
pub fn fill_until_full(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).expect("creating the filler");
    let chunk = vec![0x5a_u8; 64 * 1024];
    let mut written = 0;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(err) if err.raw_os_error() == Some(28) => break,
            Err(err) => panic!("filling {}: {err}", path.display()),
        }
    }
    // Smaller writes take the last partial pages.
    let small = [0x5a_u8; 512];
    while let Ok(n) = file.write(&small) {
        if n == 0 {
            break;
        }
        written += n as u64;
    }
    let _ = file.sync_all();
    written
}
