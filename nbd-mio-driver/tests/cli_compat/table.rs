//! The markdown tables of docs/NBDKIT-COMPAT.md: every row whose last cell
//! is a backticked check.

/// One row's check and where it is.
pub struct Row {
    /// 1-based line in the document.
    pub line: usize,
    /// The check, without backticks.
    pub check: String,
}

/// Cells of a table line, splitting on `|` but not on `\|`.
fn cells(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = line.trim().trim_matches('|').chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                chars.next();
                out.last_mut().unwrap().push('|');
            }
            '|' => out.push(String::new()),
            c => out.last_mut().unwrap().push(c),
        }
    }
    out.into_iter().map(|c| c.trim().to_owned()).collect()
}

/// Every table row with a check in its last cell. A row of a table whose
/// header's last column is "check" but without a check is an error.
pub fn rows(doc: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut in_checked_table = false;
    for (i, line) in doc.lines().enumerate() {
        if !line.starts_with('|') {
            in_checked_table = false;
            continue;
        }
        let c = cells(line);
        let last = c.last().cloned().unwrap_or_default();
        if last == "check" {
            in_checked_table = true;
            continue;
        }
        if !in_checked_table || last.starts_with("---") {
            continue;
        }
        let check = last
            .strip_prefix('`')
            .and_then(|s| s.strip_suffix('`'))
            .unwrap_or_else(|| panic!("line {}: no `check` in the last cell: {line}", i + 1));
        rows.push(Row {
            line: i + 1,
            check: check.to_owned(),
        });
    }
    rows
}
