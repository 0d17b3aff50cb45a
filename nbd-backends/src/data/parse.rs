//! The data format's grammar (nbdkit-data-plugin(1), "DATA FORMAT"):
//!
//! ```text
//! list    := item*
//! item    := '@' ('+'|'-'|'^')? NUMBER
//!          | primary postfix*
//! primary := NUMBER | ('le'|'be')('16'|'32'|'64') ':' NUMBER | STRING
//!          | '<' FILE | '<(' SCRIPT ')' | '(' list ')' | '$' VAR | '\' NAME
//! postfix := '*' NUMBER | '[' NUMBER? ':' NUMBER? ']' | '->' '\' NAME
//! ```
//!
//! Numbers are C's: decimal, `0x` hex, `0` octal. `#` comments to the end
//! of the line. Tokens need no space between them (`1"a"` is two).
//! Errors name the byte offset in the expression.

/// How `@` moves the offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Move {
    To(u64),
    Forward(u64),
    Back(u64),
    Align(u64),
}

/// One parsed expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expr {
    Bytes(Vec<u8>),
    Offset(Move),
    File(String),
    Script(String),
    Group(Vec<Self>),
    Var(String),
    Name(String),
    Assign(Box<Self>, String),
    Repeat(Box<Self>, u64),
    Slice(Box<Self>, Option<u64>, Option<u64>),
}

/// Groups nest at most this deep (the parser and evaluator recurse).
const MAX_DEPTH: usize = 200;

/// Parse a whole expression.
pub(crate) fn parse(src: &str) -> Result<Vec<Expr>, String> {
    let mut p = Parser {
        s: src.as_bytes(),
        at: 0,
        depth: 0,
    };
    let list = p.list()?;
    match p.peek() {
        None => Ok(list),
        Some(_) => Err(p.err("unmatched ')'")),
    }
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
    depth: usize,
}

fn name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

