//! [`ExportFormat`]: the name of a table export's format.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest format name [`ExportFormat::new`] accepts.
pub const MAX_FORMAT_NAME_LEN: usize = 32;

/// The format of a [`JobKind::TableExport`](crate::JobKind::TableExport),
/// by name: one of the built-in formats ([`CSV`](Self::CSV),
/// [`JSON`](Self::JSON), [`NDJSON`](Self::NDJSON), and with features
/// [`XLSX`](Self::XLSX), [`ARROW_STREAM`](Self::ARROW_STREAM) and
/// [`PARQUET`](Self::PARQUET)) or a name a host registered with
/// [`AsyncQueryServiceBuilder::format`](crate::AsyncQueryServiceBuilder::format).
///
/// Names are case-insensitive and kept upper-case, as Elide spells its
/// `resultType`s; they are 1 to [`MAX_FORMAT_NAME_LEN`] ASCII letters,
/// digits and underscores, starting with a letter. A submit naming a format
/// the service has not registered is refused with
/// [`Error::InvalidRequest`](crate::Error::InvalidRequest) (HTTP 400).
///
/// ```
/// use async_query::ExportFormat;
///
/// let pdf = ExportFormat::new("pdf").unwrap();
/// assert_eq!(pdf.as_str(), "PDF");
/// assert_eq!("csv".parse::<ExportFormat>().unwrap(), ExportFormat::CSV);
/// assert!(ExportFormat::new("no spaces").is_err());
/// ```
///
/// The built-in names are constants that `match` can use as patterns.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExportFormat(Name);

/// A format's name: a built-in one is always `Static` (so the constants
/// work as patterns, and equality can compare variants), any other
/// `Owned`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Name {
    Static(&'static str),
    Owned(Box<str>),
}

impl ExportFormat {
    /// RFC 4180 comma-separated values, with a header row by default.
    pub const CSV: ExportFormat = ExportFormat(Name::Static("CSV"));
    /// One JSON array of objects.
    pub const JSON: ExportFormat = ExportFormat(Name::Static("JSON"));
    /// Newline-delimited JSON, one object per line.
    pub const NDJSON: ExportFormat = ExportFormat(Name::Static("NDJSON"));
    /// An Excel workbook (Office Open XML), feature `xlsx`.
    pub const XLSX: ExportFormat = ExportFormat(Name::Static("XLSX"));
    /// The Arrow IPC streaming format, feature `arrow`.
    pub const ARROW_STREAM: ExportFormat = ExportFormat(Name::Static("ARROW_STREAM"));
    /// Apache Parquet, feature `arrow`.
    pub const PARQUET: ExportFormat = ExportFormat(Name::Static("PARQUET"));

    /// The format named `name` (case-insensitive).
    ///
    /// # Errors
    ///
    /// [`ParseFormatError`] if the name is empty, longer than
    /// [`MAX_FORMAT_NAME_LEN`], does not start with a letter, or has other
    /// characters than ASCII letters, digits and underscores.
    pub fn new(name: &str) -> Result<Self, ParseFormatError> {
        let valid = name.len() <= MAX_FORMAT_NAME_LEN
            && name.starts_with(|c: char| c.is_ascii_alphabetic())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return Err(ParseFormatError {
                input: name.to_owned(),
            });
        }
        let upper = name.to_ascii_uppercase();
        for known in [
            Self::CSV,
            Self::JSON,
            Self::NDJSON,
            Self::XLSX,
            Self::ARROW_STREAM,
            Self::PARQUET,
        ] {
            if known.as_str() == upper {
                return Ok(known);
            }
        }
        Ok(ExportFormat(Name::Owned(upper.into_boxed_str())))
    }

    /// The name, upper-case (`CSV`, `JSON`, …).
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Name::Static(name) => name,
            Name::Owned(name) => name,
        }
    }
}

impl fmt::Display for ExportFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ExportFormat {
    type Err = ParseFormatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ExportFormat::new(s)
    }
}

impl Serialize for ExportFormat {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ExportFormat {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        ExportFormat::new(&name).map_err(serde::de::Error::custom)
    }
}

/// What a table export's column holds, as far as typed formats care
/// (XLSX cells): an executor that knows its columns' types says so with
/// [`QueryOutput::with_column_types`](crate::QueryOutput::with_column_types).
/// Without types, a format goes by each value's JSON type.
///
/// | type | values | XLSX |
/// |---|---|---|
/// | `Text` | strings | text cells |
/// | `Integer`, `Float` | numbers | number cells |
/// | `Boolean` | booleans | boolean cells |
/// | `Date` | RFC 3339 dates (`2026-12-07`) or date-times | dates (`yyyy-mm-dd`) |
/// | `Timestamp` | RFC 3339 date-times (`2026-12-07T10:00:00Z`, any offset: converted to UTC) | date-times (`yyyy-mm-dd hh:mm:ss`, UTC) |
/// | `Json` | anything | its JSON text |
///
/// A value that does not fit its column's type (a string in a `Timestamp`
/// column that does not parse) is written as its JSON type would be, not
/// dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ColumnType {
    /// Text.
    Text,
    /// Whole numbers.
    Integer,
    /// Floating-point numbers.
    Float,
    /// `true` / `false`.
    Boolean,
    /// Calendar dates.
    Date,
    /// Instants: date and time with an offset.
    Timestamp,
    /// Arbitrary JSON (arrays, objects).
    Json,
}

/// A format name that [`ExportFormat::new`] refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{input:?} is not a format name: use 1 to 32 ASCII letters, digits and underscores, starting with a letter"
)]
pub struct ParseFormatError {
    input: String,
}

impl ParseFormatError {
    /// The text that did not parse.
    pub fn input(&self) -> &str {
        &self.input
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_case_insensitive_and_round_trip_through_serde() {
        assert_eq!(ExportFormat::new("NdJson").unwrap(), ExportFormat::NDJSON);
        let custom = ExportFormat::new("pdf_a4").unwrap();
        assert_eq!(custom.to_string(), "PDF_A4");
        let json = serde_json::to_string(&custom).unwrap();
        assert_eq!(json, "\"PDF_A4\"");
        assert_eq!(serde_json::from_str::<ExportFormat>(&json).unwrap(), custom);
        assert!(matches!(
            ExportFormat::new("csv").unwrap(),
            ExportFormat::CSV
        ));
        // The built-ins serialise as they always did.
        assert_eq!(
            serde_json::to_string(&ExportFormat::CSV).unwrap(),
            "\"CSV\""
        );
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in ["", "1CSV", "a-b", "a b", "é", &"X".repeat(33)] {
            let err = ExportFormat::new(bad).unwrap_err();
            assert_eq!(err.input(), bad);
            assert!(serde_json::from_str::<ExportFormat>(&format!("{bad:?}")).is_err());
        }
        assert!(ExportFormat::new(&"X".repeat(32)).is_ok());
    }
}
