//! A FUSE filesystem for power-loss tests, in the manner of Jepsen's lazyfs: every file and
//! directory has the state programs see ("current") and the state a disk would still hold
//! after losing power ("durable"), and only an fsync moves the one into the other. An fsync
//! or fdatasync of a file makes its data and size durable; an fsync of a directory makes
//! its list of entries durable, and nothing else does: a file created, renamed or removed
//! stays so through a power cut only once its directory was fsynced, which is all POSIX
//! promises. [`LazyFs::power_cut`] throws the current state away and mounts the durable one.
//!
//! Every write reaches the model before write(2) returns: the kernel's writeback cache is
//! not requested, so FUSE writes through, and the cut unmounts, which drops whatever the
//! kernel cached. Locks are not implemented, so the kernel keeps flock and fcntl locks
//! locally, as a program on a local disk expects.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io::ErrorKind;
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BackgroundSession, BsdFileFlags, Config, Errno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

const ROOT: u64 = INodeNo::ROOT.0;
/// How long the kernel may cache names and attributes: between two cuts nothing but this
/// mount changes the model, and a cut unmounts, which forgets them.
const TTL: Duration = Duration::from_secs(60);
const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;
const FALLOC_FL_KEEP_SIZE: i32 = 1;

/// A mounted lazy filesystem on a new temporary directory; unmounted when dropped.
pub struct LazyFs {
    model: Arc<Mutex<Model>>,
    /// `None` only while a cut remounts.
    session: Option<BackgroundSession>,
    mountpoint: tempfile::TempDir,
}

impl LazyFs {
    /// Mounts an empty filesystem whose root is durable, or says why this machine cannot
    /// (no `/dev/fuse`, no permission to mount), so that a test can skip.
    pub fn mount() -> Result<LazyFs, String> {
        if !Path::new("/dev/fuse").exists() {
            return Err("/dev/fuse is missing".into());
        }
        let mountpoint = tempfile::tempdir().expect("temp dir");
        let model = Arc::new(Mutex::new(Model::new(mountpoint.path())));
        match spawn(&model, mountpoint.path()) {
            Ok(session) => Ok(LazyFs { model, session: Some(session), mountpoint }),
            Err(error) if matches!(error.kind(), ErrorKind::PermissionDenied | ErrorKind::NotFound) => {
                Err(format!("cannot mount a FUSE filesystem: {error}"))
            }
            Err(error) => panic!("mounting the FUSE filesystem failed: {error}"),
        }
    }

    pub fn path(&self) -> &Path {
        self.mountpoint.path()
    }

    /// Loses power: everything not fsynced is gone. Kill every process using the
    /// filesystem first (the unmount fails while a file is open).
    pub fn power_cut(&mut self) {
        let session = self.session.take().expect("mounted");
        session.umount_and_join().expect("unmount for the cut (is a process still using the filesystem?)");
        lock(&self.model).power_cut();
        self.session = Some(spawn(&self.model, self.path()).expect("mount again after the cut"));
    }

    /// Makes every directory's entries durable, as if each had been fsynced.
    pub fn sync_directories(&self) {
        for node in lock(&self.model).nodes.values_mut() {
            if let Kind::Dir(dir) = &mut node.kind {
                dir.durable = dir.entries.clone();
            }
        }
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else { return };
        if session.umount_and_join().is_err() {
            // Still in use (a test failed with a file open): detach it, so the temporary
            // directory can be removed and no mount outlives the test.
            let _ = std::process::Command::new("umount").arg("--lazy").arg(self.path()).status();
        }
    }
}

fn spawn(model: &Arc<Mutex<Model>>, mountpoint: &Path) -> std::io::Result<BackgroundSession> {
    let mut config = Config::default();
    config.mount_options = vec![MountOption::FSName("lazyfs".into())];
    fuser::spawn_mount(Lazy(Arc::clone(model)), mountpoint, &config)
}

fn lock(model: &Mutex<Model>) -> MutexGuard<'_, Model> {
    model.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Node {
    kind: Kind,
    perm: u16,
    uid: u32,
    gid: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
}

enum Kind {
    File(File),
    Dir(Dir),
}

#[derive(Default)]
struct File {
    data: Vec<u8>,
    durable: Vec<u8>,
    /// Bytes that may differ from `durable` (besides the length), so that an fsync copies
    /// only what changed: the write-ahead log fsyncs a few KiB of a 16 MiB segment at a time.
    dirty: Option<Range<usize>>,
}

