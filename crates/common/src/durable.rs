//! Durable, private files: the one implementation of "write it so that a
//! crash leaves either the old file or the new one, never half of either".
//!
//! Every file postoffice stores goes through here, and every caller gets all
//! four steps: a temporary file in the target's directory, `fsync` of its
//! data, `rename` over the target, and `fsync` of the directory (without the
//! last one the rename itself can be lost in a crash, and with it an
//! acknowledged message).
//!
//! Files are created `0600` and directories `0700` whatever the process's
//! umask: mail, spool entries, keys and state are private to the server's
//! user ([`FILE_MODE`], [`DIR_MODE`]).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// Mode of every file postoffice creates: readable by its owner only.
pub const FILE_MODE: u32 = 0o600;
/// Mode of every directory postoffice creates.
pub const DIR_MODE: u32 = 0o700;

/// `fsync` a directory, making creations, renames and unlinks in it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `fsync` a directory, sharing the call with every other thread that asks
/// for the same directory at the same time (group commit).
///
/// A caller's rename (or create, or unlink) is durable once an fsync of the
/// directory that *started after it* has completed. Each caller takes a
/// ticket after its change; a leader fsyncs on behalf of every ticket taken
/// before it started, and the others wait for that fsync (or the next) to
/// cover theirs. Under load, many deliveries into one hot maildrop then cost
/// one directory fsync between them instead of one each; alone, a caller
/// pays exactly one fsync, as with [`sync_dir`]. An fsync error is returned
/// to every caller it was meant to cover.
pub fn sync_dir_shared(dir: &Path) -> io::Result<()> {
    let group = {
        let mut groups = GROUPS.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(groups.entry(dir.to_path_buf()).or_default())
    };
    let result = group.sync(dir);
    // Drop the group once nobody else uses it (the map stays small).
    let mut groups = GROUPS.lock().unwrap_or_else(|p| p.into_inner());
    if Arc::strong_count(&group) == 2 {
        groups.remove(dir);
    }
    result
}

static GROUPS: std::sync::LazyLock<Mutex<HashMap<PathBuf, Arc<SyncGroup>>>> =
    std::sync::LazyLock::new(|| Mutex::new(HashMap::new()));

#[derive(Debug, Default)]
struct SyncGroup {
    state: Mutex<GroupState>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct GroupState {
    /// Tickets handed out.
    issued: u64,
    /// Every ticket up to this one is covered by a completed fsync.
    covered: u64,
    /// An fsync is running.
    running: bool,
    /// Tickets up to this one failed with `error`.
    failed_up_to: u64,
    error: Option<(io::ErrorKind, String)>,
}

impl SyncGroup {
    fn sync(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.issued += 1;
        let ticket = st.issued;
        loop {
            if st.covered >= ticket {
                return match &st.error {
                    Some((kind, msg)) if st.failed_up_to >= ticket => {
                        Err(io::Error::new(*kind, msg.clone()))
                    }
                    _ => Ok(()),
                };
            }
            if st.running {
                st = self.done.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            // Lead: one fsync for every ticket issued so far.
            st.running = true;
            let target = st.issued;
            drop(st);
            let result = sync_dir(dir);
            st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.running = false;
            st.covered = target;
            match result {
                Ok(()) => {}
                Err(e) => {
                    st.failed_up_to = target;
                    st.error = Some((e.kind(), e.to_string()));
                }
            }
            self.done.notify_all();
        }
    }
}

/// Create `path` and its missing parents with [`DIR_MODE`], fsyncing the
/// parent of every directory created so that the new entry itself survives
/// a crash. Existing directories are left as they are.
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} exists but is not a directory", path.display()),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(parent) = parent {
        create_dir_all(parent)?;
    }
    match fs::DirBuilder::new().mode(DIR_MODE).create(path) {
        Ok(()) => {
            // The umask may have taken bits away; never more than DIR_MODE.
            fs::set_permissions(path, fs::Permissions::from_mode(DIR_MODE))?;
        }
        // Someone else won the race: their directory is as good as ours,
        // but fsync the parent anyway rather than rely on their fsync.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    if let Some(parent) = parent {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Create a new file (failing if it exists) with [`FILE_MODE`], for writing.
pub fn create_new(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)?;
    // The mode given to open(2) is masked by the umask; a stricter umask is
    // fine, but set it exactly so every file looks the same.
    file.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
    Ok(file)
}

