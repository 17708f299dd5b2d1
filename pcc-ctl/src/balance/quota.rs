//! Monthly fair-usage quotas per WAN (the `[[quota]]` sections of `--config`): usage is what
//! the dataplane forwarded through the WAN (both directions, frame bytes), kept on disk every
//! few seconds so a restart or a reboot loses at most that much, and reset on the billing
//! day. Thresholds act on the WAN as its ISP's fair-usage policy would want: lower its weight
//! (the ISP cut its speed), make it backup-only, or only alert (`daemon::weights` applies them).
//!
//! ```toml
//! [[quota]]
//! wan = "eth0"
//! limit = "1000 GB"
//! reset_day = 1                                              # of the month, 00:00 UTC
//! thresholds = [
//!     { at_percent = 50, action = "weight", factor = 0.75 },  # ISP cuts speed by 25 %
//!     { at_percent = 80, action = "weight", factor = 0.6 },   # ... by 40 %
//!     { at_percent = 100, action = "backup" },
//! ]
//! ```
use std::{
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail, ensure};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConf {
    pub wan: String,
    pub limit: String,
    #[serde(default = "first_day")]
    pub reset_day: u8,
    #[serde(default)]
    pub thresholds: Vec<ThresholdConf>,
}

fn first_day() -> u8 {
    1
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdConf {
    pub at_percent: f64,
    pub action: String,
    #[serde(default)]
    pub factor: Option<f64>,
}

/// What crossing a threshold does to the WAN.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Action {
    /// Its weight times this factor (0 < factor <= 1).
    Weight(f64),
    /// Used only while every other WAN is down.
    Backup,
    /// Nothing but the metric and a log line.
    Alert,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Quota {
    pub wan_id: u8,
    pub limit_bytes: u64,
    pub reset_day: u8,
    /// Ascending by `at_percent`.
    pub thresholds: Vec<(f64, Action)>,
}

/// "1000 GB", "500MB", "123" (bytes): decimal units, as ISPs count.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num.trim().parse().ok()?;
    let mult = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1e0,
        "KB" | "K" => 1e3,
        "MB" | "M" => 1e6,
        "GB" | "G" => 1e9,
        "TB" | "T" => 1e12,
        _ => return None,
    };
    (num >= 0.0 && num.is_finite()).then_some((num * mult) as u64)
}

