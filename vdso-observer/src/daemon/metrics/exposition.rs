//! The text exposition format 0.0.4: families declared once, labels escaped.

use std::{collections::BTreeSet, fmt::Write as _};

use crate::metric_families::MetricFamily;

/// Text exposition format 0.0.4 builder: HELP and TYPE once per family.
#[derive(Default)]
pub(super) struct Exposition {
    pub(super) text: String,
    pub(super) family: &'static str,
    pub(super) seen: BTreeSet<&'static str>,
}

impl Exposition {
    pub(super) fn family(&mut self, family: &MetricFamily) {
        let name = family.name;
        debug_assert!(self.seen.insert(name), "family {name} twice");
        self.family = name;
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(family.help));
        let _ = writeln!(self.text, "# TYPE {name} {}", family.kind.name());
    }

    pub(super) fn sample(&mut self, labels: &[(&str, &str)], value: f64) {
        self.sample_parts(labels, &[], value);
    }

    /// A sample whose labels come in two parts: the owner's (comm, pid), then
    /// the family's own.
    pub(super) fn sample_parts(
        &mut self,
        owner: &[(&str, &str)],
        labels: &[(&str, &str)],
        value: f64,
    ) {
        self.text.push_str(self.family);
        if !owner.is_empty() || !labels.is_empty() {
            self.text.push('{');
            for (i, (name, value)) in owner.iter().chain(labels).enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{name}=\"{}\"", escape_label(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", format_value(value));
    }

    pub(super) fn finish(self) -> String {
        self.text
    }
}

/// Label values escape backslash, double quote and newline.
pub fn escape_label(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

pub(super) fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

pub(super) fn format_value(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}
