//! Reads and validates the migrations directory; the only module that touches migration files.

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rustix::fs::{Mode, OFlags};
use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::sql;

/// One numbered schema change: its forward script and, when written, its rollback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub version: i64,
    /// The description part of the file name, e.g. `create_video_requests`.
    pub name: String,
    pub up: Script,
    pub down: Option<Script>,
    /// SHA-256 of the forward file, CRLF folded to LF and a leading BOM dropped, so a
    /// Windows checkout or an editor that adds a BOM does not count as a change.
    pub checksum: Checksum,
}

/// A forward file's checksum as history records it: SHA-256 in 64 lower-case hex digits, held
/// in place rather than in an allocation of its own. A no-op run compares thousands of them
/// with the history's in one pass, and each one's own allocation, made by whichever reader
/// read the file, was a cache miss there: 0.7 ms of a no-op run over 5,000 files.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Checksum([u8; 64]);

impl Checksum {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("a checksum is hex digits")
    }
}

impl std::ops::Deref for Checksum {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for Checksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for Checksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// Against a recorded checksum, which is whatever text the history table holds.
impl PartialEq<String> for Checksum {
    fn eq(&self, recorded: &String) -> bool {
        self.0 == *recorded.as_bytes()
    }
}

impl PartialEq<Checksum> for String {
    fn eq(&self, file: &Checksum) -> bool {
        file == self
    }
}

/// One SQL file as read from disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    pub path: PathBuf,
    /// The file's text without a leading BOM.
    pub sql: String,
    /// The file starts with `-- no-transaction`: it runs statement by statement, outside any
    /// transaction.
    pub no_transaction: bool,
}

impl Script {
    pub fn new(path: PathBuf, sql: String) -> Script {
        let no_transaction = sql::is_no_transaction(&sql);
        Script {
            path,
            sql,
            no_transaction,
        }
    }
}

/// Which way a migration runs: its file applies it, its `.down.sql` file rolls it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
}

/// What a `.sql` file name says about the file.
#[derive(Debug, PartialEq, Eq)]
struct FileName<'a> {
    version: i64,
    name: &'a str,
    direction: Direction,
}

const NAME_FIX: &str = "name it NNN_description.sql (or .up.sql, and .down.sql for its rollback), e.g. 003_add_thumbnail_url.sql";

/// Reads every migration in `dir`, refusing the whole directory at the first bad file so that
/// nothing runs from a directory that is half right. Files not ending in `.sql` are ignored.
pub fn load(dir: &Path) -> Result<Vec<Migration>, Error> {
    migrations(list_and_read(dir)?)
}

/// The most `.sql` files, and the most bytes in all, that [`few`] lists for its caller to
/// read; more are read on threads of their own.
pub const FEW_FILES: usize = 16;
pub const FEW_BYTES: u64 = 1 << 20;

/// The names of the `.sql` files in `dir` when there are at most [`FEW_FILES`] of at most
/// [`FEW_BYTES`] in all, for [`load_listed`]; `None` otherwise, without listing the rest.
/// Reading a few files costs less than starting a thread to read them (on the seed's
/// directory, a thread was a tenth of a no-op run's CPU), so a caller reads them itself,
/// while the connection opens; a seed file of megabytes would hold the connection up.
pub fn few(dir: &Path) -> Result<Option<Vec<String>>, Error> {
    let Some(files) = sql_files(dir, FEW_FILES)? else {
        return Ok(None);
    };
    // A file that cannot be measured is left to the readers, whose error names it.
    let size = |name: &String| fs::metadata(dir.join(name)).map_or(u64::MAX, |m| m.len());
    let bytes = files.iter().map(size).fold(0, u64::saturating_add);
    Ok((bytes <= FEW_BYTES).then_some(files))
}

/// As [`load`], for the `.sql` file names that [`few`] listed in `dir`.
pub fn load_listed(dir: &Path, files: Vec<String>) -> Result<Vec<Migration>, Error> {
    migrations(read_listed(dir, files))
}

/// The migrations of the files read in `batches`; a version two files claim is refused.
fn migrations(batches: Vec<Batch>) -> Result<Vec<Migration>, Error> {
    let (ups, downs, conflicts) = collect(batches)?;
    if let Some(conflict) = conflicts.into_iter().next() {
        return Err(duplicate(conflict));
    }
    pair(ups, downs, &[])
}

/// Two files that claim one version: `path` and the one read before it, `with`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub version: i64,
    pub path: PathBuf,
    pub with: PathBuf,
}

/// As [`load`], but a version claimed by two files is set aside as a [`Conflict`] (the first
/// file by name is kept) rather than refused: `status` shows the directory as it is.
pub fn load_with_conflicts(dir: &Path) -> Result<(Vec<Migration>, Vec<Conflict>), Error> {
    let (ups, downs, conflicts) = collect(list_and_read(dir)?)?;
    Ok((pair(ups, downs, &conflicts)?, conflicts))
}

/// One file as its reader left it, its name parsed and its text read: a forward file as the
/// migration it starts, checksum taken (its rollback is joined to it later, in place: moving
/// 5,000 of them into new ones was half a millisecond of a no-op run), or a rollback file.
enum Read {
    Up(Migration),
    Down(Down),
}

/// A rollback file, until [`pair`] joins it to its forward file.
struct Down {
    version: i64,
    /// The description part of the file name.
    name: String,
    script: Script,
}

/// What [`by_version`] sorts and sets aside by.
trait File {
    fn version(&self) -> i64;
    fn path(&self) -> &Path;
}

impl File for Migration {
    fn version(&self) -> i64 {
        self.version
    }
    fn path(&self) -> &Path {
        &self.up.path
    }
}

