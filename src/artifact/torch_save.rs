//! The one reader of `torch.save` files, from bytes in memory so that the page and the desktop
//! share it. PyTorch >= 1.6 writes a ZIP archive holding a pickle (`<root>/data.pkl`) and one
//! raw little-endian entry per storage (`<root>/data/<key>`). What a dict of tensors needs is
//! read: the pickle opcodes of protocols 2-5 for dicts, lists, tuples, strings, numbers and
//! persistent ids, and the globals that rebuild a tensor or an `OrderedDict`; any other Python
//! object is kept opaque and refused by name where a tensor is expected. Nothing read is
//! trusted: every length and offset is checked against the bytes held, each entry used is
//! checked by CRC-32, and the tensors built are bounded by the file's size.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use super::Dtype;
use crate::{Error, Result};

/// One tensor of the file: its values contiguous, little-endian, in PyTorch (row-major) order.
pub struct TorchTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// Whether `bytes` look like a `torch.save` file: a ZIP archive, or the pickle stream the
/// legacy (pre-1.6) format starts with.
pub fn is_torch_save(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04") || (bytes.first() == Some(&0x80) && bytes.get(8) != Some(&b'{'))
}

/// Views repeated over one storage could otherwise turn a small file into a huge allocation;
/// a dict saving the same tensor under a few names stays well inside this.
const MAX_OUTPUT_PER_INPUT_BYTE: usize = 4;
const MAX_RANK: usize = 8;

/// Reads a `torch.save`d dict {name: tensor} (float tensors; views into a shared storage are
/// gathered), in the order the dict was saved.
pub fn read_tensor_dict(bytes: &[u8], source: &str) -> Result<Vec<(String, TorchTensor)>> {
    let bad = |m: String| Error::format(source, format!("is not a readable torch.save file: {m}"));
    if !bytes.starts_with(b"PK\x03\x04") {
        if is_torch_save(bytes) {
            return Err(Error::format(
                source,
                "is a torch.save file in the legacy format (PyTorch < 1.6), which is not read here: re-save it with a current PyTorch (`torch.save(torch.load(f), f)`)",
            ));
        }
        return Err(bad("it is not a ZIP archive".into()));
    }
    let zip = Zip::open(bytes).map_err(bad)?;
    let pickle_entry = zip.root_pickle().map_err(bad)?;
    let root = pickle_entry.name.strip_suffix("data.pkl").unwrap_or_default().to_string();
    if let Some(order) = zip.find(&format!("{root}byteorder")) {
        let order = zip.data(order).map_err(bad)?;
        if order != b"little" {
            return Err(bad(format!("its byte order is {:?}; only little-endian files are read", String::from_utf8_lossy(order))));
        }
    }
    let pickle = zip.data(pickle_entry).map_err(bad)?;
    let value = Unpickler::new(pickle).run().map_err(|m| bad(format!("{}: {m}", pickle_entry.name)))?;
    let mut out = Vec::new();
    let mut total = 0usize;
    let limit = bytes.len().saturating_mul(MAX_OUTPUT_PER_INPUT_BYTE);
    let value = Items(vec![value]);
    let Value::Dict(dict) = &value.0[0] else {
        return Err(Error::format(source, format!("holds a {}, not a dict of tensors", value.0[0].kind())));
    };
    for (key, value) in dict.borrow().pairs() {
        let Value::Str(name) = key else {
            return Err(Error::format(source, format!("has a key that is a {}, not a string", key.kind())));
        };
        let Value::Tensor(t) = value else {
            return Err(Error::format(source, format!("holds a {} under {name:?}, not a tensor", value.kind())));
        };
        let tensor = t.gather(&zip, &root).map_err(|m| Error::format(source, format!("tensor {name:?}: {m}")))?;
        total = total.saturating_add(tensor.data.len());
        if total > limit {
            return Err(Error::format(source, format!("its tensors hold more than {MAX_OUTPUT_PER_INPUT_BYTE}x the file's size (views repeated over one storage?)")));
        }
        out.push((name.to_string(), tensor));
    }
    Ok(out)
}

