//! The values a pickle builds, kept in one arena ([`Heap`]) and referred to by index.
//!
//! Containers hold indices, so the memo and `DUP` share a value instead of copying it (a
//! "billion laughs" pickle stays as small as its bytes), a value is dropped without recursion
//! however deep it nests, and a container changed after it was memoised changes everywhere, as
//! in Python. Strings are interned: each distinct text is stored once, and compared by index.
//! No value's size depends on anything but the bytes that made it.

use super::{MAX_DEPTH, MAX_OBJECTS};
use std::collections::HashMap;
use std::rc::Rc;

/// A value in the [`Heap`].
pub type Id = u32;
/// An interned string.
pub type Atom = u32;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Atom),
    /// Bytes are never read, only counted.
    Bytes(u64),
    List(Vec<Id>),
    Tuple(Vec<Id>),
    Dict(Dict),
    /// A module-level name: a class or a function.
    Global {
        module: Atom,
        name: Atom,
    },
    /// An instance of anything this reader does not interpret, made by `class`.
    Object {
        class: Id,
    },
    /// A storage of the archive: the entry `data/<key>`, of the type `class` names.
    Storage {
        key: Atom,
        class: Id,
    },
    /// A view of a storage; `size` and `stride` are tuples checked when the tensor is used.
    Tensor {
        storage: Id,
        offset: i64,
        size: Id,
        stride: Id,
    },
}

/// A dictionary: its entries in insertion order, a key set again keeping its first place and
/// taking the new value, as in Python.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dict {
    pub entries: Vec<(Id, Id)>,
    index: HashMap<Key, usize>,
}

/// How a key is compared: by value for numbers, `None` and strings; by identity otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    None,
    Int(i64),
    Float(u64),
    Str(Atom),
    Other(Id),
}

/// The arena of a pickle's values.
#[derive(Default)]
pub struct Heap {
    values: Vec<Value>,
    /// How deep each value nests (0 for scalars), as far as its construction shows.
    depth: Vec<u32>,
    atoms: Vec<Rc<str>>,
    interned: HashMap<Rc<str>, Atom>,
}

impl Heap {
    pub fn get(&self, id: Id) -> &Value {
        &self.values[id as usize]
    }

    pub fn text(&self, atom: Atom) -> &str {
        &self.atoms[atom as usize]
    }

    /// Adds a value; containers take their depth from their items.
    pub fn add(&mut self, v: Value) -> Result<Id, String> {
        if self.values.len() >= MAX_OBJECTS {
            return Err(format!(
                "more than {MAX_OBJECTS} objects, far more than any state dict"
            ));
        }
        let depth = match &v {
            Value::List(items) | Value::Tuple(items) => self.depth_over(items.iter().copied())?,
            Value::Dict(d) => self.depth_over(d.entries.iter().flat_map(|&(k, v)| [k, v]))?,
            _ => 0,
        };
        self.values.push(v);
        self.depth.push(depth);
        Ok((self.values.len() - 1) as Id)
    }

    pub fn atom(&mut self, text: &str) -> Atom {
        if let Some(&a) = self.interned.get(text) {
            return a;
        }
        let rc: Rc<str> = Rc::from(text);
        let a = self.atoms.len() as Atom;
        self.atoms.push(rc.clone());
        self.interned.insert(rc, a);
        a
    }

    pub fn str(&mut self, text: &str) -> Result<Id, String> {
        let a = self.atom(text);
        self.add(Value::Str(a))
    }

    /// The text of a string value.
    pub fn as_str(&self, id: Id) -> Option<&str> {
        match self.get(id) {
            Value::Str(a) => Some(self.text(*a)),
            _ => None,
        }
    }

    /// `module.name` of a global.
    pub fn global_name(&self, id: Id) -> Option<String> {
        match self.get(id) {
            Value::Global { module, name } => {
                Some(format!("{}.{}", self.text(*module), self.text(*name)))
            }
            _ => None,
        }
    }

    fn depth_over(&self, items: impl Iterator<Item = Id>) -> Result<u32, String> {
        let d = items.map(|i| self.depth[i as usize] + 1).max().unwrap_or(1);
        if d > MAX_DEPTH {
            return Err(format!("containers nested deeper than {MAX_DEPTH} levels"));
        }
        Ok(d)
    }

    /// Records that `container` now holds `items` too, for the depth limit.
    fn deepen(&mut self, container: Id, items: &[Id]) -> Result<(), String> {
        let d = self.depth_over(items.iter().copied())?;
        let slot = &mut self.depth[container as usize];
        *slot = (*slot).max(d);
        Ok(())
    }

