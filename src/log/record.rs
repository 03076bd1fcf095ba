//! The record batch header and the checks a batch must pass to count as data. Pure functions
//! over bytes: the appender, recovery, the reader and verify all judge batches here.

#![forbid(unsafe_code)]

use std::fmt;
use std::mem::{align_of, offset_of, size_of};

use bytemuck::{Pod, Zeroable};

use super::{BATCH_PAYLOAD_BYTES_MAX, BatchInfo, Offset};

/// `"SLCB"` read as a little-endian u32.
pub(crate) const MAGIC: u32 = u32::from_le_bytes(*b"SLCB");
/// The only version written and read.
pub(crate) const VERSION: u16 = 1;
/// Bytes of a [`BatchHeader`].
pub(crate) const HEADER_BYTES: usize = size_of::<BatchHeader>();
/// Batches start at multiples of this.
pub(crate) const BATCH_ALIGN_BYTES: u64 = 8;
/// Bytes of the length prefix of each line in a payload.
pub(crate) const LINE_PREFIX_BYTES: usize = 4;
/// The CRC covers the header from here on (everything after the crc field), then the payload.
const CRC_START: usize = offset_of!(BatchHeader, payload_bytes);

/// The fixed header in front of every record batch (layout drawn in the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub(crate) struct BatchHeader {
    pub(crate) magic: u32,
    pub(crate) version: u16,
    pub(crate) flags: u16,
    pub(crate) crc: u32,
    pub(crate) payload_bytes: u32,
    pub(crate) first_offset: u64,
    pub(crate) ingest_time_ms: i64,
    pub(crate) count: u32,
    pub(crate) listener_id: u16,
    pub(crate) padding: u16,
}

const _: () = assert!(
    cfg!(target_endian = "little"),
    "the on-disk format is little-endian"
);
const _: () = assert!(HEADER_BYTES == 40);
const _: () = assert!(align_of::<BatchHeader>() == 8);
const _: () = assert!((HEADER_BYTES as u64).is_multiple_of(BATCH_ALIGN_BYTES));
const _: () = assert!(offset_of!(BatchHeader, crc) == 8);
const _: () = assert!(CRC_START == 12);
const _: () = assert!(offset_of!(BatchHeader, first_offset) == 16);
const _: () = assert!(offset_of!(BatchHeader, padding) == 38);

impl BatchHeader {
    /// A header for `payload`, its CRC computed.
    pub(crate) fn new(info: &BatchInfo, payload: &[u8]) -> BatchHeader {
        let payload_bytes = u32::try_from(payload.len()).expect("payload is bounded by the cap");
        let mut header = BatchHeader {
            magic: MAGIC,
            version: VERSION,
            flags: 0,
            crc: 0,
            payload_bytes,
            first_offset: info.first_offset.0,
            ingest_time_ms: info.ingest_time_ms,
            count: info.count,
            listener_id: info.listener_id,
            padding: 0,
        };
        header.crc = header.compute_crc(payload);
        header
    }

    /// CRC-32 (IEEE) of the header after the crc field, then the payload.
    pub(crate) fn compute_crc(&self, payload: &[u8]) -> u32 {
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&bytemuck::bytes_of(self)[CRC_START..]);
        hasher.update(payload);
        hasher.finalize()
    }

    /// What the header says, as the public batch description.
    pub(crate) fn info(&self) -> BatchInfo {
        BatchInfo {
            first_offset: Offset(self.first_offset),
            count: self.count,
            listener_id: self.listener_id,
            ingest_time_ms: self.ingest_time_ms,
        }
    }

    /// Offset after the batch's last line.
    pub(crate) fn end_offset(&self) -> Offset {
        Offset(self.first_offset + u64::from(self.count))
    }

    /// Bytes the whole batch takes in the segment, padding included.
    pub(crate) fn batch_bytes(&self) -> u64 {
        batch_bytes(self.payload_bytes)
    }
}

/// Bytes a batch with `payload_bytes` of payload takes in a segment, padding included.
pub(crate) fn batch_bytes(payload_bytes: u32) -> u64 {
    (HEADER_BYTES as u64 + u64::from(payload_bytes)).next_multiple_of(BATCH_ALIGN_BYTES)
}

