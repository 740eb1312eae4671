//! [`Formats`]: the export formats a service knows, by name.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{ExportEncoding, TextFormat};
use crate::error::{Error, Result};
use crate::model::ExportFormat;

/// The export formats a service knows, by name: the built-in ones, and
/// those the host added. Every instance that runs exports must know the
/// formats its submitters name: a job whose format its worker does not
/// know ends `FAILURE`, and an instance's cleaner removes the published
/// files only of exports in formats it knows (the file's extension comes
/// from the format). Register the same formats on every instance.
///
/// ```
/// use async_query::ExportFormat;
/// use async_query::format::Formats;
///
/// let formats = Formats::default();
/// assert!(formats.get(&ExportFormat::CSV).is_some());
/// assert_eq!(formats.get(&ExportFormat::NDJSON).unwrap().extension(), "ndjson");
/// assert!(formats.get(&ExportFormat::new("PDF").unwrap()).is_none());
/// ```
#[derive(Debug, Clone)]
pub struct Formats {
    by_name: BTreeMap<ExportFormat, Arc<dyn ExportEncoding>>,
}

impl Default for Formats {
    /// The built-in formats: CSV, JSON and NDJSON, with feature `xlsx`
    /// [`XLSX`](super::XlsxFormat), with feature `arrow`
    /// [`ARROW_STREAM`](super::ArrowStreamFormat) and
    /// [`PARQUET`](super::ParquetFormat).
    fn default() -> Self {
        let mut formats = Formats {
            by_name: BTreeMap::new(),
        };
        for text in [TextFormat::Csv, TextFormat::Json, TextFormat::Ndjson] {
            formats.by_name.insert(text.format(), Arc::new(text));
        }
        #[cfg(feature = "xlsx")]
        formats
            .by_name
            .insert(ExportFormat::XLSX, Arc::new(super::XlsxFormat::new()));
        #[cfg(feature = "arrow")]
        {
            formats.by_name.insert(
                ExportFormat::ARROW_STREAM,
                Arc::new(super::ArrowStreamFormat),
            );
            formats
                .by_name
                .insert(ExportFormat::PARQUET, Arc::new(super::ParquetFormat));
        }
        formats
    }
}

impl Formats {
    /// Adds `encoding` under its name, replacing a format of that name (a
    /// built-in one too: a host may bring its own CSV).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if its content type is not visible ASCII or its
    /// extension is not 1 to 16 ASCII letters and digits.
    pub fn register(&mut self, encoding: Arc<dyn ExportEncoding>) -> Result<()> {
        let format = encoding.format();
        let content_type = encoding.content_type();
        if content_type.is_empty() || !content_type.bytes().all(|b| (b' '..=b'~').contains(&b)) {
            return Err(Error::Config {
                reason: format!(
                    "format {format}: the content type {content_type:?} is not a header value (visible ASCII)"
                ),
            });
        }
        let extension = encoding.extension();
        if extension.is_empty()
            || extension.len() > 16
            || !extension.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(Error::Config {
                reason: format!(
                    "format {format}: the extension {extension:?} must be 1 to 16 ASCII letters and digits"
                ),
            });
        }
        self.by_name.insert(format, encoding);
        Ok(())
    }

    /// The format named `format`, if known.
    pub fn get(&self, format: &ExportFormat) -> Option<&Arc<dyn ExportEncoding>> {
        self.by_name.get(format)
    }

    /// Whether a known format has this file extension.
    pub fn knows_extension(&self, extension: &str) -> bool {
        self.by_name.values().any(|e| e.extension() == extension)
    }

    /// The names of the known formats, in order.
    pub fn names(&self) -> impl Iterator<Item = &ExportFormat> {
        self.by_name.keys()
    }

    /// The format named `format`, or the error a submit naming an unknown
    /// one gets.
    pub(crate) fn find(&self, format: &ExportFormat) -> Result<&Arc<dyn ExportEncoding>> {
        self.get(format).ok_or_else(|| {
            let known: Vec<&str> = self.names().map(ExportFormat::as_str).collect();
            Error::invalid(format!(
                "the export format {format} is not registered; known formats: {}",
                known.join(", ")
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{ExportSpec, RecordEncoder};

    #[derive(Debug)]
    struct Odd {
        content_type: &'static str,
        extension: &'static str,
    }

    impl ExportEncoding for Odd {
        fn format(&self) -> ExportFormat {
            ExportFormat::new("ODD").unwrap()
        }
        fn content_type(&self) -> &str {
            self.content_type
        }
        fn extension(&self) -> &str {
            self.extension
        }
        fn encoder(&self, _: ExportSpec) -> Result<Box<dyn RecordEncoder>> {
            Err(Error::invalid("never"))
        }
    }

    #[test]
    fn registration_checks_what_reaches_http_headers_and_file_names() {
        let mut formats = Formats::default();
        for (content_type, extension) in [
            ("text/x\nevil", "odd"),
            ("", "odd"),
            ("text/odd", "o/d"),
            ("text/odd", ""),
        ] {
            let refused = formats.register(Arc::new(Odd {
                content_type,
                extension,
            }));
            assert!(
                matches!(refused, Err(Error::Config { .. })),
                "{content_type:?} {extension:?}"
            );
        }
        formats
            .register(Arc::new(Odd {
                content_type: "text/odd",
                extension: "odd",
            }))
            .unwrap();
        let odd = ExportFormat::new("odd").unwrap();
        assert_eq!(formats.get(&odd).unwrap().content_type(), "text/odd");
        let unknown = formats
            .find(&ExportFormat::new("PDF").unwrap())
            .unwrap_err();
        let message = unknown.to_string();
        assert!(
            ["CSV", "JSON", "NDJSON"]
                .iter()
                .all(|n| message.contains(n))
                && message.ends_with(", ODD"),
            "{message}"
        );
    }
}
