//! Reading a record by position, from any thread (see the module doc of `results`).

#![forbid(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{Cursor, Cursors, SegmentFile, list_segments};

/// Bytes read at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Reads the rows of one record from a position on, following it as it grows.
#[derive(Debug)]
pub struct RecordReader {
    dir: PathBuf,
    /// Position of the next row.
    position: u64,
    /// Registered with the record's cursors, when it was opened with them.
    cursor: Option<Cursor>,
    /// The segment holding `position`: its base, its file, and whether a newer one exists
    /// (then its end is final).
    segment: Option<(u64, File)>,
    /// Bytes from `position` on, read ahead.
    buf: Vec<u8>,
    /// Bytes of `buf` before `position` (the rows already returned).
    consumed: usize,
    /// Bytes of rows skipped because retention had deleted them.
    skipped: u64,
}

impl RecordReader {
    /// A reader of the record in `dir` from `position` (0: from the oldest row kept). With
    /// `cursors`, retention keeps what this reader has not read yet.
    pub fn open(dir: &Path, position: u64, cursors: Option<&Cursors>) -> RecordReader {
        RecordReader {
            dir: dir.to_path_buf(),
            position,
            cursor: cursors.map(|c| c.register(position)),
            segment: None,
            buf: Vec::new(),
            consumed: 0,
            skipped: 0,
        }
    }

    /// Position of the next row: everything before it has been returned.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Bytes of rows this reader never saw because retention deleted them first.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The next whole row (without its newline) and its position, or `None` when the reader
    /// is at the end of what is written (call again later to follow).
    pub fn next_line(&mut self) -> io::Result<Option<(u64, &[u8])>> {
        loop {
            let pending = &self.buf[self.consumed..];
            if let Some(i) = pending.iter().position(|&b| b == b'\n') {
                let at = self.position;
                let start = self.consumed;
                self.consumed += i + 1;
                self.position += i as u64 + 1;
                if let Some(c) = &self.cursor {
                    c.set(self.position);
                }
                return Ok(Some((at, &self.buf[start..start + i])));
            }
            if !self.read_more()? {
                return Ok(None);
            }
        }
    }

    /// Reads more bytes after what is buffered; false when there are none yet.
    fn read_more(&mut self) -> io::Result<bool> {
        self.buf.drain(..self.consumed);
        self.consumed = 0;
        if self.segment.is_none() && !self.find_segment()? {
            return Ok(false);
        }
        let buffered_end = self.position + self.buf.len() as u64;
        let Some((base, file)) = &self.segment else {
            return Ok(false);
        };
        let old = self.buf.len();
        self.buf.resize(old + READ_CHUNK_BYTES, 0);
        let n = loop {
            match file.read_at(&mut self.buf[old..], buffered_end - base) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.buf.truncate(old);
                    return Err(e);
                }
            }
        };
        self.buf.truncate(old + n);
        if n > 0 {
            return Ok(true);
        }
        // The end of this segment: a newer one means it is sealed, at a row boundary.
        let next = self.next_segment(*base)?;
        match next {
            Some(next) if self.buf.is_empty() => {
                if next.base > self.position {
                    self.skipped += next.base - self.position;
                    self.position = next.base;
                }
                self.segment = Some((next.base, File::open(&next.path)?));
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Opens the segment holding `position` (the oldest one when retention deleted it).
    fn find_segment(&mut self) -> io::Result<bool> {
        let segments = list_segments(&self.dir)?;
        let Some(first) = segments.first() else {
            return Ok(false);
        };
        if self.position < first.base {
            self.skipped += first.base - self.position;
            self.position = first.base;
            self.buf.clear();
        }
        let holder = segments
            .iter()
            .rev()
            .find(|s| s.base <= self.position)
            .expect("the first segment starts at or before the position");
        match File::open(&holder.path) {
            Ok(file) => {
                self.segment = Some((holder.base, file));
                Ok(true)
            }
            // Deleted by retention since the listing: look again next time.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn next_segment(&self, base: u64) -> io::Result<Option<SegmentFile>> {
        Ok(list_segments(&self.dir)?
            .into_iter()
            .find(|s| s.base > base))
    }
}

/// Feeds every row of `readers` to `row`, reader by reader, until `stop` is set, waiting
/// `poll` whenever none had a new row: the loop of a thread that keeps a view of records
/// (the alerts and experiments boards).
pub fn tail_rows(
    mut readers: Vec<RecordReader>,
    stop: &std::sync::atomic::AtomicBool,
    poll: std::time::Duration,
    mut row: impl FnMut(&[u8]),
) {
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let mut any = false;
        for reader in &mut readers {
            while let Ok(Some((_, line))) = reader.next_line() {
                any = true;
                row(line);
            }
        }
        if !any {
            std::thread::sleep(poll);
        }
    }
}