/// Why a batch is not valid data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Defect {
    /// The magic is neither ours nor zero.
    Magic(u32),
    /// A version this build does not read.
    Version(u16),
    /// Flags this version does not define.
    Flags(u16),
    /// The count is 0 or more than the payload could hold.
    Count { count: u32, payload_bytes: u32 },
    /// The payload is longer than any batch may be.
    PayloadTooLong(u32),
    /// The batch runs past the end of the segment (or of the readable file).
    PastEnd {
        batch_end_pos: u64,
        segment_bytes: u64,
    },
    /// The stored and computed CRCs differ.
    Crc { stored: u32, computed: u32 },
    /// The batch does not start at the offset after the batch before it.
    Offset { expected: Offset, found: Offset },
    /// The line lengths do not add up to the payload and count.
    Framing,
}

impl fmt::Display for Defect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Defect::Magic(m) => write!(f, "bad magic {m:#010x}"),
            Defect::Version(v) => write!(f, "unsupported version {v}"),
            Defect::Flags(x) => write!(f, "unknown flags {x:#06x}"),
            Defect::Count {
                count,
                payload_bytes,
            } => write!(
                f,
                "line count {count} impossible in {payload_bytes} payload bytes"
            ),
            Defect::PayloadTooLong(n) => write!(f, "payload of {n} bytes exceeds the batch cap"),
            Defect::PastEnd {
                batch_end_pos,
                segment_bytes,
            } => write!(
                f,
                "batch ends at {batch_end_pos}, past the end of the segment ({segment_bytes})"
            ),
            Defect::Crc { stored, computed } => {
                write!(
                    f,
                    "crc mismatch (stored {stored:#010x}, computed {computed:#010x})"
                )
            }
            Defect::Offset { expected, found } => {
                write!(f, "first offset {found}, expected {expected}")
            }
            Defect::Framing => write!(f, "line lengths do not match the payload"),
        }
    }
}

/// Decodes the header at the start of `bytes` (at least [`HEADER_BYTES`] long) and checks
/// what can be checked without the payload. `Ok(None)` on a zero magic: the end of data.
pub(crate) fn decode_header(bytes: &[u8]) -> Result<Option<BatchHeader>, Defect> {
    let header: BatchHeader = bytemuck::pod_read_unaligned(&bytes[..HEADER_BYTES]);
    if header.magic == 0 {
        return Ok(None);
    }
    if header.magic != MAGIC {
        return Err(Defect::Magic(header.magic));
    }
    if header.version != VERSION {
        return Err(Defect::Version(header.version));
    }
    if header.flags != 0 {
        return Err(Defect::Flags(header.flags));
    }
    if header.payload_bytes > BATCH_PAYLOAD_BYTES_MAX {
        return Err(Defect::PayloadTooLong(header.payload_bytes));
    }
    let lines_max = header.payload_bytes / LINE_PREFIX_BYTES as u32;
    if header.count == 0 || header.count > lines_max {
        return Err(Defect::Count {
            count: header.count,
            payload_bytes: header.payload_bytes,
        });
    }
    Ok(Some(header))
}

/// Which first offset a batch may have where it is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expect {
    /// Exactly this one: the batch follows a valid batch (or starts its segment).
    Exactly(Offset),
    /// This one or any later one: the batch follows a damaged stretch whose lines are lost,
    /// so it only has to keep offsets rising.
    AtLeast(Offset),
}

impl Expect {
    fn admits(self, found: Offset) -> bool {
        match self {
            Expect::Exactly(o) => found == o,
            Expect::AtLeast(o) => found >= o,
        }
    }

    fn offset(self) -> Offset {
        match self {
            Expect::Exactly(o) | Expect::AtLeast(o) => o,
        }
    }
}

