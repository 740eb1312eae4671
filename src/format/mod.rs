//! Streaming encoders for table exports: CSV, JSON array and NDJSON.
//!
//! An [`Encoder`] turns records into bytes one at a time and hands back
//! bounded chunks, so an export of any size needs memory for one chunk only.
//!
//! Encodings of awkward values:
//!
//! | value | CSV | JSON / NDJSON |
//! |---|---|---|
//! | `null` | empty field | `null` |
//! | string | the text, quoted per RFC 4180 when needed | JSON string |
//! | number, bool | its JSON text | as is |
//! | array, object | its compact JSON text, quoted as needed | as is |
//! | `""` (empty string) | empty field — the same as `null` (CSV has no null) | `""` |
//! | control characters | written as they are; fields with `\r`, `\n`, `"` or `,` are quoted | escaped (`\u0000`, `\n`, …) |
//!
//! Text is always UTF-8 (records are `serde_json::Value`s, whose strings are
//! valid UTF-8 by construction); no byte-order mark is written. A host whose
//! source data is not UTF-8 must decide how to convert it (for example
//! `String::from_utf8_lossy`) when it builds the record.

use bytes::Bytes;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::{ExportFormat, Record};

/// Default size at which an encoder hands a chunk to storage.
pub const DEFAULT_CHUNK_SIZE: usize = 64 * 1024;

/// How an [`Encoder`] writes, beyond its format.
///
/// ```
/// use async_query::format::EncodeOptions;
/// let options = EncodeOptions::default().csv_header(false);
/// assert!(!options.writes_csv_header());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct EncodeOptions {
    csv_header: bool,
}

impl Default for EncodeOptions {
    /// A CSV header row, as Elide writes by default.
    fn default() -> Self {
        EncodeOptions { csv_header: true }
    }
}

impl EncodeOptions {
    /// Whether CSV output starts with a header row of the column names.
    pub fn csv_header(mut self, write: bool) -> Self {
        self.csv_header = write;
        self
    }

    /// Whether CSV output starts with a header row.
    pub fn writes_csv_header(&self) -> bool {
        self.csv_header
    }
}

/// Encodes records of one export into chunks of about
/// [`DEFAULT_CHUNK_SIZE`] bytes.
#[derive(Debug)]
pub struct Encoder {
    format: ExportFormat,
    columns: Vec<String>,
    /// Pending JSON / NDJSON bytes.
    buffer: Vec<u8>,
    /// Pending CSV bytes live inside the writer (flushed after every record).
    csv: Option<csv::Writer<Vec<u8>>>,
    /// Reused for rendering non-string values as CSV fields.
    scratch: Vec<u8>,
    chunk_size: usize,
    records: u64,
    /// Bytes already handed out as chunks.
    emitted: u64,
}

impl Encoder {
    /// An encoder for `format` with these columns.
    ///
    /// ```
    /// use async_query::{ExportFormat, format::{EncodeOptions, Encoder}};
    /// use serde_json::json;
    ///
    /// let columns = vec!["a".into(), "b".into()];
    /// let mut enc = Encoder::new(ExportFormat::Csv, columns, EncodeOptions::default());
    /// enc.push(&vec![json!("x,y"), json!(null)]).unwrap();
    /// let bytes = enc.finish().unwrap();
    /// assert_eq!(&bytes[..], b"a,b\n\"x,y\",\n");
    /// ```
    pub fn new(format: ExportFormat, columns: Vec<String>, options: EncodeOptions) -> Self {
        let mut encoder = Encoder {
            format,
            columns,
            buffer: Vec::new(),
            csv: None,
            scratch: Vec::new(),
            chunk_size: DEFAULT_CHUNK_SIZE,
            records: 0,
            emitted: 0,
        };
        match format {
            ExportFormat::Csv => {
                let mut writer = csv_writer(Vec::with_capacity(DEFAULT_CHUNK_SIZE + 1024));
                if options.csv_header {
                    // Writing into a Vec cannot fail.
                    let _ = writer.write_record(&encoder.columns);
                    let _ = writer.flush();
                }
                encoder.csv = Some(writer);
            }
            ExportFormat::Json => {
                encoder.buffer.reserve(DEFAULT_CHUNK_SIZE + 1024);
                encoder.buffer.push(b'[');
            }
            ExportFormat::Ndjson => encoder.buffer.reserve(DEFAULT_CHUNK_SIZE + 1024),
        }
        encoder
    }

    /// Records encoded so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Bytes encoded so far (handed out and pending), not counting what
    /// [`finish`](Self::finish) adds (`]` for JSON).
    pub fn len(&self) -> u64 {
        self.emitted + self.pending() as u64
    }

