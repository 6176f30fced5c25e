//! Process titles (`update_process_title`): what `ps` shows for main and each worker, written over the
//! process's own argument area (as PostgreSQL and pgagroal do), never longer than that area.

use pgcorral_config::ProcessTitle;

/// The start and end addresses of this process's argument area, from /proc/self/stat.
fn arg_area() -> Option<(usize, usize)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // arg_start and arg_end are fields 48 and 49 of the whole line; `rest` starts at field 3.
    let start = fields.get(48 - 3)?.parse().ok()?;
    let end = fields.get(49 - 3)?.trim().parse().ok()?;
    (end > start).then_some((start, end))
}

/// Sets the title unless the setting is `never`.
pub fn set(setting: ProcessTitle, title: &str) {
    if setting == ProcessTitle::Never {
        return;
    }
    let Some((start, end)) = arg_area() else {
        return;
    };
    let len = end - start;
    let bytes = title.as_bytes();
    let n = bytes.len().min(len - 1);
    // SAFETY: [start, end) is this process's own argument area (the kernel reports it for our pid);
    // it is writable memory that nothing else in pgcorral reads after start-up (std copied argv).
    unsafe {
        let p = start as *mut u8;
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, n);
        std::ptr::write_bytes(p.add(n), 0, len - n);
    }
}

/// A worker's title for the setting.
pub fn worker_title(setting: ProcessTitle, user: &str, host: &str, database: &str) -> String {
    match setting {
        ProcessTitle::Verbose => format!("pgcorral: {user}@{host}/{database}"),
        _ => format!("pgcorral: {user}/{database}"),
    }
}