// --- ZIP ---------------------------------------------------------------------------------------

fn le(b: &[u8], at: usize, n: usize) -> std::result::Result<u64, String> {
    let s = b.get(at..at.checked_add(n).ok_or("an offset overflows")?).ok_or("it is truncated")?;
    Ok(s.iter().rev().fold(0u64, |acc, &x| (acc << 8) | x as u64))
}

fn at(v: u64) -> std::result::Result<usize, String> {
    usize::try_from(v).map_err(|_| "an offset does not fit in memory".to_string())
}

struct Entry {
    name: String,
    method: u64,
    flags: u64,
    crc: u32,
    compressed: u64,
    size: u64,
    local: u64,
}

struct Zip<'a> {
    bytes: &'a [u8],
    entries: Vec<Entry>,
}

impl<'a> Zip<'a> {
    fn open(bytes: &'a [u8]) -> std::result::Result<Self, String> {
        // The end-of-central-directory record: 22 bytes and a comment of at most 64 KiB.
        let last = bytes.len().checked_sub(22).ok_or("it is too short to be a ZIP archive")?;
        let eocd = (last.saturating_sub(65535)..=last)
            .rev()
            .find(|&i| bytes[i..].starts_with(b"PK\x05\x06"))
            .ok_or("its ZIP directory is missing (the file is truncated?)")?;
        let (mut count, mut dir_len, mut dir_at) = (le(bytes, eocd + 10, 2)?, le(bytes, eocd + 12, 4)?, le(bytes, eocd + 16, 4)?);
        if count == 0xFFFF || dir_len == 0xFFFF_FFFF || dir_at == 0xFFFF_FFFF {
            // ZIP64: a locator just before the record points at the 64-bit record.
            let loc = eocd.checked_sub(20).filter(|&l| bytes[l..].starts_with(b"PK\x06\x07")).ok_or("its ZIP64 locator is missing")?;
            let rec = at(le(bytes, loc + 8, 8)?)?;
            if !bytes.get(rec..).is_some_and(|b| b.starts_with(b"PK\x06\x06")) {
                return Err("its ZIP64 directory record is missing".into());
            }
            (count, dir_len, dir_at) = (le(bytes, rec + 32, 8)?, le(bytes, rec + 40, 8)?, le(bytes, rec + 48, 8)?);
        }
        let (dir_at, dir_len) = (at(dir_at)?, at(dir_len)?);
        if dir_at.checked_add(dir_len).is_none_or(|end| end > bytes.len()) || count > (dir_len / 46) as u64 {
            return Err("its ZIP directory points outside the file (the file is truncated or damaged)".into());
        }
        let mut entries = Vec::with_capacity(count as usize);
        let mut p = dir_at;
        for _ in 0..count {
            if !bytes.get(p..).is_some_and(|b| b.starts_with(b"PK\x01\x02")) {
                return Err("its ZIP directory is damaged".into());
            }
            let (name_len, extra_len, comment_len) = (le(bytes, p + 28, 2)? as usize, le(bytes, p + 30, 2)? as usize, le(bytes, p + 32, 2)? as usize);
            let name = bytes.get(p + 46..p + 46 + name_len).ok_or("it is truncated")?;
            let name = String::from_utf8(name.to_vec()).map_err(|_| "a ZIP entry's name is not UTF-8")?;
            let mut e = Entry {
                name,
                flags: le(bytes, p + 8, 2)?,
                method: le(bytes, p + 10, 2)?,
                crc: le(bytes, p + 16, 4)? as u32,
                compressed: le(bytes, p + 20, 4)?,
                size: le(bytes, p + 24, 4)?,
                local: le(bytes, p + 42, 4)?,
            };
            let extra = bytes.get(p + 46 + name_len..p + 46 + name_len + extra_len).ok_or("it is truncated")?;
            e.zip64(extra)?;
            entries.push(e);
            p += 46 + name_len + extra_len + comment_len;
        }
        Ok(Zip { bytes, entries })
    }

