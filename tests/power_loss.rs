//! Power loss: programs run on a FUSE filesystem that keeps only what was fsynced (see
//! `lazyfs`), the power is cut, and what they made durable must be all that is left.
//! Skipped where FUSE cannot be mounted.

mod lazyfs;

use std::path::{Path, PathBuf};
use std::process::Command;

use lazyfs::LazyFs;

/// The mounted filesystem, or `None` (and a message) where this machine has no FUSE.
fn mount_or_skip() -> Option<LazyFs> {
    match LazyFs::mount() {
        Ok(fs) => Some(fs),
        Err(why) => {
            eprintln!("skipped: {why}");
            None
        }
    }
}

/// `dir`'s entries made durable, as a program does it: open the directory, fsync it.
fn fsync_dir(dir: &Path) {
    std::fs::File::open(dir).and_then(|dir| dir.sync_all()).expect("fsync a directory");
}

/// The filesystem itself: file data and directory entries survive a cut only once
/// fsynced, a directory is fsynced the way programs do it (open, fsync), a rename is
/// durable with its directory, and flock works.
#[test]
fn the_filesystem_keeps_only_what_was_fsynced() {
    let Some(mut fs) = mount_or_skip() else { return };
    let root: PathBuf = fs.path().to_owned();
    let (kept, lost) = (root.join("kept"), root.join("lost"));
    let write = |path: &Path, text: &str, sync: bool| {
        let mut file = std::fs::File::create(path).expect("create");
        std::io::Write::write_all(&mut file, text.as_bytes()).expect("write");
        if sync {
            file.sync_data().expect("fdatasync");
        }
    };
    std::fs::create_dir(&kept).expect("mkdir");
    fsync_dir(&root);
    std::fs::create_dir(&lost).expect("mkdir");
    write(&kept.join("synced"), "durable", true);
    write(&kept.join("unsynced"), "not durable", false);
    write(&kept.join("old"), "old", true);
    write(&kept.join("new"), "new", true);
    fsync_dir(&kept);
    write(&kept.join("unlisted"), "synced, but its entry is not", true);
    std::fs::OpenOptions::new()
        .append(true)
        .open(kept.join("synced"))
        .and_then(|mut file| std::io::Write::write_all(&mut file, b" and more"))
        .expect("append");
    std::fs::rename(kept.join("new"), kept.join("old")).expect("rename over a file");
    assert_eq!(std::fs::read_to_string(kept.join("old")).expect("read"), "new");

    let flock = |inner: &[&str]| {
        Command::new("flock")
            .args(["--nonblock", "--conflict-exit-code", "3"])
            .arg(kept.join("synced"))
            .args(inner)
            .status()
    };
    match flock(&["true"]) {
        Ok(status) => {
            assert!(status.success(), "flock on the filesystem: {status}");
            let path = kept.join("synced");
            let nested =
                flock(&["flock", "--nonblock", "--conflict-exit-code", "3", path.to_str().expect("path"), "true"]);
            assert_eq!(nested.expect("flock").code(), Some(3), "a second flock on a locked file must conflict");
        }
        Err(error) => eprintln!("flock(1) not run: {error}"),
    }

    fs.power_cut();
    let read = |name: &str| std::fs::read_to_string(kept.join(name)).ok();
    assert!(!lost.exists(), "a directory whose entry was never fsynced survived");
    assert_eq!(read("synced").as_deref(), Some("durable"), "the unsynced append must be gone");
    assert_eq!(read("unsynced").as_deref(), Some(""), "a file whose data was never fsynced is empty");
    assert_eq!(read("unlisted"), None, "a file whose entry was never fsynced survived");
    assert_eq!((read("old").as_deref(), read("new").as_deref()), (Some("old"), Some("new")), "unsynced rename");

    std::fs::rename(kept.join("new"), kept.join("old")).expect("rename over a file");
    fsync_dir(&kept);
    fs.power_cut();
    assert_eq!((read("old").as_deref(), read("new")), (Some("new"), None), "a rename made durable by its directory");
}
