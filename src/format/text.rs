//! The built-in text formats: CSV, JSON array and NDJSON.

use bytes::Bytes;
use serde_json::Value;

use super::{DEFAULT_CHUNK_SIZE, EncodeOptions, ExportEncoding, ExportSpec, RecordEncoder, Tail};
use crate::error::{Error, Result};
use crate::model::{ExportFormat, Record};

/// The built-in text formats, each an [`ExportEncoding`] registered by
/// default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TextFormat {
    /// RFC 4180 comma-separated values ([`ExportFormat::CSV`]).
    Csv,
    /// One JSON array of objects ([`ExportFormat::JSON`]).
    Json,
    /// Newline-delimited JSON, one object per line ([`ExportFormat::NDJSON`]).
    Ndjson,
}

impl ExportEncoding for TextFormat {
    fn format(&self) -> ExportFormat {
        match self {
            TextFormat::Csv => ExportFormat::CSV,
            TextFormat::Json => ExportFormat::JSON,
            TextFormat::Ndjson => ExportFormat::NDJSON,
        }
    }

    fn content_type(&self) -> &str {
        match self {
            TextFormat::Csv => "text/csv; charset=utf-8",
            TextFormat::Json => "application/json",
            TextFormat::Ndjson => "application/x-ndjson",
        }
    }

    fn extension(&self) -> &str {
        match self {
            TextFormat::Csv => "csv",
            TextFormat::Json => "json",
            TextFormat::Ndjson => "ndjson",
        }
    }

    fn encoder(&self, spec: ExportSpec) -> Result<Box<dyn RecordEncoder>> {
        Ok(Box::new(Encoder::new(*self, spec.columns, spec.options)))
    }
}

/// Encodes records of one export in a [`TextFormat`], into chunks of
/// about [`DEFAULT_CHUNK_SIZE`] bytes.
#[derive(Debug)]
pub struct Encoder {
    format: TextFormat,
    columns: Vec<String>,
    /// Pending JSON / NDJSON bytes.
    buffer: Vec<u8>,
    /// Pending CSV bytes live inside the writer (flushed after every record).
    csv: Option<csv::Writer<Vec<u8>>>,
    /// Reused for rendering non-string values as CSV fields.
    scratch: Vec<u8>,
    /// Prefix CSV cells that a spreadsheet would run as a formula.
    guard_formulas: bool,
    chunk_size: usize,
    records: u64,
    /// Bytes already handed out as chunks.
    emitted: u64,
}

impl Encoder {
    /// An encoder for `format` with these columns.
    ///
    /// ```
    /// use async_query::format::{EncodeOptions, Encoder, RecordEncoder, TextFormat};
    /// use serde_json::json;
    ///
    /// let columns = vec!["a".into(), "b".into()];
    /// let mut enc = Encoder::new(TextFormat::Csv, columns, EncodeOptions::default());
    /// enc.push(&vec![json!("x,y"), json!(null)]).unwrap();
    /// let mut tail = Box::new(enc).finish().unwrap();
    /// let bytes = tail.next_chunk().unwrap().unwrap();
    /// assert_eq!(&bytes[..], b"a,b\n\"x,y\",\n");
    /// ```
    pub fn new(format: TextFormat, columns: Vec<String>, options: EncodeOptions) -> Self {
        let mut encoder = Encoder {
            format,
            columns,
            buffer: Vec::new(),
            csv: None,
            scratch: Vec::new(),
            guard_formulas: options.guards_csv_formulas(),
            chunk_size: DEFAULT_CHUNK_SIZE,
            records: 0,
            emitted: 0,
        };
        match format {
            TextFormat::Csv => {
                let mut writer = csv_writer(Vec::with_capacity(DEFAULT_CHUNK_SIZE + 1024));
                if options.writes_csv_header() {
                    // Writing into a Vec cannot fail.
                    for column in &encoder.columns {
                        let _ =
                            writer.write_field(guarded(column, encoder.guard_formulas).as_bytes());
                    }
                    let _ = writer.write_record(None::<&[u8]>);
                    let _ = writer.flush();
                }
                encoder.csv = Some(writer);
            }
            TextFormat::Json => {
                encoder.buffer.reserve(DEFAULT_CHUNK_SIZE + 1024);
                encoder.buffer.push(b'[');
            }
            TextFormat::Ndjson => encoder.buffer.reserve(DEFAULT_CHUNK_SIZE + 1024),
        }
        encoder
    }

