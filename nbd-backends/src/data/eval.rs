//! Evaluating a parsed data expression into an [`Image`].
//!
//! A list is evaluated left to right with a cursor: bytes are written at
//! the cursor and advance it; `@` moves it (the image grows to the
//! furthest offset reached, so `@100` alone is 100 bytes); every other
//! expression is evaluated to an image of its own, offsets relative to its
//! start, and pasted at the cursor. Names (`-> \a`) are values bound in
//! the current scope, which each group and `$VAR` opens anew.

use std::collections::HashMap;
use std::io::Read as _;
use std::process::{Command, Stdio};
use std::rc::Rc;

use super::image::{Image, MAX_PAGES};
use super::parse::{Expr, Move, parse};

/// `$VAR` may expand to more `$VAR`s, this deep at most.
const MAX_VAR_DEPTH: usize = 32;
/// Largest file or script output read (the image limit, 1 GiB).
const MAX_READ: u64 = 1 << 30;

/// Evaluation context: variables from the command line, then the
/// environment; scopes of names.
pub(crate) struct Eval<'a> {
    vars: &'a [(&'a str, &'a str)],
    scopes: Vec<HashMap<String, Rc<Image>>>,
    var_depth: usize,
}

impl<'a> Eval<'a> {
    pub(crate) fn new(vars: &'a [(&'a str, &'a str)]) -> Self {
        Self {
            vars,
            scopes: Vec::new(),
            var_depth: 0,
        }
    }

    /// Evaluate a whole expression.
    pub(crate) fn run(&mut self, src: &str) -> Result<Image, String> {
        let list = parse(src)?;
        self.list(&list)
    }

    fn list(&mut self, items: &[Expr]) -> Result<Image, String> {
        self.scopes.push(HashMap::new());
        let r = self.list_in_scope(items);
        self.scopes.pop();
        r
    }

    fn list_in_scope(&mut self, items: &[Expr]) -> Result<Image, String> {
        let mut img = Image::default();
        let mut at = 0u64;
        for item in items {
            match item {
                Expr::Bytes(b) => {
                    let end = add(at, b.len() as u64)?;
                    img.write(at, b);
                    at = end;
                }
                Expr::Offset(m) => {
                    at = match *m {
                        Move::To(n) => n,
                        Move::Forward(n) => add(at, n)?,
                        Move::Back(n) => at.checked_sub(n).ok_or_else(|| {
                            format!("@-{n} moves before the start (the offset is {at})")
                        })?,
                        Move::Align(n) => add(at, (n - at % n) % n)?,
                    };
                    img.extend_to(check_size(at)?);
                }
                Expr::Assign(e, name) => {
                    let v = self.value(e)?;
                    if let Some(scope) = self.scopes.last_mut() {
                        scope.insert(name.clone(), Rc::new(v));
                    }
                }
                e => {
                    let v = self.value(e)?;
                    let end = add(at, v.len)?;
                    img.paste(at, &v);
                    at = end;
                }
            }
            check_pages(&img)?;
        }
        Ok(img)
    }

    /// Evaluate one expression to an image of its own.
    fn value(&mut self, e: &Expr) -> Result<Image, String> {
        match e {
            Expr::Bytes(b) => Ok(Image::from_bytes(b)),
            Expr::Group(items) => self.list(items),
            Expr::Name(n) => self.lookup(n).map(|v| (*v).clone()),
            Expr::Var(v) => self.var(v),
            Expr::File(_) | Expr::Script(_) => self.read(e, MAX_READ),
            Expr::Repeat(inner, n) => {
                let v = self.value(inner)?;
                v.len
                    .checked_mul(*n)
                    .filter(|&l| l <= crate::MAX_SIZE)
                    .ok_or_else(|| format!("*{n}: the result would be larger than 2^63-1 bytes"))?;
                if v.repeat_pages_bound(*n) > MAX_PAGES as u64 {
                    return Err(format!("*{n}: more than 1 GiB of non-zero data"));
                }
                Ok(v.repeat(*n))
            }
            Expr::Slice(inner, a, b) => {
                // A file or script is read only as far as the slice needs
                // (`</dev/urandom[:512]`).
                let v = match (&**inner, b) {
                    (Expr::File(_) | Expr::Script(_), Some(end)) => self.read(inner, *end)?,
                    _ => self.value(inner)?,
                };
                let start = a.unwrap_or(0);
                let end = b.unwrap_or(v.len);
                if start == end {
                    return Ok(Image::default());
                }
                if start > end || end > v.len {
                    return Err(format!(
                        "slice [{start}:{end}] is outside the {} bytes of its expression",
                        v.len
                    ));
                }
                Ok(v.slice(start, end))
            }
            Expr::Offset(_) | Expr::Assign(..) => {
                // The parser only makes these list items.
                Err("an @ offset or assignment cannot be used as a value".into())
            }
        }
    }

