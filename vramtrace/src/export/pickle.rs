//! A minimal Python pickle writer (protocol 2): dicts, lists, strings, integers, booleans and
//! None, with only the opcodes that both CPython and the unpickler inside PyTorch's
//! `MemoryViz.js` understand.

/// Pickle bytes under construction; the caller nests `dict`/`list` calls in order.
#[derive(Default)]
pub struct Pickle {
    pub buf: Vec<u8>,
}

const PROTO: u8 = 0x80;
const STOP: u8 = b'.';
const MARK: u8 = b'(';
const EMPTY_DICT: u8 = b'}';
const EMPTY_LIST: u8 = b']';
const SETITEMS: u8 = b'u';
const APPENDS: u8 = b'e';
const BINUNICODE: u8 = b'X';
const BININT1: u8 = b'K';
const BININT2: u8 = b'M';
const BININT: u8 = b'J';
const LONG1: u8 = 0x8a;
const NEWTRUE: u8 = 0x88;
const NEWFALSE: u8 = 0x89;

impl Pickle {
    /// Starts a pickle.
    pub fn new() -> Self {
        Pickle {
            buf: vec![PROTO, 2],
        }
    }

    /// Ends it.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.push(STOP);
        self.buf
    }

    /// Opens a dict: push keys and values alternately, then [`end_dict`](Self::end_dict).
    pub fn dict(&mut self) {
        self.buf.extend_from_slice(&[EMPTY_DICT, MARK]);
    }

    pub fn end_dict(&mut self) {
        self.buf.push(SETITEMS);
    }

    /// Opens a list: push items, then [`end_list`](Self::end_list).
    pub fn list(&mut self) {
        self.buf.extend_from_slice(&[EMPTY_LIST, MARK]);
    }

    pub fn end_list(&mut self) {
        self.buf.push(APPENDS);
    }

    pub fn str(&mut self, s: &str) {
        self.buf.push(BINUNICODE);
        let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(&s.as_bytes()[..len as usize]);
    }

    pub fn int(&mut self, v: i128) {
        if (0..=0xff).contains(&v) {
            self.buf.extend_from_slice(&[BININT1, v as u8]);
        } else if (0..=0xffff).contains(&v) {
            self.buf.push(BININT2);
            self.buf.extend_from_slice(&(v as u16).to_le_bytes());
        } else if let Ok(i) = i32::try_from(v) {
            self.buf.push(BININT);
            self.buf.extend_from_slice(&i.to_le_bytes());
        } else {
            // Two's complement, little-endian, as short as keeps the sign.
            let bytes = v.to_le_bytes();
            let mut n = bytes.len();
            while n > 1 {
                let top = bytes[n - 1];
                let next_sign = bytes[n - 2] & 0x80;
                if (top == 0 && next_sign == 0) || (top == 0xff && next_sign != 0) {
                    n -= 1;
                } else {
                    break;
                }
            }
            self.buf.extend_from_slice(&[LONG1, n as u8]);
            self.buf.extend_from_slice(&bytes[..n]);
        }
    }

    pub fn uint(&mut self, v: u64) {
        self.int(i128::from(v));
    }

    pub fn bool(&mut self, v: bool) {
        self.buf.push(if v { NEWTRUE } else { NEWFALSE });
    }

    /// A key and a string value, inside a dict.
    pub fn kv_str(&mut self, k: &str, v: &str) {
        self.str(k);
        self.str(v);
    }

    /// A key and an integer value, inside a dict.
    pub fn kv_uint(&mut self, k: &str, v: u64) {
        self.str(k);
        self.uint(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_take_the_shortest_opcode() {
        let mut p = Pickle::default();
        p.uint(7);
        p.uint(300);
        p.uint(70_000);
        p.uint(1 << 40);
        p.int(-1);
        assert_eq!(
            p.buf,
            [
                BININT1, 7, BININT2, 44, 1, BININT, 0x70, 0x11, 1, 0, LONG1, 6, 0, 0, 0, 0, 0, 1,
                BININT, 0xff, 0xff, 0xff, 0xff
            ]
        );
        let mut p = Pickle::default();
        p.uint(0x8000_0000);
        assert_eq!(p.buf, [LONG1, 5, 0, 0, 0, 0x80, 0]);
    }

    #[test]
    fn a_dict_of_a_list() {
        let mut p = Pickle::new();
        p.dict();
        p.str("a");
        p.list();
        p.bool(true);
        p.bool(false);
        p.end_list();
        p.end_dict();
        let b = p.finish();
        assert_eq!(
            b,
            [
                0x80, 2, b'}', b'(', b'X', 1, 0, 0, 0, b'a', b']', b'(', 0x88, 0x89, b'e', b'u',
                b'.'
            ]
        );
    }
}