    fn pending(&self) -> usize {
        match &self.csv {
            Some(writer) => writer.get_ref().len(),
            None => self.buffer.len(),
        }
    }

    fn push_csv(&mut self, record: &Record) -> Result<()> {
        let Some(writer) = self.csv.as_mut() else {
            return Ok(());
        };
        for value in record {
            match value {
                Value::Null => writer.write_field([]),
                Value::String(s) => writer.write_field(guarded(s, self.guard_formulas).as_bytes()),
                other => {
                    self.scratch.clear();
                    // Serialising a Value into a Vec cannot fail.
                    let _ = serde_json::to_writer(&mut self.scratch, other);
                    writer.write_field(&self.scratch)
                }
            }
            .map_err(csv_error)?;
        }
        writer.write_record(None::<&[u8]>).map_err(csv_error)?;
        // Keep the byte count exact: nothing waits in the writer's own buffer.
        writer.flush().map_err(|e| csv_error(e.into()))
    }

    fn push_object(&mut self, record: &Record) {
        self.buffer.push(b'{');
        for (i, (column, value)) in self.columns.iter().zip(record).enumerate() {
            if i > 0 {
                self.buffer.push(b',');
            }
            // Serialising a String or a Value into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut self.buffer, column);
            self.buffer.push(b':');
            let _ = serde_json::to_writer(&mut self.buffer, value);
        }
        self.buffer.push(b'}');
    }

    /// Hands out everything pending as one chunk.
    fn take(&mut self) -> Result<Bytes> {
        let fresh = Vec::with_capacity(self.chunk_size + 1024);
        let chunk = match self.csv.take() {
            Some(writer) => {
                let bytes = writer
                    .into_inner()
                    .map_err(|e| csv_error(csv::Error::from(e.into_error())))?;
                self.csv = Some(csv_writer(fresh));
                bytes
            }
            None => std::mem::replace(&mut self.buffer, fresh),
        };
        self.emitted += chunk.len() as u64;
        Ok(Bytes::from(chunk))
    }
}

impl RecordEncoder for Encoder {
    fn push(&mut self, record: &Record) -> Result<Option<Bytes>> {
        super::check_arity(record, self.columns.len(), self.records)?;
        match self.format {
            TextFormat::Csv => self.push_csv(record)?,
            TextFormat::Json => {
                if self.records > 0 {
                    self.buffer.push(b',');
                }
                self.push_object(record);
            }
            TextFormat::Ndjson => {
                self.push_object(record);
                self.buffer.push(b'\n');
            }
        }
        self.records += 1;
        if self.pending() < self.chunk_size {
            return Ok(None);
        }
        self.take().map(Some)
    }

    fn finish(mut self: Box<Self>) -> Result<Tail> {
        if self.format == TextFormat::Json {
            self.buffer.push(b']');
        }
        self.take().map(Tail::bytes)
    }

    fn records(&self) -> u64 {
        self.records
    }

    fn len(&self) -> u64 {
        self.emitted + self.pending() as u64
    }
}

/// `cell`, with a `'` in front if `guard` is on and a spreadsheet would
/// take it for a formula (see [`EncodeOptions::csv_formula_guard`]).
fn guarded(cell: &str, guard: bool) -> std::borrow::Cow<'_, str> {
    match cell.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') if guard => format!("'{cell}").into(),
        _ => cell.into(),
    }
}

fn csv_writer(into: Vec<u8>) -> csv::Writer<Vec<u8>> {
    csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(into)
}

