//! Records into Arrow record batches (feature `arrow`): the schema, from
//! the executor's column types or inferred from the first batch, and the
//! conversion of each value.

use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde_json::Value;

use super::ExportSpec;
use crate::error::{Error, Result};
use crate::model::{ColumnType, Record};

/// Rows per record batch at most.
pub(super) const BATCH_ROWS: usize = 8_192;
/// About this many bytes of cell text per record batch at most (wide rows
/// make smaller batches).
pub(super) const BATCH_BYTES: usize = 4 << 20;

/// The Arrow type a column type maps to.
fn data_type(column: ColumnType) -> DataType {
    match column {
        ColumnType::Integer => DataType::Int64,
        ColumnType::Float => DataType::Float64,
        ColumnType::Boolean => DataType::Boolean,
        ColumnType::Date => DataType::Date32,
        ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        ColumnType::Text | ColumnType::Json => DataType::Utf8,
    }
}

/// Infers a column's type from its values in the first batch: booleans
/// only → `Boolean`; whole numbers only → `Integer`; numbers with a
/// fraction among them → `Float`; strings only → `Text`; anything else
/// (mixed kinds, arrays, objects) or no value but `null` → `Text`, where
/// a non-string is written as its JSON text.
fn infer<'a>(values: impl Iterator<Item = &'a Value>) -> ColumnType {
    let mut seen: Option<ColumnType> = None;
    for value in values {
        let kind = match value {
            Value::Null => continue,
            Value::Bool(_) => ColumnType::Boolean,
            Value::Number(n) if n.is_i64() => ColumnType::Integer,
            Value::Number(_) => ColumnType::Float,
            Value::String(_) => ColumnType::Text,
            Value::Array(_) | Value::Object(_) => return ColumnType::Text,
        };
        seen = Some(match (seen, kind) {
            (None, kind) => kind,
            (Some(a), b) if a == b => a,
            (
                Some(ColumnType::Integer | ColumnType::Float),
                ColumnType::Integer | ColumnType::Float,
            ) => ColumnType::Float,
            _ => return ColumnType::Text,
        });
    }
    seen.unwrap_or(ColumnType::Text)
}

/// One column's values of the batch being built.
enum Builder {
    Integer(Int64Builder),
    Float(Float64Builder),
    Boolean(BooleanBuilder),
    Date(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder),
    Text(StringBuilder),
}

impl Builder {
    fn new(t: ColumnType) -> Self {
        let n = BATCH_ROWS;
        match t {
            ColumnType::Integer => Builder::Integer(Int64Builder::with_capacity(n)),
            ColumnType::Float => Builder::Float(Float64Builder::with_capacity(n)),
            ColumnType::Boolean => Builder::Boolean(BooleanBuilder::with_capacity(n)),
            ColumnType::Date => Builder::Date(Date32Builder::with_capacity(n)),
            ColumnType::Timestamp => Builder::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC"),
            ),
            ColumnType::Text | ColumnType::Json => {
                Builder::Text(StringBuilder::with_capacity(n, n * 16))
            }
        }
    }

    /// Appends `value`; `false` if it does not fit the column's type
    /// (nothing is appended then).
    fn append(&mut self, value: &Value) -> bool {
        if value.is_null() {
            match self {
                Builder::Integer(b) => b.append_null(),
                Builder::Float(b) => b.append_null(),
                Builder::Boolean(b) => b.append_null(),
                Builder::Date(b) => b.append_null(),
                Builder::Timestamp(b) => b.append_null(),
                Builder::Text(b) => b.append_null(),
            }
            return true;
        }
        match (self, value) {
            (Builder::Integer(b), Value::Number(n)) => {
                n.as_i64().map(|v| b.append_value(v)).is_some()
            }
            (Builder::Float(b), Value::Number(n)) => {
                n.as_f64().map(|v| b.append_value(v)).is_some()
            }
            (Builder::Boolean(b), Value::Bool(v)) => {
                b.append_value(*v);
                true
            }
            (Builder::Date(b), Value::String(s)) => days(s).map(|v| b.append_value(v)).is_some(),
            (Builder::Timestamp(b), Value::String(s)) => {
                micros(s).map(|v| b.append_value(v)).is_some()
            }
            (Builder::Text(b), Value::String(s)) => {
                b.append_value(s);
                true
            }
            (Builder::Text(b), other) => {
                b.append_value(other.to_string());
                true
            }
            _ => false,
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Integer(b) => Arc::new(b.finish()),
            Builder::Float(b) => Arc::new(b.finish()),
            Builder::Boolean(b) => Arc::new(b.finish()),
            Builder::Date(b) => Arc::new(b.finish()),
            Builder::Timestamp(b) => Arc::new(b.finish()),
            Builder::Text(b) => Arc::new(b.finish()),
        }
    }
}

/// Records gathered into batches under one schema: appended to column
/// builders as they come once the types are known (the executor's, or
/// inferred from the first batch, which alone is held as records).
pub(super) struct Batcher {
    spec: ExportSpec,
    types: Option<Vec<ColumnType>>,
    schema: Option<SchemaRef>,
    /// One per column, once the types are known.
    builders: Vec<Builder>,
    /// The first batch's records while the types are inferred.
    held: Vec<Record>,
    /// Rows in the batch being built.
    rows: usize,
    bytes: usize,
    /// Records before this batch.
    done: u64,
}

impl Batcher {
    pub(super) fn new(spec: ExportSpec) -> Self {
        let mut batcher = Batcher {
            types: None,
            schema: None,
            builders: Vec::new(),
            held: Vec::new(),
            rows: 0,
            bytes: 0,
            done: 0,
            spec,
        };
        if !batcher.spec.column_types.is_empty() {
            batcher.fix_types(batcher.spec.column_types.clone());
        }
        batcher
    }

