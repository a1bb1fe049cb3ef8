//! The directory of a zip archive as `torch.save` writes it: stored (uncompressed) entries,
//! zip64 where sizes need it. Every size and offset the file claims is checked against the
//! file's real size, in checked arithmetic, before anything is allocated from it.
//!
//! Compressed entries are refused: `torch.save` never writes them, and refusing them removes
//! every decompression bomb at once. Encrypted and multi-disk archives are refused, and so are
//! duplicate names and entries whose bytes overlap, so that each byte of the file belongs to at
//! most one entry and a file has one meaning.

use super::{MAX_DIRECTORY_BYTES, Source, escape};
use std::collections::HashSet;

/// One entry: where its bytes lie.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// As written (bytes that are not UTF-8 replaced); escape it for messages.
    pub name: String,
    /// Where its local header starts.
    pub start: u64,
    /// Where its data starts.
    pub offset: u64,
    pub len: u64,
    pub crc: u32,
}

const EOCD: u32 = 0x0605_4b50;
const EOCD64: u32 = 0x0606_4b50;
const LOCATOR64: u32 = 0x0706_4b50;
const CENTRAL: u32 = 0x0201_4b50;
const LOCAL: u32 = 0x0403_4b50;

/// Little-endian fields of a record, read in order; running past its end is an error.
struct Fields<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Fields<'a> {
    fn new(b: &'a [u8]) -> Self {
        Self { b, at: 0 }
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        let end = end.ok_or("the zip central directory is truncated")?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(
            self.bytes(2)?.try_into().unwrap_or([0; 2]),
        ))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.bytes(4)?.try_into().unwrap_or([0; 4]),
        ))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.bytes(8)?.try_into().unwrap_or([0; 8]),
        ))
    }
}

fn read<S: Source + ?Sized>(src: &S, offset: u64, len: u64, what: &str) -> Result<Vec<u8>, String> {
    let end = offset.checked_add(len).filter(|&e| e <= src.size());
    if end.is_none() {
        return Err(format!(
            "the zip {what} at byte {offset} ({len} bytes) lies past the end of the file ({} \
             bytes): the file is truncated or damaged",
            src.size()
        ));
    }
    let mut buf =
        vec![0u8; usize::try_from(len).map_err(|_| format!("the zip {what} is too large"))?];
    src.read_at(offset, &mut buf)?;
    Ok(buf)
}

/// Where the central directory lies, and how many entries it claims.
struct Directory {
    offset: u64,
    len: u64,
    entries: u64,
}

fn directory<S: Source + ?Sized>(src: &S) -> Result<(Directory, u64), String> {
    let size = src.size();
    // The end record is the last 22 bytes, before a comment of up to 64 KiB.
    let tail_len = size.min(22 + 0xffff);
    let tail = read(src, size - tail_len, tail_len, "end")?;
    let eocd = (0..tail.len().saturating_sub(21))
        .rev()
        .find(|&i| {
            tail[i..i + 4] == EOCD.to_le_bytes()
                && (i + 22 + usize::from(u16::from_le_bytes([tail[i + 20], tail[i + 21]])))
                    == tail.len()
        })
        .ok_or("not a zip archive: there is no end-of-directory record (truncated?)")?;
    let at = size - tail_len + eocd as u64;
    let mut f = Fields::new(&tail[eocd + 4..]);
    let (disk, cd_disk) = (f.u16()?, f.u16()?);
    let (_, total) = (f.u16()?, f.u16()?);
    let (len, offset) = (f.u32()?, f.u32()?);
    if disk != 0 || cd_disk != 0 {
        return Err("a multi-disk zip archive".into());
    }
    if total != 0xffff && len != u32::MAX && offset != u32::MAX {
        let d = Directory {
            offset: offset.into(),
            len: len.into(),
            entries: total.into(),
        };
        return Ok((d, at));
    }
    // zip64: a locator just before the end record points at the zip64 end record.
    let locator = read(
        src,
        at.checked_sub(20).ok_or("a truncated zip64 archive")?,
        20,
        "zip64 locator",
    )?;
    let mut f = Fields::new(&locator);
    if f.u32()? != LOCATOR64 {
        return Err("a zip64 archive without its zip64 locator".into());
    }
    f.u32()?;
    let record_at = f.u64()?;
    let record = read(src, record_at, 56, "zip64 end record")?;
    let mut f = Fields::new(&record);
    if f.u32()? != EOCD64 {
        return Err("the zip64 end record is missing".into());
    }
    f.bytes(20)?; // record size, versions, disk numbers
    f.u64()?; // entries on this disk
    let d = Directory {
        entries: f.u64()?,
        len: f.u64()?,
        offset: f.u64()?,
    };
    Ok((d, record_at))
}

