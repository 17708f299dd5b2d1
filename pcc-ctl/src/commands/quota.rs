//! `pcc-ctl quota`: shows the saved usage of the WANs' quotas, or asks the running controller
//! to set a WAN's usage.
use std::path::Path;

use anyhow::{Context as _, Result};

use crate::balance::quota::{Usage, civil_from_days, parse_size};

/// `pcc-ctl quota --lan LAN [--set WAN=SIZE]`: shows the saved usage, or asks the running
/// controller to set a WAN's usage (to match the ISP's own meter).
pub fn command(state_file: &Path, set: &[(String, String)]) -> Result<()> {
    if !set.is_empty() {
        let mut req = Vec::new();
        for (wan, size) in set {
            let bytes = parse_size(size)
                .with_context(|| format!("`{size}` is not a size like \"350 GB\""))?;
            req.push((wan.clone(), bytes));
        }
        let set_path = state_file.with_extension("set.json");
        std::fs::write(&set_path, serde_json::to_string(&req)?)
            .with_context(|| format!("cannot write {}", set_path.display()))?;
        println!("pcc-ctl: usage set requested; the running controller applies it within a second");
        return Ok(());
    }
    let text = std::fs::read_to_string(state_file).with_context(|| {
        format!(
            "no quota usage in {} (no quotas configured, or pcc-ctl up never ran with them)",
            state_file.display()
        )
    })?;
    let usage: Vec<Usage> = serde_json::from_str(&text)?;
    println!("{:<10} {:>16} {:>20}", "WAN", "used", "cycle since (UTC)");
    for u in usage {
        let (y, m, d) = civil_from_days((u.cycle_start_unix / 86_400) as i64);
        println!(
            "{:<10} {:>13.3} GB {:>14}-{m:02}-{d:02}",
            u.wan,
            u.used_bytes as f64 / 1e9,
            y
        );
    }
    Ok(())
}
