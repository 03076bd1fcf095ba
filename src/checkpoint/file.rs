//! Checkpoint files: `checkpoint/ckpt-{epoch:012}.bin`, one per committed epoch.
//!
//! A file is a fixed header followed by the body (whose encoding belongs to the checkpoint
//! coordinator, not to this file). Integers are little-endian.
//!
//! ```text
//! offset  size  field
//!      0     8  magic        b"SLUICECK"
//!      8     4  crc          CRC-32 (IEEE, crc32fast) of bytes 12..32 of the header,
//!                            then of the body
//!     12     2  version      FORMAT_VERSION (1)
//!     14     2  flags        0; readers reject bits they do not know
//!     16     8  epoch        must equal the epoch in the file name
//!     24     8  body_bytes   must equal file length - 32
//!     32     …  body
//! ```
//!
//! Invariants:
//! - A file under its final name is complete and durable: [`write()`] writes
//!   `ckpt-{epoch:012}.bin.tmp`, fsyncs it, renames it over the final name and fsyncs the
//!   directory. A crash leaves at worst a stray `.tmp`, which is never read and which
//!   [`prune`] deletes.
//! - A file that fails any check (short, bad magic, unknown version or flags, epoch or length
//!   mismatch, CRC) is data, not a bug: [`load_newest`] skips it with a warning and falls back
//!   to the one before it. Nothing here panics on what it reads.
//! - Only the checkpoint coordinator writes and prunes, from one thread; [`prune`] must not run
//!   while a [`write()`] into the same directory is in progress (it deletes `.tmp` files).

#![forbid(unsafe_code)]

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use bytemuck::{Pod, Zeroable};

use super::Error;

/// First bytes of every checkpoint file.
pub const MAGIC: [u8; 8] = *b"SLUICECK";
/// Version of the header and of the framing around the body.
pub const FORMAT_VERSION: u16 = 1;
/// Bytes of the fixed header in front of the body.
pub const HEADER_BYTES: usize = std::mem::size_of::<Header>();
/// Byte position of the first header byte the CRC covers (right after the crc field).
const CRC_COVERED_FROM: usize = 12;

const FILE_PREFIX: &str = "ckpt-";
const FILE_SUFFIX: &str = ".bin";
const TMP_SUFFIX: &str = ".tmp";

/// The on-disk header. Fields hold little-endian values (a no-op on our targets); use
/// [`Header::new`] and the accessors rather than the raw fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
struct Header {
    magic: [u8; 8],
    crc: u32,
    version: u16,
    flags: u16,
    epoch: u64,
    body_bytes: u64,
}

const _: () = assert!(HEADER_BYTES == 32);
const _: () = assert!(std::mem::offset_of!(Header, version) == CRC_COVERED_FROM);

impl Header {
    fn new(epoch: u64, body: &[u8]) -> Header {
        let mut header = Header {
            magic: MAGIC,
            crc: 0,
            version: FORMAT_VERSION.to_le(),
            flags: 0,
            epoch: epoch.to_le(),
            body_bytes: (body.len() as u64).to_le(),
        };
        header.crc = header.compute_crc(body).to_le();
        header
    }

    fn compute_crc(&self, body: &[u8]) -> u32 {
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&bytemuck::bytes_of(self)[CRC_COVERED_FROM..]);
        hasher.update(body);
        hasher.finalize()
    }
}

/// A checkpoint read back from disk.
#[derive(Debug)]
pub struct Loaded {
    /// Its epoch.
    pub epoch: u64,
    /// The body bytes (CRC verified).
    pub body: Vec<u8>,
    /// The file.
    pub path: PathBuf,
}

/// The file name of checkpoint `epoch`: `ckpt-{epoch:012}.bin`.
pub fn file_name(epoch: u64) -> String {
    format!("{FILE_PREFIX}{epoch:012}{FILE_SUFFIX}")
}