    /// Appends to the list `list`.
    pub fn extend(&mut self, list: Id, items: Vec<Id>) -> Result<(), String> {
        self.deepen(list, &items)?;
        match &mut self.values[list as usize] {
            Value::List(l) => {
                l.extend(items);
                Ok(())
            }
            other => Err(format!("APPEND to a {}", kind_name(other))),
        }
    }

    /// Sets `key` to `value` in the dict `dict`; items set on an opaque object are dropped.
    pub fn set_items(&mut self, dict: Id, pairs: Vec<(Id, Id)>) -> Result<(), String> {
        if matches!(self.get(dict), Value::Object { .. }) {
            return Ok(());
        }
        let flat: Vec<Id> = pairs.iter().flat_map(|&(k, v)| [k, v]).collect();
        self.deepen(dict, &flat)?;
        let keys: Vec<Key> = pairs.iter().map(|&(k, _)| self.key(k)).collect();
        let Value::Dict(d) = &mut self.values[dict as usize] else {
            return Err(format!("SETITEM on a {}", kind_name(self.get(dict))));
        };
        for ((k, v), key) in pairs.into_iter().zip(keys) {
            match d.index.get(&key) {
                Some(&at) => d.entries[at].1 = v,
                None => {
                    d.index.insert(key, d.entries.len());
                    d.entries.push((k, v));
                }
            }
        }
        Ok(())
    }

    /// A new dict holding `pairs`, later keys winning.
    pub fn dict(&mut self, pairs: Vec<(Id, Id)>) -> Result<Id, String> {
        let id = self.add(Value::Dict(Dict::default()))?;
        self.set_items(id, pairs)?;
        Ok(id)
    }

    fn key(&self, id: Id) -> Key {
        match self.get(id) {
            Value::None => Key::None,
            Value::Bool(b) => Key::Int(i64::from(*b)),
            Value::Int(i) => Key::Int(*i),
            // Python: 1.0 == 1 as keys.
            Value::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e18 => Key::Int(*f as i64),
            Value::Float(f) => Key::Float(f.to_bits()),
            Value::Str(a) => Key::Str(*a),
            _ => Key::Other(id),
        }
    }

    /// A short description for messages: `dict (12 entries)`, `tensor`, `a.B object`, ...
    pub fn kind(&self, id: Id) -> String {
        match self.get(id) {
            Value::Object { class } => match self.global_name(*class) {
                Some(name) => format!("{} object", super::escape(&name)),
                None => format!("object made by a {}", kind_name(self.get(*class))),
            },
            Value::Global { .. } => format!(
                "reference to {}",
                super::escape(&self.global_name(id).unwrap_or_default())
            ),
            Value::List(v) => format!("list ({} items)", v.len()),
            Value::Tuple(v) => format!("tuple ({} items)", v.len()),
            Value::Dict(d) => format!("dict ({} entries)", d.entries.len()),
            other => kind_name(other).into(),
        }
    }
}

/// The bare name of a value's type.
pub fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::None => "None",
        Value::Bool(_) => "bool",
        Value::Int(_) => "int",
        Value::Float(_) => "float",
        Value::Str(_) => "str",
        Value::Bytes(_) => "bytes",
        Value::List(_) => "list",
        Value::Tuple(_) => "tuple",
        Value::Dict(_) => "dict",
        Value::Global { .. } => "global",
        Value::Object { .. } => "object",
        Value::Storage { .. } => "storage",
        Value::Tensor { .. } => "tensor",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_value_of_a_key_wins_in_the_first_place() {
        let mut h = Heap::default();
        let (a, b) = (h.str("a").unwrap(), h.str("b").unwrap());
        let a_again = h.str("a").unwrap();
        let (one, two, three) = (
            h.add(Value::Int(1)).unwrap(),
            h.add(Value::Int(2)).unwrap(),
            h.add(Value::Int(3)).unwrap(),
        );
        let d = h.dict(vec![(a, one), (b, two), (a_again, three)]).unwrap();
        let Value::Dict(d) = h.get(d) else { panic!() };
        assert_eq!(d.entries, vec![(a, three), (b, two)]);
    }

    #[test]
    fn nesting_is_limited() {
        let mut h = Heap::default();
        let mut v = h.add(Value::List(vec![])).unwrap();
        for _ in 1..MAX_DEPTH {
            v = h.add(Value::Tuple(vec![v])).unwrap();
        }
        let e = h.add(Value::Tuple(vec![v])).unwrap_err();
        assert!(e.contains("deeper than 1000"), "{e}");
        // A list that holds itself grows one level per append, and stops at the limit too.
        let l = h.add(Value::List(vec![])).unwrap();
        let e = (0..=MAX_DEPTH)
            .map(|_| h.extend(l, vec![l]))
            .find_map(Result::err)
            .unwrap();
        assert!(e.contains("deeper"), "{e}");
    }
}