#[derive(Default)]
struct Dir {
    entries: BTreeMap<OsString, u64>,
    durable: BTreeMap<OsString, u64>,
    parent: u64,
}

impl File {
    fn touch(&mut self, range: Range<usize>) {
        if range.is_empty() {
            return;
        }
        self.dirty = Some(match self.dirty.take() {
            Some(dirty) => dirty.start.min(range.start)..dirty.end.max(range.end),
            None => range,
        });
    }

    fn resize(&mut self, len: usize) {
        let old = self.data.len();
        self.data.resize(len, 0);
        self.touch(old.min(len)..old.max(len));
    }

    fn write(&mut self, offset: usize, bytes: &[u8]) {
        let end = offset + bytes.len();
        if self.data.len() < end {
            self.resize(end);
        }
        self.data[offset..end].copy_from_slice(bytes);
        self.touch(offset..end);
    }

    fn sync(&mut self) {
        self.durable.resize(self.data.len(), 0);
        if let Some(dirty) = self.dirty.take() {
            let end = dirty.end.min(self.data.len());
            if dirty.start < end {
                self.durable[dirty.start..end].copy_from_slice(&self.data[dirty.start..end]);
            }
        }
    }
}

/// Both images of the whole tree. Inodes are never reused; those unreachable through the
/// durable entries are dropped at a cut.
struct Model {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    /// Open directory streams, each listing its entries as of opendir, so a directory
    /// changed while it is read lists no entry twice.
    listings: HashMap<u64, Vec<(u64, FileType, OsString)>>,
    next_fh: u64,
}

impl Model {
    /// An empty tree whose root (the mount point) has the owner and mode of `mountpoint`.
    fn new(mountpoint: &Path) -> Model {
        let meta = std::fs::metadata(mountpoint).expect("mount point metadata");
        let mut root =
            Node::new(Kind::Dir(Dir { parent: ROOT, ..Dir::default() }), meta.mode(), meta.uid(), meta.gid());
        root.perm = (meta.mode() & 0o7777) as u16;
        Model { nodes: HashMap::from([(ROOT, root)]), next_ino: ROOT + 1, listings: HashMap::new(), next_fh: 1 }
    }