/// Checks a decoded header against its payload (`rest` holds at least the payload and
/// padding that follow the header) and against the offset expected here. The padding is
/// outside the CRC and carries no data, so whatever it holds does not invalidate a batch
/// (it is never read; the appender writes zeros there).
pub(crate) fn check_batch(
    header: &BatchHeader,
    rest: &[u8],
    expected: Expect,
) -> Result<(), Defect> {
    let payload_bytes = header.payload_bytes as usize;
    let payload = &rest[..payload_bytes];
    let computed = header.compute_crc(payload);
    if computed != header.crc {
        return Err(Defect::Crc {
            stored: header.crc,
            computed,
        });
    }
    if !expected.admits(Offset(header.first_offset)) {
        return Err(Defect::Offset {
            expected: expected.offset(),
            found: Offset(header.first_offset),
        });
    }
    if framed_lines(payload) != Some(header.count) {
        return Err(Defect::Framing);
    }
    Ok(())
}

/// The number of lines when `payload` is exactly a sequence of length-prefixed lines.
fn framed_lines(payload: &[u8]) -> Option<u32> {
    let mut rest = payload;
    let mut count = 0u32;
    while !rest.is_empty() {
        let (_, after) = split_line(rest)?;
        rest = after;
        count = count.checked_add(1)?;
    }
    Some(count)
}

/// Splits the first length-prefixed line off `payload`; `None` if it is malformed.
fn split_line(payload: &[u8]) -> Option<(&[u8], &[u8])> {
    let (prefix, rest) = payload.split_first_chunk::<LINE_PREFIX_BYTES>()?;
    let len = usize::try_from(u32::from_le_bytes(*prefix)).ok()?;
    (len <= rest.len()).then(|| rest.split_at(len))
}

/// What checking the bytes at one position of a segment found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// A valid batch.
    Batch(BatchHeader),
    /// The end of data: a zero magic, or no room left for a header.
    End,
    /// An invalid batch.
    Defect(Defect),
}

/// Checks the batch at `pos` of `segment` (the whole segment in memory), which must start
/// at offset `expected`.
pub(crate) fn check_at(segment: &[u8], pos: u64, expected: Offset) -> Step {
    check_at_with(segment, pos, Expect::Exactly(expected))
}

/// [`check_at`] under any [`Expect`] rule.
pub(crate) fn check_at_with(segment: &[u8], pos: u64, expected: Expect) -> Step {
    let segment_bytes = segment.len() as u64;
    if segment_bytes.saturating_sub(pos) < HEADER_BYTES as u64 {
        return Step::End;
    }
    let at = &segment[pos as usize..];
    let header = match decode_header(at) {
        Ok(Some(h)) => h,
        Ok(None) => return Step::End,
        Err(d) => return Step::Defect(d),
    };
    let batch_end_pos = pos + header.batch_bytes();
    if batch_end_pos > segment_bytes {
        return Step::Defect(Defect::PastEnd {
            batch_end_pos,
            segment_bytes,
        });
    }
    match check_batch(&header, &at[HEADER_BYTES..], expected) {
        Ok(()) => Step::Batch(header),
        Err(d) => Step::Defect(d),
    }
}

/// The lines of a batch payload. Reads defensively: a malformed length ends the iteration,
/// whatever the bytes.
#[derive(Debug, Clone)]
pub struct Lines<'a> {
    payload: &'a [u8],
}

