//! Minimal parser for the Prometheus text exposition format (what `pcc-ctl --metrics` serves).

use std::collections::BTreeMap;

use anyhow::{Result, anyhow, bail};

/// One sample line: `name{label="value",…} value [timestamp]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// All samples of one scrape.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    pub samples: Vec<Sample>,
}

impl Metrics {
    pub fn parse(text: &str) -> Result<Self> {
        let mut samples = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            samples.push(
                parse_line(line).map_err(|e| anyhow!("metrics line {}: {e}: {line:?}", i + 1))?,
            );
        }
        Ok(Self { samples })
    }

    /// Sum of the samples called `name` whose labels include all of `labels`; `None` if none.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for s in self.samples.iter().filter(|s| s.name == name) {
            if labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            {
                *found.get_or_insert(0.0) += s.value;
            }
        }
        found
    }

    /// Sum of all samples called `name` (0 if none).
    pub fn sum(&self, name: &str) -> f64 {
        self.get(name, &[]).unwrap_or(0.0)
    }

    /// `name{wan="<wan>"}` (0 if absent).
    pub fn wan(&self, name: &str, wan: &str) -> f64 {
        self.get(name, &[("wan", wan)]).unwrap_or(0.0)
    }

    /// Samples called `name` summed per value of `label`.
    pub fn by_label(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for s in self.samples.iter().filter(|s| s.name == name) {
            if let Some(v) = s.labels.get(label) {
                *out.entry(v.clone()).or_insert(0.0) += s.value;
            }
        }
        out
    }

    /// Whether any sample is called `name`.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }
}

fn parse_line(line: &str) -> Result<Sample> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or_else(|| anyhow!("no value"))?;
    let name = &line[..name_end];
    if name.is_empty() {
        bail!("empty metric name");
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(r) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(r)?;
        labels = parsed;
        rest = after;
    }
    let value = rest
        .split_whitespace()
        .next()
        .ok_or_else(|| anyhow!("no value"))?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().map_err(|_| anyhow!("bad value {v:?}"))?,
    };
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `a="x",b="y"}` and returns the labels and the text after `}`.
fn parse_labels(mut s: &str) -> Result<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start_matches([' ', ',']);
        if let Some(after) = s.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = s.find('=').ok_or_else(|| anyhow!("label without '='"))?;
        let key = s[..eq].trim().to_owned();
        s = s[eq + 1..]
            .trim_start()
            .strip_prefix('"')
            .ok_or_else(|| anyhow!("label value not quoted"))?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                None => bail!("unterminated label value"),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => bail!("unterminated escape"),
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.insert(key, value);
        s = &s[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counters_with_labels() {
        let text = "# HELP pcc_wan_tx_packets_total Packets sent.\n\
                    # TYPE pcc_wan_tx_packets_total counter\n\
                    pcc_wan_tx_packets_total{wan=\"wan0\"} 12\n\
                    pcc_wan_tx_packets_total{wan=\"wan1\"} 30 1700000000000\n\
                    pcc_flows_active 4\n\
                    pcc_drops_total{reason=\"no \\\"route\\\"\",wan=\"wan0\"} 1e3\n";
        let m = Metrics::parse(text).unwrap();
        assert_eq!(m.wan("pcc_wan_tx_packets_total", "wan0"), 12.0);
        assert_eq!(m.wan("pcc_wan_tx_packets_total", "wan1"), 30.0);
        assert_eq!(m.sum("pcc_wan_tx_packets_total"), 42.0);
        assert_eq!(m.get("pcc_flows_active", &[]), Some(4.0));
        assert_eq!(
            m.get("pcc_drops_total", &[("reason", "no \"route\"")]),
            Some(1000.0)
        );
        assert_eq!(m.get("nope", &[]), None);
        let by = m.by_label("pcc_wan_tx_packets_total", "wan");
        assert_eq!(by.get("wan1"), Some(&30.0));
    }

    #[test]
    fn rejects_garbage() {
        assert!(Metrics::parse("pcc_x{wan=wan0} 1").is_err());
        assert!(Metrics::parse("pcc_x{wan=\"wan0\"} abc").is_err());
        assert!(Metrics::parse("pcc_x").is_err());
    }
}