    fn lookup(&self, name: &str) -> Result<Rc<Image>, String> {
        self.scopes
            .iter()
            .rev()
            .find_map(|s| s.get(name).cloned())
            .ok_or_else(|| format!("\\{name} is not defined here"))
    }

    fn var(&mut self, name: &str) -> Result<Image, String> {
        let text = match self.vars.iter().rev().find(|(k, _)| *k == name) {
            Some((_, v)) => (*v).to_owned(),
            None => std::env::var(name).map_err(|_| {
                format!("${name}: no parameter {name}=... and no environment variable {name}")
            })?,
        };
        if self.var_depth >= MAX_VAR_DEPTH {
            return Err(format!(
                "${name}: variables nested more than {MAX_VAR_DEPTH} deep"
            ));
        }
        self.var_depth += 1;
        let list = parse(&text).map_err(|e| format!("${name}: {e}"));
        let r = list.and_then(|l| self.list(&l).map_err(|e| format!("${name}: {e}")));
        self.var_depth -= 1;
        r
    }

    /// `<FILE` or `<(SCRIPT)`, at most `limit` bytes.
    fn read(&mut self, e: &Expr, limit: u64) -> Result<Image, String> {
        let bytes = match e {
            Expr::File(path) => read_file(path, limit)?,
            Expr::Script(script) => run_script(script, limit)?,
            _ => return self.value(e),
        };
        Ok(Image::from_bytes(&bytes))
    }
}

fn add(a: u64, b: u64) -> Result<u64, String> {
    a.checked_add(b)
        .ok_or_else(|| "offset overflows 64 bits".to_owned())
        .and_then(check_size)
}

fn check_size(n: u64) -> Result<u64, String> {
    if n > crate::MAX_SIZE {
        return Err(format!("offset {n} is beyond the largest size, 2^63-1"));
    }
    Ok(n)
}

fn check_pages(img: &Image) -> Result<(), String> {
    if img.page_count() > MAX_PAGES {
        return Err("more than 1 GiB of non-zero data".into());
    }
    Ok(())
}

/// Read up to `limit` bytes; more than [`MAX_READ`] without a slice is an
/// error rather than a silent truncation.
fn read_limited(r: &mut dyn std::io::Read, limit: u64, what: &str) -> Result<Vec<u8>, String> {
    let cap = limit.min(MAX_READ);
    let mut buf = Vec::new();
    r.take(cap + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("{what}: {e}"))?;
    if buf.len() as u64 > cap {
        if cap == MAX_READ {
            return Err(format!(
                "{what}: more than 1 GiB (take a slice, e.g. [:512])"
            ));
        }
        buf.truncate(cap as usize);
    }
    Ok(buf)
}

fn read_file(path: &str, limit: u64) -> Result<Vec<u8>, String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("<{path}: {e}"))?;
    read_limited(&mut f, limit, &format!("<{path}"))
}

