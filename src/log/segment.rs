//! Segment files: naming, listing, preallocation, the appender's writes and its read-only
//! mapping. The only file of the log module with `unsafe` (mapping a file, slicing the
//! mapping, `fallocate`, `pwritev` and `sync_file_range`).
//!
//! Writes go through `pwrite` into the page cache, one call per record batch (`pwritev`
//! when the batch carries zeros after it to the end of a 64 KiB chunk:
//! [`WRITE_CHUNK_BYTES`](super::WRITE_CHUNK_BYTES)); the mapping
//! is read-only (`PROT_READ`, `MAP_SHARED`, so it sees those writes at once: same page
//! cache). Storing through a shared file mapping costs a page fault per fresh page and a
//! file-system write fault (`page_mkwrite`) each time writeback cleans a page, which made
//! appends several times slower than `write()` (`benches/log_append.rs`); `pwrite` also
//! turns an I/O error into an error value instead of SIGBUS.
//!
//! The mapping is sound only while the file is at least as long as the mapping: a shorter
//! file turns the next access past its end into SIGBUS. The log never shrinks a segment file
//! (recovery zeroes a torn tail instead of truncating; retention unlinks whole files, which
//! leaves existing mappings intact), and segment files are preallocated with `fallocate` so a
//! full disk is an error at roll time. Readers of other processes (and of sealed segments)
//! use plain file reads, never mappings.
//!
//! Ownership of a mapping: it is an `Arc<MmapRaw>`. The [`Segment`] (owned by the one
//! appender of the partition) is the only holder that makes Rust references into it;
//! [`SegmentSync`] handles (held by the background flusher) only pass its address range to
//! `msync`. The mapping is unmapped when the last holder drops, so a flusher that is still
//! syncing a segment the appender has let go of keeps it mapped until it is done.

#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::os::unix::fs::FileExt;

use memmap2::{MmapOptions, MmapRaw};

use super::{Error, Offset};

/// File name extension of segments.
const SEGMENT_EXTENSION: &str = "seg";
/// File name extension of segment indexes.
const INDEX_EXTENSION: &str = "idx";
/// Digits of the base offset in a segment file name.
const SEGMENT_NAME_DIGITS: usize = 20;
/// File names of a partition's spare segments are `spare-{slot}.seg.tmp`, `slot` below
/// [`SPARES_READY`](super::SPARES_READY) (not segment names: readers skip them).
const SPARE_PREFIX: &str = "spare-";
const SPARE_SUFFIX: &str = ".seg.tmp";

/// Path of the segment of `dir` whose first offset is `base`.
pub(crate) fn segment_path(dir: &Path, base: Offset) -> PathBuf {
    dir.join(format!("{:020}.{SEGMENT_EXTENSION}", base.0))
}

/// Path of the sparse index of the segment of `dir` whose first offset is `base`.
pub(crate) fn index_path(dir: &Path, base: Offset) -> PathBuf {
    dir.join(format!("{:020}.{INDEX_EXTENSION}", base.0))
}

/// The base offset named by an index file name, `None` for any other file.
pub(crate) fn parse_index_name(name: &str) -> Option<Offset> {
    let digits = name.strip_suffix(INDEX_EXTENSION)?.strip_suffix('.')?;
    if digits.len() != SEGMENT_NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Offset)
}

/// The base offset named by a segment file name, `None` for any other file.
pub(crate) fn parse_segment_name(name: &str) -> Option<Offset> {
    let digits = name.strip_suffix(SEGMENT_EXTENSION)?.strip_suffix('.')?;
    if digits.len() != SEGMENT_NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Offset)
}

/// A segment file found in a partition directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentFile {
    /// Its first offset.
    pub(crate) base: Offset,
    /// Its path.
    pub(crate) path: PathBuf,
}

/// The segments of partition directory `dir`, by ascending base offset. A missing directory
/// has none.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<SegmentFile>, Error> {
    let io_error = |source| Error::Io {
        path: dir.to_path_buf(),
        source,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error)?;
        if let Some(base) = entry.file_name().to_str().and_then(parse_segment_name) {
            out.push(SegmentFile {
                base,
                path: entry.path(),
            });
        }
    }
    out.sort_unstable_by_key(|s| s.base);
    Ok(out)
}

/// Deletes the file at `path`; one that is already gone is no error.
pub(crate) fn remove_if_exists(path: &Path) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::Io {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Makes a new directory entry (a rolled segment) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })
}