impl<'a> Lines<'a> {
    /// The lines of `payload` (length-prefixed lines, as stored in a batch).
    pub fn new(payload: &'a [u8]) -> Lines<'a> {
        Lines { payload }
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        match split_line(self.payload) {
            Some((line, rest)) => {
                self.payload = rest;
                Some(line)
            }
            None => {
                self.payload = &[];
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn payload_of(lines: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for line in lines {
            out.extend_from_slice(&(line.len() as u32).to_le_bytes());
            out.extend_from_slice(line);
        }
        out
    }

    fn segment_with(header: &BatchHeader, payload: &[u8]) -> Vec<u8> {
        let mut seg = vec![0u8; 4096];
        seg[..HEADER_BYTES].copy_from_slice(bytemuck::bytes_of(header));
        seg[HEADER_BYTES..HEADER_BYTES + payload.len()].copy_from_slice(payload);
        seg
    }

    fn info(first: u64, count: u32) -> BatchInfo {
        BatchInfo {
            first_offset: Offset(first),
            count,
            listener_id: 3,
            ingest_time_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn header_is_40_bytes_8_aligned_and_magic_spells_slcb() {
        assert_eq!(HEADER_BYTES, 40);
        assert_eq!(align_of::<BatchHeader>(), 8);
        let h = BatchHeader::new(&info(0, 1), &payload_of(&[b"x"]));
        assert_eq!(&bytemuck::bytes_of(&h)[..4], b"SLCB");
        assert_eq!(batch_bytes(5), 48);
        assert_eq!(batch_bytes(8), 48);
        assert_eq!(batch_bytes(9), 56);
    }

    #[test]
    fn a_valid_batch_checks_out_and_a_zero_magic_is_the_end() {
        let payload = payload_of(&[b"a b", b"", b"last"]);
        let h = BatchHeader::new(&info(7, 3), &payload);
        let seg = segment_with(&h, &payload);
        assert_eq!(check_at(&seg, 0, Offset(7)), Step::Batch(h));
        assert_eq!(check_at(&seg, h.batch_bytes(), Offset(10)), Step::End);
        assert_eq!(check_at(&seg, 4096 - 8, Offset(10)), Step::End);
        let lines: Vec<&[u8]> = Lines::new(&payload).collect();
        assert_eq!(lines, vec![&b"a b"[..], b"", b"last"]);
    }

    #[test]
    fn a_batch_at_the_wrong_offset_is_a_defect() {
        let payload = payload_of(&[b"a"]);
        let h = BatchHeader::new(&info(7, 1), &payload);
        let seg = segment_with(&h, &payload);
        assert!(matches!(
            check_at(&seg, 0, Offset(6)),
            Step::Defect(Defect::Offset { .. })
        ));
    }

    #[test]
    fn a_count_that_disagrees_with_the_framing_is_a_defect() {
        let payload = payload_of(&[b"a", b"b"]);
        let h = BatchHeader::new(&info(0, 1), &payload);
        let seg = segment_with(&h, &payload);
        assert_eq!(check_at(&seg, 0, Offset(0)), Step::Defect(Defect::Framing));
    }

    #[test]
    fn junk_in_the_padding_leaves_the_batch_valid() {
        let payload = payload_of(&[b"a"]);
        let h = BatchHeader::new(&info(0, 1), &payload);
        let mut seg = segment_with(&h, &payload);
        let padding = HEADER_BYTES + payload.len()..h.batch_bytes() as usize;
        assert!(!padding.is_empty());
        seg[padding].fill(0xa5);
        assert_eq!(check_at(&seg, 0, Offset(0)), Step::Batch(h));
    }

    #[test]
    fn after_damage_a_batch_may_start_at_any_later_offset_but_never_an_earlier_one() {
        let payload = payload_of(&[b"a"]);
        let h = BatchHeader::new(&info(7, 1), &payload);
        let seg = segment_with(&h, &payload);
        assert_eq!(
            check_at_with(&seg, 0, Expect::AtLeast(Offset(3))),
            Step::Batch(h)
        );
        assert_eq!(
            check_at_with(&seg, 0, Expect::AtLeast(Offset(7))),
            Step::Batch(h)
        );
        assert!(matches!(
            check_at_with(&seg, 0, Expect::AtLeast(Offset(8))),
            Step::Defect(Defect::Offset { .. })
        ));
        assert!(matches!(
            check_at(&seg, 0, Offset(3)),
            Step::Defect(Defect::Offset { .. })
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn lines_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let total: usize = Lines::new(&bytes).map(|l| l.len() + 4).sum();
            prop_assert!(total <= bytes.len());
        }

        #[test]
        fn check_at_never_panics_on_arbitrary_bytes(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            pos in 0u64..600,
        ) {
            let _ = check_at(&bytes, pos, Offset(0));
        }

        #[test]
        fn any_flipped_bit_of_header_or_payload_is_a_defect(
            lines in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..8),
            bit in any::<prop::sample::Index>(),
        ) {
            let refs: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
            let payload = payload_of(&refs);
            let h = BatchHeader::new(&info(0, refs.len() as u32), &payload);
            let mut seg = segment_with(&h, &payload);
            let bits = (HEADER_BYTES + payload.len()) * 8;
            let bit = bit.index(bits);
            seg[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(matches!(check_at(&seg, 0, Offset(0)), Step::Defect(_)));
        }
    }
}