fn run_script(script: &str, limit: u64) -> Result<Vec<u8>, String> {
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("<(...): /bin/sh: {e}"))?;
    let mut out = child.stdout.take().ok_or("<(...): no pipe")?;
    let r = read_limited(&mut out, limit, "<(...)");
    drop(out);
    // A script cut short by a slice may run forever: stop it.
    let _ = child.kill();
    let status = child.wait().map_err(|e| format!("<(...): {e}"))?;
    let bytes = r?;
    let truncated = bytes.len() as u64 == limit;
    if !status.success() && !truncated {
        return Err(format!("<(...): the script failed ({status})"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(src: &str) -> Result<Vec<u8>, String> {
        Eval::new(&[]).run(src).map(|i| i.to_vec())
    }

    #[test]
    fn cases_from_the_nbdkit_manual_and_test_suite() {
        let ok: &[(&str, &[u8])] = &[
            ("", b""),
            ("0 1 2 3 @6 0x55 0xaa", b"\0\x01\x02\x03\0\0\x55\xaa"),
            ("0 1 2 3 @^8 @-2 le16:0xaa55", b"\0\x01\x02\x03\0\0\x55\xaa"),
            ("le32:1 be16:1", b"\x01\0\0\0\0\x01"),
            ("@4 \"\\x00\"", b"\0\0\0\0\0"),
            ("@+4 @-1 \"\\x00\"", b"\0\0\0\0"),
            ("1 @^4 \"\\x00\"", b"\x01\0\0\0\0"),
            ("( 0x55 0xAA )*2", b"\x55\xaa\x55\xaa"),
            ("( \"Hello\" @^8 )*2", b"Hello\0\0\0Hello\0\0\0"),
            ("( @4 )*4 1", b"\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\x01"),
            ("1 (@2 2) (@3 3)", b"\x01\0\0\x02\0\0\0\x03"),
            ("1 1 1 1 @0 ( @3 2 )", b"\0\0\0\x02"),
            ("1*2*3", b"\x01\x01\x01\x01\x01\x01"),
            ("1 @-1 2", b"\x02"),
            ("(1 2 3)[1:]*2", b"\x02\x03\x02\x03"),
            ("1*2[1:]", b"\x01"),
            ("\"ab\" -> \\x \\x*3", b"ababab"),
            ("\"Hello\"[3:5] \"Hello\"[99:99]", b"lo"),
            ("@100 @50 1", &[0; 100]),
            ("1 2 3 -> \\a", b"\x01\x02"),
            ("<( printf abc )[1:2]", b"b"),
            ("<( yes )[:4]", b"y\ny\n"),
            (
                "(0x31 0x32) -> \\a (0x35 0x36) -> \\b ( (0x33 0x34) -> \\a (0x37 0x38) -> \\c \\a \\a \\b \\c ) \\a \\b",
                b"343456781256",
            ),
        ];
        for &(src, want) in ok {
            let mut want = want.to_vec();
            if src.starts_with("@100") {
                want[50] = 1;
            }
            assert_eq!(eval(src).unwrap(), want, "{src}");
        }
        let big = eval("1*1000 @100 0*100").unwrap();
        assert_eq!(big.len(), 1000);
        assert!(big[..100].iter().all(|&b| b == 1) && big[100..200].iter().all(|&b| b == 0));
        assert!(big[200..].iter().all(|&b| b == 1));
    }

    #[test]
    fn variables_come_from_parameters_then_the_environment() {
        let vars = [("a", " 1 2 "), ("c", " $d*2 "), ("d", "5")];
        let img = Eval::new(&vars).run("$a $c").unwrap();
        assert_eq!(img.to_vec(), [1, 2, 5, 5]);
        let e = Eval::new(&[]).run("$nbdd_surely_unset_var").unwrap_err();
        assert!(e.contains("no parameter"), "{e}");
        let rec = [("a", "$a")];
        assert!(Eval::new(&rec).run("$a").unwrap_err().contains("nested"));
    }

    #[test]
    fn evaluation_errors() {
        for bad in [
            "@-2",
            "@2 @-3",
            "@1 @^2 @-3",
            "0[2:]",
            "0[:2]",
            "\"123\"[4:]",
            "\"123\"[1:0]",
            "</nonexistent-nbdd",
            "\\a",
            "( 0 -> \\a ) \\a",
            "\\a ( 0 -> \\a )",
            "0 -> \\a \\b",
            "(0 -> \\a) -> \\b \\b \\a",
            "$nbdd_surely_unset_var",
            "1*9223372036854775807*2",
            "(1 @8191)*262145",
            "@0x7fffffffffffffff 1",
            "<( exit 3 )",
        ] {
            assert!(eval(bad).is_err(), "{bad} evaluated");
        }
        // Huge but empty: costs nothing.
        let img = Eval::new(&[])
            .run("0*1000000000000 @0x7fffffffffffffff")
            .unwrap();
        assert_eq!((img.len, img.page_count()), (i64::MAX as u64, 0));
    }
}
