//! `pgcorral_hba.conf`: `TYPE DATABASE USER ADDRESS METHOD` (or `local DATABASE USER METHOD`).

use std::net::IpAddr;
use std::path::Path;

use crate::ini::read_lines;
use crate::values::column_error;
use crate::{ConfigError, HbaAddress, HbaMethod, HbaRule, HbaType};

/// Strips a `#` comment and splits the rest on whitespace.
pub(crate) fn columns(text: &str) -> Vec<&str> {
    let end = text.find('#').unwrap_or(text.len());
    text[..end].split_whitespace().collect()
}

pub(crate) fn load(path: &Path) -> Result<Vec<HbaRule>, ConfigError> {
    let mut rules = Vec::new();
    for (line, text) in read_lines(path)? {
        let cols = columns(&text);
        if cols.is_empty() {
            continue;
        }
        rules.push(parse_rule(path, line, &cols)?);
    }
    Ok(rules)
}

fn parse_rule(path: &Path, line: usize, cols: &[&str]) -> Result<HbaRule, ConfigError> {
    let kind = match cols[0].to_ascii_lowercase().as_str() {
        "host" => HbaType::Host,
        "hostssl" => HbaType::HostSsl,
        "local" => HbaType::Local,
        _ => {
            return Err(column_error(
                path,
                line,
                1,
                "TYPE",
                cols[0],
                "expected host, hostssl or local",
            ))
        }
    };
    let expected = if kind == HbaType::Local { 4 } else { 5 };
    if cols.len() != expected {
        let layout = if kind == HbaType::Local {
            "local DATABASE USER METHOD"
        } else {
            "TYPE DATABASE USER ADDRESS METHOD"
        };
        return Err(ConfigError::Syntax {
            path: path.to_path_buf(),
            line,
            message: format!(
                "expected {expected} columns ({layout}), found {}",
                cols.len()
            ),
        });
    }
    let database = cols[1].to_string();
    let user = cols[2].to_string();
    let address = if kind == HbaType::Local {
        HbaAddress::All
    } else {
        HbaAddress::parse(cols[3])
            .map_err(|reason| column_error(path, line, 4, "ADDRESS", cols[3], &reason))?
    };
    let method_col = expected - 1;
    let method_text = cols[method_col];
    let method = match method_text.to_ascii_lowercase().as_str() {
        "trust" => HbaMethod::Trust,
        "reject" => HbaMethod::Reject,
        "password" => HbaMethod::Password,
        "md5" => HbaMethod::Md5,
        "scram-sha-256" => HbaMethod::ScramSha256,
        "all" => HbaMethod::All,
        _ => {
            return Err(column_error(
                path,
                line,
                method_col + 1,
                "METHOD",
                method_text,
                "expected trust, reject, password, md5, scram-sha-256 or all",
            ))
        }
    };
    Ok(HbaRule {
        kind,
        database,
        user,
        address,
        method,
        line,
    })
}

impl HbaAddress {
    /// Parses `all`, `ADDR/PREFIX` or a bare `ADDR` (full-length prefix).
    pub fn parse(text: &str) -> Result<HbaAddress, String> {
        if text.eq_ignore_ascii_case("all") {
            return Ok(HbaAddress::All);
        }
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let ip: IpAddr = addr.parse().map_err(|_| {
            "expected all, or an IPv4 or IPv6 address with an optional /prefix".to_string()
        })?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && !p.starts_with('+') => n,
                _ => return Err(format!("the prefix length must be between 0 and {max}")),
            },
        };
        Ok(HbaAddress::Cidr(ip, prefix))
    }

    /// Whether `ip` is inside this address range. `all` matches everything.
    ///
    /// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, as seen on a dual-stack
    /// socket) is compared as the IPv4 address it carries, on both sides, so
    /// `127.0.0.1/32` matches a client at `::ffff:127.0.0.1`. Apart from that,
    /// IPv4 ranges only match IPv4 clients and IPv6 ranges only IPv6 clients.
    pub fn matches(&self, ip: IpAddr) -> bool {
        let (net, prefix) = match *self {
            HbaAddress::All => return true,
            HbaAddress::Cidr(net, prefix) => normalize_rule(net, prefix),
        };
        match (net, normalize_client(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(prefix.min(32)))
                };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(prefix.min(128)))
                };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

fn normalize_client(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// A rule written as `::ffff:a.b.c.d/N` with N >= 96 is the IPv4 range `a.b.c.d/(N-96)`.
fn normalize_rule(net: IpAddr, prefix: u8) -> (IpAddr, u8) {
    match net {
        IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
            Some(v4) => (IpAddr::V4(v4), prefix - 96),
            None => (net, prefix),
        },
        _ => (net, prefix),
    }
}