    fn find(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// `<root>/data.pkl`: torch.save names the root after the file (or `archive`).
    fn root_pickle(&self) -> std::result::Result<&Entry, String> {
        let mut found = self.entries.iter().filter(|e| e.name == "data.pkl" || (e.name.ends_with("/data.pkl") && e.name.matches('/').count() == 1));
        let first = found.next().ok_or("it has no data.pkl (is it a torch.save file?)")?;
        if found.next().is_some() {
            return Err("it has more than one data.pkl".into());
        }
        Ok(first)
    }

    /// An entry's bytes, checked against its CRC-32.
    fn data(&self, e: &Entry) -> std::result::Result<&'a [u8], String> {
        if e.flags & 1 != 0 {
            return Err(format!("its entry {} is encrypted", e.name));
        }
        if e.method != 0 || e.compressed != e.size {
            return Err(format!("its entry {} is compressed (method {}); torch.save stores entries uncompressed: save the dict again with torch.save", e.name, e.method));
        }
        let local = at(e.local)?;
        if !self.bytes.get(local..).is_some_and(|b| b.starts_with(b"PK\x03\x04")) {
            return Err(format!("its entry {} is missing (the file is truncated or damaged)", e.name));
        }
        let start = local + 30 + le(self.bytes, local + 26, 2)? as usize + le(self.bytes, local + 28, 2)? as usize;
        let end = start.checked_add(at(e.size)?).ok_or("an offset overflows")?;
        let data = self.bytes.get(start..end).ok_or_else(|| format!("its entry {} is cut short (the file is truncated)", e.name))?;
        if crc32fast::hash(data) != e.crc {
            return Err(format!("its entry {} fails its CRC-32 check (the file is damaged: download it again)", e.name));
        }
        Ok(data)
    }
}

impl Entry {
    /// The ZIP64 extra field holds, in order, each of size, compressed size and offset whose
    /// 32-bit field is saturated.
    fn zip64(&mut self, mut extra: &[u8]) -> std::result::Result<(), String> {
        while extra.len() >= 4 {
            let (id, len) = (le(extra, 0, 2)?, le(extra, 2, 2)? as usize);
            let body = extra.get(4..4 + len).ok_or("a ZIP extra field is truncated")?;
            if id == 1 {
                let mut k = 0;
                for field in [&mut self.size, &mut self.compressed, &mut self.local] {
                    if *field == 0xFFFF_FFFF {
                        *field = le(body, k, 8)?;
                        k += 8;
                    }
                }
            }
            extra = &extra[4 + len..];
        }
        Ok(())
    }
}

// --- pickle ------------------------------------------------------------------------------------

