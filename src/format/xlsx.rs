//! The `XLSX` format (feature `xlsx`): Excel workbooks written by
//! `rust_xlsxwriter` in constant memory mode.

use bytes::Bytes;
use rust_xlsxwriter::{Format, Workbook, XlsxError};
use serde_json::Value;

use super::{ExportEncoding, ExportSpec, RecordEncoder, Tail};
use crate::error::{Error, Result};
use crate::model::{ColumnType, ExportFormat, Record};

/// Excel's rows per worksheet, the header row included.
pub const XLSX_MAX_ROWS: u32 = 1_048_576;
/// Excel's columns per worksheet.
pub const XLSX_MAX_COLUMNS: usize = 16_384;
/// Excel's characters per cell.
pub const XLSX_MAX_CELL_CHARS: usize = 32_767;

/// What an XLSX export does past [`XLSX_MAX_ROWS`] rows in a sheet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SheetOverflow {
    /// Go on in a new sheet (`Sheet2`, …) that repeats the header row
    /// (the default: the export holds every record).
    #[default]
    NewSheet,
    /// Fail the export with a message naming the limit; nothing is
    /// published.
    Fail,
}

/// The `XLSX` format: an Excel workbook of one sheet (more past
/// [`XLSX_MAX_ROWS`], see [`SheetOverflow`]) with a bold header row and
/// typed cells. Registered by default with feature `xlsx`; register
/// `XlsxFormat::new().sheet_overflow(SheetOverflow::Fail)` to replace it.
///
/// Cells: numbers stay numbers (whole numbers beyond ±2⁵³, which Excel's
/// doubles cannot hold exactly, are written as text), booleans booleans,
/// strings text (never formulas: a cell starting with `=` stays text),
/// `null` and `""` an empty cell (as in CSV), arrays and objects their
/// JSON text. Strings in
/// a column the executor typed [`ColumnType::Date`] or
/// [`ColumnType::Timestamp`] that parse as RFC 3339 become Excel dates
/// (UTC). A cell longer than Excel's [`XLSX_MAX_CELL_CHARS`] characters
/// fails the export with a message (rather than a cut value).
///
/// Memory stays flat: rows go to a temporary file as they come (the
/// worksheet's constant memory mode, strings inline), and the workbook is
/// zipped into a second temporary file at the end, read back in chunks.
/// Both are in the system's temporary directory and removed when done.
#[derive(Debug, Clone, Copy, Default)]
pub struct XlsxFormat {
    overflow: SheetOverflow,
}

impl XlsxFormat {
    /// The format with a new sheet past [`XLSX_MAX_ROWS`].
    pub fn new() -> Self {
        XlsxFormat::default()
    }

    /// What to do past [`XLSX_MAX_ROWS`] rows in a sheet.
    pub fn sheet_overflow(mut self, overflow: SheetOverflow) -> Self {
        self.overflow = overflow;
        self
    }
}

impl ExportEncoding for XlsxFormat {
    fn format(&self) -> ExportFormat {
        ExportFormat::XLSX
    }

    fn content_type(&self) -> &str {
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    }

    fn extension(&self) -> &str {
        "xlsx"
    }

    fn encoder(&self, spec: ExportSpec) -> Result<Box<dyn RecordEncoder>> {
        XlsxEncoder::new(spec, self.overflow, XLSX_MAX_ROWS).map(|e| Box::new(e) as _)
    }
}

/// One XLSX export in progress.
struct XlsxEncoder {
    workbook: Workbook,
    spec: ExportSpec,
    overflow: SheetOverflow,
    /// Rows per sheet, the header included ([`XLSX_MAX_ROWS`], smaller in
    /// tests).
    max_rows: u32,
    sheet: usize,
    /// The next row of the current sheet.
    row: u32,
    header: Format,
    date: Format,
    timestamp: Format,
    records: u64,
    /// The cells' text so far: the estimate `len` gives (the file is
    /// compressed, usually much smaller).
    text_bytes: u64,
}

fn xlsx_error(e: XlsxError) -> Error {
    Error::invalid(format!("XLSX encoding failed: {e}"))
}

impl XlsxEncoder {
    fn new(spec: ExportSpec, overflow: SheetOverflow, max_rows: u32) -> Result<Self> {
        if spec.columns.len() > XLSX_MAX_COLUMNS {
            return Err(Error::invalid(format!(
                "the export has {} columns; an XLSX sheet holds at most {XLSX_MAX_COLUMNS}",
                spec.columns.len()
            )));
        }
        let mut encoder = XlsxEncoder {
            workbook: Workbook::new(),
            spec,
            overflow,
            max_rows,
            sheet: 0,
            row: 0,
            header: Format::new().set_bold(),
            date: Format::new().set_num_format("yyyy-mm-dd"),
            timestamp: Format::new().set_num_format("yyyy-mm-dd hh:mm:ss"),
            records: 0,
            text_bytes: 0,
        };
        encoder.start_sheet()?;
        Ok(encoder)
    }