impl File for Down {
    fn version(&self) -> i64 {
        self.version
    }
    fn path(&self) -> &Path {
        &self.script.path
    }
}

/// The files of `batches`, forward and rollback apart, each in version order; a second file
/// for a version is a conflict. The files were read in no particular order, several at a
/// time, and what is refused is the first bad file by name (a bad name before an unreadable
/// file), so that the error is the same on every machine.
fn collect(mut batches: Vec<Batch>) -> Result<Collected, Error> {
    let mut refused = Batch::default();
    for batch in &mut batches {
        if let Some((bad, name, error)) = batch.bad.take() {
            refused.refuse(bad, name, error);
        }
    }
    if let Some((_, _, error)) = refused.bad {
        return Err(error);
    }
    let (ups, mut conflicts) = by_version(batches.iter_mut().map(|b| &mut b.ups).collect());
    let (downs, more) = by_version(batches.iter_mut().map(|b| &mut b.downs).collect());
    conflicts.extend(more);
    conflicts.sort_by(|a, b| a.path.file_name().cmp(&b.path.file_name()));
    Ok((ups, downs, conflicts))
}

/// Forward files, rollback files, and the files set aside as conflicts.
type Collected = (Vec<Migration>, Vec<Down>, Vec<Conflict>);

/// What kept a file from being read, in the order they are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Bad {
    Name,
    Contents,
}

/// The files of `parts`, each taken out of them, in version order, the first by name kept for
/// a version two files claim and the others set aside as conflicts with it.
fn by_version<T: File>(mut parts: Vec<&mut Vec<Option<T>>>) -> (Vec<T>, Vec<Conflict>) {
    // The versions are sorted with where each file is, and each file is then moved once, to
    // its place: sorting the files themselves moved each one (a migration is 208 bytes)
    // about a dozen times, 5,000 files being listed in the directory's hash order. File
    // names are compared only between files of one version.
    let mut order: Vec<(i64, usize, usize)> = Vec::new();
    for (part, files) in parts.iter().enumerate() {
        let versions = files.iter().enumerate();
        order.extend(versions.filter_map(|(at, file)| Some((file.as_ref()?.version(), part, at))));
    }
    let file = |part: usize, at: usize| parts[part][at].as_ref().expect("not taken yet");
    order.sort_unstable_by(|&(a, a_part, a_at), &(b, b_part, b_at)| {
        let name = |part, at| file(part, at).path().file_name();
        a.cmp(&b)
            .then_with(|| name(a_part, a_at).cmp(&name(b_part, b_at)))
    });
    let mut files = Vec::with_capacity(order.len());
    for (_, part, at) in order {
        files.push(parts[part][at].take().expect("each file is taken once"));
    }
    // In place: a directory without conflicts moves nothing.
    let mut conflicts = Vec::new();
    files.dedup_by(|file, first| {
        let same = file.version() == first.version();
        if same {
            conflicts.push(Conflict {
                version: file.version(),
                path: file.path().to_path_buf(),
                with: first.path().to_path_buf(),
            });
        }
        same
    });
    (files, conflicts)
}

/// Joins forward and rollback files (each in version order) by version. A rollback whose
/// name is that of a forward file set aside as a conflict (`status` shows the directory as
/// it is) belongs to that one, not to the kept file it does not match: a name spelled with a
/// leading zero (`0191_copy.sql` beside `191_sessions.sql`) sorts first and is kept.
fn pair(
    mut ups: Vec<Migration>,
    downs: Vec<Down>,
    conflicts: &[Conflict],
) -> Result<Vec<Migration>, Error> {
    let mut downs = downs.into_iter().peekable();
    // The first rollback file without a forward file, refused once every pair is checked.
    let mut orphan = None;
    for up in &mut ups {
        while let Some(down) = downs.next_if(|d| d.version < up.version) {
            orphan.get_or_insert(down);
        }
        up.down = match downs.next_if(|d| d.version == up.version) {
            Some(down) if down.name == up.name => Some(down.script),
            Some(down)
                if conflicts.iter().any(|c| {
                    c.version == down.version
                        && stem_of(&c.path).split_once('_').map(|(_, name)| name)
                            == Some(&*down.name)
                }) =>
            {
                None
            }
            Some(down) => {
                let name = rollback_name(&up.up.path);
                return Err(invalid(
                    &down.script.path,
                    format!("rollback file does not match its forward file; name it {name}"),
                ));
            }
            None => None,
        };
    }
    if let Some(down) = orphan.or_else(|| downs.next()) {
        let name = file_name(&down.script.path);
        let name = name.strip_suffix(".down.sql").unwrap_or(&name);
        return Err(invalid(
            &down.script.path,
            format!("rollback file has no forward file; add {name}.sql or delete it"),
        ));
    }
    Ok(ups)
}

