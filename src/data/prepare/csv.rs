//! A small CSV reader for the Food101 title files: comma separated, fields optionally quoted
//! with `"` (a doubled `""` inside quotes is one quote, quoted fields may hold commas and line
//! breaks), LF or CRLF line ends, no header. Written here rather than pulling in a crate because
//! this is the only CSV the engine reads and the dialect is fixed.

use std::path::Path;

use crate::error::{Error, Result};

/// One record: the 1-based line it starts on and its fields.
pub type Record = (usize, Vec<String>);

/// Parses all records of `text`; blank lines are skipped. `path` names the file in errors.
///
/// With `columns`, every record must have that many fields, and a quoted field that spans
/// lines must not swallow a line that is itself a whole record of `columns` fields: that is
/// an unclosed quote eating the rows after it (their rows, and maybe a whole class, would
/// vanish into one text). Errors name the line where the quote opens.
pub fn parse(text: &str, path: &Path, columns: Option<usize>) -> Result<Vec<Record>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut records = Vec::new();
    let mut fields: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut line = 1usize;
    let mut record_line = 1usize;
    // The line where the current quoted field's opening quote is.
    let mut quote_line = 1usize;
    let mut chars = text.chars().peekable();
    // Whether the current field started with a quote, and whether we are inside the quotes.
    let mut quoted = false;
    let mut in_quotes = false;

    let end_record = |fields: &mut Vec<String>,
                      field: &mut String,
                      records: &mut Vec<Record>,
                      at: usize|
     -> Result<()> {
        fields.push(std::mem::take(field));
        let f = std::mem::take(fields);
        if f.len() == 1 && f[0].is_empty() {
            return Ok(());
        }
        if let Some(n) = columns.filter(|&n| n != f.len()) {
            return Err(Error::format(
                path,
                format!("line {at}: expected {n} columns, found {}", f.len()),
            ));
        }
        records.push((at, f));
        Ok(())
    };

    while let Some(c) = chars.next() {
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => {
                    in_quotes = false;
                    if let Some(n) = columns {
                        check_swallowed(&field, quote_line, line, n, path)?;
                    }
                }
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
                quote_line = line;
            }
            ',' => {
                fields.push(std::mem::take(&mut field));
                quoted = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                end_record(&mut fields, &mut field, &mut records, record_line)?;
                quoted = false;
                line += 1;
                record_line = line;
            }
            _ if quoted && quote_line != line => {
                return Err(Error::format(
                    path,
                    format!(
                        "line {quote_line}: the quoted field that opens here runs on to line \
                         {line}, where {c:?} follows its closing quote; is the quote on line \
                         {quote_line} missing its closing quote? (a quote inside a quoted field \
                         is written twice: \"\")"
                    ),
                ));
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
            format!(
                "line {quote_line}: a quoted field opens here and is never closed (the file \
                 ends on line {line} inside it)"
            ),
        ));
    }
    end_record(&mut fields, &mut field, &mut records, record_line)?;
    Ok(records)
}

/// Errors when a quoted field that opened on `open` and closed on `close` holds, on one of its
/// later lines, a whole record of `columns` fields: the quote was left open by mistake.
fn check_swallowed(
    field: &str,
    open: usize,
    close: usize,
    columns: usize,
    path: &Path,
) -> Result<()> {
    for (k, inner) in field.split('\n').enumerate().skip(1) {
        let inner = inner.strip_suffix('\r').unwrap_or(inner);
        let looks_like_a_row = matches!(
            parse(inner, path, None).as_deref(),
            Ok([(_, f)]) if f.len() == columns
        );
        if looks_like_a_row {
            return Err(Error::format(
                path,
                format!(
                    "line {open}: the quoted field that opens here is closed only on line \
                     {close}, so line {} ({inner:?}) would become part of its text instead of \
                     a row of its own; close the quote on line {open} (a quote inside a quoted \
                     field is written twice: \"\")",
                    open + k
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Vec<Record> {
        parse(s, Path::new("t.csv"), None).unwrap()
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
        let e = parse("a,b,c\nd,\"open,f\n", Path::new("t.csv"), None).unwrap_err();
        assert!(e.to_string().contains("t.csv: line 2"), "{e}");
        let e = parse("a,\"q\"x,c", Path::new("t.csv"), None).unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
    }

    fn err(s: &str) -> String {
        parse(s, Path::new("t.csv"), Some(3))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn an_unclosed_quote_is_reported_where_it_opens() {
        // Issue case 5: the quote of line 2 closes on line 5, followed by text.
        let text = "a.jpg,ok,c1\nb.jpg,\"unclosed,c2\nc.jpg,x,c2\nd.jpg,y,c2\ne.jpg,\"z\",c2\n";
        let e = err(text);
        assert!(e.starts_with("t.csv: line 2: "), "{e}");
        // Another layout: the quote closes right before a comma, so the record has three
        // fields and lines 3 to 5 would vanish into line 2's text.
        let text =
            "a.jpg,ok,c1\nb.jpg,\"unclosed,c2\nc.jpg,x,c2\nd.jpg,y,c2\ne.jpg,z\",c2\nf.jpg,w,c3\n";
        let e = err(text);
        assert!(e.starts_with("t.csv: line 2: "), "{e}");
        assert!(e.contains("line 3 (\"c.jpg,x,c2\")"), "{e}");
        // Never closed: the line of the quote, not of the record or the file's end.
        let e = err("a,b,c\nd,e,f\ng,\"h,i\nj\nk\n");
        assert!(
            e.starts_with("t.csv: line 3: a quoted field opens here"),
            "{e}"
        );
        let e = err("a,b,c\nd,e,\"f\ng\nh");
        assert!(e.starts_with("t.csv: line 2: "), "{e}");
    }

    #[test]
    fn multi_line_texts_and_column_counts() {
        // A text on two lines whose second line is not a row is a text on two lines.
        let r = parse(
            "a.jpg,\"two\nlines, here\",x\n",
            Path::new("t.csv"),
            Some(3),
        )
        .unwrap();
        assert_eq!(r[0].1[1], "two\nlines, here");
        let e = err("a.jpg,b,c\nd.jpg,e\n");
        assert!(e.contains("line 2: expected 3 columns, found 2"), "{e}");
    }
}