impl Parser<'_> {
    fn err(&self, what: &str) -> String {
        format!("offset {}: {what}", self.at)
    }

    /// Skip whitespace and comments; the next byte, if any.
    fn peek(&mut self) -> Option<u8> {
        loop {
            match self.s.get(self.at) {
                Some(c) if c.is_ascii_whitespace() => self.at += 1,
                Some(b'#') => {
                    while self.s.get(self.at).is_some_and(|&c| c != b'\n') {
                        self.at += 1;
                    }
                }
                other => return other.copied(),
            }
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.s.get(self.at) == Some(&c) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn list(&mut self) -> Result<Vec<Expr>, String> {
        let mut items = Vec::new();
        while let Some(c) = self.peek() {
            if c == b')' {
                break;
            }
            let item = if c == b'@' {
                self.at += 1;
                Expr::Offset(self.offset()?)
            } else {
                let e = self.primary()?;
                self.postfix(e)?
            };
            items.push(item);
        }
        Ok(items)
    }

    fn offset(&mut self) -> Result<Move, String> {
        let kind = self.s.get(self.at).copied();
        let m = match kind {
            Some(b'+') | Some(b'-') | Some(b'^') => {
                self.at += 1;
                let n = self.number("a number after @+, @- or @^")?;
                match kind {
                    Some(b'+') => Move::Forward(n),
                    Some(b'-') => Move::Back(n),
                    _ if n.is_power_of_two() => Move::Align(n),
                    _ => {
                        return Err(self.err(&format!("@^{n}: the alignment must be a power of 2")));
                    }
                }
            }
            _ => Move::To(self.number("an offset after @")?),
        };
        if matches!(self.peek(), Some(b'*' | b'[')) || self.s[self.at..].starts_with(b"->") {
            return Err(self.err("*N, [..] and -> must follow an expression, not an @ offset"));
        }
        Ok(m)
    }

    /// A C-style unsigned number at the cursor (no whitespace skipped).
    fn number(&mut self, what: &str) -> Result<u64, String> {
        let start = self.at;
        let rest = &self.s[self.at..];
        let (radix, skip) = if rest.starts_with(b"0x") || rest.starts_with(b"0X") {
            (16, 2)
        } else if rest.first() == Some(&b'0') {
            (8, 0)
        } else {
            (10, 0)
        };
        let digits = rest[skip..]
            .iter()
            .take_while(|c| char::from(**c).is_digit(radix))
            .count();
        if digits == 0 {
            return Err(self.err(&format!("expected {what}")));
        }
        let text = std::str::from_utf8(&rest[skip..skip + digits]).unwrap_or_default();
        self.at += skip + digits;
        u64::from_str_radix(text, radix).map_err(|_| {
            self.at = start;
            self.err("number too large for 64 bits")
        })
    }

    fn primary(&mut self) -> Result<Expr, String> {
        let start = self.at;
        let c = self.s[self.at];
        match c {
            b'0'..=b'9' => {
                let n = self.number("a byte")?;
                u8::try_from(n).map(|b| Expr::Bytes(vec![b])).map_err(|_| {
                    self.at = start;
                    self.err(&format!(
                        "{n} is not a byte (0-255); use le16:, be32: ... for words"
                    ))
                })
            }
            b'l' | b'b' => self.word(),
            b'"' => self.string(),
            b'<' => self.file_or_script(),
            b'(' => {
                self.at += 1;
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return Err(self.err("groups nested too deeply"));
                }
                let inner = self.list()?;
                self.depth -= 1;
                if self.peek() != Some(b')') {
                    self.at = start;
                    return Err(self.err("'(' without a matching ')'"));
                }
                self.at += 1;
                Ok(Expr::Group(inner))
            }
            b'$' => {
                self.at += 1;
                let name = self.ident()?;
                Ok(Expr::Var(name))
            }
            b'\\' => {
                self.at += 1;
                let name = self.ident()?;
                Ok(Expr::Name(name))
            }
            b'*' | b'[' => Err(self.err("*N and [..] must follow an expression")),
            _ => {
                let ch = String::from_utf8_lossy(&self.s[self.at..])
                    .chars()
                    .next()
                    .unwrap_or('?');
                Err(self.err(&format!("unexpected '{ch}'")))
            }
        }
    }

    fn ident(&mut self) -> Result<String, String> {
        let n = self.s[self.at..]
            .iter()
            .take_while(|&&c| name_char(c))
            .count();
        if n == 0 {
            return Err(self.err("expected a name (letters, digits, - and _)"));
        }
        let name = String::from_utf8_lossy(&self.s[self.at..self.at + n]).into_owned();
        self.at += n;
        Ok(name)
    }

    fn word(&mut self) -> Result<Expr, String> {
        let rest = &self.s[self.at..];
        let bits: u32 = match rest.get(2..5) {
            Some(b"16:") => 16,
            Some(b"32:") => 32,
            Some(b"64:") => 64,
            _ => return Err(self.err("expected le16:, le32:, le64:, be16:, be32: or be64:")),
        };
        let little = rest.starts_with(b"le");
        if !little && !rest.starts_with(b"be") {
            return Err(self.err("expected le16:, le32:, le64:, be16:, be32: or be64:"));
        }
        self.at += 5;
        let start = self.at;
        let n = self.number("a number after the word prefix")?;
        if bits < 64 && n >> bits != 0 {
            self.at = start;
            return Err(self.err(&format!("{n} does not fit in {bits} bits")));
        }
        let bytes = n.to_le_bytes();
        let mut v = bytes[..(bits / 8) as usize].to_vec();
        if !little {
            v.reverse();
        }
        Ok(Expr::Bytes(v))
    }

    fn string(&mut self) -> Result<Expr, String> {
        let start = self.at;
        self.at += 1;
        let mut out = Vec::new();
        loop {
            let Some(&c) = self.s.get(self.at) else {
                self.at = start;
                return Err(self.err("string without a closing '\"'"));
            };
            self.at += 1;
            match c {
                b'"' => return Ok(Expr::Bytes(out)),
                b'\\' => self.escape(&mut out, start)?,
                _ => out.push(c),
            }
        }
    }

    /// One C escape after a backslash.
    fn escape(&mut self, out: &mut Vec<u8>, start: usize) -> Result<(), String> {
        let Some(&c) = self.s.get(self.at) else {
            self.at = start;
            return Err(self.err("string without a closing '\"'"));
        };
        self.at += 1;
        let simple = match c {
            b'a' => Some(7),
            b'b' => Some(8),
            b'f' => Some(12),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'v' => Some(11),
            b'x' | b'u' | b'U' | b'0'..=b'7' => None,
            // \\, \", \' and any other character stand for themselves.
            other => Some(other),
        };
        if let Some(b) = simple {
            out.push(b);
            return Ok(());
        }
        let (len, radix) = match c {
            b'x' => (2, 16),
            b'u' => (4, 16),
            b'U' => (8, 16),
            _ => {
                self.at -= 1; // the first octal digit
                let n = self.s[self.at..]
                    .iter()
                    .take(3)
                    .take_while(|d| (b'0'..=b'7').contains(d))
                    .count();
                (n, 8)
            }
        };
        let digits = self
            .s
            .get(self.at..self.at + len)
            .filter(|d| d.iter().all(|&x| char::from(x).is_digit(radix)));
        let Some(digits) = digits else {
            return Err(self.err(&format!(
                "\\{} needs exactly {len} hexadecimal digits",
                c as char
            )));
        };
        let v = u32::from_str_radix(std::str::from_utf8(digits).unwrap_or_default(), radix)
            .map_err(|_| self.err("bad escape"))?;
        self.at += len;
        match c {
            b'u' | b'U' => {
                let ch = char::from_u32(v).ok_or_else(|| self.err("not a Unicode character"))?;
                out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
            }
            _ => out.push(u8::try_from(v).map_err(|_| self.err("octal escape above \\377"))?),
        }
        Ok(())
    }

    fn file_or_script(&mut self) -> Result<Expr, String> {
        let start = self.at;
        self.at += 1;
        if self.eat(b'(') {
            let body_start = self.at;
            let mut depth = 1usize;
            while depth > 0 {
                match self.s.get(self.at) {
                    None => {
                        self.at = start;
                        return Err(self.err("'<(' script without a matching ')'"));
                    }
                    Some(b'(') => depth += 1,
                    Some(b')') => depth -= 1,
                    Some(_) => {}
                }
                self.at += 1;
            }
            let body = &self.s[body_start..self.at - 1];
            return Ok(Expr::Script(String::from_utf8_lossy(body).into_owned()));
        }
        let n = self.s[self.at..]
            .iter()
            .take_while(|c| !c.is_ascii_whitespace() && !b"()*[".contains(c))
            .count();
        if n == 0 {
            return Err(self.err("expected a file name after '<'"));
        }
        let name = String::from_utf8_lossy(&self.s[self.at..self.at + n]).into_owned();
        self.at += n;
        Ok(Expr::File(name))
    }

    fn postfix(&mut self, mut e: Expr) -> Result<Expr, String> {
        loop {
            let save = self.at;
            match self.peek() {
                Some(b'*') => {
                    self.at += 1;
                    self.peek();
                    let n = self.number("a repeat count after *")?;
                    e = Expr::Repeat(Box::new(e), n);
                }
                Some(b'[') => {
                    self.at += 1;
                    let a = self.opt_number()?;
                    if self.peek() != Some(b':') {
                        return Err(self.err("expected ':' in a slice [START:END]"));
                    }
                    self.at += 1;
                    let b = self.opt_number()?;
                    if self.peek() != Some(b']') {
                        return Err(self.err("expected ']' closing a slice"));
                    }
                    self.at += 1;
                    e = Expr::Slice(Box::new(e), a, b);
                }
                Some(b'-') if self.s[self.at..].starts_with(b"->") => {
                    self.at += 2;
                    if self.peek() != Some(b'\\') {
                        return Err(self.err("expected \\NAME after ->"));
                    }
                    self.at += 1;
                    let name = self.ident()?;
                    e = Expr::Assign(Box::new(e), name);
                }
                _ => {
                    self.at = save;
                    return Ok(e);
                }
            }
        }
    }

    fn opt_number(&mut self) -> Result<Option<u64>, String> {
        match self.peek() {
            Some(b'0'..=b'9') => self.number("a number").map(Some),
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Expr::*;

    #[test]
    fn tokens_need_no_spaces() {
        assert_eq!(parse("08").unwrap(), [Bytes(vec![0]), Bytes(vec![8])]);
        assert_eq!(
            parse("1\"a\"").unwrap(),
            [Bytes(vec![1]), Bytes(b"a".to_vec())]
        );
        assert_eq!(
            parse("0x1F 017 be16:0x102").unwrap(),
            [Bytes(vec![31]), Bytes(vec![15]), Bytes(vec![1, 2])]
        );
        assert_eq!(
            parse("1*2[1:] -> \\x").unwrap(),
            [Assign(
                Box::new(Slice(
                    Box::new(Repeat(Box::new(Bytes(vec![1])), 2)),
                    Some(1),
                    None
                )),
                "x".into()
            )]
        );
        assert_eq!(
            parse("</tmp/f*2").unwrap(),
            [Repeat(Box::new(File("/tmp/f".into())), 2)]
        );
        assert_eq!(
            parse("<( (echo a) )").unwrap(),
            [Script(" (echo a) ".into())]
        );
        assert_eq!(
            parse("@^512 @-2 # c\n@+1").unwrap(),
            [
                Offset(Move::Align(512)),
                Offset(Move::Back(2)),
                Offset(Move::Forward(1))
            ]
        );
        assert_eq!(
            parse(r#""\x41\101\u00e9\q\"""#).unwrap(),
            [Bytes(b"AA\xc3\xa9q\"".to_vec())]
        );
    }

    #[test]
    fn bad_input_is_refused_with_its_offset() {
        // nbdkit's own list of bad data (tests/test-data-bad.sh).
        for bad in [
            "-1",
            "-",
            "256",
            "0400",
            "0x100",
            "0xfff",
            "0xffffffffffffffffff",
            "le16",
            "le16:",
            "le16:-1",
            "le16:abc",
            "le16:0x10000",
            "be32:0x100000000",
            "le64:0x10000000000000000",
            "a",
            "x",
            "be",
            "le",
            "be1",
            "le3",
            "¢",
            "?",
            "\\",
            "^",
            "@",
            "@+",
            "@-",
            "@^",
            "<",
            "<(",
            "$",
            "*",
            "[",
            ":",
            "]",
            "(",
            ")",
            "( (",
            "( ( )",
            ") ( )",
            "( ) )",
            "\"",
            "\"\\",
            "\"\\\\",
            "\"\\\"",
            "\"\\x\"",
            "*0",
            "*1",
            "0*-1",
            "0*",
            "0*x",
            "0**",
            "[:]",
            "[0:1]",
            "@^3",
            "@^0",
            "@4*2",
        ] {
            let e = parse(bad).err().unwrap_or_else(|| panic!("{bad:?} parsed"));
            assert!(e.starts_with("offset "), "{e}");
        }
    }
}