/// The name of a file's last component, as written (lossy where it is not UTF-8).
fn file_name(path: &Path) -> String {
    (path.file_name()).map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

/// The rollback file's name for the forward file at `forward`: its own name, digits as
/// written (`0013_codes.sql`, or `0013_codes.up.sql`, is rolled back by `0013_codes.down.sql`).
pub fn rollback_name(forward: &Path) -> String {
    format!("{}.down.sql", stem_of(forward))
}

/// Refuses a script that is empty, holds what only psql understands, or controls the
/// transaction in a file the job wraps in its own (a COMMIT there would end ours and leave the
/// history row behind). Run for the scripts a plan is about to execute, before any of them
/// runs: an applied file was checked when it ran, and any later edit is drift, so checking
/// only these keeps a run over thousands of applied files from lexing each one.
pub fn check(script: &Script) -> Result<(), Error> {
    // An empty rollback would delete the history row and undo nothing: nobody may have
    // written it yet (dbmate's empty down section, a generated template). Deleting it is no
    // way out (down then has no rollback), so the way to say "nothing to undo" is named.
    if sql::is_empty(&script.sql) {
        let fix = match file_name(&script.path).ends_with(".down.sql") {
            true => {
                "write the statements that undo the migration, or SELECT 1; if undoing nothing is right (down then deletes only the history row)"
            }
            false => "write the change or delete the file",
        };
        return Err(invalid(
            &script.path,
            format!("file holds no SQL statement; {fix}"),
        ));
    }
    if let Some((line, what, closer)) = sql::unterminated(&script.sql) {
        return Err(invalid(
            &script.path,
            format!("line {line}: the {what} opened here is never closed; close it with {closer}"),
        ));
    }
    // Before the meta-commands: a pg_dump data section ends its COPY data with `\.`.
    if let Some((line, what)) = sql::copy_stdio(&script.sql) {
        return Err(invalid(
            &script.path,
            format!(
                "line {line}: {what} exchanges data with the client, which db-migrate does not do; use INSERT ... VALUES, or COPY from a file on the database server"
            ),
        ));
    }
    if let Some((line, command)) = sql::meta_command(&script.sql) {
        return Err(invalid(
            &script.path,
            format!(
                "line {line}: psql meta-command {command} is not SQL; remove it (db-migrate runs plain SQL, one file per migration)"
            ),
        ));
    }
    if let Some((line, what)) = sql::releases_lock(&script.sql) {
        return Err(invalid(
            &script.path,
            format!(
                "line {line}: {what} releases the migration lock, which would let another run apply the same migrations at the same time; remove it (db-migrate releases the lock, and resets the session, when the run ends)"
            ),
        ));
    }
    let uses = sql::transaction_use(&script.sql);
    // Two-phase commit would leave a prepared transaction holding its locks after the run, and
    // its changes out of the database the history row says they are in, so it is refused
    // even outside a transaction, after a `BEGIN` the file opened itself too.
    if let Some((line, keyword)) = uses.two_phase {
        return Err(invalid(
            &script.path,
            format!(
                "line {line}: {keyword} is two-phase commit, which a migration cannot use; remove it"
            ),
        ));
    }
    if let Some((line, keyword)) = uses.control
        && !script.no_transaction
    {
        return Err(invalid(
            &script.path,
            format!(
                "line {line}: {keyword} controls the transaction, which db-migrate owns; remove it (or start the file with `-- no-transaction` to run it outside one)"
            ),
        ));
    }
    if !script.no_transaction
        && let Some((line, what)) = uses.outside_only
    {
        return Err(invalid(
            &script.path,
            format!(
                "line {line}: {what} cannot run inside a transaction, and db-migrate runs this file in one; start the file with `-- no-transaction` (its statements then run one by one, so keep them idempotent)"
            ),
        ));
    }
    Ok(())
}

/// Lists the names of the `.sql` files in `dir`, in no particular order, or `None` once there
/// are more than `most`, or more than four times `most` entries of any kind; of the entries
/// that cannot be migrations, the first by name is refused, so that the error is the same on
/// every machine. Paths are made by the readers: building 5,000 of them here, and sorting
/// 5,000 names, were a fifth of a no-op run over that many files.
fn sql_files(dir: &Path, most: usize) -> Result<Option<Vec<String>>, Error> {
    let mut names = Vec::new();
    let within = each_sql_file(listing(dir)?, dir, most, |name| names.push(name))?;
    Ok(within.then_some(names))
}

/// Opens `dir` to be listed; a directory that is not there is said as such, with the
/// directory the run was started in.
fn listing(dir: &Path) -> Result<fs::ReadDir, Error> {
    fs::read_dir(dir).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => Error::NoDirectory {
            path: dir.to_path_buf(),
            cwd: std::env::current_dir().unwrap_or_default(),
        },
        _ => Error::Directory {
            path: dir.to_path_buf(),
            source,
        },
    })
}