fn csv_error(e: csv::Error) -> Error {
    Error::invalid(format!("CSV encoding failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn encode_with(format: TextFormat, rows: &[Record], options: EncodeOptions) -> String {
        let mut enc: Box<dyn RecordEncoder> =
            Box::new(Encoder::new(format, vec!["a".into(), "b".into()], options));
        let mut out = Vec::new();
        for row in rows {
            if let Some(chunk) = enc.push(row).unwrap() {
                out.extend_from_slice(&chunk);
            }
        }
        let mut tail = enc.finish().unwrap();
        while let Some(chunk) = tail.next_chunk().unwrap() {
            out.extend_from_slice(&chunk);
        }
        String::from_utf8(out).unwrap()
    }

    fn encode(format: TextFormat, rows: &[Record]) -> String {
        encode_with(format, rows, EncodeOptions::default())
    }

    #[test]
    fn json_and_ndjson_round_trip() {
        let rows = vec![
            vec![json!("q\"uote,\nline"), json!(null)],
            vec![json!(1.5), json!({"n": [1, 2]})],
        ];
        let array: Vec<serde_json::Map<String, Value>> =
            serde_json::from_str(&encode(TextFormat::Json, &rows)).unwrap();
        assert_eq!(array.len(), 2);
        assert_eq!(array[0]["a"], json!("q\"uote,\nline"));
        assert_eq!(array[1]["b"], json!({"n": [1, 2]}));
        let nd = encode(TextFormat::Ndjson, &rows);
        assert_eq!(nd.lines().count(), 2);
        assert_eq!(encode(TextFormat::Json, &[]), "[]");
    }

    #[test]
    fn csv_quotes_and_renders_nested_values_as_json() {
        let rows = vec![vec![json!("a,\"b\""), json!([1, "x"])]];
        let text = encode(TextFormat::Csv, &rows);
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let record = reader.records().next().unwrap().unwrap();
        assert_eq!(&record[0], "a,\"b\"");
        assert_eq!(&record[1], "[1,\"x\"]");
    }

    #[test]
    fn the_formula_guard_prefixes_only_cells_a_spreadsheet_would_run() {
        let rows = vec![
            vec![json!("=HYPERLINK(\"http://x\")"), json!("+1")],
            vec![json!("-2+3"), json!("@SUM(A1)")],
            vec![json!("\tx"), json!("plain = text")],
            vec![json!(-5), json!(null)],
        ];
        let guarded = encode_with(
            TextFormat::Csv,
            &rows,
            EncodeOptions::default().csv_formula_guard(true),
        );
        let cells: Vec<Vec<String>> = csv::Reader::from_reader(guarded.as_bytes())
            .records()
            .map(|r| r.unwrap().iter().map(str::to_owned).collect())
            .collect();
        assert_eq!(
            cells,
            [
                ["'=HYPERLINK(\"http://x\")", "'+1"],
                ["'-2+3", "'@SUM(A1)"],
                ["'\tx", "plain = text"],
                // Numbers are numbers, not formulas: written as they are.
                ["-5", ""],
            ]
        );
        // Off by default: every cell as it was.
        let plain = encode(TextFormat::Csv, &rows);
        assert!(
            plain.contains("=HYPERLINK") && !plain.contains('\''),
            "{plain}"
        );
    }

    #[test]
    fn wrong_arity_is_a_typed_error() {
        let mut enc = Encoder::new(TextFormat::Csv, vec!["a".into()], EncodeOptions::default());
        assert!(matches!(
            enc.push(&vec![json!(1), json!(2)]),
            Err(Error::InvalidRequest { .. })
        ));
    }

    #[test]
    fn chunks_are_bounded() {
        let mut enc = Encoder::new(
            TextFormat::Ndjson,
            vec!["a".into(), "b".into()],
            EncodeOptions::default(),
        );
        let row = vec![json!("x".repeat(100)), json!(1)];
        for _ in 0..10_000 {
            if let Some(chunk) = enc.push(&row).unwrap() {
                assert!(chunk.len() < DEFAULT_CHUNK_SIZE + 1024);
            }
        }
    }
}
