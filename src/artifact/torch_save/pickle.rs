//! The pickle subset a dict of tensors needs: the opcodes of protocols 2-5 for dicts, lists,
//! tuples, strings, numbers and persistent ids, and the globals that rebuild a tensor or an
//! `OrderedDict`; a call of any other global is an opaque object, refused by name where a tensor
//! is expected. Nothing recurses: no opcode reads ahead, and containers drop iteratively.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use super::zip::{at, le_value};

#[derive(Clone)]
pub(super) enum Value {
    None,
    Bool,
    Int(i64),
    Float,
    Str(Rc<str>),
    Tuple(Rc<Items>),
    List(Rc<RefCell<Items>>),
    Dict(Rc<RefCell<Dict>>),
    /// `module.name`, as GLOBAL or STACK_GLOBAL named it.
    Global(Rc<str>),
    /// What calling a global the reader does not model made; named in errors.
    Object(Rc<str>),
    Storage(Rc<Storage>),
    Tensor(Rc<TensorRef>),
}

impl Value {
    pub(super) fn kind(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool => "bool".into(),
            Value::Int(_) => "int".into(),
            Value::Float => "float".into(),
            Value::Str(_) => "string".into(),
            Value::Tuple(_) => "tuple".into(),
            Value::List(_) => "list".into(),
            Value::Dict(_) => "dict".into(),
            Value::Global(g) => format!("reference to {g}"),
            Value::Object(g) => format!("Python object made by {g}"),
            Value::Storage(_) => "storage".into(),
            Value::Tensor(_) => "tensor".into(),
        }
    }

    fn int(&self, what: &str) -> std::result::Result<i64, String> {
        match self {
            Value::Int(i) => Ok(*i),
            other => Err(format!("{what} is a {}, not an int", other.kind())),
        }
    }

    fn ints(&self, what: &str) -> std::result::Result<Vec<i64>, String> {
        match self {
            Value::Tuple(t) => t.0.iter().map(|v| v.int(what)).collect(),
            other => Err(format!("{what} is a {}, not a tuple", other.kind())),
        }
    }
}

/// A container's values. Dropped without recursion: a pickle of a few bytes per level can
/// nest a million tuples, which a recursive drop would overflow the stack on.
#[derive(Default)]
pub(super) struct Items(pub(super) Vec<Value>);

impl Drop for Items {
    fn drop(&mut self) {
        let mut work = std::mem::take(&mut self.0);
        while let Some(v) = work.pop() {
            // A container held only here gives up its values to the work list; one held
            // elsewhere too just loses a reference.
            match v {
                Value::Tuple(rc) => {
                    if let Ok(mut items) = Rc::try_unwrap(rc) {
                        work.append(&mut items.0);
                    }
                }
                Value::List(rc) => {
                    if let Ok(items) = Rc::try_unwrap(rc) {
                        work.append(&mut items.into_inner().0);
                    }
                }
                Value::Dict(rc) => {
                    if let Ok(dict) = Rc::try_unwrap(rc) {
                        work.append(&mut dict.into_inner().items.0);
                    }
                }
                _ => {}
            }
        }
    }
}

/// A dict's keys and values, alternating, in insertion order; string keys are indexed.
#[derive(Default)]
pub(super) struct Dict {
    items: Items,
    index: HashMap<Rc<str>, usize>,
}

impl Dict {
    pub(super) fn pairs(&self) -> impl Iterator<Item = (&Value, &Value)> {
        self.items.0.chunks_exact(2).map(|kv| (&kv[0], &kv[1]))
    }

    /// A repeated string key replaces its value, as in Python.
    fn insert(&mut self, k: Value, v: Value) {
        if let Value::Str(s) = &k {
            if let Some(&i) = self.index.get(s) {
                // The old value goes through `Items`' drop.
                let old = std::mem::replace(&mut self.items.0[i + 1], v);
                drop(Items(vec![old]));
                return;
            }
            self.index.insert(s.clone(), self.items.0.len());
        }
        self.items.0.push(k);
        self.items.0.push(v);
    }
}


