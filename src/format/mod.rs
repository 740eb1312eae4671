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
//!
//! Text is always UTF-8 (records are `serde_json::Value`s, whose strings are
//! valid UTF-8 by construction).

use bytes::Bytes;
use serde_json::Value;

use crate::executor::Record;
use crate::model::ExportFormat;
use crate::{Error, Result};

/// Default size at which an encoder hands a chunk to storage.
pub const DEFAULT_CHUNK_SIZE: usize = 64 * 1024;

/// Encodes records of one export into chunks of about `chunk_size` bytes.
#[derive(Debug)]
pub struct Encoder {
    format: ExportFormat,
    columns: Vec<String>,
    buffer: Vec<u8>,
    chunk_size: usize,
    records: u64,
    csv: Option<csv::Writer<Vec<u8>>>,
}

impl Encoder {
    /// An encoder for `format` with these columns; CSV writes a header row
    /// when `csv_header` is true.
    ///
    /// ```
    /// use async_query::{ExportFormat, format::Encoder};
    /// use serde_json::json;
    ///
    /// let mut enc = Encoder::new(ExportFormat::Csv, vec!["a".into(), "b".into()], true);
    /// enc.push(&vec![json!("x,y"), json!(null)]).unwrap();
    /// let bytes = enc.finish().unwrap();
    /// assert_eq!(&bytes[..], b"a,b\n\"x,y\",\n");
    /// ```
    pub fn new(format: ExportFormat, columns: Vec<String>, csv_header: bool) -> Self {
        let mut encoder = Encoder {
            format,
            columns,
            buffer: Vec::with_capacity(if format == ExportFormat::Csv {
                0
            } else {
                DEFAULT_CHUNK_SIZE + 1024
            }),
            chunk_size: DEFAULT_CHUNK_SIZE,
            records: 0,
            csv: None,
        };
        match format {
            ExportFormat::Csv => {
                let mut writer = csv_writer(Vec::with_capacity(DEFAULT_CHUNK_SIZE + 1024));
                if csv_header {
                    // Writing into a Vec cannot fail.
                    let _ = writer.write_record(&encoder.columns);
                }
                encoder.csv = Some(writer);
            }
            ExportFormat::Json => encoder.buffer.push(b'['),
            ExportFormat::Ndjson => {}
        }
        encoder
    }

    /// Records encoded so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Encodes one record; returns a chunk when the buffer is full.
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
        self.take_if_full()
    }

    /// Ends the export and returns the remaining bytes.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRequest`] only if CSV encoding failed earlier.
    pub fn finish(mut self) -> Result<Bytes> {
        match self.format {
            ExportFormat::Csv => Ok(Bytes::from(self.take_csv()?)),
            ExportFormat::Json => {
                self.buffer.push(b']');
                Ok(Bytes::from(self.buffer))
            }
            ExportFormat::Ndjson => Ok(Bytes::from(self.buffer)),
        }
    }

    fn push_csv(&mut self, record: &Record) -> Result<()> {
        let Some(writer) = self.csv.as_mut() else {
            return Ok(());
        };
        let mut text = String::new();
        for value in record {
            let field: &str = match value {
                Value::Null => "",
                Value::String(s) => s,
                other => {
                    text.clear();
                    text.push_str(&other.to_string());
                    &text
                }
            };
            writer.write_field(field).map_err(csv_error)?;
        }
        writer.write_record(None::<&[u8]>).map_err(csv_error)?;
        Ok(())
    }

    /// Takes the CSV writer's output so far (flushing its internal buffer)
    /// and starts a fresh writer.
    fn take_csv(&mut self) -> Result<Vec<u8>> {
        let Some(writer) = self.csv.take() else {
            return Ok(Vec::new());
        };
        let bytes = writer
            .into_inner()
            .map_err(|e| csv_error(csv::Error::from(e.into_error())))?;
        self.csv = Some(csv_writer(Vec::with_capacity(self.chunk_size + 1024)));
        Ok(bytes)
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

    fn take_if_full(&mut self) -> Result<Option<Bytes>> {
        if let Some(writer) = &self.csv {
            // The writer keeps up to 8 KiB in its own buffer besides this.
            if writer.get_ref().len() < self.chunk_size {
                return Ok(None);
            }
            return Ok(Some(Bytes::from(self.take_csv()?)));
        }
        if self.buffer.len() < self.chunk_size {
            return Ok(None);
        }
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(self.chunk_size + 1024));
        Ok(Some(Bytes::from(chunk)))
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

/// The media type of an export format.
pub fn content_type(format: ExportFormat) -> &'static str {
    match format {
        ExportFormat::Csv => "text/csv; charset=utf-8",
        ExportFormat::Json => "application/json",
        ExportFormat::Ndjson => "application/x-ndjson",
    }
}

/// The file extension of an export format, without the dot.
pub fn extension(format: ExportFormat) -> &'static str {
    match format {
        ExportFormat::Csv => "csv",
        ExportFormat::Json => "json",
        ExportFormat::Ndjson => "ndjson",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn encode(format: ExportFormat, rows: &[Record]) -> String {
        let mut enc = Encoder::new(format, vec!["a".into(), "b".into()], true);
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
        let mut enc = Encoder::new(ExportFormat::Csv, vec!["a".into()], true);
        assert!(matches!(
            enc.push(&vec![json!(1), json!(2)]),
            Err(Error::InvalidRequest { .. })
        ));
    }

    #[test]
    fn chunks_are_bounded() {
        let mut enc = Encoder::new(ExportFormat::Ndjson, vec!["a".into(), "b".into()], true);
        let row = vec![json!("x".repeat(100)), json!(1)];
        for _ in 0..10_000 {
            if let Some(chunk) = enc.push(&row).unwrap() {
                assert!(chunk.len() < DEFAULT_CHUNK_SIZE + 1024);
            }
        }
    }
}
