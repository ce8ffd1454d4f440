//! Hosts for tests in network namespaces the test makes: each host a namespace with one
//! interface (`eth0`, `10.231.0.N/24`) on a bridge in a hub namespace of its own, so that
//! nothing of the test is visible from the machine's own namespace. Partitions are made
//! with nftables inside a host's namespace. Everything is removed when dropped. Needs root
//! (and Debian's `iproute2` and `nftables`).

#![allow(dead_code, unreachable_pub)]

use std::process::Command;

/// A network of hosts.
pub struct Net {
    prefix: String,
    hosts: Vec<String>,
}

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("iproute2 and nftables are installed");
    assert!(out.status.success(), "{}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

impl Net {
    /// A new network with only its hub.
    pub fn new(tag: &str) -> Net {
        let prefix = format!("sq{}{tag}", std::process::id() % 100_000);
        let net = Net { prefix, hosts: Vec::new() };
        let hub = net.hub();
        let _ = Command::new("ip").args(["netns", "del", &hub]).output();
        run(&["ip", "netns", "add", &hub]);
        run(&["ip", "-n", &hub, "link", "add", "br0", "type", "bridge"]);
        run(&["ip", "-n", &hub, "link", "set", "br0", "up"]);
        net
    }

    fn hub(&self) -> String {
        format!("{}-hub", self.prefix)
    }

    /// The namespace of host `name`.
    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Adds host `name` at `10.231.0.{n}`; its namespace's name.
    pub fn host(&mut self, name: &str, n: u8) -> String {
        let (ns, hub) = (self.ns(name), self.hub());
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        run(&["ip", "netns", "add", &ns]);
        // Both ends are made in the hub (whose interface names are its own), then one moves.
        let (outer, inner) = (format!("h{n}"), format!("i{n}"));
        run(&["ip", "-n", &hub, "link", "add", &outer, "type", "veth", "peer", "name", &inner]);
        run(&["ip", "-n", &hub, "link", "set", &inner, "netns", &ns]);
        run(&["ip", "-n", &hub, "link", "set", &outer, "master", "br0", "up"]);
        run(&["ip", "-n", &ns, "link", "set", &inner, "name", "eth0"]);
        run(&["ip", "-n", &ns, "addr", "add", &format!("10.231.0.{n}/24"), "dev", "eth0"]);
        run(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        self.hosts.push(ns.clone());
        ns
    }

    /// Cuts host `name` off from `peers` (addresses), both ways, until [`Net::heal`].
    pub fn cut(&self, name: &str, peers: &[&str]) {
        let ns = self.ns(name);
        let set = peers.join(", ");
        let _ = Command::new("ip").args(["netns", "exec", &ns, "nft", "delete", "table", "inet", "cut"]).output();
        run(&["ip", "netns", "exec", &ns, "nft", "add", "table", "inet", "cut"]);
        for (chain, hook, dir) in [("out", "output", "daddr"), ("in", "input", "saddr")] {
            let spec = format!("{{ type filter hook {hook} priority 0; }}");
            run(&["ip", "netns", "exec", &ns, "nft", "add", "chain", "inet", "cut", chain, &spec]);
            let rule = format!("ip {dir} {{ {set} }} drop");
            let mut args = vec!["ip", "netns", "exec", &ns, "nft", "add", "rule", "inet", "cut", chain];
            args.extend(rule.split(' '));
            run(&args);
        }
    }

    /// Undoes [`Net::cut`] on host `name`.
    pub fn heal(&self, name: &str) {
        run(&["ip", "netns", "exec", &self.ns(name), "nft", "delete", "table", "inet", "cut"]);
    }

    /// Moves the calling thread into host `name`'s namespace: sockets it opens from now on
    /// are that host's.
    pub fn enter(&self, name: &str) {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(format!("/var/run/netns/{}", self.ns(name))).unwrap();
        // SAFETY: setns with a valid descriptor of a network namespace affects only this
        // thread's namespace for sockets it opens later.
        let done = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(done, 0, "setns: {}", std::io::Error::last_os_error());
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain(std::iter::once(&self.hub())) {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}