    /// Adds a sheet and writes the header row into it.
    fn start_sheet(&mut self) -> Result<()> {
        self.sheet = self.workbook.worksheets().len();
        let sheet = self.workbook.add_worksheet_with_constant_memory();
        for (col, name) in self.spec.columns.iter().enumerate() {
            let text = check_length(name)?;
            sheet
                .write_string_with_format(0, col_num(col), text, &self.header)
                .map_err(xlsx_error)?;
            self.text_bytes += name.len() as u64;
        }
        self.row = 1;
        Ok(())
    }

    fn write_row(&mut self, record: &Record) -> Result<()> {
        let row = self.row;
        let sheet = self
            .workbook
            .worksheet_from_index(self.sheet)
            .map_err(xlsx_error)?;
        for (index, value) in record.iter().enumerate() {
            let col = col_num(index);
            let typed = self.spec.column_type(index);
            let written = match (value, typed) {
                (Value::Null, _) => continue,
                (Value::Bool(b), _) => sheet.write_boolean(row, col, *b),
                (Value::Number(n), _) => match exact_f64(n) {
                    Some(f) => sheet.write_number(row, col, f),
                    None => sheet.write_string(row, col, n.to_string()),
                },
                (Value::String(s), Some(ColumnType::Date | ColumnType::Timestamp)) => {
                    match excel_date(s) {
                        Some((serial, whole_day)) => {
                            let format = match (typed, whole_day) {
                                (Some(ColumnType::Date), _) | (_, true) => &self.date,
                                _ => &self.timestamp,
                            };
                            sheet.write_number_with_format(row, col, serial, format)
                        }
                        None => sheet.write_string(row, col, check_length(s)?),
                    }
                }
                (Value::String(s), _) => sheet.write_string(row, col, check_length(s)?),
                (other, _) => sheet.write_string(row, col, check_length(&other.to_string())?),
            };
            written.map_err(xlsx_error)?;
            self.text_bytes += cell_bytes(value);
        }
        self.row += 1;
        Ok(())
    }
}

impl RecordEncoder for XlsxEncoder {
    fn push(&mut self, record: &Record) -> Result<Option<Bytes>> {
        super::check_arity(record, self.spec.columns.len(), self.records)?;
        if self.row >= self.max_rows {
            match self.overflow {
                SheetOverflow::NewSheet => self.start_sheet()?,
                SheetOverflow::Fail => {
                    return Err(Error::invalid(format!(
                        "the export has more than {} records, the most an XLSX sheet holds below its header; \
                         narrow the query, or register XlsxFormat with SheetOverflow::NewSheet",
                        self.max_rows - 1
                    )));
                }
            }
        }
        self.write_row(record)?;
        self.records += 1;
        Ok(None)
    }

    fn finish(mut self: Box<Self>) -> Result<Tail> {
        let io = |e: std::io::Error| Error::invalid(format!("writing the XLSX file failed: {e}"));
        let mut file = tempfile::tempfile().map_err(io)?;
        {
            let mut out = std::io::BufWriter::new(&mut file);
            self.workbook.save_to_writer(&mut out).map_err(xlsx_error)?;
            std::io::Write::flush(&mut out).map_err(io)?;
        }
        std::io::Seek::rewind(&mut file).map_err(io)?;
        Ok(Tail::reader(file))
    }

    fn records(&self) -> u64 {
        self.records
    }

    fn len(&self) -> u64 {
        self.text_bytes
    }
}

fn col_num(index: usize) -> u16 {
    // Bounded by XLSX_MAX_COLUMNS at creation.
    u16::try_from(index).unwrap_or(u16::MAX)
}

/// `text`, or a clear error if Excel cannot hold it in one cell.
fn check_length(text: &str) -> Result<&str> {
    // Excel counts UTF-16 code units.
    if text.len() > XLSX_MAX_CELL_CHARS && text.encode_utf16().count() > XLSX_MAX_CELL_CHARS {
        return Err(Error::invalid(format!(
            "a value of {} characters is longer than an XLSX cell holds ({XLSX_MAX_CELL_CHARS}); \
             export it as CSV or JSON",
            text.chars().count()
        )));
    }
    Ok(text)
}

/// `n` as an `f64` if that is exact (whole numbers within ±2⁵³, or any
/// float).
fn exact_f64(n: &serde_json::Number) -> Option<f64> {
    const EXACT: u64 = 1 << 53;
    if let Some(i) = n.as_i64() {
        return (i.unsigned_abs() <= EXACT).then_some(i as f64);
    }
    if let Some(u) = n.as_u64() {
        return (u <= EXACT).then_some(u as f64);
    }
    n.as_f64()
}

