//! The hosts of a connection string, one connection setting each, so that each can be given
//! its own `connect_timeout` for the whole login, as libpq gives it. tokio-postgres tries a
//! list of hosts itself, but bounds only each TCP connect: a first host that accepted the
//! connection and never answered the login held the attempt to its end, and the hosts after
//! it were never tried.

use std::hash::{BuildHasher, Hasher};

use tokio_postgres::Config;
use tokio_postgres::config::{Host, LoadBalanceHosts};

/// One setting per host of `pg`, in the order libpq tries them: as listed, or shuffled under
/// `load_balance_hosts=random`. Each keeps everything else of `pg`, its own `hostaddr` and
/// its port (the one port given applies to every host). Empty when `pg` names at most one
/// host: it is tried as it is.
pub(super) fn each(pg: &Config) -> Vec<Config> {
    let (hosts, addrs, ports) = (pg.get_hosts(), pg.get_hostaddrs(), pg.get_ports());
    let count = hosts.len().max(addrs.len());
    // tokio-postgres refuses the mismatched lists itself, with its own message.
    let aligned = (hosts.is_empty() || addrs.is_empty() || hosts.len() == addrs.len())
        && (ports.len() <= 1 || ports.len() == count);
    if count < 2 || !aligned {
        return Vec::new();
    }
    let mut order: Vec<usize> = (0..count).collect();
    if pg.get_load_balance_hosts() == LoadBalanceHosts::Random {
        shuffle(&mut order);
    }
    order
        .into_iter()
        .map(|i| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            one(pg, hosts.get(i), addrs.get(i).copied(), port)
        })
        .collect()
}

/// `pg` with only `host` (or only `addr`, or both: the name for the certificate, the address
/// to connect to) and `port`.
fn one(pg: &Config, host: Option<&Host>, addr: Option<std::net::IpAddr>, port: u16) -> Config {
    let mut one = Config::new();
    if let Some(user) = pg.get_user() {
        one.user(user);
    }
    if let Some(password) = pg.get_password() {
        one.password(password);
    }
    if let Some(dbname) = pg.get_dbname() {
        one.dbname(dbname);
    }
    if let Some(options) = pg.get_options() {
        one.options(options);
    }
    if let Some(name) = pg.get_application_name() {
        one.application_name(name);
    }
    one.ssl_mode(pg.get_ssl_mode())
        .ssl_negotiation(pg.get_ssl_negotiation());
    match host {
        Some(Host::Tcp(name)) => {
            one.host(name);
        }
        Some(Host::Unix(path)) => {
            one.host_path(path);
        }
        None => {}
    }
    if let Some(addr) = addr {
        one.hostaddr(addr);
    }
    one.port(port);
    if let Some(timeout) = pg.get_connect_timeout() {
        one.connect_timeout(*timeout);
    }
    if let Some(timeout) = pg.get_tcp_user_timeout() {
        one.tcp_user_timeout(*timeout);
    }
    one.keepalives(pg.get_keepalives())
        .keepalives_idle(pg.get_keepalives_idle());
    if let Some(interval) = pg.get_keepalives_interval() {
        one.keepalives_interval(interval);
    }
    if let Some(retries) = pg.get_keepalives_retries() {
        one.keepalives_retries(retries);
    }
    one.target_session_attrs(pg.get_target_session_attrs())
        .channel_binding(pg.get_channel_binding())
        .load_balance_hosts(pg.get_load_balance_hosts());
    one
}

/// Fisher-Yates with std's per-process hash keys for randomness: enough to spread jobs over
/// hosts, no dependency.
fn shuffle(order: &mut [usize]) {
    let keys = std::collections::hash_map::RandomState::new();
    for i in (1..order.len()).rev() {
        let mut hasher = keys.build_hasher();
        hasher.write_usize(i);
        let j = (hasher.finish() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        text.parse().expect("a valid connection string")
    }

    #[test]
    fn a_host_alone_keeps_every_other_setting() {
        // Every setting away from its default, so that one left behind is seen.
        let everything = "host=db.example hostaddr=10.0.0.7 port=6543 user=u password=p \
             dbname=d options='-c search_path=app' application_name=a sslmode=require \
             connect_timeout=7 tcp_user_timeout=9000 keepalives=0 keepalives_idle=11 \
             keepalives_interval=12 keepalives_retries=13 target_session_attrs=read-write \
             channel_binding=require load_balance_hosts=random";
        let pg = parse(everything);
        let host = pg.get_hosts().first();
        let addr = pg.get_hostaddrs().first().copied();
        assert!(one(&pg, host, addr, 6543) == pg);
        // One host needs no splitting.
        assert!(each(&pg).is_empty());
    }

    #[test]
    fn each_host_gets_its_port_and_address_in_order() {
        let pg = parse("host=a,b,/run/pg port=1,2,3 hostaddr=10.0.0.1,10.0.0.2,10.0.0.3 user=u");
        let split = each(&pg);
        let seen: Vec<(Vec<Host>, Vec<std::net::IpAddr>, Vec<u16>)> = split
            .iter()
            .map(|c| {
                (
                    c.get_hosts().to_vec(),
                    c.get_hostaddrs().to_vec(),
                    c.get_ports().to_vec(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                (
                    vec![Host::Tcp("a".into())],
                    vec!["10.0.0.1".parse().unwrap()],
                    vec![1]
                ),
                (
                    vec![Host::Tcp("b".into())],
                    vec!["10.0.0.2".parse().unwrap()],
                    vec![2]
                ),
                (
                    vec![Host::Unix("/run/pg".into())],
                    vec!["10.0.0.3".parse().unwrap()],
                    vec![3]
                ),
            ]
        );
        assert!(split.iter().all(|c| c.get_user() == Some("u")));
        // One port for all.
        let pg = parse("host=a,b port=7 user=u");
        let ports: Vec<Vec<u16>> = each(&pg).iter().map(|c| c.get_ports().to_vec()).collect();
        assert_eq!(ports, [vec![7], vec![7]]);
        // None given: the default.
        let pg = parse("host=a,b user=u");
        let ports: Vec<Vec<u16>> = each(&pg).iter().map(|c| c.get_ports().to_vec()).collect();
        assert_eq!(ports, [vec![5432], vec![5432]]);
    }

    #[test]
    fn random_order_still_tries_every_host_once() {
        let pg = parse("host=a,b,c,d,e user=u load_balance_hosts=random");
        let mut hosts: Vec<String> = each(&pg)
            .iter()
            .map(|c| match &c.get_hosts()[0] {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        hosts.sort();
        assert_eq!(hosts, ["a", "b", "c", "d", "e"]);
    }

    #[test]
    fn mismatched_lists_are_left_to_tokio_postgres_to_refuse() {
        assert!(each(&parse("host=a,b port=1,2,3 user=u")).is_empty());
        assert!(each(&parse("host=a,b hostaddr=10.0.0.1 user=u")).is_empty());
    }
}