/// Checks the `[[quota]]` sections against the WANs (names in `wan_id` order).
pub fn resolve(confs: &[QuotaConf], wans: &[String]) -> Result<Vec<Quota>> {
    let mut out: Vec<Quota> = Vec::new();
    for c in confs {
        let wan = &c.wan;
        let wan_id = wans.iter().position(|w| w == wan).with_context(|| {
            format!(
                "quota names {wan}, which is not one of the WANs ({})",
                wans.join(",")
            )
        })? as u8;
        ensure!(
            !out.iter().any(|q| q.wan_id == wan_id),
            "WAN {wan} has two quotas"
        );
        let limit_bytes = parse_size(&c.limit).filter(|b| *b > 0).with_context(|| {
            format!(
                "quota of {wan}: limit `{}` is not a size like \"1000 GB\"",
                c.limit
            )
        })?;
        ensure!(
            (1..=28).contains(&c.reset_day),
            "quota of {wan}: reset_day must be 1..=28 (every month has it), got {}",
            c.reset_day
        );
        let mut thresholds = Vec::new();
        for t in &c.thresholds {
            ensure!(
                t.at_percent > 0.0 && t.at_percent.is_finite(),
                "quota of {wan}: at_percent must be above 0, got {}",
                t.at_percent
            );
            let action = match (t.action.as_str(), t.factor) {
                ("weight", Some(f)) if f > 0.0 && f <= 1.0 => Action::Weight(f),
                ("weight", f) => {
                    bail!("quota of {wan}: action \"weight\" needs a factor in (0, 1], got {f:?}")
                }
                ("backup", None) => Action::Backup,
                ("alert", None) => Action::Alert,
                ("backup" | "alert", Some(_)) => {
                    bail!("quota of {wan}: only action \"weight\" takes a factor")
                }
                (other, _) => {
                    bail!("quota of {wan}: unknown action \"{other}\" (weight, backup or alert)")
                }
            };
            thresholds.push((t.at_percent, action));
        }
        thresholds.sort_by(|a, b| a.0.total_cmp(&b.0));
        out.push(Quota {
            wan_id,
            limit_bytes,
            reset_day: c.reset_day,
            thresholds,
        });
    }
    Ok(out)
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Days since 1970-01-01 -> (year, month 1..=12, day 1..=31) (Howard Hinnant's algorithm).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// (year, month, day) -> days since 1970-01-01.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Start (Unix seconds, 00:00 UTC) of the billing cycle that contains `now`.
pub fn cycle_start(now: u64, reset_day: u8) -> u64 {
    let days = (now / 86_400) as i64;
    let (y, m, d) = civil_from_days(days);
    let day = u32::from(reset_day);
    let (y, m) = if d >= day {
        (y, m)
    } else if m == 1 {
        (y - 1, 12)
    } else {
        (y, m - 1)
    };
    (days_from_civil(y, m, day) * 86_400) as u64
}

/// One WAN's usage as kept on disk.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub wan: String,
    pub used_bytes: u64,
    pub cycle_start_unix: u64,
    /// The dataplane's byte counter when this was saved: after a restart on the same pinned
    /// maps, what passed while no controller ran is added.
    pub counter_at_save: u64,
}

/// Usage of every quota'd WAN, kept in step with the dataplane's counters.
pub struct Meter {
    pub quotas: Vec<Quota>,
    pub usage: Vec<Usage>,
    /// Dataplane counter at the last update, per quota.
    last: Vec<u64>,
    path: PathBuf,
    /// A `pcc-ctl quota --set` request waiting to be applied.
    set_path: PathBuf,
}

impl Meter {
    /// Loads the saved usage (if any) for `quotas`; `counters(wan_id)` is the dataplane's
    /// byte counter of a WAN now.
    pub fn open(
        quotas: Vec<Quota>,
        names: &[String],
        state_file: &Path,
        counters: impl Fn(u8) -> u64,
        now: u64,
    ) -> Result<Meter> {
        let saved: Vec<Usage> = match std::fs::read_to_string(state_file) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("{} is not pcc's quota usage", state_file.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", state_file.display()));
            }
        };
        let mut usage = Vec::new();
        let mut last = Vec::new();
        for q in &quotas {
            let name = names[q.wan_id as usize].clone();
            let counter = counters(q.wan_id);
            let mut u = saved
                .iter()
                .find(|u| u.wan == name)
                .cloned()
                .unwrap_or(Usage {
                    wan: name,
                    ..Usage::default()
                });
            // Same pinned maps: count what passed while no controller ran.
            if counter >= u.counter_at_save && u.counter_at_save > 0 {
                u.used_bytes += counter - u.counter_at_save;
            }
            let start = cycle_start(now, q.reset_day);
            if u.cycle_start_unix < start {
                u.used_bytes = 0;
                u.cycle_start_unix = start;
            }
            u.counter_at_save = counter;
            usage.push(u);
            last.push(counter);
        }
        let set_path = state_file.with_extension("set.json");
        Ok(Meter {
            quotas,
            usage,
            last,
            path: state_file.to_path_buf(),
            set_path,
        })
    }

    /// Adds what the dataplane counted since the last call, starts a new cycle when one is
    /// due, and applies a pending `pcc-ctl quota --set`.
    pub fn update(&mut self, counters: impl Fn(u8) -> u64, now: u64) {
        let requests: Vec<(String, u64)> = std::fs::read_to_string(&self.set_path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        if std::fs::remove_file(&self.set_path).is_ok() {
            for (wan, bytes) in &requests {
                if let Some(u) = self.usage.iter_mut().find(|u| &u.wan == wan) {
                    log::info!("quota of {wan}: usage set to {bytes} bytes");
                    u.used_bytes = *bytes;
                }
            }
        }
        for (i, q) in self.quotas.iter().enumerate() {
            let c = counters(q.wan_id);
            // A counter that went backwards belongs to new maps: count it from zero.
            let delta = c.checked_sub(self.last[i]).unwrap_or(c);
            self.last[i] = c;
            let u = &mut self.usage[i];
            u.used_bytes += delta;
            u.counter_at_save = c;
            let start = cycle_start(now, q.reset_day);
            if u.cycle_start_unix < start {
                log::info!("quota of {}: new billing cycle, usage reset", u.wan);
                u.used_bytes = 0;
                u.cycle_start_unix = start;
            }
        }
    }

    /// Writes the usage file (atomically: a torn file would lose the month).
    pub fn save(&self) -> Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(&self.usage)?)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("cannot replace {}", self.path.display()))
    }

    /// The last threshold each quota'd WAN has crossed, as (wan_id, index + 1, action).
    pub fn crossed(&self) -> Vec<(u8, usize, Option<Action>)> {
        self.quotas
            .iter()
            .zip(&self.usage)
            .map(|(q, u)| {
                let pct = u.used_bytes as f64 * 100.0 / q.limit_bytes as f64;
                let hit = q.thresholds.iter().rposition(|(at, _)| pct >= *at);
                (
                    q.wan_id,
                    hit.map_or(0, |i| i + 1),
                    hit.map(|i| q.thresholds[i].1),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_decimal_like_an_isp_counts() {
        assert_eq!(parse_size("1000 GB"), Some(1_000_000_000_000));
        assert_eq!(parse_size("500MB"), Some(500_000_000));
        assert_eq!(parse_size("1.5 tb"), Some(1_500_000_000_000));
        assert_eq!(parse_size("123"), Some(123));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("5 XB"), None);
    }

    #[test]
    fn cycles_start_on_the_reset_day() {
        // 2026-11-25 12:00 UTC.
        let now = days_from_civil(2026, 11, 25) as u64 * 86_400 + 43_200;
        assert_eq!(
            cycle_start(now, 1),
            days_from_civil(2026, 11, 1) as u64 * 86_400
        );
        assert_eq!(
            cycle_start(now, 28),
            days_from_civil(2026, 10, 28) as u64 * 86_400
        );
        let jan = days_from_civil(2027, 1, 3) as u64 * 86_400;
        assert_eq!(
            cycle_start(jan, 15),
            days_from_civil(2026, 12, 15) as u64 * 86_400
        );
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
    }

    #[test]
    fn thresholds_are_checked_and_crossed_in_order() {
        let wans = vec!["wan0".to_string(), "wan1".to_string()];
        let conf = |action: &str, factor: Option<f64>| QuotaConf {
            wan: "wan0".into(),
            limit: "1000 GB".into(),
            reset_day: 1,
            thresholds: vec![ThresholdConf {
                at_percent: 50.0,
                action: action.into(),
                factor,
            }],
        };
        assert!(resolve(&[conf("weight", Some(0.75))], &wans).is_ok());
        for (c, says) in [
            (conf("weight", None), "needs a factor"),
            (conf("weight", Some(1.5)), "needs a factor"),
            (conf("backup", Some(0.5)), "only action"),
            (conf("throttle", None), "unknown action"),
        ] {
            let e = resolve(&[c], &wans).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
        let mut c = conf("alert", None);
        c.wan = "wan7".into();
        assert!(
            resolve(&[c], &wans)
                .unwrap_err()
                .to_string()
                .contains("wan7")
        );
    }

    #[test]
    fn usage_survives_a_restart_and_resets_with_the_cycle() {
        let dir = std::env::temp_dir().join(format!("pcc-quota-test-{}", std::process::id()));
        let file = dir.join("quota.json");
        let names = vec!["wan0".to_string()];
        let quota = || Quota {
            wan_id: 0,
            limit_bytes: 1000,
            reset_day: 1,
            thresholds: vec![(50.0, Action::Weight(0.5)), (90.0, Action::Backup)],
        };
        let now = days_from_civil(2026, 11, 25) as u64 * 86_400;
        let mut m = Meter::open(vec![quota()], &names, &file, |_| 100, now).unwrap();
        m.update(|_| 700, now);
        assert_eq!(m.usage[0].used_bytes, 600);
        assert_eq!(m.crossed(), [(0, 1, Some(Action::Weight(0.5)))]);
        m.save().unwrap();
        // The controller dies; 200 more bytes pass on the same pinned maps.
        let m = Meter::open(vec![quota()], &names, &file, |_| 900, now + 10).unwrap();
        assert_eq!(m.usage[0].used_bytes, 800);
        m.save().unwrap();
        // Next month.
        let dec = days_from_civil(2026, 12, 1) as u64 * 86_400 + 5;
        let m = Meter::open(vec![quota()], &names, &file, |_| 900, dec).unwrap();
        assert_eq!(m.usage[0].used_bytes, 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
