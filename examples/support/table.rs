//! A generated demo table, shared by `examples/export.rs` and
//! `benches/export.rs` so both write exactly the same rows.

use serde_json::{Value, json};

/// The table's ten columns.
pub fn columns() -> Vec<String> {
    [
        "id",
        "customer",
        "region",
        "product",
        "quantity",
        "unit_price",
        "discount",
        "paid",
        "ordered_on",
        "note",
    ]
    .iter()
    .map(|c| c.to_string())
    .collect()
}

/// What the columns hold, for typed formats (XLSX): `ordered_on` is a
/// date.
#[allow(dead_code)] // not every user of the table is typed
pub fn types() -> Vec<async_query::ColumnType> {
    use async_query::ColumnType::{Boolean, Date, Float, Integer, Text};
    vec![
        Integer, Text, Text, Text, Integer, Float, Float, Boolean, Date, Text,
    ]
}

const REGIONS: [&str; 5] = ["EMEA", "APAC", "NA", "LATAM", "ANZ"];
const PRODUCTS: [&str; 4] = ["widget", "gadget, large", "gizmo \"pro\"", "doohickey"];

/// Row `i` of the table: numbers, text that needs CSV quoting, a bool and
/// nulls.
pub fn row(i: u64) -> Vec<Value> {
    vec![
        json!(i),
        json!(format!("customer-{:06}", i % 100_000)),
        json!(REGIONS[(i % 5) as usize]),
        json!(PRODUCTS[(i % 4) as usize]),
        json!(i % 17 + 1),
        json!((i % 1_000) as f64 / 8.0),
        if i % 3 == 0 { Value::Null } else { json!(0.05) },
        json!(i % 2 == 0),
        json!(format!("2026-{:02}-{:02}", i % 12 + 1, i % 28 + 1)),
        if i % 10 == 0 {
            json!("rush order\nhandle with care")
        } else {
            Value::Null
        },
    ]
}
