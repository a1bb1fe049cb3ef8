//! Reading a weights file into a [`Plan`]: which tensors it holds, where their bytes lie and
//! how each one views them, all checked before anything is allocated from a size the file
//! claims. Nothing here runs code from the file, calls libtorch or recurses over the file's
//! values, so any file, however crafted, ends in a plan or in a one-line refusal, with work
//! and memory bounded by the limits below and the file's size.
//!
//! Two formats, told apart by content:
//! - `torch.save`'s zip archive ([`torchzip`]): a directory of stored entries ([`zip`]),
//!   `data.pkl` (a pickle, read by a restricted machine: [`pickle`], [`value`], [`rebuild`])
//!   and one entry per storage;
//! - safetensors ([`safetensors`]): a JSON header and one buffer.
//!
//! The caller turns a plan into tensors, reading each storage once with [`read_storage`]
//! straight into the tensor's memory. The
//! module uses nothing outside itself, so the fuzz target compiles it alone.

mod pickle;
mod rebuild;
mod safetensors;
mod torchzip;
mod value;
mod view;
mod zip;

pub use view::Dtype;

use std::fmt::Write as _;

/// The largest `data.pkl` read (the pickles of real checkpoints are tens of kilobytes, with
/// optimiser state a few megabytes).
pub const MAX_PICKLE_BYTES: u64 = 16 << 20;
/// The most values a pickle may create (a ResNet-50 state dict makes about 5,000).
pub const MAX_OBJECTS: usize = 1 << 20;
/// The deepest nesting of containers in a pickle.
pub const MAX_DEPTH: u32 = 1000;
/// The most dimensions a tensor may have.
pub const MAX_DIMS: usize = 64;
/// The largest zip central directory read (about 40 bytes per entry plus its name).
pub const MAX_DIRECTORY_BYTES: u64 = 16 << 20;
/// The largest safetensors header read.
pub const MAX_HEADER_BYTES: u64 = 16 << 20;
/// Storages are read in pieces of this size (whole elements of any type), checksummed and
/// swapped while in cache.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Random access to the bytes of a weights file.
pub trait Source {
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`; an error when the file ends first.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), String>;
}

impl Source for std::fs::File {
    fn size(&self) -> u64 {
        self.metadata().map_or(0, |m| m.len())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset).map_err(|e| e.to_string())
    }
}

impl Source for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        let bytes = usize::try_from(offset)
            .ok()
            .and_then(|start| Some(start..start.checked_add(buf.len())?))
            .and_then(|range| self.get(range))
            .ok_or("the file ends early")?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

/// Why a file yields no plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The file is damaged, hostile or not what it claims; the message names what.
    Malformed(String),
    /// The file is well formed but holds no state dict; what it holds instead.
    NoStateDict(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Malformed(s) | Refusal::NoStateDict(s) => f.write_str(s),
        }
    }
}

impl From<String> for Refusal {
    fn from(s: String) -> Self {
        Refusal::Malformed(s)
    }
}

/// A run of the file's bytes that holds one storage: elements of one type, read once.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// The zip entry or the tensor it belongs to, for messages (already escaped).
    pub name: String,
    pub offset: u64,
    pub len: u64,
    pub dtype: Dtype,
    /// The zip entry's CRC-32, checked while reading.
    pub crc: Option<u32>,
    /// Elements are stored big-endian and must be swapped.
    pub big_endian: bool,
}

impl Span {
    /// Elements in the storage.
    pub fn numel(&self) -> u64 {
        self.len / self.dtype.width() as u64
    }
}

/// A tensor of the state dict: a view of one storage, proved to lie inside it and to read no
/// element twice.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub name: String,
    pub storage: usize,
    pub size: Vec<i64>,
    pub stride: Vec<i64>,
    pub offset: i64,
}

/// What a weights file holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// `PyTorch zip` or `safetensors`.
    pub format: &'static str,
    /// Where the state dict was found: `top level`, or the key it was under.
    pub location: String,
    pub storages: Vec<Span>,
    /// In the order the file gives them; names are unique.
    pub tensors: Vec<Planned>,
}

/// The formats this reader knows, by their first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    SafeTensors,
    TorchZip,
}

/// The format of a file that starts with `head`, or `None`.
pub fn sniff(head: &[u8], len: u64) -> Option<Format> {
    if head.starts_with(b"PK\x03\x04") {
        return Some(Format::TorchZip);
    }
    let header = u64::from_le_bytes(head.get(..8)?.try_into().ok()?);
    (head.get(8) == Some(&b'{') && header.checked_add(8).is_some_and(|end| end <= len))
        .then_some(Format::SafeTensors)
}

/// Reads the plan of a weights file of a known format.
pub fn plan<S: Source + ?Sized>(src: &S, format: Format) -> Result<Plan, Refusal> {
    match format {
        Format::SafeTensors => Ok(safetensors::plan(src)?),
        Format::TorchZip => torchzip::plan(src),
    }
}

/// Reads the storage's bytes into `dst` (exactly `span.len` bytes), in pieces, checking the
/// entry's CRC-32 on the way and leaving the elements little-endian.
pub fn read_storage<S: Source + ?Sized>(
    src: &S,
    span: &Span,
    dst: &mut [u8],
) -> Result<(), String> {
    if dst.len() as u64 != span.len {
        return Err(format!(
            "{}: {} bytes expected, room for {}",
            span.name,
            span.len,
            dst.len()
        ));
    }
    let width = span.dtype.width();
    let mut crc = crc32fast::Hasher::new();
    let mut done = 0;
    for piece in dst.chunks_mut(CHUNK_BYTES) {
        src.read_at(span.offset + done, piece)
            .map_err(|e| format!("{}: {e}", span.name))?;
        crc.update(piece);
        if span.big_endian && width > 1 {
            piece.chunks_exact_mut(width).for_each(<[u8]>::reverse);
        }
        done += piece.len() as u64;
    }
    match span.crc {
        Some(want) if crc.finalize() != want => Err(format!(
            "{}: its bytes fail the archive's CRC-32 check: the file is damaged (a partial \
             download or a copy error)",
            span.name
        )),
        _ => Ok(()),
    }
}

/// A name from the file, fit for a message or a log line: quotes, backslashes, control
/// characters and terminal escapes shown escaped, and at most 200 characters.
pub fn escape(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if i == 200 {
            out.push_str("...");
            break;
        }
        if c.is_control() || c == '\\' || c == '"' {
            let _ = write!(out, "{}", c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_for_messages() {
        assert_eq!(escape("fc.weight"), "fc.weight");
        assert_eq!(escape("a\nb\x1b[31m\"c\\"), "a\\nb\\u{1b}[31m\\\"c\\\\");
        assert!(escape(&"x".repeat(1000)).ends_with("..."));
    }

    #[test]
    fn safetensors_length_never_overflows() {
        let mut head = u64::MAX.to_le_bytes().to_vec();
        head.push(b'{');
        assert_eq!(sniff(&head, 100), None);
        let mut head = 10u64.to_le_bytes().to_vec();
        head.push(b'{');
        assert_eq!(sniff(&head, 18), Some(Format::SafeTensors));
        assert_eq!(sniff(b"PK\x03\x04", 4), Some(Format::TorchZip));
    }

    #[test]
    fn storages_are_swapped_and_checked() {
        let data = [1u8, 2, 3, 4, 5, 6, 7, 8];
        let span = Span {
            name: "s".into(),
            offset: 0,
            len: 8,
            dtype: Dtype::F32,
            crc: Some(crc32fast::hash(&data)),
            big_endian: true,
        };
        let mut out = [0u8; 8];
        read_storage(&data[..], &span, &mut out).unwrap();
        assert_eq!(out, [4, 3, 2, 1, 8, 7, 6, 5]);
        let damaged = Span {
            crc: Some(0),
            ..span
        };
        let e = read_storage(&data[..], &damaged, &mut out).unwrap_err();
        assert!(e.contains("CRC-32"), "{e}");
    }
}
