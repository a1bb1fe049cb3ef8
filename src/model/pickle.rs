//! Reads the archives `torch.save` writes (a zip holding `data.pkl` and one entry per storage)
//! without running any of the pickle's code.
//!
//! Training code saves much more than weights: epochs, optimiser state, hyper-parameters,
//! sometimes objects of its own classes. A restricted unpickler turns the whole pickle into a
//! tree of plain values ([`Value`]); a class it does not know becomes an opaque
//! [`Value::Object`] instead of an error, so a checkpoint's weights can be found wherever they
//! sit. Only three callables are understood: `collections.OrderedDict` (a dict),
//! `torch._utils._rebuild_tensor_v2` and `torch._utils._rebuild_parameter` (tensors, read lazily
//! from the archive's storages by [`super::archive`]).

use super::rebuild;
use std::collections::HashMap;

/// A storage of the archive: the entry `data/<key>` and its element type.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageRef {
    pub key: String,
    pub dtype: String,
}

/// A tensor as the pickle describes it: a view into a storage.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    pub storage: StorageRef,
    pub offset: i64,
    pub size: Vec<i64>,
    pub stride: Vec<i64>,
}

/// A pickled value, with everything that is not plain data kept opaque.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// A reference to a module-level name (a class or a function).
    Global(String),
    /// An instance of a class this reader does not interpret, by its qualified name.
    Object(String),
    Storage(StorageRef),
    Tensor(TensorRef),
    /// A `MARK` on the stack (never part of a finished value).
    Mark,
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A short description for messages: `dict (12 entries)`, `tensor [64, 3, 7, 7]`, ...
    pub fn kind(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(_) => "bool".into(),
            Value::Int(_) => "int".into(),
            Value::Float(_) => "float".into(),
            Value::Str(_) => "str".into(),
            Value::Bytes(_) => "bytes".into(),
            Value::List(v) => format!("list ({} items)", v.len()),
            Value::Tuple(v) => format!("tuple ({} items)", v.len()),
            Value::Dict(v) => format!("dict ({} entries)", v.len()),
            Value::Global(g) => format!("reference to {g}"),
            Value::Object(c) => format!("{c} object"),
            Value::Storage(_) => "storage".into(),
            Value::Tensor(t) => format!("tensor {:?}", t.size),
            Value::Mark => "mark".into(),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PickleError {
    #[error("the pickle ends before its STOP opcode")]
    Truncated,
    #[error("unsupported pickle opcode 0x{0:02x} at byte {1}")]
    Opcode(u8, usize),
    #[error("malformed pickle at byte {at}: {why}")]
    Malformed { at: usize, why: String },
}

/// Unpickles `data` (protocols 2 to 5, as `torch.save` writes them) into a [`Value`].
pub fn unpickle(data: &[u8]) -> Result<Value, PickleError> {
    Machine {
        data,
        pos: 0,
        stack: Vec::new(),
        memo: HashMap::new(),
    }
    .run()
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    memo: HashMap<u32, Value>,
}

impl Machine<'_> {
    fn bad(&self, why: impl Into<String>) -> PickleError {
        PickleError::Malformed {
            at: self.pos,
            why: why.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&[u8], PickleError> {
        let end = self.pos.checked_add(n).ok_or(PickleError::Truncated)?;
        let s = self.data.get(self.pos..end).ok_or(PickleError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn le<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }

    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(PickleError::Truncated)?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }

    fn string(&mut self, n: usize) -> Result<Value, PickleError> {
        let b = self.take(n)?;
        Ok(Value::Str(String::from_utf8_lossy(b).into_owned()))
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        self.stack.pop().ok_or_else(|| self.bad("stack underflow"))
    }

    fn top(&mut self) -> Result<&mut Value, PickleError> {
        let at = self.pos;
        self.stack.last_mut().ok_or(PickleError::Malformed {
            at,
            why: "stack underflow".into(),
        })
    }

    /// Everything above the topmost mark, which is removed.
    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let m = self
            .stack
            .iter()
            .rposition(|v| *v == Value::Mark)
            .ok_or_else(|| self.bad("no mark on the stack"))?;
        let items = self.stack.split_off(m + 1);
        self.stack.pop();
        Ok(items)
    }

    fn memo_get(&self, i: u32) -> Result<Value, PickleError> {
        self.memo
            .get(&i)
            .cloned()
            .ok_or_else(|| self.bad(format!("memo {i} is not set")))
    }

    fn memo_put(&mut self, i: u32) -> Result<(), PickleError> {
        let v = self
            .stack
            .last()
            .cloned()
            .ok_or_else(|| self.bad("stack underflow"))?;
        self.memo.insert(i, v);
        Ok(())
    }

    fn run(mut self) -> Result<Value, PickleError> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                0x95 => {
                    self.take(8)?; // FRAME: a length hint only
                }
                b'.' => return self.pop(),
                b'(' => self.stack.push(Value::Mark),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = i32::from_le_bytes(self.le()?);
                    self.stack.push(Value::Int(v.into()));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v.into()));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.le()?);
                    self.stack.push(Value::Int(v.into()));
                }
                0x8a => {
                    let n = usize::from(self.u8()?);
                    let b = self.take(n)?.to_vec();
                    self.stack.push(long(&b).map_or(Value::None, Value::Int));
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.le()?);
                    self.stack.push(Value::Float(v));
                }
                b'X' => {
                    let n = u32::from_le_bytes(self.le()?) as usize;
                    let v = self.string(n)?;
                    self.stack.push(v);
                }
                0x8c => {
                    let n = usize::from(self.u8()?);
                    let v = self.string(n)?;
                    self.stack.push(v);
                }
                0x8d => {
                    let n = u64::from_le_bytes(self.le()?);
                    let n = usize::try_from(n).map_err(|_| PickleError::Truncated)?;
                    let v = self.string(n)?;
                    self.stack.push(v);
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'B' => u32::from_le_bytes(self.le()?) as usize,
                        b'C' => usize::from(self.u8()?),
                        _ => usize::try_from(u64::from_le_bytes(self.le()?))
                            .map_err(|_| PickleError::Truncated)?,
                    };
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(b));
                }
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b']' => self.stack.push(Value::List(Vec::new())),
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                0x8f => self.stack.push(Value::List(Vec::new())), // EMPTY_SET, kept as a list
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items));
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(items));
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = pairs(items).ok_or_else(|| self.bad("odd dict items"))?;
                    self.stack.push(Value::Dict(pairs));
                }
                0x91 => {
                    let items = self.pop_mark()?; // FROZENSET
                    self.stack.push(Value::List(items));
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    if self.stack.len() < n {
                        return Err(self.bad("stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(items));
                }
                b'a' => {
                    let v = self.pop()?;
                    match self.top()? {
                        Value::List(l) => l.push(v),
                        _ => return Err(self.bad("APPEND to a non-list")),
                    }
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Value::List(l) => l.extend(items),
                        _ => return Err(self.bad("APPENDS to a non-list")),
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    match self.top()? {
                        Value::Dict(d) => d.push((k, v)),
                        // Items set on an opaque object are dropped with it.
                        Value::Object(_) => {}
                        _ => return Err(self.bad("SETITEM on a non-dict")),
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let new = pairs(items).ok_or_else(|| self.bad("odd dict items"))?;
                    match self.top()? {
                        Value::Dict(d) => d.extend(new),
                        Value::Object(_) => {}
                        _ => return Err(self.bad("SETITEMS on a non-dict")),
                    }
                }
                b'q' => {
                    let i = self.u8()?;
                    self.memo_put(i.into())?;
                }
                b'r' => {
                    let i = u32::from_le_bytes(self.le()?);
                    self.memo_put(i)?;
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.u8()?;
                    let v = self.memo_get(i.into())?;
                    self.stack.push(v);
                }
                b'j' => {
                    let i = u32::from_le_bytes(self.le()?);
                    let v = self.memo_get(i)?;
                    self.stack.push(v);
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global(format!("{module}.{name}")));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => {
                            self.stack.push(Value::Global(format!("{m}.{n}")))
                        }
                        _ => return Err(self.bad("STACK_GLOBAL needs two strings")),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = rebuild::reduce(callable, args).map_err(|why| self.bad(why))?;
                    self.stack.push(v);
                }
                0x81 | 0x92 => {
                    if op == 0x92 {
                        self.pop()?; // NEWOBJ_EX's keyword arguments
                    }
                    let _args = self.pop()?;
                    let class = self.pop()?;
                    let name = match class {
                        Value::Global(g) => g,
                        other => other.kind(),
                    };
                    self.stack.push(Value::Object(name));
                }
                b'b' => {
                    // BUILD sets an object's state; plain values keep what they hold.
                    self.pop()?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = rebuild::persistent(pid).map_err(|why| self.bad(why))?;
                    self.stack.push(v);
                }
                _ => return Err(PickleError::Opcode(op, at)),
            }
        }
    }
}

