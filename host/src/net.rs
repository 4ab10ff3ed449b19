//! Whether this process itself listens on a TCP port.
//!
//! Connecting to the port would say only that *someone* listens (on a box
//! where Mosquitto holds 1883, that is Mosquitto) and makes the embedded
//! broker log an aborted connection every time. Instead: the kernel's
//! socket table (`/proc/net/tcp`, `tcp6`) gives the inode of each listening
//! socket, and `/proc/self/fd` says which sockets are ours.

use std::{collections::HashSet, io, net::SocketAddr};

/// A listening port that could not be had, named by its config field.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot listen on {addr} ({field}): {source}. Is another program using that port? Set {field} to a free one"
)]
pub struct BindError {
    pub addr: SocketAddr,
    pub field: &'static str,
    pub source: io::Error,
}

/// Binds a listener for the address of config field `field`; an error
/// names both, so an operator knows what to change.
pub async fn bind(
    addr: SocketAddr,
    field: &'static str,
) -> Result<tokio::net::TcpListener, BindError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| BindError {
            addr,
            field,
            source,
        })
}

const LISTEN: &str = "0A";

/// Whether a socket of this process is in LISTEN state on `port`.
pub fn listening_here(port: u16) -> io::Result<bool> {
    Ok(!listening_fds(port)?.is_empty())
}

/// This process's file descriptors of sockets listening on `port`.
pub fn listening_fds(port: u16) -> io::Result<Vec<i32>> {
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        inodes.extend(listening_inodes(&text, port));
    }
    let mut fds = Vec::new();
    if inodes.is_empty() {
        return Ok(fds);
    }
    for fd in std::fs::read_dir("/proc/self/fd")? {
        let fd = fd?;
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|s| s.strip_suffix(']'))
            && inodes.contains(inode)
            && let Some(number) = fd.file_name().to_str().and_then(|n| n.parse().ok())
        {
            fds.push(number);
        }
    }
    Ok(fds)
}

/// Inodes of sockets listening on `port` in one `/proc/net/tcp*` table.
fn listening_inodes(table: &str, port: u16) -> Vec<String> {
    let port = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:tm retrnsmt uid timeout inode
            let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
            (local.ends_with(&port) && *state == LISTEN).then(|| inode.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_its_own_listener_and_not_another_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(listening_here(port).unwrap());
        drop(listener);
        assert!(!listening_here(port).unwrap());
    }

    #[test]
    fn parses_the_kernel_table() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:075B 00000000:0000 0A 00000000:00000000 00:00000000 00000000   108        0 23456 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:075B 0100007F:9C40 01 00000000:00000000 00:00000000 00000000   108        0 99999 1\n";
        assert_eq!(listening_inodes(table, 1883), vec!["23456".to_string()]);
        assert!(listening_inodes(table, 1884).is_empty());
    }
}