/// Hands each `.sql` file name of `entries` (the listing of `dir`) to `each` as it is listed,
/// as [`sql_files`] lists them; `false` once there were more than `most`, or more than four
/// times `most` entries of any kind.
fn each_sql_file(
    entries: fs::ReadDir,
    dir: &Path,
    most: usize,
    mut each: impl FnMut(String),
) -> Result<bool, Error> {
    let mut count = 0;
    let mut first_bad: Option<(String, Error)> = None;
    for (seen, entry) in entries.enumerate() {
        // Other files count too, or a directory of a few migrations among thousands of
        // other files would be listed whole before the connection opens.
        if seen >= most.saturating_mul(4) {
            return Ok(false);
        }
        let entry = entry.map_err(|source| Error::Directory {
            path: dir.to_path_buf(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Dot files are editors' and tools' (`.#001_x.sql` is Emacs's lock link).
        if name.starts_with('.') || !has_sql_extension(&name) {
            continue;
        }
        let bad = if !name.ends_with(".sql") {
            let problem =
                "the extension must be lower-case .sql, or the file would be skipped; rename it";
            Some(invalid(&entry.path(), problem.into()))
        } else {
            // The directory entry's own type costs no system call; only links need a stat.
            let is_file = match entry.file_type() {
                Ok(kind) if kind.is_symlink() => entry.path().is_file(),
                Ok(kind) => kind.is_file(),
                Err(_) => false,
            };
            // Skipping it would apply the versions around it and fail every later run.
            (!is_file).then(|| invalid(&entry.path(), not_a_file(&entry.path())))
        };
        match bad {
            Some(error) if first_bad.as_ref().is_none_or(|(first, _)| name < *first) => {
                first_bad = Some((name, error));
            }
            Some(_) => {}
            None if count == most => return Ok(false),
            None => {
                count += 1;
                each(name);
            }
        }
    }
    match first_bad {
        Some((_, error)) => Err(error),
        None => Ok(true),
    }
}

fn has_sql_extension(name: &str) -> bool {
    name.len() > 4
        && name.is_char_boundary(name.len() - 4)
        && name[name.len() - 4..].eq_ignore_ascii_case(".sql")
}

fn not_a_file(path: &Path) -> String {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            "is a directory, not a migration file; move it out of the migrations directory".into()
        }
        Ok(meta) if meta.file_type().is_symlink() => {
            "is a symbolic link to nothing readable; point it at the file or remove it".into()
        }
        _ => "is not a regular file; replace it with the migration file or remove it".into(),
    }
}

/// The fewest files worth a reader thread of their own.
const FILES_PER_READER: usize = 500;

/// Reads the files of `dir` named in `files` on this thread, as one batch: a few.
fn read_listed(dir: &Path, files: Vec<String>) -> Vec<Batch> {
    if files.is_empty() {
        return Vec::new();
    }
    match open_dir(dir) {
        Ok(fd) => vec![read_batch(&fd, dir, files, &mut vec![0; 64 * 1024])],
        Err(error) => vec![Batch {
            bad: Some((Bad::Contents, String::new(), error)),
            ..Batch::default()
        }],
    }
}

/// `dir` opened for the readers, which open each file by its name relative to it: the kernel
/// then walks one path component per file, not the whole path.
fn open_dir(dir: &Path) -> Result<OwnedFd, Error> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    rustix::fs::open(dir, flags, Mode::empty()).map_err(|errno| Error::Directory {
        path: dir.to_path_buf(),
        source: errno.into(),
    })
}

/// Lists `dir` and reads every `.sql` file in it: its name parsed, its text read, a forward
/// file's checksum taken; what each reader read, in no particular order. The names go to the
/// readers in batches of [`READ_BATCH`] as they are listed: listing 5,000 took 2.2 ms here, the
/// kernel walking a hashed directory, while the other core could be reading. Reading thousands
/// of small files is mostly system calls and, in a container just started, waits on the disk,
/// so large directories are read by several threads, more than the machine has cores (cold,
/// 5,000 files took 0.6 s on 2 threads and 0.24 s on 8 here): one more for every
/// [`FILES_PER_READER`] names listed, up to four a core and 16 in all, this one among them once
/// it has listed the last. Whatever the listing refuses is refused rather than what the readers
/// found.
fn list_and_read(dir: &Path) -> Result<Vec<Batch>, Error> {
    let entries = listing(dir)?;
    let fd = open_dir(dir)?;
    // Asked only here: the answer reads the cgroup's CPU quota from /proc and /sys.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let most = (cores * 4).min(16);
    let (sender, receiver) = std::sync::mpsc::channel::<Vec<String>>();
    // Batches go to whichever reader asks next: with more readers than cores, fixed shares
    // left the run waiting on whichever reader the scheduler had set aside (5,000 cached
    // files: 17 ms on 8 readers against 8 on 2).
    let receiver = Mutex::new(receiver);
    let (fd, receiver) = (&fd, &receiver);
    let read_batches = move || {
        let mut buffer = vec![0; 64 * 1024];
        let mut batches = Vec::new();
        loop {
            // A reader that panicked while holding the lock ends the run anyway.
            let next = receiver.lock().unwrap_or_else(|p| p.into_inner()).recv();
            let Ok(names) = next else {
                break batches;
            };
            batches.push(read_batch(fd, dir, names, &mut buffer));
        }
    };
    std::thread::scope(|scope| {
        let mut readers = Vec::new();
        let (mut listed, mut batch) = (0_usize, Vec::with_capacity(READ_BATCH));
        let listing = each_sql_file(entries, dir, usize::MAX, |name| {
            batch.push(name);
            listed += 1;
            if batch.len() == READ_BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(READ_BATCH));
                // The receiver lives as long as this scope: sending cannot fail.
                let _ = sender.send(full);
            }
            // Each reader costs memory of its own (its allocator arena, its buffer): 500
            // files on 7 threads peaked 1.7 MiB above 2 threads, and 2 threads 0.3 MiB above
            // this one alone, for no time gained with the files cached.
            let wanted = (listed / FILES_PER_READER).min(most);
            if listed % FILES_PER_READER == 0 && readers.len() + 1 < wanted {
                // No thread to be had: the others, this one among them, read them all.
                if let Ok(reader) = std::thread::Builder::new().spawn_scoped(scope, read_batches) {
                    readers.push(reader);
                }
            }
        });
        if !batch.is_empty() {
            let _ = sender.send(batch);
        }
        drop(sender);
        // This thread reads as well rather than wait: one thread (and its allocator heap)
        // fewer.
        let mut batches = read_batches();
        // A reader only panics if reading does, which would abort the run anyway.
        for reader in readers {
            batches.extend(reader.join().expect("a file reader thread panicked"));
        }
        listing.map(|_| batches)
    })
}

/// What a reader made of a batch of files, in no particular order: the forward and rollback
/// files, and the first file it could not read in the order files are refused. Kept apart by
/// the reader itself rather than sorted out afterwards a file at a time on one thread, which
/// was part of the 1.3 ms a no-op run over 5,000 files spent putting them in order. Each batch
/// has vectors of its own, sized for it (one vector a reader, grown as it read, took 230 more
/// page faults over 5,000 files), and each file is taken out of them in turn as the files are
/// put in version order.
#[derive(Default)]
struct Batch {
    ups: Vec<Option<Migration>>,
    downs: Vec<Option<Down>>,
    bad: Option<(Bad, String, Error)>,
}

