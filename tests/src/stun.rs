//! A STUN server with two addresses in the lab's internet, for RFC 5780 NAT behaviour
//! discovery, and the discovery client's verdicts.
//!
//! The server is coturn's `turnserver` in the `inet` namespace, STUN only, without
//! authentication, listening on the first two server addresses ([`Lab::stun_servers`]) on
//! ports 3478 and 3479. Two addresses and two ports are what RFC 5780 needs: a binding
//! response carries the OTHER-ADDRESS (the alternate address and port), and a CHANGE-REQUEST
//! makes the server answer from it. coturn turns RFC 5780 on by itself when it listens on more
//! than one address of a family. Both addresses are lab server addresses, so the ISPs route
//! them like any other server (their BCP 38 filter looks at the router's sources only).
//!
//! The client is coturn's `turnutils_natdiscovery`, one run per test ([`NatTest`]): it pins its
//! local port (`-l`) only for the first test of a run, and a LAN host's ephemeral source port
//! (32768-60999 on Linux) is the case RFC 4787 REQ-1 is about. Its verdict lines (coturn
//! 4.6.1) are parsed into a [`Discovery`].

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use anyhow::{Result, ensure};

use crate::{lab::Lab, proc};

/// The STUN server's primary port (RFC 5389's default).
pub const STUN_PORT: u16 = 3478;
/// Its alternate port (the answer to a CHANGE-REQUEST for another port).
pub const STUN_ALT_PORT: u16 = 3479;

/// A NAT's mapping or filtering behaviour in RFC 4787 terms (section 4.1 and 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    EndpointIndependent,
    AddressDependent,
    AddressAndPortDependent,
}

impl fmt::Display for Behaviour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Behaviour::EndpointIndependent => "endpoint-independent",
            Behaviour::AddressDependent => "address-dependent",
            Behaviour::AddressAndPortDependent => "address-and-port-dependent",
        })
    }
}

/// One RFC 5780 test of `turnutils_natdiscovery`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatTest {
    /// `-m`: the same local port to the primary address, then to the alternate address (and
    /// alternate port): are the reflexive (mapped) addresses equal?
    Mapping,
    /// `-f`: asks the server to answer from the alternate address and port, then from the
    /// alternate port only: which of those answers come through?
    Filtering,
    /// `-H`: a second socket sends to the first socket's reflexive address: does the first
    /// one receive it?
    Hairpinning,
}

impl NatTest {
    fn flag(self) -> &'static str {
        match self {
            NatTest::Mapping => "-m",
            NatTest::Filtering => "-f",
            NatTest::Hairpinning => "-H",
        }
    }
}

/// One binding response the client printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The client's own address and port.
    pub local: SocketAddrV4,
    /// What the server saw (XOR-MAPPED-ADDRESS): the NAT's mapping.
    pub reflexive: SocketAddrV4,
}

/// What one run of `turnutils_natdiscovery` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Discovery {
    /// The mapping verdict, if the mapping test ran to one.
    pub mapping: Option<Behaviour>,
    /// The filtering verdict, if the filtering test ran to one.
    pub filtering: Option<Behaviour>,
    /// Whether the hairpinned request arrived, if the hairpinning test ran.
    pub hairpinning: Option<bool>,
    /// The client saw its own address as the reflexive one (no NAT on the path).
    pub no_nat: bool,
    /// Every binding response, in order.
    pub bindings: Vec<Binding>,
    /// The whole output, for messages.
    pub text: String,
}