/// The epoch in a checkpoint file name, or `None` for any other name (temp files included).
pub fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(FILE_PREFIX)?.strip_suffix(FILE_SUFFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Writes checkpoint `epoch` with `body` into `dir`: temp file, fsync, rename, fsync dir.
pub fn write(dir: &Path, epoch: u64, body: &[u8]) -> Result<PathBuf, Error> {
    create_dir_durably(dir)?;
    let path = dir.join(file_name(epoch));
    let tmp = dir.join(format!("{}{TMP_SUFFIX}", file_name(epoch)));
    let header = Header::new(epoch, body);
    debug_assert_eq!(
        u32::from_le(header.crc),
        header.compute_crc(body),
        "header crc"
    );

    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let mut file = File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(bytemuck::bytes_of(&header))
        .and_then(|()| file.write_all(body))
        .and_then(|()| file.sync_all())
        .map_err(io(&tmp))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(io(&path))?;
    sync_dir(dir)?;
    Ok(path)
}

/// The newest checkpoint in `dir` whose CRC is good; older ones are tried when the newest is
/// bad (with a warning). `None` when there is none.
pub fn load_newest(dir: &Path) -> Result<Option<Loaded>, Error> {
    for (epoch, path) in list(dir)? {
        match read_checked(&path, epoch) {
            Ok(loaded) => return Ok(Some(loaded)),
            Err(e) => tracing::warn!(
                path = %path.display(),
                error = %e,
                "skipping unusable checkpoint, trying the one before it"
            ),
        }
    }
    Ok(None)
}

/// Deletes all but the newest `keep` checkpoint files (and stray temp files).
///
/// Files are ranked by the epoch in their names, not checked: call it right after a
/// successful [`write()`], so the newest file is the one just made durable. `keep` must be at
/// least 1 (the configuration guarantees it).
pub fn prune(dir: &Path, keep: usize) -> Result<(), Error> {
    assert!(keep > 0, "prune must keep at least the newest checkpoint");
    let mut doomed: Vec<PathBuf> = list(dir)?.into_iter().skip(keep).map(|(_, p)| p).collect();
    doomed.extend(temp_files(dir)?);
    for path in doomed {
        match fs::remove_file(&path) {
            Ok(()) => tracing::debug!(path = %path.display(), "pruned checkpoint file"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(Error::Io { path, source }),
        }
    }
    // No directory fsync: a deleted file that reappears after a crash is only pruned again.
    Ok(())
}

/// Checkpoint files in `dir`, newest epoch first. A missing directory has none.
pub fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, Error> {
    let mut found: Vec<(u64, PathBuf)> = dir_entries(dir)?
        .into_iter()
        .filter_map(|(name, path)| parse_file_name(&name).map(|epoch| (epoch, path)))
        .collect();
    found.sort_by_key(|(epoch, _)| std::cmp::Reverse(*epoch));
    Ok(found)
}

fn temp_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    Ok(dir_entries(dir)?
        .into_iter()
        .filter(|(name, _)| name.ends_with(TMP_SUFFIX))
        .map(|(_, path)| path)
        .collect())
}

/// `(file name, path)` of every entry with a UTF-8 name; empty when `dir` does not exist.
fn dir_entries(dir: &Path) -> Result<Vec<(String, PathBuf)>, Error> {
    let io = |source| Error::Io {
        path: dir.to_path_buf(),
        source,
    };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io)?;
        if let Ok(name) = entry.file_name().into_string() {
            out.push((name, entry.path()));
        }
    }
    Ok(out)
}

/// Reads `path` and checks it completely; any defect is an [`Error::Checksum`] naming it.
fn read_checked(path: &Path, epoch: u64) -> Result<Loaded, Error> {
    let bytes = fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let body = check(&bytes, epoch).map_err(|reason| Error::Checksum {
        path: path.to_path_buf(),
        reason,
    })?;
    Ok(Loaded {
        epoch,
        body: body.to_vec(),
        path: path.to_path_buf(),
    })
}

