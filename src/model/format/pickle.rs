//! A pickle machine that runs none of the pickle's code.
//!
//! Training code saves much more than weights: epochs, optimiser state, hyper-parameters,
//! sometimes objects of its own classes. This machine turns the whole pickle into values in a
//! [`Heap`]: a class it does not know becomes an opaque [`Value::Object`] instead of an error,
//! so a checkpoint's weights can be found wherever they sit. Only the callables of
//! [`super::rebuild`] are interpreted. Protocols 2 to 5, as `torch.save` writes them; the
//! opcodes that only older protocols or out-of-band buffers use are refused.
//!
//! Work is one step per opcode and memory grows only with the bytes read: the memo and `DUP`
//! share values, and marks are kept apart from the stack.

use super::rebuild;
use super::value::{Heap, Id, Value};
use std::collections::HashMap;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PickleError {
    #[error("data.pkl ends before its STOP opcode")]
    Truncated,
    #[error("data.pkl has the unsupported pickle opcode 0x{0:02x} at byte {1}")]
    Opcode(u8, usize),
    #[error("data.pkl is malformed at byte {at}: {why}")]
    Malformed { at: usize, why: String },
}

/// Unpickles `data` into `heap`; the id of the pickled value.
pub fn unpickle(data: &[u8], heap: &mut Heap) -> Result<Id, PickleError> {
    Machine {
        data,
        pos: 0,
        at: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        heap,
    }
    .run()
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    /// Where the current opcode starts, for messages.
    at: usize,
    stack: Vec<Id>,
    /// Stack heights at each `MARK`.
    marks: Vec<usize>,
    memo: HashMap<u32, Id>,
    heap: &'a mut Heap,
}