impl Batch {
    /// Keeps `name`'s error unless a file refused before it was found already.
    fn refuse(&mut self, bad: Bad, name: String, error: Error) {
        let earlier = (self.bad.as_ref()).is_none_or(|(first, first_name, _)| {
            (bad, name.as_str()) < (*first, first_name.as_str())
        });
        if earlier {
            self.bad = Some((bad, name, error));
        }
    }
}

/// How many files a reader takes at a time.
const READ_BATCH: usize = 32;

/// Reads the files named in `files`.
fn read_batch(fd: &OwnedFd, dir: &Path, files: Vec<String>, buffer: &mut Vec<u8>) -> Batch {
    let mut read = Batch {
        ups: Vec::with_capacity(files.len()),
        ..Batch::default()
    };
    for file_name in files {
        match read_file(fd, dir, &file_name, buffer) {
            Ok(Read::Up(migration)) => read.ups.push(Some(migration)),
            Ok(Read::Down(down)) => read.downs.push(Some(down)),
            Err((bad, error)) => read.refuse(bad, file_name, error),
        }
    }
    read
}

/// One file of a batch: its name parsed, its text read, a forward file's checksum taken.
fn read_file(
    fd: &OwnedFd,
    dir: &Path,
    file_name: &str,
    buffer: &mut Vec<u8>,
) -> Result<Read, (Bad, Error)> {
    let path = dir.join(file_name);
    let parsed = parse_name(file_name).map_err(|problem| (Bad::Name, invalid(&path, problem)))?;
    let script = read_script(fd, file_name, path, buffer).map_err(|e| (Bad::Contents, e))?;
    let (version, name) = (parsed.version, parsed.name.to_string());
    Ok(match parsed.direction {
        Direction::Up => Read::Up(Migration {
            version,
            name,
            checksum: checksum(&script.sql),
            up: script,
            down: None,
        }),
        Direction::Down => Read::Down(Down {
            version,
            name,
            script,
        }),
    })
}

/// Reads one file through `buffer` with one read when it fits: a read from a regular file
/// comes back short only at its end, which saves the size query and the extra read that
/// `fs::read` makes (a fifth of a no-op run over 5,000 files is system calls).
fn read_script(
    dir: &OwnedFd,
    name: &str,
    path: PathBuf,
    buffer: &mut Vec<u8>,
) -> Result<Script, Error> {
    let io_error = |source| Error::Directory {
        path: path.clone(),
        source,
    };
    let opened = rustix::fs::openat(dir, name, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty());
    let mut file = fs::File::from(opened.map_err(|errno| io_error(errno.into()))?);
    let mut len = 0;
    loop {
        if len == buffer.len() {
            buffer.resize(buffer.len() * 2, 0);
        }
        let read = std::io::Read::read(&mut file, &mut buffer[len..]).map_err(io_error)?;
        len += read;
        if read == 0 || len < buffer.len() {
            break;
        }
    }
    let bytes = &buffer[..len];
    // The server cannot take a NUL byte, and the driver would refuse to send the file; a
    // UTF-16 file without a byte-order mark is also valid UTF-8, full of them.
    if let Some(offset) = bytes.iter().position(|&b| b == 0) {
        return Err(invalid(
            &path,
            format!(
                "holds a NUL byte at offset {offset} (saved as UTF-16?); save the file as UTF-8 without NUL bytes"
            ),
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        invalid(
            &path,
            format!(
                "not UTF-8 (invalid byte at offset {}); save the file as UTF-8",
                e.valid_up_to()
            ),
        )
    })?;
    let sql = text.strip_prefix('\u{feff}').unwrap_or(text).to_string();
    Ok(Script::new(path, sql))
}

fn parse_name(file_name: &str) -> Result<FileName<'_>, String> {
    // golang-migrate's and sqlx's reversible spelling, NNN_name.up.sql, is the same migration
    // as NNN_name.sql; a directory holding both for one version is refused as a duplicate.
    let (stem, direction) = if let Some(stem) = file_name.strip_suffix(".down.sql") {
        (stem, Direction::Down)
    } else if let Some(stem) = file_name.strip_suffix(".up.sql") {
        (stem, Direction::Up)
    } else {
        let stem = file_name.strip_suffix(".sql").unwrap_or(file_name);
        (stem, Direction::Up)
    };
    let (digits, name) = stem.split_once('_').ok_or_else(|| {
        match !stem.is_empty() && stem.bytes().all(|b| b.is_ascii_digit()) {
            true => format!("file name has a version but no _description after it; {NAME_FIX}"),
            false => format!("file name has no NNN_ version prefix; {NAME_FIX}"),
        }
    })?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "file name does not start with a version number; {NAME_FIX}"
        ));
    }
    let version = digits
        .parse::<i64>()
        .map_err(|_| {
            format!(
                "version {digits} is too large (at most {}, 19 digits); renumber the files with fewer digits, keeping their order (e.g. without a leading part they all share)",
                i64::MAX
            )
        })?;
    let valid_name = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid_name {
        return Err(format!(
            "description \"{name}\" may hold only ASCII letters, digits, '_' and '-'; {NAME_FIX}"
        ));
    }
    Ok(FileName {
        version,
        name,
        direction,
    })
}

/// The checksum recorded in history: SHA-256 of the text with CRLF folded to LF.
pub fn checksum(sql: &str) -> Checksum {
    let digest = if sql.contains("\r\n") {
        Sha256::digest(sql.replace("\r\n", "\n").as_bytes())
    } else {
        Sha256::digest(sql.as_bytes())
    };
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hex = [0; 64];
    for (digits, byte) in hex.chunks_exact_mut(2).zip(digest) {
        digits.copy_from_slice(&[HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 15)]]);
    }
    Checksum(hex)
}

