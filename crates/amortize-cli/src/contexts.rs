//! Reading contexts from CSV or JSON files for `amortize predict`.
//!
//! * CSV: one context per row, numbers only; a first row that is not numeric is a header.
//! * JSON: an array of arrays of numbers, or an object `{"contexts": [[...], ...]}`.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// Reads a matrix of contexts with `cols` columns, refusing wrong widths and NaN/inf values.
pub fn read_contexts(path: &Path, cols: usize) -> Result<Vec<Vec<f64>>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read contexts file {}", path.display()))?;
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let rows = match ext.as_str() {
        "json" => parse_json(&text),
        "csv" | "txt" => parse_csv(&text),
        other => bail!(
            "{}: unknown contexts format '.{other}' (use .csv or .json)",
            path.display()
        ),
    }
    .with_context(|| format!("{}: malformed contexts", path.display()))?;
    if rows.is_empty() {
        bail!("{}: no contexts found", path.display());
    }
    for (i, row) in rows.iter().enumerate() {
        if row.len() != cols {
            bail!(
                "{}: context {} has {} numbers, the model expects {cols}",
                path.display(),
                i + 1,
                row.len()
            );
        }
        if let Some(j) = row.iter().position(|v| !v.is_finite()) {
            bail!(
                "{}: context {} value {} is {} (NaN or infinite values are not allowed)",
                path.display(),
                i + 1,
                j + 1,
                row[j]
            );
        }
    }
    Ok(rows)
}

fn parse_json(text: &str) -> Result<Vec<Vec<f64>>> {
    let v: serde_json::Value = serde_json::from_str(text)?;
    let arr = match &v {
        serde_json::Value::Array(_) => &v,
        serde_json::Value::Object(o) => o
            .get("contexts")
            .context("a JSON object must have a \"contexts\" field")?,
        _ => bail!("expected an array of arrays or {{\"contexts\": [...]}}"),
    };
    let rows = arr.as_array().context("\"contexts\" must be an array")?;
    rows.iter()
        .enumerate()
        .map(|(i, r)| {
            r.as_array()
                .with_context(|| format!("context {} is not an array", i + 1))?
                .iter()
                .map(|v| {
                    v.as_f64()
                        .with_context(|| format!("context {}: {v} is not a number", i + 1))
                })
                .collect()
        })
        .collect()
}

fn parse_csv(text: &str) -> Result<Vec<Vec<f64>>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut rows = Vec::new();
    for (i, rec) in reader.records().enumerate() {
        let rec = rec?;
        if rec.iter().all(|f| f.is_empty()) {
            continue;
        }
        let parsed: std::result::Result<Vec<f64>, _> = rec.iter().map(str::parse::<f64>).collect();
        match parsed {
            Ok(r) => rows.push(r),
            Err(_) if i == 0 => continue, // a header row
            Err(e) => bail!(
                "line {}: {e} in {:?}",
                i + 1,
                rec.iter().collect::<Vec<_>>()
            ),
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use amortize::testing::ScratchDir;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn reads_csv_with_header_and_json_forms() {
        let dir = ScratchDir::new("contexts-good").unwrap();
        let p = write(&dir, "a.csv", "a,b\n1,2\n3, 4\n");
        assert_eq!(
            read_contexts(&p, 2).unwrap(),
            vec![vec![1.0, 2.0], vec![3.0, 4.0]]
        );
        let p = write(&dir, "a.json", "[[1,2],[3,4]]");
        assert_eq!(read_contexts(&p, 2).unwrap().len(), 2);
        let p = write(&dir, "b.json", "{\"contexts\": [[1,2]]}");
        assert_eq!(read_contexts(&p, 2).unwrap(), vec![vec![1.0, 2.0]]);
    }

    #[test]
    fn refuses_bad_files() {
        let dir = ScratchDir::new("contexts-bad").unwrap();
        let p = write(&dir, "w.csv", "1,2,3\n");
        assert!(format!("{:#}", read_contexts(&p, 2).unwrap_err()).contains("expects 2"));
        let p = write(&dir, "n.csv", "1,NaN\n");
        assert!(format!("{:#}", read_contexts(&p, 2).unwrap_err()).contains("NaN"));
        let p = write(&dir, "i.json", "[[1, 1e999]]");
        assert!(read_contexts(&p, 2).is_err());
        let p = write(&dir, "x.json", "[[1, \"a\"]]");
        assert!(format!("{:#}", read_contexts(&p, 2).unwrap_err()).contains("not a number"));
        let p = write(&dir, "x.yaml", "1");
        assert!(read_contexts(&p, 1).is_err());
        assert!(read_contexts(Path::new("/nonexistent/x.csv"), 1).is_err());
    }
}