impl Discovery {
    /// Parses `turnutils_natdiscovery`'s output (coturn 4.6.1).
    pub fn parse(text: &str) -> Discovery {
        let verdict = |kind: &str| {
            [
                ("Endpoint Independent", Behaviour::EndpointIndependent),
                (
                    "Address and Port Dependent",
                    Behaviour::AddressAndPortDependent,
                ),
                ("Address Dependent", Behaviour::AddressDependent),
            ]
            .into_iter()
            .find(|(words, _)| {
                text.lines()
                    .any(|l| l.trim() == format!("NAT with {words} {kind}!"))
            })
            .map(|(_, b)| b)
        };
        let hairpinning = text
            .contains("-= Hairpinning Behavior Discovery =-")
            .then(|| text.contains("Received a request (maybe a successful hairpinning)"));
        let mut bindings = Vec::new();
        let mut reflexive = None;
        for line in text.lines() {
            if let Some(a) = after(line, "UDP reflexive addr:") {
                reflexive = Some(a);
            } else if let Some(local) = after(line, "Local addr:")
                && let Some(reflexive) = reflexive.take()
            {
                bindings.push(Binding { local, reflexive });
            }
        }
        Discovery {
            mapping: verdict("Mapping"),
            filtering: verdict("Filtering"),
            hairpinning,
            no_nat: text.contains("No NAT! (Endpoint Independent Mapping)"),
            bindings,
            text: text.to_owned(),
        }
    }
}

/// The `ip:port` after `key` on a line like `0: : IPv4. UDP reflexive addr: 198.18.1.2:40000`
/// (the local address line has an extra `: `).
fn after(line: &str, key: &str) -> Option<SocketAddrV4> {
    let (_, rest) = line.split_once(key)?;
    rest.trim_start_matches([':', ' ']).trim().parse().ok()
}

impl Lab {
    /// The STUN server's primary and alternate addresses: the first two server addresses.
    pub fn stun_servers(&self) -> [Ipv4Addr; 2] {
        [self.server_addr(0), self.server_addr(1)]
    }

    /// Starts the STUN server in `inet` (idempotent); needs a lab of at least 2 servers.
    pub fn start_stun(&self) -> Result<()> {
        if self.state.lock().unwrap().stun {
            return Ok(());
        }
        ensure!(
            self.server_count() >= 2,
            "the STUN server needs 2 server addresses"
        );
        // An empty configuration file: coturn reads /etc/turnserver.conf otherwise. Its
        // pid file and user database default to /var: both go to the lab directory.
        let conf = self.script("turnserver.conf", "")?;
        let dir = self.dir().to_string_lossy().into_owned();
        let [primary, alternate] = self.stun_servers().map(|a| a.to_string());
        let (port, alt_port) = (STUN_PORT.to_string(), STUN_ALT_PORT.to_string());
        let args = [
            "turnserver",
            "-c",
            &conf,
            "--listening-ip",
            &primary,
            "--listening-ip",
            &alternate,
            "--listening-port",
            &port,
            "--alt-listening-port",
            &alt_port,
            "--stun-only",
            "--no-auth",
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            "--log-file",
            "stdout",
            "--pidfile",
            &format!("{dir}/turnserver.pid"),
            "--userdb",
            &format!("{dir}/turndb"),
        ];
        let wanted: Vec<String> = [&primary, &alternate]
            .iter()
            .flat_map(|a| [format!("{a}:{port}"), format!("{a}:{alt_port}")])
            .collect();
        self.start_service("inet", &args, |_| {
            self.run("inet", &["ss", "-Hlun"])
                .is_ok_and(|out| wanted.iter().all(|w| out.contains(w.as_str())))
        })?;
        self.state.lock().unwrap().stun = true;
        Ok(())
    }

    /// Runs one RFC 5780 test from `client` with local port `local_port` against the lab's
    /// STUN server (started if need be). Each request waits 3 s for its answer, so a run takes
    /// at most about 10 s.
    pub fn nat_discovery(&self, client: &str, test: NatTest, local_port: u16) -> Result<Discovery> {
        self.start_stun()?;
        let local = self.client_addr_of(client).to_string();
        let port = local_port.to_string();
        let server = self.stun_servers()[0].to_string();
        let out = self.exec_opts(
            client,
            &[
                "turnutils_natdiscovery",
                test.flag(),
                "-L",
                &local,
                "-l",
                &port,
                "-p",
                &STUN_PORT.to_string(),
                &server,
            ],
            None,
            Duration::from_secs(30),
        )?;
        // It exits 255 when the first request got no answer (it then reads an unset address).
        let d = Discovery::parse(&String::from_utf8_lossy(&out.stdout));
        ensure!(
            !d.bindings.is_empty(),
            "{client}: turnutils_natdiscovery {} got no binding response from the STUN server \
             {server}:{STUN_PORT}: {}",
            test.flag(),
            proc::describe(&out)
        );
        Ok(d)
    }
}

