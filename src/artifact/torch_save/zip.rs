//! The ZIP container torch.save writes: its central directory (ZIP64 too), and an entry's bytes,
//! stored (torch.save never compresses) and checked by CRC-32. Every offset and length is checked
//! against the bytes held; errors are phrases that complete "is not a readable torch.save file: ".

fn le(b: &[u8], at: usize, n: usize) -> std::result::Result<u64, String> {
    let s = b.get(at..at.checked_add(n).ok_or("an offset overflows")?).ok_or("it is truncated")?;
    Ok(le_value(s))
}

/// The little-endian unsigned integer of at most 8 bytes (ZIP fields and pickle arguments alike).
pub(super) fn le_value(s: &[u8]) -> u64 {
    s.iter().rev().fold(0u64, |acc, &x| (acc << 8) | x as u64)
}

pub(super) fn at(v: u64) -> std::result::Result<usize, String> {
    usize::try_from(v).map_err(|_| "an offset does not fit in memory".to_string())
}

pub(super) struct Entry {
    pub(super) name: String,
    method: u64,
    flags: u64,
    crc: u32,
    compressed: u64,
    size: u64,
    local: u64,
}

pub(super) struct Zip<'a> {
    bytes: &'a [u8],
    entries: Vec<Entry>,
}

impl<'a> Zip<'a> {
    pub(super) fn open(bytes: &'a [u8]) -> std::result::Result<Self, String> {
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

    pub(super) fn find(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// `<root>/data.pkl`: torch.save names the root after the file (or `archive`).
    pub(super) fn root_pickle(&self) -> std::result::Result<&Entry, String> {
        let mut found = self.entries.iter().filter(|e| e.name == "data.pkl" || (e.name.ends_with("/data.pkl") && e.name.matches('/').count() == 1));
        let first = found.next().ok_or("it has no data.pkl (is it a torch.save file?)")?;
        if found.next().is_some() {
            return Err("it has more than one data.pkl".into());
        }
        Ok(first)
    }

    /// An entry's bytes, checked against its CRC-32.
    pub(super) fn data(&self, e: &Entry) -> std::result::Result<&'a [u8], String> {
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
