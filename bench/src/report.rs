//! The one markdown table of results (each figure for Tandem, for etcd, their ratio and which
//! direction is better), with the date, the machine and the exact command around it.

use std::fmt::Write as _;

/// Which direction of a figure is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
    /// Lower, but nothing below zero counts: a growth rate, where shrinking is no better than
    /// staying flat (both systems at or below zero tie, and the ratio of signed rates means
    /// nothing).
    NoGrowth,
}

/// One figure for both systems.
#[derive(Debug, Clone)]
pub struct Row {
    pub figure: String,
    pub tandem: Option<f64>,
    pub etcd: Option<f64>,
    /// Decimals shown.
    pub decimals: usize,
    pub better: Better,
    /// Appended to a cell (e.g. "(3 errors)").
    pub tandem_note: String,
    pub etcd_note: String,
}

impl Row {
    pub fn new(
        figure: impl Into<String>,
        tandem: Option<f64>,
        etcd: Option<f64>,
        decimals: usize,
        better: Better,
    ) -> Row {
        Row {
            figure: figure.into(),
            tandem,
            etcd,
            decimals,
            better,
            tandem_note: String::new(),
            etcd_note: String::new(),
        }
    }

    pub fn notes(mut self, tandem: String, etcd: String) -> Row {
        self.tandem_note = tandem;
        self.etcd_note = etcd;
        self
    }

    fn cell(value: Option<f64>, decimals: usize, note: &str) -> String {
        let number = match value {
            Some(v) => format!("{v:.decimals$}"),
            None => "n/a".to_owned(),
        };
        if note.is_empty() {
            number
        } else {
            format!("{number} {note}")
        }
    }

    /// Tandem / etcd, and who is ahead.
    fn ratio_and_lead(&self) -> (String, &'static str) {
        if self.better == Better::NoGrowth {
            return match (self.tandem, self.etcd) {
                (Some(t), Some(e)) if t <= 0.0 || e <= 0.0 => {
                    let lead = match (t <= 0.0, e <= 0.0) {
                        (true, true) => "tie",
                        (true, false) => "Tandem",
                        _ => "etcd",
                    };
                    ("n/a".into(), lead)
                }
                _ => Row {
                    better: Better::Lower,
                    ..self.clone()
                }
                .ratio_and_lead(),
            };
        }
        match (self.tandem, self.etcd) {
            (Some(t), Some(e)) if t == e => ("1.00".into(), "tie"),
            (Some(_), Some(0.0)) => (
                "∞".into(),
                if self.better == Better::Higher {
                    "Tandem"
                } else {
                    "etcd"
                },
            ),
            (Some(t), Some(e)) => {
                let ahead = match (self.better, t > e) {
                    (Better::Higher, true) | (Better::Lower, false) => "Tandem",
                    _ => "etcd",
                };
                (format!("{:.2}", t / e), ahead)
            }
            _ => ("n/a".into(), "n/a"),
        }
    }
}

/// Where and how the run happened.
#[derive(Debug, Clone)]
pub struct Context {
    pub date: String,
    pub machine: String,
    pub command: String,
    pub versions: String,
}

/// Renders the table with its context and the notes below it.
pub fn render(context: &Context, rows: &[Row], notes: &[String]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Tandem vs etcd\n");
    let _ = writeln!(out, "- Date: {}", context.date);
    let _ = writeln!(out, "- Machine: {}", context.machine);
    let _ = writeln!(out, "- Versions: {}", context.versions);
    let _ = writeln!(out, "- Command: `{}`\n", context.command);
    let _ = writeln!(out, "| Figure | Tandem | etcd | Tandem / etcd | Better when | Ahead |");
    let _ = writeln!(out, "|---|---:|---:|---:|---|---|");
    for row in rows {
        let (ratio, ahead) = row.ratio_and_lead();
        let better = match row.better {
            Better::Higher => "higher",
            Better::Lower => "lower",
            Better::NoGrowth => "lower, ≤ 0 alike",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            row.figure,
            Row::cell(row.tandem, row.decimals, &row.tandem_note),
            Row::cell(row.etcd, row.decimals, &row.etcd_note),
            ratio,
            better,
            ahead
        );
    }
    if !notes.is_empty() {
        let _ = writeln!(out);
        for note in notes {
            let _ = writeln!(out, "{note}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_and_direction() {
        let row = Row::new("put ops/s", Some(50.0), Some(100.0), 0, Better::Higher);
        assert_eq!(row.ratio_and_lead(), ("0.50".to_owned(), "etcd"));
        let row = Row::new("p99 ms", Some(50.0), Some(100.0), 0, Better::Lower);
        assert_eq!(row.ratio_and_lead(), ("0.50".to_owned(), "Tandem"));
        let row = Row::new("lost", Some(0.0), Some(0.0), 0, Better::Lower);
        assert_eq!(row.ratio_and_lead(), ("1.00".to_owned(), "tie"));
    }

    #[test]
    fn shrinking_is_no_better_than_staying_flat() {
        let growth = |t, e| Row::new("RSS growth", Some(t), Some(e), 1, Better::NoGrowth).ratio_and_lead();
        assert_eq!(growth(-2.1, -166.4), ("n/a".to_owned(), "tie"));
        assert_eq!(growth(0.0, -5.0), ("n/a".to_owned(), "tie"));
        assert_eq!(growth(7.8, -74.2), ("n/a".to_owned(), "etcd"));
        assert_eq!(growth(-1.0, 36.0), ("n/a".to_owned(), "Tandem"));
        assert_eq!(growth(2.2, 36.0), ("0.06".to_owned(), "Tandem"));
        assert_eq!(growth(40.0, 20.0), ("2.00".to_owned(), "etcd"));
    }
}