/// The verdict of `test` in `d`, as a message-friendly string.
pub fn verdict(d: &Discovery, test: NatTest) -> String {
    match test {
        NatTest::Mapping => d.mapping.map(|b| format!("{b} mapping")),
        NatTest::Filtering => d.filtering.map(|b| format!("{b} filtering")),
        NatTest::Hairpinning => d.hairpinning.map(|h| {
            format!(
                "hairpinning {}",
                if h { "supported" } else { "not supported" }
            )
        }),
    }
    .unwrap_or_else(|| "no verdict".into())
}

/// Context for a failed expectation: the verdict and the client's output.
pub fn describe(d: &Discovery, test: NatTest) -> String {
    format!(
        "turnutils_natdiscovery {} reported {}; output:\n{}",
        test.flag(),
        verdict(d, test),
        d.text.trim_end()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn endpoint_independent_mapping_with_port_preservation() {
        // Linux masquerade: EIM, port kept.
        let d = Discovery::parse(include_str!("stun_samples/eim.txt"));
        assert_eq!(d.mapping, Some(Behaviour::EndpointIndependent));
        assert_eq!((d.filtering, d.hairpinning, d.no_nat), (None, None, false));
        assert_eq!(d.bindings.len(), 2);
        for b in &d.bindings {
            assert_eq!(b.local, sa("198.19.99.2:47002"));
            assert_eq!(b.reflexive, sa("198.18.99.1:47002"));
        }
    }

    #[test]
    fn address_and_port_dependent_mapping() {
        // Linux `masquerade random`: a fresh port per destination.
        let d = Discovery::parse(include_str!("stun_samples/apdm.txt"));
        assert_eq!(d.mapping, Some(Behaviour::AddressAndPortDependent));
        let ports: Vec<u16> = d.bindings.iter().map(|b| b.reflexive.port()).collect();
        assert_eq!(ports, [35533, 59443, 58388]);
        assert!(d.bindings.iter().all(|b| b.local.port() == 47005));
    }

    #[test]
    fn filtering_verdicts() {
        let d = Discovery::parse(include_str!("stun_samples/apdf.txt"));
        assert_eq!(d.filtering, Some(Behaviour::AddressAndPortDependent));
        assert_eq!(d.mapping, None);
        assert_eq!(d.bindings.len(), 1);
        // Without a NAT every answer comes through.
        let d = Discovery::parse(include_str!("stun_samples/no-nat-eif.txt"));
        assert_eq!(d.filtering, Some(Behaviour::EndpointIndependent));
        assert!(d.no_nat);
        assert_eq!(
            d.mapping, None,
            "the `No NAT!` line is not a mapping verdict"
        );
    }

    #[test]
    fn hairpinning_verdicts() {
        let d = Discovery::parse(include_str!("stun_samples/no-nat-hairpin.txt"));
        assert_eq!(d.hairpinning, Some(true));
        let d = Discovery::parse(include_str!("stun_samples/no-hairpin.txt"));
        assert_eq!(d.hairpinning, Some(false));
        assert_eq!(d.bindings[0].reflexive, sa("198.18.99.1:47001"));
        assert_eq!(Discovery::parse("").hairpinning, None);
    }

    #[test]
    fn verdict_text() {
        let d = Discovery::parse(include_str!("stun_samples/no-hairpin.txt"));
        assert_eq!(
            verdict(&d, NatTest::Hairpinning),
            "hairpinning not supported"
        );
        assert_eq!(verdict(&d, NatTest::Mapping), "no verdict");
    }
}