/// Move a file that is already fsynced to `target` and fsync the target's
/// directory: the last two steps of a durable write, for callers that
/// choose the final name only once the data is written (a Maildir file
/// carries its size in its name). The directory fsync is shared with
/// concurrent callers ([`sync_dir_shared`]).
pub fn publish(written: &Path, target: &Path) -> io::Result<()> {
    fs::rename(written, target)?;
    sync_dir_shared(parent_of(target))
}

/// Atomically replace `path` with `data` (all four steps; see the module
/// documentation). The file gets [`FILE_MODE`].
pub fn write(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = AtomicFile::create(path)?;
    f.write_all(data)?;
    f.commit()
}

/// A file being written durably: data goes to a temporary file next to the
/// target; [`AtomicFile::commit`] makes it the target. Dropped without a
/// commit, the temporary file is removed and the target is untouched.
#[derive(Debug)]
pub struct AtomicFile {
    file: Option<File>,
    tmp: PathBuf,
    target: PathBuf,
}

/// Keeps temporary names unique within the process.
static COUNTER: AtomicU64 = AtomicU64::new(0);

impl AtomicFile {
    /// Start writing what will become `target`.
    pub fn create(target: &Path) -> io::Result<AtomicFile> {
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = parent_of(target).join(format!(
            ".{name}.tmp.{}.{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let file = create_new(&tmp)?;
        Ok(AtomicFile {
            file: Some(file),
            tmp,
            target: target.to_path_buf(),
        })
    }

    /// The file being written.
    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("file present until commit")
    }

    /// fsync the data, rename over the target, fsync the directory.
    pub fn commit(mut self) -> io::Result<()> {
        let target = self.target.clone();
        self.commit_as(&target)
    }

    /// Like [`AtomicFile::commit`], to another name in the same directory
    /// or file system (chosen after writing, e.g. one that carries the size).
    pub fn commit_as(&mut self, target: &Path) -> io::Result<()> {
        let file = self.file.take().expect("commit once");
        file.sync_all()?;
        drop(file);
        publish(&self.tmp, target)?;
        self.tmp = PathBuf::new();
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file().write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file().flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn write_replaces_atomically_and_privately() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        write(&path, b"one").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one");
        assert_eq!(mode(&path), FILE_MODE);
        write(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn an_uncommitted_file_leaves_the_target_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        write(&path, b"old").unwrap();
        {
            let mut f = AtomicFile::create(&path).unwrap();
            f.write_all(b"half").unwrap();
        }
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn commit_as_chooses_the_name_late() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = AtomicFile::create(&dir.path().join("x")).unwrap();
        f.write_all(b"12345").unwrap();
        f.commit_as(&dir.path().join("x,S=5")).unwrap();
        drop(f);
        assert_eq!(fs::read(dir.path().join("x,S=5")).unwrap(), b"12345");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn shared_directory_syncs_cover_every_caller() {
        let dir = tempfile::tempdir().unwrap();
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let d = dir.path().to_path_buf();
                std::thread::spawn(move || {
                    for j in 0..20 {
                        let p = d.join(format!("f{i}-{j}"));
                        write(&p, b"x").unwrap();
                        sync_dir_shared(&d).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 320);
        assert!(GROUPS.lock().unwrap().is_empty(), "idle groups are dropped");
        // A failing fsync reaches its caller.
        assert!(sync_dir_shared(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn directories_are_private_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        create_dir_all(&deep).unwrap();
        for p in ["a", "a/b", "a/b/c"] {
            assert_eq!(mode(&dir.path().join(p)), DIR_MODE, "{p}");
        }
        // Existing directories are not touched.
        create_dir_all(&deep).unwrap();
        let file = dir.path().join("a/f");
        write(&file, b"").unwrap();
        assert!(create_dir_all(&file).is_err());
    }
}