/// A storage saved as its own entry (`<root>/data/<key>`), as a persistent id names it.
pub(super) struct Storage {
    /// The torch storage class (`torch.HalfStorage`, ...).
    pub(super) class: Rc<str>,
    pub(super) key: String,
    /// Its size in values.
    pub(super) elements: u64,
}

/// A tensor as `_rebuild_tensor_v2` describes it: a view into a storage, in values.
pub(super) struct TensorRef {
    pub(super) storage: Rc<Storage>,
    pub(super) offset: i64,
    pub(super) size: Vec<i64>,
    pub(super) stride: Vec<i64>,
}

pub(super) struct Unpickler<'a> {
    b: &'a [u8],
    p: usize,
    stack: Items,
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
}

impl Drop for Unpickler<'_> {
    fn drop(&mut self) {
        drop(Items(self.memo.drain().map(|(_, v)| v).collect()));
    }
}

type R<T> = std::result::Result<T, String>;

impl<'a> Unpickler<'a> {
    pub(super) fn new(b: &'a [u8]) -> Self {
        Unpickler { b, p: 0, stack: Items::default(), marks: Vec::new(), memo: HashMap::new() }
    }

    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let s = self.b.get(self.p..self.p.checked_add(n).ok_or("a length overflows")?).ok_or("the pickle is cut short")?;
        self.p += n;
        Ok(s)
    }

    fn uint(&mut self, n: usize) -> R<u64> {
        Ok(le_value(self.take(n)?))
    }

    fn pop(&mut self) -> R<Value> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.0.len()) {
            return Err("the pickle pops past a mark".into());
        }
        self.stack.0.pop().ok_or_else(|| "the pickle pops an empty stack".into())
    }

    /// The top `n` values, in stack order; on an error the ones taken go through `Items`' drop.
    fn pop_n(&mut self, n: usize) -> R<Items> {
        let mut items = Items(Vec::with_capacity(n));
        for _ in 0..n {
            let v = self.pop()?;
            items.0.push(v);
        }
        items.0.reverse();
        Ok(items)
    }

    fn top(&self) -> R<&Value> {
        self.stack.0.last().ok_or_else(|| "the pickle reads an empty stack".into())
    }

    fn pop_mark(&mut self) -> R<Items> {
        let m = self.marks.pop().ok_or("the pickle has no mark to pop to")?;
        Ok(Items(self.stack.0.split_off(m)))
    }

    fn text(&mut self, n: u64) -> R<Value> {
        let s = self.take(at(n)?)?;
        Ok(Value::Str(std::str::from_utf8(s).map_err(|_| "a string is not UTF-8")?.into()))
    }

    fn line(&mut self) -> R<&'a str> {
        let rest = &self.b[self.p..];
        let n = rest.iter().position(|&c| c == b'\n').ok_or("a GLOBAL is not terminated")?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| "a GLOBAL is not UTF-8")?;
        self.p += n + 1;
        Ok(s)
    }

    pub(super) fn run(mut self) -> R<Value> {
        loop {
            let op = self.uint(1)? as u8;
            match op {
                0x80 => {
                    let v = self.uint(1)?;
                    if !(2..=5).contains(&v) {
                        return Err(format!("pickle protocol {v} is not read (2 to 5 are)"));
                    }
                }
                0x95 => {
                    self.uint(8)?; // FRAME: a length hint
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.0.len()),
                b'}' => self.stack.0.push(Value::Dict(Rc::default())),
                b']' => self.stack.0.push(Value::List(Rc::default())),
                b')' => self.stack.0.push(Value::Tuple(Rc::default())),
                b'N' => self.stack.0.push(Value::None),
                0x88 | 0x89 => self.stack.0.push(Value::Bool),
                b'K' => {
                    let v = self.uint(1)?;
                    self.stack.0.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = self.uint(2)?;
                    self.stack.0.push(Value::Int(v as i64));
                }
                b'J' => {
                    let v = self.uint(4)? as u32 as i32;
                    self.stack.0.push(Value::Int(v as i64));
                }
                0x8a => {
                    let n = self.uint(1)? as usize;
                    if n > 8 {
                        return Err("an integer is wider than 64 bits".into());
                    }
                    let v = self.uint(n)?;
                    // Two's complement over n bytes.
                    let v = if n > 0 && n < 8 && v >> (8 * n - 1) & 1 == 1 { v as i64 - (1i64 << (8 * n)) } else { v as i64 };
                    self.stack.0.push(Value::Int(v));
                }
                b'G' => {
                    // Floats appear in no tensor's rebuild; the value is not needed.
                    self.take(8)?;
                    self.stack.0.push(Value::Float);
                }
                b'X' => {
                    let n = self.uint(4)?;
                    let v = self.text(n)?;
                    self.stack.0.push(v);
                }
                0x8c => {
                    let n = self.uint(1)?;
                    let v = self.text(n)?;
                    self.stack.0.push(v);
                }
                0x8d => {
                    let n = self.uint(8)?;
                    let v = self.text(n)?;
                    self.stack.0.push(v);
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.0.push(Value::Global(format!("{module}.{name}").into()));
                }
                0x93 => {
                    let pair = self.pop_n(2)?;
                    let [Value::Str(module), Value::Str(name)] = pair.0.as_slice() else {
                        return Err("a STACK_GLOBAL names no module and name".into());
                    };
                    self.stack.0.push(Value::Global(format!("{module}.{name}").into()));
                }
                b'q' | b'r' | 0x94 => {
                    let key = match op {
                        b'q' => self.uint(1)?,
                        b'r' => self.uint(4)?,
                        _ => self.memo.len() as u64,
                    };
                    let v = self.top()?.clone();
                    if let Some(old) = self.memo.insert(key, v) {
                        drop(Items(vec![old]));
                    }
                }
                b'h' | b'j' => {
                    let key = if op == b'h' { self.uint(1)? } else { self.uint(4)? };
                    let v = self.memo.get(&key).cloned().ok_or_else(|| format!("the pickle reads memo {key}, which was never written"))?;
                    self.stack.0.push(v);
                }
                b'0' => {
                    let v = self.pop()?;
                    drop(Items(vec![v]));
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.0.push(Value::Tuple(Rc::new(items)));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let items = self.pop_n(n)?;
                    self.stack.0.push(Value::Tuple(Rc::new(items)));
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(Items(vec![v]))?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                b's' => {
                    let pair = self.pop_n(2)?;
                    self.set_items(pair)?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                b'b' => {
                    // BUILD sets Python attributes, which nothing read here has.
                    let state = self.pop()?;
                    drop(Items(vec![state]));
                    self.top()?;
                }
                b'Q' => {
                    let pid = Items(vec![self.pop()?]);
                    let storage = persistent_storage(&pid.0[0])?;
                    self.stack.0.push(Value::Storage(Rc::new(storage)));
                }
                b'R' => {
                    let pair = self.pop_n(2)?;
                    let [callable, args] = pair.0.as_slice() else { unreachable!() };
                    let (Value::Global(name), Value::Tuple(args)) = (callable, args) else {
                        return Err(format!("a REDUCE calls a {} with a {}", callable.kind(), args.kind()));
                    };
                    let v = reduce(name, &args.0)?;
                    self.stack.0.push(v);
                }
                other => return Err(format!("pickle opcode 0x{other:02x} at byte {} is not one a dict of tensors needs", self.p - 1)),
            }
        }
    }

    fn append(&mut self, mut items: Items) -> R<()> {
        match self.top()? {
            Value::List(l) => {
                l.borrow_mut().0.append(&mut items.0);
                Ok(())
            }
            other => Err(format!("the pickle appends to a {}", other.kind())),
        }
    }

    fn set_items(&mut self, mut items: Items) -> R<()> {
        if items.0.len() % 2 != 0 {
            return Err("a SETITEMS has an odd number of values".into());
        }
        match self.top()? {
            Value::Dict(d) => {
                let mut d = d.borrow_mut();
                let mut it = std::mem::take(&mut items.0).into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.insert(k, v);
                }
                Ok(())
            }
            other => Err(format!("the pickle sets items of a {}", other.kind())),
        }
    }
}