/// What `new` writes under the description of a forward file.
const UP_HINTS: &str = "--
-- Safe to run twice: CREATE TABLE IF NOT EXISTS, ADD COLUMN IF NOT EXISTS,
-- CREATE INDEX IF NOT EXISTS. On a table the bot uses, build an index with
-- CREATE INDEX CONCURRENTLY in a file of its own whose first line is -- no-transaction,
-- add constraints NOT VALID and VALIDATE them in a later migration, and prefer a new column
-- to changing a column's type. `db-migrate plan` shows what each statement will lock, and
-- `db-migrate test` runs it twice, rolls it back and applies it again on a scratch database.
--
-- For example:
-- ALTER TABLE video_requests ADD COLUMN IF NOT EXISTS thumbnail_url text;
";

/// What `new` writes under the heading of a rollback file.
const DOWN_HINTS: &str = "--
-- Safe to run twice: DROP ... IF EXISTS. Delete this file if the change cannot be undone;
-- while it holds no statement, `up` applies the migration and `down` refuses to pass it.
--
-- For example:
-- ALTER TABLE video_requests DROP COLUMN IF EXISTS thumbnail_url;
";

/// Creates `NNN_description.sql` and its `.down.sql` after the newest migration in `dir`,
/// with the version as wide as the widest existing one (at least three digits).
pub fn create(dir: &Path, description: &str) -> Result<(PathBuf, PathBuf), Error> {
    let slug = slug(description);
    if slug.is_empty() {
        return Err(Error::Config(format!(
            "\"{description}\" has no ASCII letters or digits, the only ones a migration's file name takes; describe the change with some, e.g. \"add thumbnail url\""
        )));
    }
    fs::create_dir_all(dir).map_err(|source| Error::Directory {
        path: dir.to_path_buf(),
        source,
    })?;
    let existing = load(dir)?;
    let version = match existing.last() {
        None => 1,
        Some(newest) => newest.version.checked_add(1).ok_or_else(|| {
            Error::Config(format!(
                "the newest migration's version {} is the largest possible, so `new` has no number left; renumber the directory with smaller versions",
                newest.version
            ))
        })?,
    };
    // A directory of timestamp versions (dbmate's, sqlx's, diesel's habit) gets the time now,
    // as those tools write it: two branches that each add a migration then seldom collide,
    // where one past the newest would give both the same number.
    let version = match existing.last() {
        Some(newest) if is_timestamp(newest.version) => version.max(timestamp_now()),
        // diesel 2.2's YYYYMMDDHHMMSSNNNN, as `import --from diesel` keeps or widens them.
        Some(newest)
            if newest.version >= 100_000_000_000_000_000
                && is_timestamp(newest.version / 10_000) =>
        {
            version.max(timestamp_now() * 10_000)
        }
        _ => version,
    };
    let width = existing
        .iter()
        .map(|m| version_width(&m.up.path))
        .max()
        .unwrap_or(3)
        .max(3);
    let stem = format!("{version:0width$}_{slug}");
    // A directory in golang-migrate's spelling gets its next file in the same spelling.
    let spelling = match existing.last() {
        Some(newest) if newest.up.path.to_string_lossy().ends_with(".up.sql") => ".up.sql",
        _ => ".sql",
    };
    let up = dir.join(format!("{stem}{spelling}"));
    let down = dir.join(format!("{stem}.down.sql"));
    // Comments only (a pending file without a statement is refused until it is written), with
    // the forms that pass the rules: safe to run twice, and gentle on the bot's big tables.
    write_new(&up, &format!("-- {description}\n{UP_HINTS}\n"))?;
    write_new(
        &down,
        &format!("-- Rolls back {stem}{spelling}\n{DOWN_HINTS}\n"),
    )?;
    Ok((up, down))
}

/// Whether `version` reads as a UTC time written YYYYMMDDHHMMSS.
fn is_timestamp(version: i64) -> bool {
    let part = |at: u32| (version / 10_i64.pow(at)) % 100;
    (10_000_000_000_000..100_000_000_000_000).contains(&version)
        && (1970..=2999).contains(&(version / 10_000_000_000))
        && (1..=12).contains(&part(8))
        && (1..=31).contains(&part(6))
        && part(4) < 24
        && part(2) < 60
        && part(0) < 60
}

/// The time now in UTC as a version, YYYYMMDDHHMMSS.
fn timestamp_now() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    let fields = [
        i64::from(u8::from(now.month())),
        i64::from(now.day()),
        i64::from(now.hour()),
        i64::from(now.minute()),
        i64::from(now.second()),
    ];
    (fields.iter()).fold(i64::from(now.year()), |version, field| {
        version * 100 + field
    })
}

fn version_width(path: &Path) -> usize {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    name.bytes().take_while(u8::is_ascii_digit).count()
}

/// Writes a new file, never over an existing one (`new`, and `import`'s migrations).
pub fn write_new(path: &Path, text: &str) -> Result<(), Error> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .and_then(|mut file| std::io::Write::write_all(&mut file, text.as_bytes()))
        .map_err(|source| Error::Directory {
            path: path.to_path_buf(),
            source,
        })
}

/// The longest slug `new` writes: with the version and `.down.sql` the file name stays far
/// below the 255 bytes file systems take (a paragraph given as the description failed with
/// the OS's "File name too long").
const SLUG_MAX: usize = 80;