/// The body of a checkpoint file's bytes, or what is wrong with them. Pure.
fn check(bytes: &[u8], expected_epoch: u64) -> Result<&[u8], String> {
    if bytes.len() < HEADER_BYTES {
        return Err(format!(
            "file is {} bytes, shorter than the {HEADER_BYTES}-byte header",
            bytes.len()
        ));
    }
    let (head, body) = bytes.split_at(HEADER_BYTES);
    let header: Header = bytemuck::pod_read_unaligned(head);
    if header.magic != MAGIC {
        return Err(format!("bad magic {:02x?}", header.magic));
    }
    let version = u16::from_le(header.version);
    if version != FORMAT_VERSION {
        return Err(format!("unknown format version {version}"));
    }
    let flags = u16::from_le(header.flags);
    if flags != 0 {
        return Err(format!("unknown flags {flags:#06x}"));
    }
    let body_bytes = u64::from_le(header.body_bytes);
    if body_bytes != body.len() as u64 {
        return Err(format!(
            "header says {body_bytes} body bytes, file holds {} (truncated or extended)",
            body.len()
        ));
    }
    let stored = u32::from_le(header.crc);
    let computed = header.compute_crc(body);
    if stored != computed {
        return Err(format!(
            "crc mismatch: stored {stored:#010x}, computed {computed:#010x}"
        ));
    }
    let epoch = u64::from_le(header.epoch);
    if epoch != expected_epoch {
        return Err(format!(
            "header epoch {epoch} does not match the file name's {expected_epoch}"
        ));
    }
    Ok(body)
}