/// `('storage', torch.<Kind>Storage, key, location, numel)`: a storage saved as its own entry.
fn persistent_storage(pid: &Value) -> R<Storage> {
    let Value::Tuple(f) = pid else {
        return Err(format!("a persistent id is a {}, not a tuple", pid.kind()));
    };
    match f.0.as_slice() {
        [Value::Str(tag), Value::Global(class), key, _location, numel, ..] if &**tag == "storage" => {
            let key = match key {
                Value::Str(s) => s.to_string(),
                Value::Int(i) => i.to_string(),
                other => return Err(format!("a storage key is a {}", other.kind())),
            };
            if key.is_empty() || key.contains(['/', '\\']) || key.starts_with('.') {
                return Err(format!("the storage key {key:?} is not a plain name"));
            }
            let elements = u64::try_from(numel.int("a storage's size")?).map_err(|_| "a storage's size is negative")?;
            Ok(Storage { class: class.clone(), key, elements })
        }
        _ => Err("a persistent id is not a ('storage', type, key, location, size) tuple".into()),
    }
}

/// Calls the globals a dict of tensors is rebuilt with; any other call is an opaque object.
fn reduce(name: &str, args: &[Value]) -> R<Value> {
    match name {
        "collections.OrderedDict" | "builtins.dict" if args.is_empty() => Ok(Value::Dict(Rc::default())),
        "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => match args {
            [Value::Storage(s), offset, size, stride, ..] => Ok(Value::Tensor(Rc::new(TensorRef {
                storage: s.clone(),
                offset: offset.int("a tensor's offset")?,
                size: size.ints("a tensor's size")?,
                stride: stride.ints("a tensor's stride")?,
            }))),
            _ => Err(format!("{name} is called without a storage, offset, size and stride")),
        },
        // nn.Parameter: (tensor, requires_grad, hooks[, state]).
        "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => match args.first() {
            Some(t @ Value::Tensor(_)) => Ok(t.clone()),
            _ => Err(format!("{name} is called without a tensor")),
        },
        _ => Ok(Value::Object(name.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pickle_errors_do_not_panic() {
        // Every prefix of a small dict pickle, and every one-byte change to it.
        let good: &[u8] = b"\x80\x02}q\x00(X\x01\x00\x00\x00aK\x01X\x01\x00\x00\x00bq\x01h\x01u.";
        let Ok(Value::Dict(d)) = Unpickler::new(good).run() else { panic!("the good pickle fails") };
        assert_eq!(d.borrow().pairs().count(), 2);
        for n in 0..good.len() {
            assert!(Unpickler::new(&good[..n]).run().is_err());
            for x in [0u8, 0x7f, 0xff] {
                let mut b = good.to_vec();
                b[n] = x;
                let _ = Unpickler::new(&b).run();
            }
        }
    }

    #[test]
    fn negative_long1_reads_as_negative() {
        let Ok(Value::Int(v)) = Unpickler::new(b"\x80\x02\x8a\x01\xff.").run() else { panic!() };
        assert_eq!(v, -1);
    }

    #[test]
    fn deep_nesting_drops_without_overflowing() {
        // A million nested tuples (TUPLE1 over and over), then popped, then left on the stack.
        let mut b = b"\x80\x02N".to_vec();
        b.extend(std::iter::repeat_n(0x85, 1_000_000));
        let mut popped = b.clone();
        popped.extend(b"0N.");
        assert!(Unpickler::new(&popped).run().is_ok());
        b.push(b'.');
        drop(Items(vec![Unpickler::new(&b).run().unwrap()]));
    }
}
