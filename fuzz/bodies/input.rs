//! Reading structure out of fuzz bytes, and writing seeds in the same layout.
//! Running out of bytes is not an error: every read returns zeros or less.

/// A cursor over the fuzz input.
#[derive(Debug)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    /// Up to `n` bytes.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// A length-prefixed (u16, little-endian) piece.
    pub fn chunk(&mut self) -> &'a [u8] {
        let n = usize::from(self.u16());
        self.take(n)
    }

    pub fn rest(self) -> &'a [u8] {
        self.data
    }
}

/// Writes seeds in the layout [`Input`] reads.
#[derive(Debug, Default)]
pub struct Builder {
    bytes: Vec<u8>,
}

impl Builder {
    pub fn new() -> Builder {
        Builder::default()
    }

    pub fn u8(mut self, v: u8) -> Builder {
        self.bytes.push(v);
        self
    }

    pub fn u16(mut self, v: u16) -> Builder {
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn bytes(mut self, b: &[u8]) -> Builder {
        self.bytes.extend_from_slice(b);
        self
    }

    pub fn chunk(self, b: &[u8]) -> Builder {
        let len = u16::try_from(b.len()).expect("seed chunks fit in 64 KiB");
        self.u16(len).bytes(b)
    }

    pub fn build(self) -> Vec<u8> {
        self.bytes
    }
}

/// Splits `data` at the first `n - 1` occurrences of `sep` (fewer parts when
/// there are fewer separators; missing parts are empty).
pub fn parts(data: &[u8], sep: u8, n: usize) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = data.splitn(n, |b| *b == sep).collect();
    out.resize(n, &[]);
    out
}

/// The bytes as text, as a store or a file read would hand them over: invalid
/// UTF-8 is replaced rather than skipped, so every input reaches the parser.
pub fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}