/// Two's-complement little-endian integer of up to 8 bytes (`LONG1`).
fn long(b: &[u8]) -> Option<i64> {
    if b.is_empty() {
        return Some(0);
    }
    if b.len() > 8 {
        return None;
    }
    let fill = if b[b.len() - 1] & 0x80 != 0 { 0xff } else { 0 };
    let mut buf = [fill; 8];
    buf[..b.len()].copy_from_slice(b);
    Some(i64::from_le_bytes(buf))
}

fn pairs(items: Vec<Value>) -> Option<Vec<(Value, Value)>> {
    if !items.len().is_multiple_of(2) {
        return None;
    }
    let mut it = items.into_iter();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_values_and_opaque_classes() {
        // pickle.dumps({'a': [1, -2, 3.5], 'b': (True, None), 'c': X()}, protocol=2) with X a
        // class of its own, written by hand: the object must come out opaque.
        let mut p = vec![0x80, 2, b'}', b'(', b'X', 1, 0, 0, 0, b'a', b']', b'('];
        p.extend([b'K', 1, b'J']);
        p.extend((-2i32).to_le_bytes());
        p.push(b'G');
        p.extend(3.5f64.to_be_bytes());
        p.extend([b'e', b'X', 1, 0, 0, 0, b'b', 0x88, b'N', 0x86]);
        p.extend([b'X', 1, 0, 0, 0, b'c']);
        p.extend(b"c__main__\nX\n");
        p.extend([b')', 0x81, b'}', b'b', b'u', b'.']);
        let v = unpickle(&p).unwrap();
        assert_eq!(
            v,
            Value::Dict(vec![
                (
                    Value::Str("a".into()),
                    Value::List(vec![Value::Int(1), Value::Int(-2), Value::Float(3.5)])
                ),
                (
                    Value::Str("b".into()),
                    Value::Tuple(vec![Value::Bool(true), Value::None])
                ),
                (Value::Str("c".into()), Value::Object("__main__.X".into())),
            ])
        );
    }

    #[test]
    fn damaged_pickles_are_errors_not_panics() {
        assert_eq!(unpickle(&[0x80, 2, b'}']), Err(PickleError::Truncated));
        assert!(matches!(
            unpickle(b"a."),
            Err(PickleError::Malformed { .. })
        ));
        assert!(matches!(
            unpickle(&[0xff]),
            Err(PickleError::Opcode(0xff, 0))
        ));
        assert!(matches!(
            unpickle(&[b'h', 7, b'.']),
            Err(PickleError::Malformed { .. })
        ));
        // Every prefix of a valid pickle fails cleanly.
        let p = [0x80, 2, b']', b'(', b'K', 1, b'K', 2, b'e', b'.'];
        for n in 0..p.len() {
            assert!(unpickle(&p[..n]).is_err(), "prefix {n}");
        }
        assert_eq!(
            unpickle(&p),
            Ok(Value::List(vec![Value::Int(1), Value::Int(2)]))
        );
    }

    #[test]
    fn long1_is_twos_complement() {
        assert_eq!(long(&[]), Some(0));
        assert_eq!(long(&[0xff]), Some(-1));
        assert_eq!(long(&[0x00, 0x01]), Some(256));
        assert_eq!(long(&[0; 9]), None);
    }
}