    fn node(&self, ino: u64) -> Result<&Node, Errno> {
        self.nodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn node_mut(&mut self, ino: u64) -> Result<&mut Node, Errno> {
        self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn dir(&self, ino: u64) -> Result<&Dir, Errno> {
        match &self.node(ino)?.kind {
            Kind::Dir(dir) => Ok(dir),
            Kind::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn dir_mut(&mut self, ino: u64) -> Result<&mut Dir, Errno> {
        match &mut self.node_mut(ino)?.kind {
            Kind::Dir(dir) => Ok(dir),
            Kind::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn file_mut(&mut self, ino: u64) -> Result<&mut File, Errno> {
        match &mut self.node_mut(ino)?.kind {
            Kind::File(file) => Ok(file),
            Kind::Dir(_) => Err(Errno::EISDIR),
        }
    }

    fn entry(&self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        self.dir(parent)?.entries.get(name).copied().ok_or(Errno::ENOENT)
    }

    fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let node = self.node(ino)?;
        let (kind, size, nlink) = match &node.kind {
            Kind::File(file) => (FileType::RegularFile, file.data.len() as u64, 1),
            Kind::Dir(_) => (FileType::Directory, 0, 2),
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: node.atime,
            mtime: node.mtime,
            ctime: node.ctime,
            crtime: node.ctime,
            kind,
            perm: node.perm,
            nlink,
            uid: node.uid,
            gid: node.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn lookup(&self, parent: u64, name: &OsStr) -> Result<FileAttr, Errno> {
        self.attr(self.entry(parent, name)?)
    }

    /// A new file or directory `name` in `parent`, in the current image only.
    fn create(&mut self, req: &Request, parent: u64, name: &OsStr, kind: Kind, mode: u32) -> Result<FileAttr, Errno> {
        if self.dir(parent)?.entries.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(ino, Node::new(kind, mode, req.uid(), req.gid()));
        self.dir_mut(parent)?.entries.insert(name.to_owned(), ino);
        self.node_mut(parent)?.modified();
        self.attr(ino)
    }

    fn truncate(&mut self, ino: u64, size: u64) -> Result<(), Errno> {
        self.file_mut(ino)?.resize(usize::try_from(size).map_err(|_| Errno::EFBIG)?);
        self.node_mut(ino)?.modified();
        Ok(())
    }

    fn set_meta(
        &mut self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
    ) -> Result<FileAttr, Errno> {
        let node = self.node_mut(ino)?;
        let time = |time: TimeOrNow| match time {
            TimeOrNow::SpecificTime(time) => time,
            TimeOrNow::Now => SystemTime::now(),
        };
        node.perm = mode.map_or(node.perm, |mode| (mode & 0o7777) as u16);
        node.uid = uid.unwrap_or(node.uid);
        node.gid = gid.unwrap_or(node.gid);
        node.atime = atime.map_or(node.atime, time);
        node.mtime = mtime.map_or(node.mtime, time);
        node.ctime = SystemTime::now();
        self.attr(ino)
    }

    fn read(&self, ino: u64, offset: u64, size: u32) -> Result<&[u8], Errno> {
        match &self.node(ino)?.kind {
            Kind::File(file) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(file.data.len());
                let end = start.saturating_add(size as usize).min(file.data.len());
                Ok(&file.data[start..end])
            }
            Kind::Dir(_) => Err(Errno::EISDIR),
        }
    }

    fn write(&mut self, ino: u64, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        let offset = usize::try_from(offset).map_err(|_| Errno::EFBIG)?;
        self.file_mut(ino)?.write(offset, data);
        self.node_mut(ino)?.modified();
        Ok(data.len() as u32)
    }

    /// Preallocation (mode 0 may extend the file; `FALLOC_FL_KEEP_SIZE` changes nothing
    /// visible); hole punching and the like are not supported.
    fn fallocate(&mut self, ino: u64, offset: u64, length: u64, mode: i32) -> Result<(), Errno> {
        let end = usize::try_from(offset.saturating_add(length)).map_err(|_| Errno::EFBIG)?;
        let file = self.file_mut(ino)?;
        match mode {
            0 if end > file.data.len() => file.resize(end),
            0 | FALLOC_FL_KEEP_SIZE => {}
            _ => return Err(Errno::EOPNOTSUPP),
        }
        Ok(())
    }

    fn remove(&mut self, parent: u64, name: &OsStr, directory: bool) -> Result<(), Errno> {
        let ino = self.entry(parent, name)?;
        match (&self.node(ino)?.kind, directory) {
            (Kind::Dir(dir), true) if !dir.entries.is_empty() => return Err(Errno::ENOTEMPTY),
            (Kind::Dir(_), false) => return Err(Errno::EISDIR),
            (Kind::File(_), true) => return Err(Errno::ENOTDIR),
            _ => {}
        }
        self.dir_mut(parent)?.entries.remove(name);
        self.node_mut(parent)?.modified();
        Ok(())
    }

    /// `rename(2)` and `renameat2(2)` with `RENAME_NOREPLACE` or `RENAME_EXCHANGE`.
    fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        let ino = self.entry(parent, name)?;
        let target = self.dir(new_parent)?.entries.get(new_name).copied();
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            let target = target.ok_or(Errno::ENOENT)?;
            self.dir_mut(parent)?.entries.insert(name.to_owned(), target);
            self.dir_mut(new_parent)?.entries.insert(new_name.to_owned(), ino);
            self.reparent(target, parent);
        } else {
            if !(flags - RenameFlags::RENAME_NOREPLACE).is_empty() {
                return Err(Errno::EINVAL);
            }
            if let Some(target) = target {
                if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                    return Err(Errno::EEXIST);
                }
                if target == ino {
                    return Ok(());
                }
                match (&self.node(ino)?.kind, &self.node(target)?.kind) {
                    (Kind::Dir(_), Kind::Dir(dir)) if !dir.entries.is_empty() => return Err(Errno::ENOTEMPTY),
                    (Kind::Dir(_), Kind::File(_)) => return Err(Errno::ENOTDIR),
                    (Kind::File(_), Kind::Dir(_)) => return Err(Errno::EISDIR),
                    _ => {}
                }
            }
            self.dir_mut(parent)?.entries.remove(name);
            self.dir_mut(new_parent)?.entries.insert(new_name.to_owned(), ino);
        }
        self.reparent(ino, new_parent);
        for dir in [parent, new_parent] {
            self.node_mut(dir)?.modified();
        }
        Ok(())
    }

    fn reparent(&mut self, ino: u64, parent: u64) {
        if let Ok(dir) = self.dir_mut(ino) {
            dir.parent = parent;
        }
    }

    fn opendir(&mut self, ino: u64) -> Result<u64, Errno> {
        let dir = self.dir(ino)?;
        let mut listing = vec![(ino, FileType::Directory, ".".into()), (dir.parent, FileType::Directory, "..".into())];
        for (name, &child) in &dir.entries {
            let kind = match self.node(child)?.kind {
                Kind::File(_) => FileType::RegularFile,
                Kind::Dir(_) => FileType::Directory,
            };
            listing.push((child, kind, name.clone()));
        }
        let fh = self.next_fh;
        self.next_fh += 1;
        self.listings.insert(fh, listing);
        Ok(fh)
    }

    /// The durable image becomes the current one; what it cannot reach is gone.
    fn power_cut(&mut self) {
        self.listings.clear();
        let mut reachable = HashSet::from([ROOT]);
        let mut queue = vec![ROOT];
        while let Some(ino) = queue.pop() {
            let children: Vec<u64> = match &mut self.nodes.get_mut(&ino).expect("a reachable inode").kind {
                Kind::File(file) => {
                    file.data = file.durable.clone();
                    file.dirty = None;
                    continue;
                }
                Kind::Dir(dir) => {
                    dir.entries = dir.durable.clone();
                    dir.entries.values().copied().collect()
                }
            };
            for child in children {
                if reachable.insert(child) {
                    self.reparent(child, ino);
                    queue.push(child);
                }
            }
        }
        self.nodes.retain(|ino, _| reachable.contains(ino));
    }
}

impl Node {
    fn new(kind: Kind, mode: u32, uid: u32, gid: u32) -> Node {
        let now = SystemTime::now();
        Node { kind, perm: (mode & 0o7777) as u16, uid, gid, atime: now, mtime: now, ctime: now }
    }

    fn modified(&mut self) {
        self.mtime = SystemTime::now();
        self.ctime = self.mtime;
    }
}

/// The FUSE side: each request locks the model and answers from it.
struct Lazy(Arc<Mutex<Model>>);

impl Lazy {
    fn model(&self) -> MutexGuard<'_, Model> {
        lock(&self.0)
    }
}

fn reply_empty(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(errno) => reply.error(errno),
    }
}

fn reply_entry(reply: ReplyEntry, result: Result<FileAttr, Errno>) {
    match result {
        Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
        Err(errno) => reply.error(errno),
    }
}

fn reply_attr(reply: ReplyAttr, result: Result<FileAttr, Errno>) {
    match result {
        Ok(attr) => reply.attr(&TTL, &attr),
        Err(errno) => reply.error(errno),
    }
}

impl Filesystem for Lazy {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        reply_entry(reply, self.model().lookup(parent.0, name));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        reply_attr(reply, self.model().attr(ino.0));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut model = self.model();
        let truncated = size.map_or(Ok(()), |size| model.truncate(ino.0, size));
        reply_attr(reply, truncated.and_then(|()| model.set_meta(ino.0, mode, uid, gid, atime, mtime)));
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & S_IFMT != S_IFREG {
            return reply.error(Errno::EOPNOTSUPP);
        }
        reply_entry(reply, self.model().create(req, parent.0, name, Kind::File(File::default()), mode & !umask));
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let dir = Kind::Dir(Dir { parent: parent.0, ..Dir::default() });
        reply_entry(reply, self.model().create(req, parent.0, name, dir, mode & !umask));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.model().remove(parent.0, name, false));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.model().remove(parent.0, name, true));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.model().rename(parent.0, name, newparent.0, newname, flags));
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.model().file_mut(ino.0) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(errno) => reply.error(errno),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.model().read(ino.0, offset, size) {
            Ok(data) => reply.data(data),
            Err(errno) => reply.error(errno),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.model().write(ino.0, offset, data) {
            Ok(written) => reply.written(written),
            Err(errno) => reply.error(errno),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply_empty(reply, self.model().file_mut(ino.0).map(File::sync));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.model().opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(errno) => reply.error(errno),
        }
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let model = self.model();
        let Some(listing) = model.listings.get(&fh.0) else { return reply.error(Errno::EBADF) };
        for (i, (ino, kind, name)) in listing.iter().enumerate().skip(usize::try_from(offset).unwrap_or(usize::MAX)) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.model().listings.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply_empty(
            reply,
            self.model().dir_mut(ino.0).map(|dir| {
                dir.durable = dir.entries.clone();
            }),
        );
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(1 << 24, 1 << 24, 1 << 24, 1 << 20, 1 << 20, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self.model().create(req, parent.0, name, Kind::File(File::default()), mode & !umask) {
            Ok(attr) => reply.created(&TTL, &attr, Generation(0), FileHandle(0), FopenFlags::empty()),
            Err(errno) => reply.error(errno),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.model().fallocate(ino.0, offset, length, mode));
    }
}