/// Allocates disk blocks for the first `len` bytes of `file`, extending it to `len` if
/// shorter; existing contents are kept. Falls back to a sparse `set_len` only where the file
/// system cannot preallocate (a full disk then shows up as SIGBUS on a store: warned).
fn preallocate(file: &File, path: &Path, len: u64) -> Result<(), Error> {
    let io_error = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let len_off = libc::off_t::try_from(len)
        .map_err(|_| io_error(io::Error::from(io::ErrorKind::InvalidInput)))?;
    loop {
        match fallocate(file, len_off) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                tracing::warn!(
                    path = %path.display(),
                    "file system cannot preallocate; segment is sparse (a full disk will crash)"
                );
                return file.set_len(len).map_err(io_error);
            }
            Err(e) => return Err(io_error(e)),
        }
    }
}

/// Bytes free for an unprivileged writer on the file system holding `dir`.
#[cfg(unix)]
pub(crate) fn free_bytes(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string that outlives the call, and `stat` points
    // to writable memory of the struct's size, which statvfs fills when it returns 0.
    let rc = unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised the whole struct.
    let stat = unsafe { stat.assume_init() };
    // Both are u64 on 64-bit Linux, narrower elsewhere.
    #[allow(clippy::useless_conversion)]
    let free = u64::from(stat.f_bavail).saturating_mul(u64::from(stat.f_frsize));
    Ok(free)
}

/// Bytes free on the file system holding `dir` (unknown here: unbounded).
#[cfg(not(unix))]
pub(crate) fn free_bytes(_dir: &Path) -> io::Result<u64> {
    Ok(u64::MAX)
}

#[cfg(target_os = "linux")]
fn fallocate(file: &File, len: libc::off_t) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fallocate takes an fd and integers and touches no memory of ours; the fd is
    // open for the whole call because `file` is borrowed.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn fallocate(_file: &File, _len: libc::off_t) -> io::Result<()> {
    Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
}

#[cfg(target_os = "linux")]
fn start_writeback(file: &File, pos: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(pos), Ok(len)) = (libc::off64_t::try_from(pos), libc::off64_t::try_from(len)) else {
        return Err(io::ErrorKind::InvalidInput.into());
    };
    // SAFETY: sync_file_range takes an fd and integers and touches no memory of ours; the
    // fd is open for the whole call because `file` is borrowed.
    let rc =
        unsafe { libc::sync_file_range(file.as_raw_fd(), pos, len, libc::SYNC_FILE_RANGE_WRITE) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _pos: u64, _len: u64) -> io::Result<()> {
    Ok(())
}

/// Zeros to write from.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
const _: () = assert!(super::WRITE_CHUNK_BYTES as usize <= ZEROS.len());