impl Machine<'_> {
    fn bad(&self, why: impl Into<String>) -> PickleError {
        PickleError::Malformed {
            at: self.at,
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
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// A length that must fit in what is left of the pickle.
    fn len(&self, n: u64) -> Result<usize, PickleError> {
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.data.len() - self.pos)
            .ok_or(PickleError::Truncated)
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

    fn add(&mut self, v: Value) -> Result<Id, PickleError> {
        self.heap.add(v).map_err(|why| self.bad(why))
    }

    fn push(&mut self, v: Value) -> Result<(), PickleError> {
        let id = self.add(v)?;
        self.stack.push(id);
        Ok(())
    }

    fn push_str(&mut self, n: usize) -> Result<(), PickleError> {
        let start = self.pos;
        self.take(n)?;
        let text = String::from_utf8_lossy(&self.data[start..start + n]);
        let id = self.heap.str(&text).map_err(|why| self.bad(why))?;
        self.stack.push(id);
        Ok(())
    }

    /// The stack's floor: values below the topmost mark belong to an enclosing container.
    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Result<Id, PickleError> {
        if self.stack.len() <= self.floor() {
            return Err(self.bad("stack underflow"));
        }
        Ok(self.stack.pop().expect("the stack is above its floor"))
    }

    fn top(&self) -> Result<Id, PickleError> {
        match self.stack.last() {
            Some(&id) if self.stack.len() > self.floor() => Ok(id),
            _ => Err(self.bad("stack underflow")),
        }
    }

    /// Everything above the topmost mark, which is removed.
    fn pop_mark(&mut self) -> Result<Vec<Id>, PickleError> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| self.bad("no mark on the stack"))?;
        Ok(self.stack.split_off(m))
    }

    fn pairs(&self, items: Vec<Id>) -> Result<Vec<(Id, Id)>, PickleError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.bad("a dict with an odd number of items"));
        }
        Ok(items.chunks_exact(2).map(|p| (p[0], p[1])).collect())
    }

    fn memo_get(&mut self, i: u32) -> Result<(), PickleError> {
        let id = *self
            .memo
            .get(&i)
            .ok_or_else(|| self.bad(format!("memo {i} is read before it is set")))?;
        self.stack.push(id);
        Ok(())
    }

    fn memo_put(&mut self, i: u32) -> Result<(), PickleError> {
        let id = self.top()?;
        if self.memo.len() >= super::MAX_OBJECTS && !self.memo.contains_key(&i) {
            return Err(self.bad("the memo holds too many values"));
        }
        self.memo.insert(i, id);
        Ok(())
    }

    fn run(mut self) -> Result<Id, PickleError> {
        loop {
            self.at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                0x95 => {
                    self.take(8)?; // FRAME: a length hint only
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => self.stack.push(self.top()?),
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'J' => {
                    let v = i32::from_le_bytes(self.le()?);
                    self.push(Value::Int(v.into()))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v.into()))?;
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.le()?);
                    self.push(Value::Int(v.into()))?;
                }
                0x8a => {
                    let n = usize::from(self.u8()?);
                    let v = long(self.take(n)?);
                    self.push(v.map_or(Value::None, Value::Int))?;
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.le()?);
                    self.push(Value::Float(v))?;
                }
                b'X' => {
                    let n = u32::from_le_bytes(self.le()?);
                    let n = self.len(n.into())?;
                    self.push_str(n)?;
                }
                0x8c => {
                    let n = usize::from(self.u8()?);
                    self.push_str(n)?;
                }
                0x8d => {
                    let n = u64::from_le_bytes(self.le()?);
                    let n = self.len(n)?;
                    self.push_str(n)?;
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'B' => u32::from_le_bytes(self.le()?).into(),
                        b'C' => self.u8()?.into(),
                        _ => u64::from_le_bytes(self.le()?),
                    };
                    let n = self.len(n)?;
                    self.take(n)?;
                    self.push(Value::Bytes(n as u64))?;
                }
                b'}' => self.push(Value::Dict(Default::default()))?,
                b']' | 0x8f => self.push(Value::List(Vec::new()))?, // EMPTY_SET kept as a list
                b')' => self.push(Value::Tuple(Vec::new()))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(items))?;
                }
                b'l' | 0x91 => {
                    let items = self.pop_mark()?; // LIST, FROZENSET
                    self.push(Value::List(items))?;
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    let id = self.heap.dict(pairs).map_err(|why| self.bad(why))?;
                    self.stack.push(id);
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    if self.stack.len() < self.floor() + n {
                        return Err(self.bad("stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push(Value::Tuple(items))?;
                }
                b'a' => {
                    let v = self.pop()?;
                    let list = self.top()?;
                    self.heap
                        .extend(list, vec![v])
                        .map_err(|why| self.bad(why))?;
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    let list = self.top()?;
                    self.heap.extend(list, items).map_err(|why| self.bad(why))?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let dict = self.top()?;
                    self.heap
                        .set_items(dict, vec![(k, v)])
                        .map_err(|why| self.bad(why))?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    let dict = self.top()?;
                    self.heap
                        .set_items(dict, pairs)
                        .map_err(|why| self.bad(why))?;
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
                    let i = u32::try_from(self.memo.len()).map_err(|_| self.bad("memo full"))?;
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.u8()?;
                    self.memo_get(i.into())?;
                }
                b'j' => {
                    let i = u32::from_le_bytes(self.le()?);
                    self.memo_get(i)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let (module, name) = (self.heap.atom(&module), self.heap.atom(&name));
                    self.push(Value::Global { module, name })?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (self.heap.get(module), self.heap.get(name)) {
                        (&Value::Str(module), &Value::Str(name)) => {
                            self.push(Value::Global { module, name })?
                        }
                        _ => return Err(self.bad("STACK_GLOBAL needs two strings")),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let id =
                        rebuild::reduce(self.heap, callable, args).map_err(|why| self.bad(why))?;
                    self.stack.push(id);
                }
                0x81 | 0x92 => {
                    if op == 0x92 {
                        self.pop()?; // NEWOBJ_EX's keyword arguments
                    }
                    self.pop()?; // the arguments
                    let class = self.pop()?;
                    self.push(Value::Object { class })?;
                }
                b'b' => {
                    // BUILD sets an object's state; what this reader keeps has none.
                    self.pop()?;
                    self.top()?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = rebuild::persistent(self.heap, pid).map_err(|why| self.bad(why))?;
                    self.push(v)?;
                }
                _ => return Err(PickleError::Opcode(op, self.at)),
            }
        }
    }
}

