//! A small CSV reader for the Food101 title files: comma separated, fields optionally quoted
//! with `"` (a doubled `""` inside quotes is one quote, quoted fields may hold commas and line
//! breaks), LF or CRLF line ends, no header. Written here rather than read with the `csv` crate
//! (which reads the engine's other CSV files) because its errors must say where a stray quote
//! opens: that crate reads text after a closing quote (`"q"x` as `qx`) and a quote left open to
//! the end of the file without an error, and the positions it gives are those of records, not
//! of quotes.

use std::iter::Peekable;
use std::path::Path;
use std::str::Chars;

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
    let mut reader = Reader::new(path, columns);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if reader.in_quotes {
            reader.quoted_char(c, &mut chars)?;
        } else {
            reader.plain_char(c, &mut chars)?;
        }
    }
    reader.finish()
}

/// The state of [`parse`] between two characters.
struct Reader<'a> {
    path: &'a Path,
    columns: Option<usize>,
    records: Vec<Record>,
    /// The fields of the record being read so far, and the field being read.
    fields: Vec<String>,
    field: String,
    /// The 1-based line being read, and the line the record being read starts on.
    line: usize,
    record_line: usize,
    /// The line where the current quoted field's opening quote is.
    quote_line: usize,
    /// Whether the current field started with a quote, and whether we are inside the quotes.
    quoted: bool,
    in_quotes: bool,
}

impl<'a> Reader<'a> {
    fn new(path: &'a Path, columns: Option<usize>) -> Self {
        Reader {
            path,
            columns,
            records: Vec::new(),
            fields: Vec::new(),
            field: String::new(),
            line: 1,
            record_line: 1,
            quote_line: 1,
            quoted: false,
            in_quotes: false,
        }
    }

    /// A character inside quotes: `""` is one quote, a lone `"` closes the field, anything
    /// else (line breaks too) is text.
    fn quoted_char(&mut self, c: char, chars: &mut Peekable<Chars>) -> Result<()> {
        match c {
            '"' if chars.peek() == Some(&'"') => {
                chars.next();
                self.field.push('"');
            }
            '"' => {
                self.in_quotes = false;
                if let Some(n) = self.columns {
                    check_swallowed(&self.field, self.quote_line, self.line, n, self.path)?;
                }
            }
            '\n' => {
                self.line += 1;
                self.field.push('\n');
            }
            _ => self.field.push(c),
        }
        Ok(())
    }

    /// A character outside quotes: a quote that opens a field, a comma, a line end (LF or
    /// CRLF), or text, which must not follow a field's closing quote.
    fn plain_char(&mut self, c: char, chars: &mut Peekable<Chars>) -> Result<()> {
        match c {
            '"' if self.field.is_empty() && !self.quoted => {
                self.quoted = true;
                self.in_quotes = true;
                self.quote_line = self.line;
            }
            ',' => {
                self.fields.push(std::mem::take(&mut self.field));
                self.quoted = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                self.end_record()?;
                self.quoted = false;
                self.line += 1;
                self.record_line = self.line;
            }
            _ if self.quoted => return Err(self.text_after_quote(c)),
            _ => self.field.push(c),
        }
        Ok(())
    }

    /// The error for text `c` after a closing quote; when the quoted field spans lines, its
    /// quote was most likely left open where it opens.
    fn text_after_quote(&self, c: char) -> Error {
        let (open, line) = (self.quote_line, self.line);
        let msg = if open != line {
            format!(
                "line {open}: the quoted field that opens here runs on to line {line}, where \
                 {c:?} follows its closing quote; is the quote on line {open} missing its \
                 closing quote? (a quote inside a quoted field is written twice: \"\")"
            )
        } else {
            format!("line {line}: unexpected {c:?} after the closing quote of a field")
        };
        Error::format(self.path, msg)
    }

    /// Ends the record that starts on `record_line`; a blank line is no record.
    fn end_record(&mut self) -> Result<()> {
        self.fields.push(std::mem::take(&mut self.field));
        let f = std::mem::take(&mut self.fields);
        if f.len() == 1 && f[0].is_empty() {
            return Ok(());
        }
        if let Some(n) = self.columns.filter(|&n| n != f.len()) {
            return Err(Error::format(
                self.path,
                format!(
                    "line {}: expected {n} columns, found {}",
                    self.record_line,
                    f.len()
                ),
            ));
        }
        self.records.push((self.record_line, f));
        Ok(())
    }

    /// Ends the text: the last record, or an error when a quoted field is still open.
    fn finish(mut self) -> Result<Vec<Record>> {
        if self.in_quotes {
            return Err(Error::format(
                self.path,
                format!(
                    "line {}: a quoted field opens here and is never closed (the file ends on \
                     line {} inside it)",
                    self.quote_line, self.line
                ),
            ));
        }
        self.end_record()?;
        Ok(self.records)
    }
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