    fn fix_types(&mut self, types: Vec<ColumnType>) {
        self.builders = types.iter().map(|t| Builder::new(*t)).collect();
        self.types = Some(types);
    }

    /// Adds a record; `true` when the batch is full.
    pub(super) fn push(&mut self, record: &Record) -> Result<bool> {
        super::check_arity(record, self.spec.columns.len(), self.records())?;
        if self.types.is_some() {
            self.append(record, self.rows)?;
        } else {
            self.held.push(record.clone());
        }
        self.rows += 1;
        self.bytes += record.iter().map(text_bytes).sum::<usize>();
        Ok(self.rows >= BATCH_ROWS || self.bytes >= BATCH_BYTES)
    }

    /// Appends row `row` of the batch to the builders.
    fn append(&mut self, record: &Record, row: usize) -> Result<()> {
        for (c, value) in record.iter().enumerate() {
            if !self.builders[c].append(value) {
                return Err(self.misfit(row, c, value));
            }
        }
        Ok(())
    }

    fn misfit(&self, row: usize, c: usize, value: &Value) -> Error {
        let how = if self.spec.column_types.is_empty() {
            "inferred from the first batch; say the column types with QueryOutput::with_column_types"
        } else {
            "as the executor gave it"
        };
        let t = self.types.as_ref().and_then(|t| t.get(c).copied());
        Error::invalid(format!(
            "record {}, column {:?}: {value} is not a {t:?} value (the column's type, {how})",
            self.done + row as u64 + 1,
            self.spec.columns[c],
        ))
    }

    /// Records added so far.
    pub(super) fn records(&self) -> u64 {
        self.done + self.rows as u64
    }

    /// About how many bytes the batch being built holds.
    pub(super) fn pending_bytes(&self) -> usize {
        self.bytes
    }

    /// The schema: fixed by the first call (types inferred from the held
    /// records then, if the executor gave none).
    pub(super) fn schema(&mut self) -> Result<SchemaRef> {
        if let Some(schema) = &self.schema {
            return Ok(Arc::clone(schema));
        }
        if self.types.is_none() {
            let types = (0..self.spec.columns.len())
                .map(|c| infer(self.held.iter().map(|row| &row[c])))
                .collect();
            self.fix_types(types);
            for (row, record) in std::mem::take(&mut self.held).iter().enumerate() {
                self.append(record, row)?;
            }
        }
        let types = self.types.as_deref().unwrap_or_default();
        let fields: Vec<Field> = self
            .spec
            .columns
            .iter()
            .zip(types)
            .map(|(name, t)| Field::new(name, data_type(*t), true))
            .collect();
        let schema = Arc::new(Schema::new(fields));
        self.schema = Some(Arc::clone(&schema));
        Ok(schema)
    }

    /// The batch built so far (`None` if it has no rows).
    pub(super) fn take(&mut self) -> Result<Option<RecordBatch>> {
        let schema = self.schema()?;
        if self.rows == 0 {
            return Ok(None);
        }
        let columns: Vec<ArrayRef> = self.builders.iter_mut().map(Builder::finish).collect();
        let options = RecordBatchOptions::new().with_row_count(Some(self.rows));
        let batch = RecordBatch::try_new_with_options(schema, columns, &options)
            .map_err(|e| Error::invalid(format!("building a record batch failed: {e}")))?;
        self.done += self.rows as u64;
        self.rows = 0;
        self.bytes = 0;
        Ok(Some(batch))
    }
}

/// Days since 1970-01-01 of a date (`2026-12-07`) or an RFC 3339
/// date-time (its UTC date).
fn days(text: &str) -> Option<i32> {
    let date = match chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        Ok(date) => date,
        Err(_) => chrono::DateTime::parse_from_rfc3339(text)
            .ok()?
            .naive_utc()
            .date(),
    };
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
    i32::try_from((date - epoch).num_days()).ok()
}

/// Microseconds since the epoch of an RFC 3339 date-time.
fn micros(text: &str) -> Option<i64> {
    Some(
        chrono::DateTime::parse_from_rfc3339(text)
            .ok()?
            .timestamp_micros(),
    )
}

fn text_bytes(value: &Value) -> usize {
    match value {
        Value::String(s) => s.len(),
        Value::Null => 0,
        _ => 8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn inference_follows_the_documented_rule() {
        let t = |values: Vec<Value>| infer(values.iter());
        assert_eq!(
            t(vec![json!(1), Value::Null, json!(2)]),
            ColumnType::Integer
        );
        assert_eq!(t(vec![json!(1), json!(2.5)]), ColumnType::Float);
        assert_eq!(t(vec![json!(true), json!(false)]), ColumnType::Boolean);
        assert_eq!(t(vec![json!("a"), Value::Null]), ColumnType::Text);
        assert_eq!(t(vec![json!(1), json!("a")]), ColumnType::Text);
        assert_eq!(t(vec![json!([1])]), ColumnType::Text);
        assert_eq!(t(vec![Value::Null, Value::Null]), ColumnType::Text);
        assert_eq!(t(vec![]), ColumnType::Text);
        // u64 beyond i64 is not an Integer: it becomes a Float.
        assert_eq!(t(vec![json!(u64::MAX)]), ColumnType::Float);
    }

    #[test]
    fn dates_and_timestamps_parse_as_documented() {
        assert_eq!(days("1970-01-02"), Some(1));
        assert_eq!(days("1970-01-01T23:00:00-02:00"), Some(1));
        assert_eq!(micros("1970-01-01T00:00:01.5Z"), Some(1_500_000));
        assert_eq!(micros("1970-01-01"), None);
    }
}