/// `"Add thumbnail URL!"` -> `add_thumbnail_url`; whole words up to [`SLUG_MAX`] bytes (the
/// first word cut there when it alone is longer).
fn slug(description: &str) -> String {
    let lower = description.to_lowercase();
    let mut slug = String::new();
    for word in lower
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let sep = usize::from(!slug.is_empty());
        if slug.len() + sep + word.len() > SLUG_MAX {
            if slug.is_empty() {
                slug.push_str(&word[..SLUG_MAX]);
            }
            break;
        }
        if sep == 1 {
            slug.push('_');
        }
        slug.push_str(word);
    }
    slug
}

/// The error for a file that cannot be a migration: exit 3, naming it.
pub fn invalid(path: &Path, problem: String) -> Error {
    Error::InvalidFile {
        file: path.to_path_buf(),
        problem,
    }
}

fn duplicate(conflict: Conflict) -> Error {
    let (path, other) = (conflict.path.as_path(), conflict.with.as_path());
    let spelled = |p: &Path| p.to_string_lossy().ends_with(".up.sql");
    if spelled(path) != spelled(other) && path.parent() == other.parent() {
        let (a, b) = (stem_of(path), stem_of(other));
        if a == b {
            return invalid(
                path,
                format!(
                    "is the same migration as {}, spelled both NNN_name.sql and NNN_name.up.sql; keep one of the two files",
                    other.display()
                ),
            );
        }
    }
    Error::DuplicateVersion {
        version: conflict.version,
        file: conflict.path,
        other: conflict.with,
        applied: None,
    }
}