    /// Whether nothing has been encoded yet (not even a header).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn pending(&self) -> usize {
        match &self.csv {
            Some(writer) => writer.get_ref().len(),
            None => self.buffer.len(),
        }
    }

    /// Encodes one record; returns a chunk when one is full.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRequest`] if the record does not have one value per
    /// column.
    pub fn push(&mut self, record: &Record) -> Result<Option<Bytes>> {
        if record.len() != self.columns.len() {
            return Err(Error::invalid(format!(
                "record {} has {} values but the export has {} columns",
                self.records + 1,
                record.len(),
                self.columns.len()
            )));
        }
        match self.format {
            ExportFormat::Csv => self.push_csv(record)?,
            ExportFormat::Json => {
                if self.records > 0 {
                    self.buffer.push(b',');
                }
                self.push_object(record);
            }
            ExportFormat::Ndjson => {
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

    /// Ends the export and returns the remaining bytes.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRequest`] only if CSV encoding failed.
    pub fn finish(mut self) -> Result<Bytes> {
        if self.format == ExportFormat::Json {
            self.buffer.push(b']');
        }
        self.take()
    }

    fn push_csv(&mut self, record: &Record) -> Result<()> {
        let Some(writer) = self.csv.as_mut() else {
            return Ok(());
        };
        for value in record {
            match value {
                Value::Null => writer.write_field([]),
                Value::String(s) => writer.write_field(s),
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

fn csv_writer(into: Vec<u8>) -> csv::Writer<Vec<u8>> {
    csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(into)
}

fn csv_error(e: csv::Error) -> Error {
    Error::invalid(format!("CSV encoding failed: {e}"))
}

/// Turns any serialisable value whose JSON form is an object into a
/// [`Record`] with one value per column, in column order (missing fields
/// become `null`). This is how a host exports rows it already has as serde
/// structs; for SQL rows, build the `Vec<serde_json::Value>` from the row's
/// columns directly.
///
/// # Errors
///
/// [`Error::InvalidRequest`] if `value` does not serialise to a JSON object.
///
/// ```
/// #[derive(serde::Serialize)]
/// struct Sale { region: String, amount: f64, note: Option<String> }
///
/// let columns = vec!["region".to_string(), "amount".to_string(), "note".to_string()];
/// let sale = Sale { region: "EU".into(), amount: 9.5, note: None };
/// let record = async_query::format::to_record(&sale, &columns).unwrap();
/// assert_eq!(record, vec![serde_json::json!("EU"), serde_json::json!(9.5), serde_json::Value::Null]);
/// ```
pub fn to_record<T: serde::Serialize>(value: &T, columns: &[String]) -> Result<Record> {
    match serde_json::to_value(value) {
        Ok(Value::Object(mut fields)) => Ok(columns
            .iter()
            .map(|c| fields.remove(c).unwrap_or(Value::Null))
            .collect()),
        Ok(other) => Err(Error::invalid(format!(
            "a record must serialise to a JSON object, not {other}"
        ))),
        Err(e) => Err(Error::invalid(format!(
            "the record could not be serialised: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn encode(format: ExportFormat, rows: &[Record]) -> String {
        let mut enc = Encoder::new(
            format,
            vec!["a".into(), "b".into()],
            EncodeOptions::default(),
        );
        let mut out = Vec::new();
        for row in rows {
            if let Some(chunk) = enc.push(row).unwrap() {
                out.extend_from_slice(&chunk);
            }
        }
        out.extend_from_slice(&enc.finish().unwrap());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn json_and_ndjson_round_trip() {
        let rows = vec![
            vec![json!("q\"uote,\nline"), json!(null)],
            vec![json!(1.5), json!({"n": [1, 2]})],
        ];
        let array: Vec<serde_json::Map<String, Value>> =
            serde_json::from_str(&encode(ExportFormat::Json, &rows)).unwrap();
        assert_eq!(array.len(), 2);
        assert_eq!(array[0]["a"], json!("q\"uote,\nline"));
        assert_eq!(array[1]["b"], json!({"n": [1, 2]}));
        let nd = encode(ExportFormat::Ndjson, &rows);
        assert_eq!(nd.lines().count(), 2);
        assert_eq!(encode(ExportFormat::Json, &[]), "[]");
    }

    #[test]
    fn csv_quotes_and_renders_nested_values_as_json() {
        let rows = vec![vec![json!("a,\"b\""), json!([1, "x"])]];
        let text = encode(ExportFormat::Csv, &rows);
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let record = reader.records().next().unwrap().unwrap();
        assert_eq!(&record[0], "a,\"b\"");
        assert_eq!(&record[1], "[1,\"x\"]");
    }

    #[test]
    fn wrong_arity_is_a_typed_error() {
        let mut enc = Encoder::new(
            ExportFormat::Csv,
            vec!["a".into()],
            EncodeOptions::default(),
        );
        assert!(matches!(
            enc.push(&vec![json!(1), json!(2)]),
            Err(Error::InvalidRequest { .. })
        ));
    }

    #[test]
    fn chunks_are_bounded() {
        let mut enc = Encoder::new(
            ExportFormat::Ndjson,
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