#[derive(Clone)]
enum Value {
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
    fn kind(&self) -> String {
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
struct Items(Vec<Value>);

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
struct Dict {
    items: Items,
    index: HashMap<Rc<str>, usize>,
}

impl Dict {
    fn pairs(&self) -> impl Iterator<Item = (&Value, &Value)> {
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

struct Storage {
    /// The torch storage class (`torch.HalfStorage`, ...).
    class: Rc<str>,
    key: String,
    elements: u64,
}

struct TensorRef {
    storage: Rc<Storage>,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

impl TensorRef {
    fn gather(&self, zip: &Zip, root: &str) -> std::result::Result<TorchTensor, String> {
        let dtype = match &*self.storage.class {
            "torch.FloatStorage" => Dtype::F32,
            "torch.HalfStorage" => Dtype::F16,
            "torch.BFloat16Storage" => Dtype::Bf16,
            "torch.DoubleStorage" => Dtype::F64,
            other => return Err(format!("its storage is a {other}; only float tensors (f16, bf16, f32, f64) are read")),
        };
        if self.size.len() > MAX_RANK || self.size.len() != self.stride.len() || self.size.iter().chain(&self.stride).any(|&v| v < 0) || self.offset < 0 {
            return Err(format!("its size {:?}, stride {:?} or offset {} is not valid", self.size, self.stride, self.offset));
        }
        let shape: Vec<usize> = self.size.iter().map(|&v| v as usize).collect();
        let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or("its size overflows")?;
        let esize = dtype.bytes(1);
        let bytes = numel.checked_mul(esize).ok_or("its size overflows")?;
        let entry = zip.find(&format!("{root}data/{}", self.storage.key)).ok_or_else(|| format!("its storage {} is missing from the archive", self.storage.key))?;
        let raw = zip.data(entry)?;
        if (raw.len() as u64) < self.storage.elements.saturating_mul(esize as u64) {
            return Err(format!("its storage {} holds {} bytes, less than the {} values the pickle declares", self.storage.key, raw.len(), self.storage.elements));
        }
        if numel == 0 {
            return Ok(TorchTensor { dtype, shape, data: Vec::new() });
        }
        let last = shape.iter().zip(&self.stride).try_fold(self.offset as u64, |a, (&d, &s)| (d as u64 - 1).checked_mul(s as u64).and_then(|x| a.checked_add(x)));
        if last.is_none_or(|l| l.saturating_add(1).saturating_mul(esize as u64) > raw.len() as u64) {
            return Err(format!("it reaches past the end of its storage {}", self.storage.key));
        }
        let mut data = Vec::with_capacity(bytes);
        // Walk the index space innermost first; a run of contiguous values is one copy.
        let rank = shape.len();
        let inner = if rank > 0 && self.stride[rank - 1] == 1 { shape[rank - 1] } else { 1 };
        let outer_dims = if inner > 1 { rank - 1 } else { rank };
        let mut index = vec![0usize; outer_dims];
        loop {
            let off = self.offset as usize + index.iter().zip(&self.stride).map(|(&i, &s)| i * s as usize).sum::<usize>();
            data.extend_from_slice(&raw[off * esize..(off + inner) * esize]);
            let mut d = outer_dims;
            loop {
                if d == 0 {
                    return Ok(TorchTensor { dtype, shape, data });
                }
                d -= 1;
                index[d] += 1;
                if index[d] < shape[d] {
                    break;
                }
                index[d] = 0;
            }
        }
    }
}

struct Unpickler<'a> {
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
    fn new(b: &'a [u8]) -> Self {
        Unpickler { b, p: 0, stack: Items::default(), marks: Vec::new(), memo: HashMap::new() }
    }

    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let s = self.b.get(self.p..self.p.checked_add(n).ok_or("a length overflows")?).ok_or("the pickle is cut short")?;
        self.p += n;
        Ok(s)
    }

    fn uint(&mut self, n: usize) -> R<u64> {
        let s = self.take(n)?;
        Ok(s.iter().rev().fold(0u64, |acc, &x| (acc << 8) | x as u64))
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

    fn run(mut self) -> R<Value> {
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
    fn garbage_and_truncations_are_errors() {
        assert!(read_tensor_dict(b"", "x").is_err());
        assert!(read_tensor_dict(b"PK\x03\x04", "x").is_err());
        let legacy = read_tensor_dict(&[0x80, 2, b'}', b'.'], "x").err().unwrap().to_string();
        assert!(legacy.contains("legacy"), "{legacy}");
    }

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

    /// The CRC stops a damaged pickle before it is parsed; this parses one anyway, every byte
    /// of the real file's pickle changed in turn, and builds what it can.
    #[test]
    fn damaged_real_pickle_does_not_panic() {
        let file: &[u8] = include_bytes!("../../tests/fixtures/deepfloyd/embeddings/prompts.pth");
        let zip = Zip::open(file).unwrap();
        let pickle = zip.data(zip.root_pickle().unwrap()).unwrap();
        for i in 0..pickle.len() {
            for x in [0u8, 0xff, pickle[i] ^ 1, pickle[i].wrapping_add(1)] {
                let mut b = pickle.to_vec();
                b[i] = x;
                if let Ok(v) = Unpickler::new(&b).run() {
                    let v = Items(vec![v]);
                    if let Value::Dict(d) = &v.0[0] {
                        for (_, t) in d.borrow().pairs() {
                            if let Value::Tensor(t) = t {
                                let _ = t.gather(&zip, "prompts/");
                            }
                        }
                    }
                }
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