/// `003_x` of `003_x.sql` and of `003_x.up.sql`.
fn stem_of(path: &Path) -> String {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let name = name.strip_suffix(".sql").unwrap_or(&name);
    name.strip_suffix(".up").unwrap_or(name).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_parse_into_version_name_and_direction() {
        let cases = [
            (
                "001_create_video_requests.sql",
                1,
                "create_video_requests",
                Direction::Up,
            ),
            (
                "001_create_video_requests.down.sql",
                1,
                "create_video_requests",
                Direction::Down,
            ),
            ("1000_later.sql", 1000, "later", Direction::Up),
            ("7_x-y.sql", 7, "x-y", Direction::Up),
        ];
        for (file, version, name, direction) in cases {
            let parsed = parse_name(file).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(
                parsed,
                FileName {
                    version,
                    name,
                    direction
                },
                "{file}"
            );
        }
    }

    #[test]
    fn malformed_file_names_are_refused_with_the_fix() {
        for file in [
            "create.sql",
            "v1_create.sql",
            "_create.sql",
            "001_.sql",
            "001_has space.sql",
            "99999999999999999999_big.sql",
            "001.sql",
        ] {
            let problem = parse_name(file).expect_err(file);
            assert!(
                problem.contains("NNN_") || problem.contains("too large"),
                "{file}: {problem}"
            );
        }
        // A version alone lacks the description, not the version.
        let problem = parse_name("001.sql").unwrap_err();
        assert!(problem.contains("no _description"), "{problem}");
    }

    #[test]
    fn checksum_ignores_crlf() {
        assert_eq!(
            checksum("SELECT 1;\r\nSELECT 2;\r\n"),
            checksum("SELECT 1;\nSELECT 2;\n")
        );
        assert_ne!(checksum("SELECT 1;"), checksum("SELECT 2;"));
        assert_eq!(checksum("").len(), 64);
    }

    #[test]
    fn large_directories_load_every_file_in_version_order() {
        // Enough files for several reader threads, each taking batches as it goes.
        let dir = tempfile::tempdir().unwrap();
        for version in 1..=1_600 {
            let sql = format!("CREATE TABLE t_{version} (id int);");
            std::fs::write(dir.path().join(format!("{version:04}_t{version}.sql")), sql).unwrap();
            if version % 3 == 0 {
                let down = dir.path().join(format!("{version:04}_t{version}.down.sql"));
                std::fs::write(down, format!("DROP TABLE t_{version};")).unwrap();
            }
        }
        let big = "-- padding\n".repeat(10_000);
        std::fs::write(dir.path().join("1601_big.sql"), format!("{big}SELECT 1;")).unwrap();
        let loaded = load(dir.path()).unwrap();
        assert_eq!(loaded.len(), 1_601);
        for (i, migration) in loaded.iter().take(1_600).enumerate() {
            let version = i as i64 + 1;
            assert_eq!(migration.version, version);
            assert_eq!(migration.name, format!("t{version}"));
            assert_eq!(
                migration.up.sql,
                format!("CREATE TABLE t_{version} (id int);")
            );
            assert_eq!(migration.checksum, checksum(&migration.up.sql));
            let down = migration.down.as_ref().map(|down| down.sql.as_str());
            let expected = format!("DROP TABLE t_{version};");
            assert_eq!(down, (version % 3 == 0).then_some(expected.as_str()));
        }
        assert_eq!(loaded[1_600].up.sql.len(), big.len() + "SELECT 1;".len());
    }

    #[test]
    fn across_reader_threads_the_first_bad_file_by_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for version in 1..=1000 {
            let sql = format!("CREATE TABLE t_{version} (id int);");
            std::fs::write(dir.path().join(format!("{version:04}_t{version}.sql")), sql).unwrap();
        }
        // Unreadable contents early, a bad name late, in different readers' shares: the bad
        // name is refused first, as when every name was checked before any file was read.
        std::fs::write(dir.path().join("0003_t3.sql"), b"SELECT 1;\0").unwrap();
        std::fs::write(dir.path().join("0999_bad name.sql"), "SELECT 1;").unwrap();
        let error = load(dir.path()).unwrap_err().to_string();
        assert!(error.contains("0999_bad name.sql"), "{error}");
        std::fs::remove_file(dir.path().join("0999_bad name.sql")).unwrap();
        std::fs::write(dir.path().join("0900_t900.sql"), b"SELECT 2;\0").unwrap();
        let error = load(dir.path()).unwrap_err().to_string();
        assert!(error.contains("0003_t3.sql"), "{error}");
        // What the listing refuses is refused, though readers were reading meanwhile and
        // found an earlier file unreadable.
        std::fs::create_dir(dir.path().join("0998_folder.sql")).unwrap();
        let error = load(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains("0998_folder.sql") && error.contains("directory"),
            "{error}"
        );
        std::fs::remove_dir(dir.path().join("0998_folder.sql")).unwrap();
        // Three files for one version: the first by name is kept, both others conflict with it.
        std::fs::write(dir.path().join("0003_t3.sql"), "SELECT 3;").unwrap();
        std::fs::write(dir.path().join("0900_t900.sql"), "SELECT 900;").unwrap();
        std::fs::write(dir.path().join("0500_b.sql"), "SELECT 5;").unwrap();
        std::fs::write(dir.path().join("0500_a.sql"), "SELECT 5;").unwrap();
        let (loaded, conflicts) = load_with_conflicts(dir.path()).unwrap();
        assert_eq!(loaded.len(), 1000);
        assert_eq!(loaded[499].name, "a");
        let names = |p: &PathBuf| p.file_name().unwrap().to_string_lossy().into_owned();
        let found: Vec<(String, String)> = (conflicts.iter())
            .map(|c| (names(&c.path), names(&c.with)))
            .collect();
        assert_eq!(
            found,
            [
                ("0500_b.sql".to_string(), "0500_a.sql".to_string()),
                ("0500_t500.sql".to_string(), "0500_a.sql".to_string()),
            ]
        );
    }

    #[test]
    fn a_few_files_are_listed_for_the_caller_and_read_as_load_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        // Other files count for nothing: only `.sql` files are migrations.
        std::fs::write(dir.path().join("README.md"), "notes").unwrap();
        for version in 1..=FEW_FILES {
            let name = format!("{version:03}_t{version}.sql");
            std::fs::write(dir.path().join(name), format!("SELECT {version};")).unwrap();
        }
        let files = few(dir.path())
            .unwrap()
            .expect("as many as FEW_FILES are few");
        assert_eq!(files.len(), FEW_FILES);
        let listed = load_listed(dir.path(), files).unwrap();
        let loaded = load(dir.path()).unwrap();
        let versions = |m: &[Migration]| m.iter().map(|m| m.version).collect::<Vec<_>>();
        assert_eq!(
            versions(&listed),
            (1..=FEW_FILES as i64).collect::<Vec<_>>()
        );
        assert_eq!(versions(&listed), versions(&loaded));
        assert_eq!(listed[3].checksum, loaded[3].checksum);
        // One more is many: left to the readers' threads, which read them all.
        std::fs::write(dir.path().join("999_last.sql"), "SELECT 999;").unwrap();
        assert!(few(dir.path()).unwrap().is_none());
        assert_eq!(load(dir.path()).unwrap().len(), FEW_FILES + 1);
        // So is a directory with many other files.
        let crowded = tempfile::tempdir().unwrap();
        std::fs::write(crowded.path().join("001_a.sql"), "SELECT 1;").unwrap();
        for i in 0..4 * FEW_FILES {
            std::fs::write(crowded.path().join(format!("note{i}.txt")), "").unwrap();
        }
        assert!(few(crowded.path()).unwrap().is_none());
        assert_eq!(load(crowded.path()).unwrap().len(), 1);
        // So is one file of more than FEW_BYTES.
        let big = tempfile::tempdir().unwrap();
        let text = format!("-- {}\nSELECT 1;", "x".repeat(FEW_BYTES as usize));
        std::fs::write(big.path().join("001_seed.sql"), text).unwrap();
        assert!(few(big.path()).unwrap().is_none());
        std::fs::write(big.path().join("001_seed.sql"), "SELECT 1;").unwrap();
        assert_eq!(few(big.path()).unwrap().unwrap(), ["001_seed.sql"]);
        // A bad entry among a few is refused by the listing, as load refuses it.
        let small = tempfile::tempdir().unwrap();
        std::fs::write(small.path().join("001_a.sql"), "SELECT 1;").unwrap();
        std::fs::write(small.path().join("002_b.SQL"), "SELECT 2;").unwrap();
        let error = few(small.path()).unwrap_err().to_string();
        assert!(error.contains("002_b.SQL"), "{error}");
        assert_eq!(error, load(small.path()).unwrap_err().to_string());
        let missing = few(&small.path().join("nowhere")).unwrap_err().to_string();
        assert!(missing.contains("nowhere"), "{missing}");
    }

    #[test]
    fn slug_keeps_letters_and_digits() {
        assert_eq!(slug("Add thumbnail URL!"), "add_thumbnail_url");
        assert_eq!(slug("  v2 -- index "), "v2_index");
        assert_eq!(slug("!!"), "");
        assert_eq!(slug("добавить колонку"), "");
        let long = slug(&"add the thumbnail column ".repeat(20));
        assert!(long.len() <= SLUG_MAX && long.starts_with("add_the_thumbnail_column_add"));
        assert!(!long.ends_with('_'), "{long}");
        assert_eq!(slug(&"x".repeat(300)), "x".repeat(SLUG_MAX));
    }

    #[test]
    fn timestamp_versions_are_told_from_counters() {
        assert!(is_timestamp(20230902192641));
        assert!(!is_timestamp(20231302192641), "month 13");
        assert!(!is_timestamp(12));
        assert!(!is_timestamp(99999999999999));
        assert!(is_timestamp(timestamp_now()));
        assert!(timestamp_now() > 20261201000000);
    }
}
