//! Network partitions between nodes on their own loopback addresses, with iptables.
//!
//! The rules live in a chain of this test process's own, `RAFTKV_LIN_<pid>`, jumped to from
//! INPUT, and match only node-to-node packets (source and destination both node addresses), so
//! clients on 127.0.0.1 still reach every node and nothing else on the machine is touched.
//! Packets are dropped in INPUT rather than OUTPUT: a drop in OUTPUT fails the sender's
//! `connect`/`send` at once (EPERM), a drop in INPUT looks like a real partition, silence.
//! Dropping the [`Firewall`] (also while a test panics) removes the chain; chains left behind
//! by a test process that died without cleaning up are removed when the next one starts.

use std::net::Ipv4Addr;
use std::process::Command;

pub struct Firewall {
    chain: String,
}

/// Runs `iptables args…`; the error names the command and what it printed.
fn iptables(args: &[&str]) -> Result<String, String> {
    let output = Command::new("iptables")
        .args(args)
        .output()
        .map_err(|e| format!("iptables {}: {e}", args.join(" ")))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "iptables {}: {} {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn remove_chain(chain: &str) {
    let _ = iptables(&["-D", "INPUT", "-j", chain]);
    let _ = iptables(&["-F", chain]);
    let _ = iptables(&["-X", chain]);
}

impl Firewall {
    /// Creates this process's chain, or says why partitions cannot be made here (not root, no
    /// iptables).
    pub fn install() -> Result<Self, String> {
        let rules = iptables(&["-S"])?;
        for stale in rules
            .lines()
            .filter_map(|l| l.strip_prefix("-N RAFTKV_LIN_"))
        {
            let alive = stale
                .parse::<u32>()
                .is_ok_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
            if !alive {
                eprintln!("removing chain RAFTKV_LIN_{stale} left by a dead test process");
                remove_chain(&format!("RAFTKV_LIN_{stale}"));
            }
        }
        let chain = format!("RAFTKV_LIN_{}", std::process::id());
        remove_chain(&chain);
        iptables(&["-N", &chain])?;
        let firewall = Self { chain };
        iptables(&["-I", "INPUT", "1", "-j", &firewall.chain])?;
        Ok(firewall)
    }

    /// Drops every packet between `a` and `b`, both ways.
    pub fn cut(&self, a: Ipv4Addr, b: Ipv4Addr) -> Result<(), String> {
        for (from, to) in [(a, b), (b, a)] {
            let (from, to) = (from.to_string(), to.to_string());
            iptables(&["-A", &self.chain, "-s", &from, "-d", &to, "-j", "DROP"])?;
        }
        Ok(())
    }

    /// Removes every cut.
    pub fn heal(&self) -> Result<(), String> {
        iptables(&["-F", &self.chain]).map(drop)
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        remove_chain(&self.chain);
    }
}