/// Writes `parts` one after the other at `pos`, retrying short writes and interruptions.
#[cfg(target_os = "linux")]
fn write_all_vectored_at(file: &File, mut parts: [&[u8]; 2], mut pos: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    while !parts[1].is_empty() || !parts[0].is_empty() {
        let iov = parts.map(|part| libc::iovec {
            iov_base: part.as_ptr().cast_mut().cast(),
            iov_len: part.len(),
        });
        let offset = libc::off_t::try_from(pos).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: both iovecs describe live, initialized slices borrowed for the whole call
        // (their bytes are only read: `pwritev` copies from them), the count matches the
        // array, and the fd is open because `file` is borrowed.
        let written = unsafe { libc::pwritev(file.as_raw_fd(), iov.as_ptr(), 2, offset) };
        let Ok(mut written) = usize::try_from(written) else {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        };
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        pos += written as u64;
        for part in &mut parts {
            let n = written.min(part.len());
            *part = &part[n..];
            written -= n;
        }
        debug_assert_eq!(written, 0, "pwritev wrote more than it was given");
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn write_all_vectored_at(file: &File, parts: [&[u8]; 2], pos: u64) -> io::Result<()> {
    file.write_all_at(parts[0], pos)?;
    file.write_all_at(parts[1], pos + parts[0].len() as u64)
}

/// Path of spare segment `slot` of `dir`.
pub(crate) fn spare_path(dir: &Path, slot: usize) -> PathBuf {
    dir.join(format!("{SPARE_PREFIX}{slot}{SPARE_SUFFIX}"))
}

/// Whether `name` is the file name of a spare segment (of any slot, or the single spare of
/// earlier versions, `spare.seg.tmp`).
pub(crate) fn is_spare_name(name: &str) -> bool {
    name == "spare.seg.tmp"
        || name
            .strip_prefix(SPARE_PREFIX)
            .and_then(|rest| rest.strip_suffix(SPARE_SUFFIX))
            .is_some_and(|slot| !slot.is_empty() && slot.bytes().all(|b| b.is_ascii_digit()))
}

/// An empty segment file, preallocated off the appender's thread, that a later roll renames
/// into place ([`Segment::from_spare`]); each partition keeps
/// [`SPARES_READY`](super::SPARES_READY) of them. Preallocating a segment allocates its
/// blocks, which waits for the file system while a sealed segment is being synced: 3–26 ms
/// measured on ext4, which a roll would otherwise spend holding the core.
#[derive(Debug)]
pub(crate) struct Spare {
    file: File,
    len: u64,
    slot: usize,
    path: PathBuf,
}

impl Spare {
    /// Creates spare `slot` of `dir` (replacing a stale one), preallocated to `len` bytes of
    /// zeros.
    pub(crate) fn prepare(dir: &Path, slot: usize, len: u64) -> Result<Spare, Error> {
        let path = spare_path(dir, slot);
        let io_error = |source| Error::Io {
            path: path.clone(),
            source,
        };
        remove_if_exists(&path)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_error)?;
        if let Err(e) = preallocate(&file, &path, len) {
            // A spare that cannot be allocated (a full disk) holds no space meanwhile.
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(Spare {
            file,
            len,
            slot,
            path,
        })
    }

    /// Its slot.
    pub(crate) fn slot(&self) -> usize {
        self.slot
    }

    /// Its file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// A segment written with `pwrite` and mapped read-only: the appender's current (or
/// recently sealed) segment.
pub(crate) struct Segment {
    path: PathBuf,
    base: Offset,
    file: Arc<File>,
    map: Arc<MmapRaw>,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("path", &self.path)
            .field("base", &self.base)
            .field("bytes", &self.map.len())
            .finish()
    }
}

impl Segment {
    /// Creates the segment of `dir` starting at `base`, preallocated to `segment_bytes`.
    /// Fails if it exists.
    pub(crate) fn create(dir: &Path, base: Offset, segment_bytes: u64) -> Result<Segment, Error> {
        let path = segment_path(dir, base);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
        crate::fault::check(crate::fault::Op::Roll)
            .map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })
            .and_then(|()| Segment::map(path.clone(), base, file, segment_bytes))
            .inspect_err(|_| {
                // A roll that fails (a full disk) must leave nothing behind: the next roll
                // creates this same file again.
                let _ = std::fs::remove_file(&path);
            })
    }

    /// Makes `spare` the segment of `dir` starting at `base`: renames it into place and maps
    /// it, with no `fallocate` on the way. Fails if that segment exists. The spare's size is
    /// the partition's `segment_bytes` (the tracker makes it so).
    pub(crate) fn from_spare(dir: &Path, base: Offset, spare: Spare) -> Result<Segment, Error> {
        let path = segment_path(dir, base);
        let io_error = |source| Error::Io {
            path: path.clone(),
            source,
        };
        // The appender is the one writer of its directory, so this check does not race.
        if path.try_exists().map_err(io_error)? {
            return Err(io_error(io::ErrorKind::AlreadyExists.into()));
        }
        std::fs::rename(&spare.path, &path).map_err(io_error)?;
        crate::fault::check(crate::fault::Op::Roll)
            .map_err(io_error)
            .and_then(|()| Segment::map_preallocated(path.clone(), base, spare.file, spare.len))
            .inspect_err(|_| {
                // As in `create`: the next roll must find no segment of this base.
                let _ = std::fs::remove_file(&path);
            })
    }

    /// Opens an existing segment, extending it (zeros) to `segment_bytes` if it is shorter
    /// (a crash between creating and preallocating it, or a larger configured size).
    pub(crate) fn open(path: &Path, base: Offset, segment_bytes: u64) -> Result<Segment, Error> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| Error::Io {
                path: path.to_path_buf(),
                source,
            })?;
        Segment::map(path.to_path_buf(), base, file, segment_bytes)
    }

    fn map(path: PathBuf, base: Offset, file: File, segment_bytes: u64) -> Result<Segment, Error> {
        let io_error = |source| Error::Io {
            path: path.clone(),
            source,
        };
        let file_bytes = file.metadata().map_err(io_error)?.len();
        let len = file_bytes.max(segment_bytes);
        preallocate(&file, &path, len)?;
        Segment::map_preallocated(path, base, file, len)
    }

    /// Maps `file`, which is at least `len` bytes long.
    fn map_preallocated(
        path: PathBuf,
        base: Offset,
        file: File,
        len: u64,
    ) -> Result<Segment, Error> {
        let io_error = |source| Error::Io {
            path: path.clone(),
            source,
        };
        let len_usize = usize::try_from(len)
            .map_err(|_| io_error(io::Error::from(io::ErrorKind::InvalidInput)))?;
        let map = MmapOptions::new()
            .len(len_usize)
            .map_raw_read_only(&file)
            .map_err(io_error)?;
        Ok(Segment {
            path,
            base,
            file: Arc::new(file),
            map: Arc::new(map),
        })
    }

    /// Its path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Its first offset.
    pub(crate) fn base(&self) -> Offset {
        self.base
    }

    /// Its size in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.map.len() as u64
    }

    /// Its contents.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `map.len()` bytes, readable, and stays mapped while `self`
        // holds its `Arc`. The file is at least that long (preallocated in `map`) and the log
        // never shrinks it (retention unlinks, which keeps the pages), so no access faults;
        // a truncation by another process would be SIGBUS, as with any mapped file (the data
        // directory belongs to this process). Aliasing: the mapping is read-only and nothing
        // in this process makes a `&mut` into it; `pwrite`s change the bytes under this
        // shared borrow from the kernel, outside Rust's memory model, and only past the
        // committed end (or, in recovery, in the torn tail being zeroed), which no reader of
        // the slice interprets as data until the write has returned.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr(), self.map.len()) }
    }

    /// Writes `bytes` at position `pos` (which must lie inside the segment), in the page
    /// cache; readers of the mapping see them when it returns.
    pub(crate) fn write_at(&self, pos: u64, bytes: &[u8]) -> Result<(), Error> {
        debug_assert!(
            pos + bytes.len() as u64 <= self.len(),
            "write past the segment"
        );
        crate::fault::check(crate::fault::Op::Write)
            .and_then(|()| self.file.write_all_at(bytes, pos))
            .map_err(|source| Error::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// Writes `bytes` at position `pos` followed by zeros up to `pad_end`, in one call
    /// where the platform has `pwritev` (see [`WRITE_CHUNK_BYTES`](super::WRITE_CHUNK_BYTES)).
    /// The zeros must be fewer than [`ZEROS`]'s length and end inside the segment.
    pub(crate) fn write_padded_at(
        &self,
        pos: u64,
        bytes: &[u8],
        pad_end: u64,
    ) -> Result<(), Error> {
        let end = pos + bytes.len() as u64;
        debug_assert!(
            end <= pad_end && pad_end <= self.len(),
            "padding past the segment"
        );
        let pad = usize::try_from(pad_end.saturating_sub(end)).unwrap_or(usize::MAX);
        debug_assert!(pad <= ZEROS.len(), "{pad} bytes of padding");
        let zeros = &ZEROS[..pad];
        crate::fault::check(crate::fault::Op::Write)
            .and_then(|()| write_all_vectored_at(&self.file, [bytes, zeros], pos))
            .map_err(|source| Error::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// Overwrites bytes `pos..pos+len` with zeros.
    pub(crate) fn zero(&self, pos: u64, len: u64) -> Result<(), Error> {
        let mut at = pos;
        while at < pos + len {
            let n = (pos + len - at).min(ZEROS.len() as u64);
            self.write_at(at, &ZEROS[..n as usize])?;
            at += n;
        }
        Ok(())
    }

    /// A handle that can make ranges of this segment durable from another thread.
    pub(crate) fn sync_handle(&self) -> SegmentSync {
        SegmentSync {
            path: self.path.clone(),
            file: self.file.clone(),
            map: self.map.clone(),
        }
    }

    /// Makes bytes `pos..pos+len` durable (msync).
    pub(crate) fn flush_range(&self, pos: u64, len: u64) -> Result<(), Error> {
        flush_map_range(&self.map, &self.path, pos, len)
    }
}

/// Makes a segment's bytes durable without access to its contents: what the background
/// flusher holds. Keeps the mapping (and the file) alive while it exists.
#[derive(Clone)]
pub(crate) struct SegmentSync {
    path: PathBuf,
    file: Arc<File>,
    map: Arc<MmapRaw>,
}

impl std::fmt::Debug for SegmentSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentSync")
            .field("path", &self.path)
            .finish()
    }
}

impl SegmentSync {
    /// Makes bytes `pos..pos+len` durable (msync).
    pub(crate) fn flush_range(&self, pos: u64, len: u64) -> Result<(), Error> {
        flush_map_range(&self.map, &self.path, pos, len)
    }

    /// Starts writing bytes `pos..pos+len` back to the disk without waiting for them
    /// (`sync_file_range` with `SYNC_FILE_RANGE_WRITE`): nothing becomes durable by it, but
    /// the next flush finds most of them written and needs no extra journal commit.
    pub(crate) fn start_writeback(&self, pos: u64, len: u64) -> Result<(), Error> {
        start_writeback(&self.file, pos, len).map_err(|source| Error::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Makes the file's metadata (its preallocated size) durable.
    pub(crate) fn sync_file(&self) -> Result<(), Error> {
        self.file.sync_all().map_err(|source| Error::Io {
            path: self.path.clone(),
            source,
        })
    }
}

fn flush_map_range(map: &MmapRaw, path: &Path, pos: u64, len: u64) -> Result<(), Error> {
    crate::fault::check(crate::fault::Op::Sync).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if len == 0 {
        return Ok(());
    }
    let io_error = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let pos = usize::try_from(pos).map_err(|_| io_error(io::ErrorKind::InvalidInput.into()))?;
    let len = usize::try_from(len).map_err(|_| io_error(io::ErrorKind::InvalidInput.into()))?;
    map.flush_range(pos, len).map_err(io_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_are_the_base_offset_in_20_digits() {
        let p = segment_path(Path::new("/d"), Offset(42));
        assert_eq!(p, Path::new("/d/00000000000000000042.seg"));
        assert_eq!(
            parse_segment_name("00000000000000000042.seg"),
            Some(Offset(42))
        );
        assert_eq!(
            parse_segment_name("18446744073709551615.seg"),
            Some(Offset(u64::MAX))
        );
        assert_eq!(parse_segment_name("42.seg"), None);
        assert_eq!(parse_segment_name("00000000000000000042.seg.tmp"), None);
        assert_eq!(parse_segment_name("0000000000000000004x.seg"), None);
        assert_eq!(parse_segment_name("99999999999999999999.seg"), None);
    }

    #[test]
    fn spare_names_are_never_segment_names() {
        for slot in 0..crate::log::SPARES_READY + 1 {
            let path = spare_path(Path::new("/d"), slot);
            let name = path.file_name().unwrap().to_str().unwrap();
            assert!(is_spare_name(name), "{name}");
            assert_eq!(parse_segment_name(name), None, "{name}");
        }
        assert!(is_spare_name("spare.seg.tmp"));
        for other in [
            "spare-.seg.tmp",
            "spare-x.seg.tmp",
            "spare-1.seg",
            "00000000000000000042.seg",
        ] {
            assert!(!is_spare_name(other), "{other}");
        }
    }

    #[test]
    fn create_preallocates_and_open_extends_a_short_file() {
        let dir = tempfile::tempdir().unwrap();
        let seg = Segment::create(dir.path(), Offset(0), 1 << 20).unwrap();
        assert_eq!(seg.len(), 1 << 20);
        assert_eq!(std::fs::metadata(seg.path()).unwrap().len(), 1 << 20);
        assert!(Segment::create(dir.path(), Offset(0), 1 << 20).is_err());
        drop(seg);
        let path = segment_path(dir.path(), Offset(0));
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(100)
            .unwrap();
        let seg = Segment::open(&path, Offset(0), 1 << 20).unwrap();
        assert_eq!(seg.len(), 1 << 20);
        let listed = list_segments(dir.path()).unwrap();
        assert_eq!(
            listed,
            vec![SegmentFile {
                base: Offset(0),
                path
            }]
        );
    }

    #[test]
    fn a_padded_write_puts_zeros_after_the_bytes_up_to_its_end_and_nothing_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let seg = Segment::create(dir.path(), Offset(0), 1 << 20).unwrap();
        seg.write_at(0, &[0xEE; 200_000]).unwrap();
        let chunk = crate::log::WRITE_CHUNK_BYTES;
        seg.write_padded_at(100, &[7; 1000], chunk).unwrap();
        let bytes = seg.bytes();
        assert!(bytes[..100].iter().all(|&b| b == 0xEE));
        assert!(bytes[100..1100].iter().all(|&b| b == 7));
        assert!(bytes[1100..chunk as usize].iter().all(|&b| b == 0));
        assert!(bytes[chunk as usize..200_000].iter().all(|&b| b == 0xEE));
        // No padding, and a write spanning several chunks.
        seg.write_padded_at(0, &[9; 150_000], 150_000).unwrap();
        seg.write_padded_at(1 << 20, &[], 1 << 20).unwrap();
        let bytes = seg.bytes();
        assert!(bytes[..150_000].iter().all(|&b| b == 9));
        assert!(bytes[150_000..200_000].iter().all(|&b| b == 0xEE));
        // The file sees it, not only the mapping.
        let on_disk = std::fs::read(seg.path()).unwrap();
        assert_eq!(&on_disk[..200_000], &seg.bytes()[..200_000]);
    }
}