/// Two's-complement little-endian integer of up to 8 bytes (`LONG1`); `None` when larger.
fn long(b: &[u8]) -> Option<i64> {
    if b.len() > 8 {
        return None;
    }
    let Some(&last) = b.last() else {
        return Some(0);
    };
    let mut buf = [if last & 0x80 != 0 { 0xff } else { 0 }; 8];
    buf[..b.len()].copy_from_slice(b);
    Some(i64::from_le_bytes(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(p: &[u8]) -> Result<(Heap, Id), PickleError> {
        let mut heap = Heap::default();
        let id = unpickle(p, &mut heap)?;
        Ok((heap, id))
    }

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
        let (h, root) = run(&p).unwrap();
        let Value::Dict(d) = h.get(root) else {
            panic!("{:?}", h.get(root))
        };
        let keys: Vec<_> = d
            .entries
            .iter()
            .map(|&(k, _)| h.as_str(k).unwrap())
            .collect();
        assert_eq!(keys, ["a", "b", "c"]);
        let Value::List(a) = h.get(d.entries[0].1) else {
            panic!()
        };
        let a: Vec<_> = a.iter().map(|&i| h.get(i).clone()).collect();
        assert_eq!(a, [Value::Int(1), Value::Int(-2), Value::Float(3.5)]);
        assert_eq!(h.kind(d.entries[1].1), "tuple (2 items)");
        assert_eq!(h.kind(d.entries[2].1), "__main__.X object");
    }

    #[test]
    fn damaged_pickles_are_errors_not_panics() {
        assert_eq!(run(&[0x80, 2, b'}']).err(), Some(PickleError::Truncated));
        assert!(matches!(run(b"a."), Err(PickleError::Malformed { .. })));
        assert!(matches!(run(&[0xff]), Err(PickleError::Opcode(0xff, 0))));
        assert!(matches!(
            run(&[b'h', 7, b'.']),
            Err(PickleError::Malformed { .. })
        ));
        // Popping below a mark is an underflow, as in Python.
        assert!(matches!(run(b"N(0."), Err(PickleError::Malformed { .. })));
        // A length beyond the pickle is refused before anything is read.
        let mut p = vec![0x8d];
        p.extend(u64::MAX.to_le_bytes());
        assert_eq!(run(&p).err(), Some(PickleError::Truncated));
        // Every prefix of a valid pickle fails cleanly.
        let p = [0x80, 2, b']', b'(', b'K', 1, b'K', 2, b'e', b'.'];
        for n in 0..p.len() {
            assert!(run(&p[..n]).is_err(), "prefix {n}");
        }
        let (h, root) = run(&p).unwrap();
        assert_eq!(h.kind(root), "list (2 items)");
    }

    #[test]
    fn the_memo_and_dup_share_instead_of_copying() {
        // A list holding 10 references to a list holding 10 references to ..., 30 levels:
        // 10^30 leaves if copied; here one value per level.
        let mut p = vec![0x80, 2, b']', b'q', 0];
        for _ in 0..30 {
            p.extend([b']', b'(', b'h', 0]);
            p.extend([b'2'; 9]);
            p.extend([b'e', b'q', 0]);
        }
        p.push(b'.');
        let (h, root) = run(&p).unwrap();
        assert_eq!(h.kind(root), "list (10 items)");
    }

    #[test]
    fn a_memoised_dict_filled_later_is_the_same_dict() {
        // d = {}; memo it; fill it; read it back from the memo: Python sees the filled dict.
        let p = [
            0x80, 2, b'}', b'q', 0, b'(', b'K', 1, b'K', 2, b'u', b'0', b'h', 0, b'.',
        ];
        let (h, root) = run(&p).unwrap();
        assert_eq!(h.kind(root), "dict (1 entries)");
    }

    #[test]
    fn long1_is_twos_complement() {
        assert_eq!(long(&[]), Some(0));
        assert_eq!(long(&[0xff]), Some(-1));
        assert_eq!(long(&[0x00, 0x01]), Some(256));
        assert_eq!(long(&[0; 9]), None);
    }
}
