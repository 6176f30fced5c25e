//! systemd readiness notification (`Type=notify`): datagrams to `$NOTIFY_SOCKET` saying READY,
//! RELOADING and STOPPING. Without the variable (not started by systemd) every call is a no-op.

use std::os::unix::net::UnixDatagram;

/// Sends one notification, e.g. `"READY=1"`. Errors are logged, never fatal.
pub fn notify(state: &str) {
    let Ok(path) = std::env::var("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => return log::warn!("sd_notify: {e}"),
    };
    let result = if let Some(abstract_name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())
            .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = result {
        log::warn!("sd_notify {state} to {path}: {e}");
    }
}