/// Creates `dir` if missing; a new directory's entry is made durable by fsyncing its parent.
fn create_dir_durably(dir: &Path) -> Result<(), Error> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    fn corrupt(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
        let mut bytes = fs::read(path).unwrap();
        f(&mut bytes);
        fs::write(path, bytes).unwrap();
    }

    #[test]
    fn written_checkpoint_loads_back_with_its_body() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("checkpoint");
        let path = write(&dir, 7, b"hello body").unwrap();
        assert_eq!(path, dir.join("ckpt-000000000007.bin"));
        assert_eq!(fs::metadata(&path).unwrap().len(), HEADER_BYTES as u64 + 10);
        let loaded = load_newest(&dir).unwrap().unwrap();
        assert_eq!(loaded.epoch, 7);
        assert_eq!(loaded.body, b"hello body");
        assert_eq!(loaded.path, path);
        assert_eq!(names(&dir), vec!["ckpt-000000000007.bin"]);
    }

    #[test]
    fn empty_body_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), 1, b"").unwrap();
        let loaded = load_newest(tmp.path()).unwrap().unwrap();
        assert_eq!((loaded.epoch, loaded.body.len()), (1, 0));
    }

    #[test]
    fn newest_is_chosen_by_epoch_not_by_name_order_or_time() {
        let tmp = tempfile::tempdir().unwrap();
        for epoch in [3, 1_000_000_000_000, 20] {
            write(tmp.path(), epoch, format!("body {epoch}").as_bytes()).unwrap();
        }
        let loaded = load_newest(tmp.path()).unwrap().unwrap();
        assert_eq!(loaded.epoch, 1_000_000_000_000);
        assert_eq!(loaded.body, b"body 1000000000000");
    }

    #[test]
    fn missing_or_empty_directory_has_no_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(load_newest(&tmp.path().join("nope")).unwrap().is_none());
        assert!(load_newest(tmp.path()).unwrap().is_none());
        prune(&tmp.path().join("nope"), 1).unwrap();
    }

    #[test]
    fn bit_flip_in_newest_body_falls_back_to_previous() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), 1, b"first").unwrap();
        let newest = write(tmp.path(), 2, b"second").unwrap();
        corrupt(&newest, |b| *b.last_mut().unwrap() ^= 0x01);
        let loaded = load_newest(tmp.path()).unwrap().unwrap();
        assert_eq!((loaded.epoch, loaded.body.as_slice()), (1, &b"first"[..]));
    }

    #[test]
    fn bit_flip_in_any_header_byte_makes_the_file_unusable() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), 1, b"first").unwrap();
        let newest = write(tmp.path(), 2, b"second").unwrap();
        let good = fs::read(&newest).unwrap();
        for i in 0..HEADER_BYTES {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            assert!(
                check(&bad, 2).is_err(),
                "flip in header byte {i} went unnoticed"
            );
            fs::write(&newest, &bad).unwrap();
            assert_eq!(
                load_newest(tmp.path()).unwrap().unwrap().epoch,
                1,
                "byte {i}"
            );
        }
    }

    #[test]
    fn truncated_newest_falls_back_to_previous() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), 1, b"first").unwrap();
        let newest = write(tmp.path(), 2, b"second body").unwrap();
        let full = fs::read(&newest).unwrap();
        for len in [0, 1, HEADER_BYTES - 1, HEADER_BYTES, full.len() - 1] {
            fs::write(&newest, &full[..len]).unwrap();
            let loaded = load_newest(tmp.path()).unwrap().unwrap();
            assert_eq!((loaded.epoch, loaded.body.as_slice()), (1, &b"first"[..]));
        }
    }

    #[test]
    fn extended_file_is_unusable() {
        let tmp = tempfile::tempdir().unwrap();
        let path = write(tmp.path(), 4, b"body").unwrap();
        corrupt(&path, |b| b.extend_from_slice(b"junk"));
        assert!(load_newest(tmp.path()).unwrap().is_none());
    }

    #[test]
    fn renamed_file_whose_epoch_disagrees_is_unusable() {
        let tmp = tempfile::tempdir().unwrap();
        let path = write(tmp.path(), 4, b"body").unwrap();
        fs::rename(&path, tmp.path().join(file_name(5))).unwrap();
        assert!(load_newest(tmp.path()).unwrap().is_none());
    }

    #[test]
    fn all_corrupt_gives_none() {
        let tmp = tempfile::tempdir().unwrap();
        let a = write(tmp.path(), 1, b"a").unwrap();
        let b = write(tmp.path(), 2, b"b").unwrap();
        corrupt(&a, |v| v[0] ^= 0xff);
        corrupt(&b, |v| v.truncate(5));
        assert!(load_newest(tmp.path()).unwrap().is_none());
    }

    #[test]
    fn temp_files_are_never_loaded() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), 1, b"committed").unwrap();
        // A complete, valid file that was never renamed: a crash between fsync and rename.
        let newer = write(tmp.path(), 2, b"uncommitted").unwrap();
        fs::rename(&newer, tmp.path().join("ckpt-000000000002.bin.tmp")).unwrap();
        let loaded = load_newest(tmp.path()).unwrap().unwrap();
        assert_eq!(loaded.epoch, 1);
        let only_tmp = tempfile::tempdir().unwrap();
        fs::write(only_tmp.path().join("ckpt-000000000009.bin.tmp"), b"x").unwrap();
        assert!(load_newest(only_tmp.path()).unwrap().is_none());
    }

    #[test]
    fn prune_keeps_the_newest_n_and_removes_temp_files() {
        let tmp = tempfile::tempdir().unwrap();
        for epoch in 1..=5 {
            write(tmp.path(), epoch, b"x").unwrap();
        }
        fs::write(tmp.path().join("ckpt-000000000006.bin.tmp"), b"partial").unwrap();
        fs::write(tmp.path().join("notes.txt"), b"not ours").unwrap();
        prune(tmp.path(), 2).unwrap();
        assert_eq!(
            names(tmp.path()),
            vec![
                "ckpt-000000000004.bin",
                "ckpt-000000000005.bin",
                "notes.txt"
            ]
        );
        prune(tmp.path(), 10).unwrap();
        assert_eq!(names(tmp.path()).len(), 3);
        assert_eq!(load_newest(tmp.path()).unwrap().unwrap().epoch, 5);
    }

    #[test]
    fn file_names_parse_only_when_exact() {
        assert_eq!(parse_file_name(&file_name(42)), Some(42));
        assert_eq!(parse_file_name("ckpt-000000000042.bin.tmp"), None);
        assert_eq!(parse_file_name("ckpt-.bin"), None);
        assert_eq!(parse_file_name("ckpt-+1.bin"), None);
        assert_eq!(parse_file_name("ckpt-99999999999999999999999.bin"), None);
        assert_eq!(parse_file_name("xckpt-000000000042.bin"), None);
    }
}
