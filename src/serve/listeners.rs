//! The listener registry (`data_dir/listeners.json`) and binding every listener on every
//! core.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{EndpointListener, Endpoints, Error, io_err};
use crate::config::Config;
use crate::net::{BoundSocket, bind, probe_unshared};

/// The stable ids of listener names, kept in `data_dir/listeners.json`: log batches carry the
/// id, so replay finds the right parser even when listeners are added, removed or reordered.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ListenerIds {
    ids: BTreeMap<String, u16>,
}

/// Reads `data_dir/listeners.json` (empty when there is none yet). A file that cannot be
/// read or parsed is an error, never replaced: the log stores these ids, and new ids would
/// make replay parse old lines with the wrong format.
fn read_ids(data_dir: &Path) -> Result<ListenerIds, Error> {
    let path = data_dir.join("listeners.json");
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Io {
            what: "cannot parse (the log's listener ids; restore it from a backup)",
            path: path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ListenerIds::default()),
        Err(e) => Err(io_err("cannot read", &path)(e)),
    }
}

/// The listener names by id, from `data_dir/listeners.json` (empty when there is none yet):
/// what `sluice log dump --json` prints next to each line's listener id.
pub fn listener_names(data_dir: &Path) -> Result<BTreeMap<u16, String>, Error> {
    let ids = read_ids(data_dir)?;
    Ok(ids.ids.into_iter().map(|(name, id)| (id, name)).collect())
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename, directory fsync).
pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(io_err("cannot write", &tmp))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io_err("cannot fsync", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err("cannot rename", path))?;
    // The rename is durable once the directory is.
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("cannot fsync", dir))
}

pub(super) fn listener_ids(data_dir: &Path, names: &[String]) -> Result<Vec<u16>, Error> {
    let path = data_dir.join("listeners.json");
    let mut ids = read_ids(data_dir)?;
    let mut changed = false;
    let out = names
        .iter()
        .map(|name| {
            let next = ids.ids.values().max().map_or(0, |m| m + 1);
            *ids.ids.entry(name.clone()).or_insert_with(|| {
                changed = true;
                next
            })
        })
        .collect();
    if changed {
        let json = serde_json::to_vec_pretty(&ids).expect("a map of strings to numbers encodes");
        write_atomic(&path, &json)?;
    }
    Ok(out)
}

/// The log ids of listener names as `data_dir/listeners.json` has them, written by nothing:
/// a name it does not know gets an id above every id it holds, which no logged batch
/// carries (`sluice replay`: the log's listeners that the configuration names are parsed,
/// the others skipped). Also returns the names the registry knows, sorted.
pub(super) fn logged_ids(
    data_dir: &Path,
    names: &[String],
) -> Result<(Vec<u16>, Vec<String>), Error> {
    let ids = read_ids(data_dir)?;
    let mut next = ids.ids.values().max().map_or(0, |m| m.saturating_add(1));
    let out = names
        .iter()
        .map(|name| match ids.ids.get(name) {
            Some(id) => *id,
            None => {
                let id = next;
                next = next.saturating_add(1);
                id
            }
        })
        .collect();
    Ok((out, ids.ids.into_keys().collect()))
}

/// Binds every listener on every core. Returns the sockets per core and the bound addresses.
#[allow(clippy::type_complexity)]
pub(super) fn bind_all(
    config: &Config,
    cores: usize,
) -> Result<(Vec<Vec<(u16, BoundSocket)>>, Vec<SocketAddr>), Error> {
    let mut per_core: Vec<Vec<(u16, BoundSocket)>> = (0..cores).map(|_| Vec::new()).collect();
    let mut addrs = Vec::new();
    for (index, l) in config.listeners.iter().enumerate() {
        let mut addr = l.addr;
        // A port 0 is a fresh one; any other may already be held by another process.
        if addr.port() != 0 {
            probe_unshared(l.proto, addr).map_err(|source| {
                if source.kind() == std::io::ErrorKind::AddrInUse {
                    Error::Shared {
                        listener: l.name.clone(),
                        proto: l.proto.as_str(),
                        addr,
                    }
                } else {
                    Error::Bind {
                        listener: l.name.clone(),
                        proto: l.proto.as_str(),
                        addr,
                        source,
                    }
                }
            })?;
        }
        for sockets in per_core.iter_mut() {
            let socket = bind(l.proto, addr).map_err(|source| Error::Bind {
                listener: l.name.clone(),
                proto: l.proto.as_str(),
                addr,
                source,
            })?;
            // Port 0: the first core's socket picks the port, the others share it.
            addr = socket
                .local_addr()
                .map_err(io_err("cannot read address of", Path::new(&l.name)))?;
            sockets.push((index as u16, socket));
        }
        addrs.push(addr);
    }
    Ok((per_core, addrs))
}

/// Writes `data_dir/endpoints.json` (the pid and every bound address; useful with port 0)
/// and logs each listener.
pub(super) fn write_endpoints(
    config: &Config,
    data_dir: &Path,
    addrs: &[SocketAddr],
    admin: SocketAddr,
) -> Result<(), Error> {
    let endpoints = Endpoints {
        pid: std::process::id(),
        admin,
        listeners: config
            .listeners
            .iter()
            .zip(addrs)
            .map(|(l, a)| EndpointListener {
                name: l.name.clone(),
                proto: l.proto.as_str().into(),
                format: l.format.as_str().into(),
                addr: *a,
            })
            .collect(),
    };
    write_atomic(
        &data_dir.join("endpoints.json"),
        &serde_json::to_vec_pretty(&endpoints).expect("encodes"),
    )?;
    for e in &endpoints.listeners {
        tracing::info!(listener = %e.name, proto = %e.proto, format = %e.format, addr = %e.addr, "listening");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_ids_read_the_registry_and_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            logged_ids(dir.path(), &names(&["a"])).unwrap(),
            (vec![0], Vec::new())
        );
        assert!(
            !dir.path().join("listeners.json").exists(),
            "none is written"
        );

        listener_ids(dir.path(), &names(&["g", "s"])).unwrap();
        let path = dir.path().join("listeners.json");
        let before = std::fs::read(&path).unwrap();
        let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
        let (ids, known) = logged_ids(dir.path(), &names(&["s", "new", "g", "other"])).unwrap();
        assert_eq!(
            ids,
            vec![1, 2, 0, 3],
            "unknown names get ids no batch carries"
        );
        assert_eq!(known, names(&["g", "s"]));
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert_eq!(
            std::fs::metadata(&path).unwrap().modified().unwrap(),
            modified
        );

        std::fs::write(&path, b"{not json").unwrap();
        assert!(logged_ids(dir.path(), &names(&["g"])).is_err());
    }
}