/// The archive's entries, in directory order, checked as the module says.
pub fn entries<S: Source + ?Sized>(src: &S) -> Result<Vec<Entry>, String> {
    let (dir, end) = directory(src)?;
    if dir.offset.checked_add(dir.len).is_none_or(|e| e > end) {
        return Err(format!(
            "the zip central directory (byte {}, {} bytes) lies past its end record: the file \
             is truncated or damaged",
            dir.offset, dir.len
        ));
    }
    if dir.len > MAX_DIRECTORY_BYTES {
        return Err(format!(
            "the zip central directory is {} bytes; the limit is {MAX_DIRECTORY_BYTES}",
            dir.len
        ));
    }
    // Each entry takes at least 46 bytes, so the count cannot exceed what the bytes hold.
    if dir.entries > dir.len / 46 {
        return Err(format!(
            "the zip directory claims {} entries in {} bytes",
            dir.entries, dir.len
        ));
    }
    let cd = read(src, dir.offset, dir.len, "central directory")?;
    let mut f = Fields::new(&cd);
    let mut out = Vec::with_capacity(dir.entries as usize);
    let mut names = HashSet::new();
    for _ in 0..dir.entries {
        let (e, raw) = entry(src, &mut f, dir.offset)?;
        if !names.insert(raw) {
            return Err(format!("the zip has two entries named {}", escape(&e.name)));
        }
        out.push(e);
    }
    // No two entries' bytes (local header and data) may overlap.
    let mut spans: Vec<(u64, u64, &str)> = out
        .iter()
        .map(|e| (e.start, e.offset + e.len, e.name.as_str()))
        .collect();
    spans.sort_unstable();
    if let Some(w) = spans.windows(2).find(|w| w[1].0 < w[0].1) {
        return Err(format!(
            "the zip entries {} and {} overlap in the file",
            escape(w[0].2),
            escape(w[1].2)
        ));
    }
    Ok(out)
}

/// The next entry of the directory, and its raw name.
fn entry<'a, S: Source + ?Sized>(
    src: &S,
    f: &mut Fields<'a>,
    data_end: u64,
) -> Result<(Entry, &'a [u8]), String> {
    if f.u32()? != CENTRAL {
        return Err("a damaged zip central directory".into());
    }
    f.bytes(4)?; // versions
    let flags = f.u16()?;
    let method = f.u16()?;
    f.bytes(4)?; // time, date
    let crc = f.u32()?;
    let (csize, usize_) = (f.u32()?, f.u32()?);
    let (name_len, extra_len, comment_len) = (f.u16()?, f.u16()?, f.u16()?);
    let disk = f.u16()?;
    f.bytes(6)?; // attributes
    let local = f.u32()?;
    let raw_name = f.bytes(name_len.into())?;
    let name = String::from_utf8_lossy(raw_name).into_owned();
    let shown = escape(&name);
    let extra = f.bytes(extra_len.into())?;
    f.bytes(comment_len.into())?;
    // zip64: the fields saturated at 0xffffffff follow in the extra field, in this order.
    let (mut size, mut compressed, mut local) =
        (u64::from(usize_), u64::from(csize), u64::from(local));
    let mut x = Fields::new(extra);
    while x.at + 4 <= extra.len() {
        let (id, n) = (x.u16()?, x.u16()?);
        let body = x.bytes(n.into())?;
        if id == 1 {
            let mut z = Fields::new(body);
            for field in [&mut size, &mut compressed, &mut local] {
                if *field == u64::from(u32::MAX) {
                    *field = z
                        .u64()
                        .map_err(|_| format!("entry {shown}: a short zip64 field"))?;
                }
            }
        }
    }
    if flags & 1 != 0 || disk != 0 {
        return Err(format!("entry {shown} is encrypted or on another disk"));
    }
    if method != 0 {
        let how = match method {
            8 => "deflate",
            12 => "bzip2",
            14 => "lzma",
            93 => "zstd",
            _ => "an unknown method",
        };
        return Err(format!(
            "entry {shown} is compressed ({how}); torch.save stores entries uncompressed, and \
             compressed entries are refused"
        ));
    }
    if compressed != size {
        return Err(format!(
            "entry {shown} is stored with {compressed} bytes but claims {size}"
        ));
    }
    let header = read(src, local, 30, "local header")?;
    let mut h = Fields::new(&header);
    if h.u32()? != LOCAL {
        return Err(format!(
            "entry {shown} has no local header where the directory says"
        ));
    }
    h.bytes(22)?;
    let (n, m) = (u64::from(h.u16()?), u64::from(h.u16()?));
    if n != u64::from(name_len) || read(src, local + 30, n, "local header")? != raw_name {
        return Err(format!(
            "entry {shown} has another name in its local header"
        ));
    }
    let offset = local + 30 + n + m;
    if offset.checked_add(size).is_none_or(|e| e > data_end) {
        return Err(format!(
            "entry {shown} claims {size} bytes at byte {offset}, past the end of the file's data \
             ({data_end} bytes): the file is truncated or damaged"
        ));
    }
    let e = Entry {
        name,
        start: local,
        offset,
        len: size,
        crc,
    };
    Ok((e, raw_name))
}
