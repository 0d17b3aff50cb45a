//! A minimal JSON reader for the `--json` / `--output=json` output of
//! nbdinfo, qemu-img and fio, so the tests need no serde dependency.
//!
//! Numbers are kept as their source text: export sizes reach 2^63 and an
//! `f64` would silently round them.

/// A parsed JSON value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A number, as written.
    Num(String),
    /// A string, unescaped.
    Str(String),
    /// An array.
    Arr(Vec<Value>),
    /// An object, in source order.
    Obj(Vec<(String, Value)>),
}

impl Value {
    /// The member `key` of an object.
    ///
    /// # Panics
    /// If this is not an object or has no such member.
    pub fn get(&self, key: &str) -> &Self {
        self.try_get(key)
            .unwrap_or_else(|| panic!("JSON has no member {key:?}: {self:?}"))
    }

    /// The member `key` of an object, if any.
    pub fn try_get(&self, key: &str) -> Option<&Self> {
        match self {
            Self::Obj(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The elements of an array.
    ///
    /// # Panics
    /// If this is not an array.
    pub fn arr(&self) -> &[Self] {
        match self {
            Self::Arr(a) => a,
            _ => panic!("JSON value is not an array: {self:?}"),
        }
    }

    /// A string's contents.
    ///
    /// # Panics
    /// If this is not a string.
    pub fn str(&self) -> &str {
        match self {
            Self::Str(s) => s,
            _ => panic!("JSON value is not a string: {self:?}"),
        }
    }

    /// A non-negative integer.
    ///
    /// # Panics
    /// If this is not a number that fits a u64.
    pub fn u64(&self) -> u64 {
        match self {
            Self::Num(n) => n
                .parse()
                .unwrap_or_else(|_| panic!("JSON number {n} is not a u64")),
            _ => panic!("JSON value is not a number: {self:?}"),
        }
    }

    /// A number as f64 (for rates and timings).
    ///
    /// # Panics
    /// If this is not a number.
    pub fn f64(&self) -> f64 {
        match self {
            Self::Num(n) => n.parse().unwrap_or_else(|_| panic!("bad JSON number {n}")),
            _ => panic!("JSON value is not a number: {self:?}"),
        }
    }

    /// A boolean.
    ///
    /// # Panics
    /// If this is not a boolean.
    pub fn bool(&self) -> bool {
        match self {
            Self::Bool(b) => *b,
            _ => panic!("JSON value is not a boolean: {self:?}"),
        }
    }
}

/// Parses one JSON document (surrounding whitespace allowed).
///
/// # Panics
/// On malformed input, showing where.
pub fn parse(text: &str) -> Value {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    let v = p.value();
    p.ws();
    assert!(
        p.i == p.s.len(),
        "trailing text after JSON at byte {}: {text}",
        p.i
    );
    v
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> u8 {
        self.s.get(self.i).copied().unwrap_or(0)
    }

    fn fail(&self, what: &str) -> ! {
        let ctx = String::from_utf8_lossy(
            &self.s[self.i.saturating_sub(40)..self.s.len().min(self.i + 40)],
        );
        panic!("malformed JSON at byte {} ({what}): …{ctx}…", self.i)
    }

    fn ws(&mut self) {
        while matches!(self.peek(), b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn eat(&mut self, lit: &str) {
        if self.s[self.i..].starts_with(lit.as_bytes()) {
            self.i += lit.len();
        } else {
            self.fail(lit)
        }
    }

    fn value(&mut self) -> Value {
        self.ws();
        match self.peek() {
            b'{' => self.object(),
            b'[' => self.array(),
            b'"' => Value::Str(self.string()),
            b't' => {
                self.eat("true");
                Value::Bool(true)
            }
            b'f' => {
                self.eat("false");
                Value::Bool(false)
            }
            b'n' => {
                self.eat("null");
                Value::Null
            }
            b'-' | b'0'..=b'9' => {
                let start = self.i;
                while matches!(self.peek(), b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
                    self.i += 1;
                }
                Value::Num(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
            }
            _ => self.fail("value"),
        }
    }

    fn object(&mut self) -> Value {
        self.eat("{");
        let mut members = Vec::new();
        self.ws();
        if self.peek() == b'}' {
            self.i += 1;
            return Value::Obj(members);
        }
        loop {
            self.ws();
            let key = self.string();
            self.ws();
            self.eat(":");
            members.push((key, self.value()));
            self.ws();
            match self.peek() {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Value::Obj(members);
                }
                _ => self.fail("',' or '}'"),
            }
        }
    }

    fn array(&mut self) -> Value {
        self.eat("[");
        let mut items = Vec::new();
        self.ws();
        if self.peek() == b']' {
            self.i += 1;
            return Value::Arr(items);
        }
        loop {
            items.push(self.value());
            self.ws();
            match self.peek() {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Value::Arr(items);
                }
                _ => self.fail("',' or ']'"),
            }
        }
    }

    fn string(&mut self) -> String {
        self.eat("\"");
        let mut out = Vec::new();
        loop {
            let c = self.peek();
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let e = self.peek();
                    self.i += 1;
                    match e {
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'u' => {
                            let hex = std::str::from_utf8(
                                self.s.get(self.i..self.i + 4).unwrap_or_default(),
                            )
                            .unwrap_or_default();
                            let code = u32::from_str_radix(hex, 16)
                                .unwrap_or_else(|_| self.fail("\\u escape"));
                            self.i += 4;
                            let ch = char::from_u32(code).unwrap_or('\u{fffd}');
                            out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                        }
                        other => out.push(other),
                    }
                }
                0 if self.i > self.s.len() => self.fail("unterminated string"),
                other => out.push(other),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[test]
fn parses_nested_documents() {
    let v = parse(
        r#" {"a": [1, -2.5e3, true, null], "b": {"c": "x\"y\u0041"}, "big": 9223372036854775807} "#,
    );
    assert_eq!(v.get("a").arr().len(), 4);
    assert_eq!(v.get("b").get("c").str(), "x\"yA");
    assert_eq!(v.get("big").u64(), 9_223_372_036_854_775_807);
}
