//! A small CSV reader for the Food101 title files: comma separated, fields optionally quoted
//! with `"` (a doubled `""` inside quotes is one quote, quoted fields may hold commas and line
//! breaks), LF or CRLF line ends, no header. Written here rather than pulling in a crate because
//! this is the only CSV the engine reads and the dialect is fixed.

use std::path::Path;

use crate::error::{Error, Result};

/// One record: the 1-based line it starts on and its fields.
pub type Record = (usize, Vec<String>);

/// Parses all records of `text`; blank lines are skipped. `path` names the file in errors.
pub fn parse(text: &str, path: &Path) -> Result<Vec<Record>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut records = Vec::new();
    let mut fields: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut line = 1usize;
    let mut record_line = 1usize;
    let mut chars = text.chars().peekable();
    // Whether the current field started with a quote, and whether we are inside the quotes.
    let mut quoted = false;
    let mut in_quotes = false;

    let end_record =
        |fields: &mut Vec<String>, field: &mut String, records: &mut Vec<Record>, at: usize| {
            fields.push(std::mem::take(field));
            let f = std::mem::take(fields);
            if !(f.len() == 1 && f[0].is_empty()) {
                records.push((at, f));
            }
        };

    while let Some(c) = chars.next() {
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => in_quotes = false,
                '\n' => {
                    line += 1;
                    field.push('\n');
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' if field.is_empty() && !quoted => {
                quoted = true;
                in_quotes = true;
            }
            ',' => {
                fields.push(std::mem::take(&mut field));
                quoted = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                end_record(&mut fields, &mut field, &mut records, record_line);
                quoted = false;
                line += 1;
                record_line = line;
            }
            _ if quoted => {
                return Err(Error::format(
                    path,
                    format!("line {line}: unexpected {c:?} after the closing quote of a field"),
                ));
            }
            _ => field.push(c),
        }
    }
    if in_quotes {
        return Err(Error::format(
            path,
            format!("line {record_line}: a quoted field is never closed"),
        ));
    }
    end_record(&mut fields, &mut field, &mut records, record_line);
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Vec<Record> {
        parse(s, Path::new("t.csv")).unwrap()
    }

    #[test]
    fn quoting_and_line_ends() {
        let r = p("a.jpg,plain text,apple_pie\r\nb.jpg,\"with, comma and \"\"quote\"\"\",pho\n\nc.jpg,\"two\nlines\",x\n");
        assert_eq!(r.len(), 3);
        assert_eq!(
            r[0],
            (
                1,
                vec!["a.jpg".into(), "plain text".into(), "apple_pie".into()]
            )
        );
        assert_eq!(r[1].1[1], "with, comma and \"quote\"");
        assert_eq!(
            r[2],
            (4, vec!["c.jpg".into(), "two\nlines".into(), "x".into()])
        );
        // No trailing newline, empty fields, BOM.
        assert_eq!(
            p("\u{feff}a,,\"\""),
            vec![(1, vec!["a".into(), "".into(), "".into()])]
        );
        // A quote inside an unquoted field is literal.
        assert_eq!(p("a,5\" pie,b")[0].1[1], "5\" pie");
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse("a,b,c\nd,\"open,f\n", Path::new("t.csv")).unwrap_err();
        assert!(e.to_string().contains("t.csv: line 2"), "{e}");
        let e = parse("a,\"q\"x,c", Path::new("t.csv")).unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
    }
}