/// An RFC 3339 date-time (converted to UTC) or a plain date as an Excel
/// serial date (days since 1899-12-30), and whether it is a whole day.
fn excel_date(text: &str) -> Option<(f64, bool)> {
    let (seconds, nanos) = match chrono::DateTime::parse_from_rfc3339(text) {
        Ok(at) => (at.timestamp(), at.timestamp_subsec_nanos()),
        Err(_) => {
            let day = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
            (day.and_hms_opt(0, 0, 0)?.and_utc().timestamp(), 0)
        }
    };
    // Excel's dates start in 1900; 1970-01-01 is serial 25,569.
    let serial = seconds as f64 / 86_400.0 + 25_569.0 + f64::from(nanos) / 86_400e9;
    (serial >= 1.0).then_some((serial, seconds % 86_400 == 0 && nanos == 0))
}

/// About how many bytes a value adds to the sheet's text.
fn cell_bytes(value: &Value) -> u64 {
    match value {
        Value::String(s) => s.len() as u64,
        Value::Null => 0,
        Value::Bool(_) => 1,
        Value::Number(_) => 8,
        other => other.to_string().len() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::EncodeOptions;
    use calamine::{Data, Reader, Xlsx};
    use serde_json::json;

    fn encode(
        spec: ExportSpec,
        overflow: SheetOverflow,
        max_rows: u32,
        rows: &[Record],
    ) -> Result<Vec<u8>> {
        let mut encoder: Box<dyn RecordEncoder> =
            Box::new(XlsxEncoder::new(spec, overflow, max_rows)?);
        for row in rows {
            assert!(encoder.push(row)?.is_none());
        }
        let mut tail = encoder.finish()?;
        let mut out = Vec::new();
        while let Some(chunk) = tail.next_chunk()? {
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    fn sheets(bytes: Vec<u8>) -> Vec<(String, Vec<Vec<Data>>)> {
        let mut book: Xlsx<_> =
            calamine::open_workbook_from_rs(std::io::Cursor::new(bytes)).unwrap();
        let names = book.sheet_names().to_vec();
        names
            .into_iter()
            .map(|name| {
                let range = book.worksheet_range(&name).unwrap();
                let rows = range.rows().map(<[Data]>::to_vec).collect();
                (name, rows)
            })
            .collect()
    }

    fn spec(columns: &[&str]) -> ExportSpec {
        ExportSpec::new(
            columns.iter().map(|c| (*c).to_owned()).collect(),
            EncodeOptions::default(),
        )
    }

    #[test]
    fn past_the_row_limit_a_new_sheet_repeats_the_header_or_the_export_fails() {
        let rows: Vec<Record> = (0..5).map(|i| vec![json!(i)]).collect();
        let book = sheets(encode(spec(&["n"]), SheetOverflow::NewSheet, 3, &rows).unwrap());
        let names: Vec<&str> = book.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["Sheet1", "Sheet2", "Sheet3"]);
        let cells: Vec<Vec<Data>> = book
            .into_iter()
            .map(|(_, rows)| rows.into_iter().flatten().collect())
            .collect();
        let n = |i: f64| Data::Float(i);
        let header = || Data::String("n".into());
        assert_eq!(
            cells,
            [
                vec![header(), n(0.0), n(1.0)],
                vec![header(), n(2.0), n(3.0)],
                vec![header(), n(4.0)]
            ]
        );

        let failed = encode(spec(&["n"]), SheetOverflow::Fail, 3, &rows).unwrap_err();
        assert!(
            failed.to_string().contains("more than 2 records"),
            "{failed}"
        );
    }

    #[test]
    fn too_many_columns_or_too_long_a_cell_is_a_clear_error() {
        let wide: Vec<String> = (0..=XLSX_MAX_COLUMNS).map(|i| format!("c{i}")).collect();
        let refused = XlsxEncoder::new(
            ExportSpec::new(wide, EncodeOptions::default()),
            SheetOverflow::Fail,
            10,
        );
        assert!(refused.is_err());
        let long = vec![vec![json!("x".repeat(XLSX_MAX_CELL_CHARS + 1))]];
        let failed = encode(spec(&["t"]), SheetOverflow::Fail, 10, &long).unwrap_err();
        assert!(
            failed
                .to_string()
                .contains("longer than an XLSX cell holds"),
            "{failed}"
        );
        let fits = vec![vec![json!("x".repeat(XLSX_MAX_CELL_CHARS))]];
        assert!(encode(spec(&["t"]), SheetOverflow::Fail, 10, &fits).is_ok());
    }

    #[test]
    fn dates_are_serial_days_since_1899_12_30_in_utc() {
        assert_eq!(excel_date("1970-01-01T00:00:00Z"), Some((25_569.0, true)));
        assert_eq!(excel_date("1970-01-02"), Some((25_570.0, true)));
        // An offset is converted: 02:00+02:00 is midnight UTC.
        assert_eq!(
            excel_date("1970-01-01T02:00:00+02:00"),
            Some((25_569.0, true))
        );
        assert_eq!(excel_date("1970-01-01T12:00:00Z"), Some((25_569.5, false)));
        assert_eq!(excel_date("yesterday"), None);
    }
}
