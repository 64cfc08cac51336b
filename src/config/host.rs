//! What `check-config` needs to know about this host: whether a user may write in a directory
//! (mode bits, groups, ACLs, access(2)), and names and ids from the user and group databases.

use std::path::Path;

/// Whether this process may create files in `dir` (access(2) with W_OK|X_OK: the mode, ACLs and
/// a read-only mount all count).
pub(super) fn writable_by_me(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether user `uid` may create files in the directory `meta` describes, from its owner, group
/// and mode and the user's groups. A directory with an ACL counts as writable (its mode bits do
/// not tell), as does any directory for root.
pub(super) fn writable_by(meta: &std::fs::Metadata, dir: &Path, uid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let mode = meta.mode();
    if uid == 0 || has_acl(dir) {
        return true;
    }
    if meta.uid() == uid {
        return mode & 0o300 == 0o300;
    }
    if user_groups(uid).contains(&meta.gid()) {
        return mode & 0o030 == 0o030;
    }
    mode & 0o003 == 0o003
}

/// Whether `path` carries a POSIX access ACL.
fn has_acl(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let (Ok(c), name) = (std::ffi::CString::new(path.as_os_str().as_bytes()), c"system.posix_acl_access") else {
        return false;
    };
    // SAFETY: both strings are valid and NUL-terminated; a null buffer of size 0 asks for the size.
    unsafe { libc::getxattr(c.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) > 0 }
}

/// The name of user `uid`, from the system's user database.
pub(super) fn user_name(uid: u32) -> Option<String> {
    passwd(uid).map(|(name, _)| name)
}

/// Name and primary group of user `uid`.
fn passwd(uid: u32) -> Option<(String, u32)> {
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is to a live local of the right type and size; getpwuid_r writes only
    // into `pw` and `buf` and sets `result` to null or to `&pw`.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: pw_name points into `buf`, NUL-terminated, and `buf` is alive.
    let name = unsafe { std::ffi::CStr::from_ptr(pw.pw_name) }.to_string_lossy().into_owned();
    Some((name, pw.pw_gid))
}

/// The groups of user `uid` (primary and supplementary), at most 1024.
fn user_groups(uid: u32) -> Vec<u32> {
    let Some((name, gid)) = passwd(uid) else { return Vec::new() };
    let Ok(cname) = std::ffi::CString::new(name) else { return vec![gid] };
    let mut groups = vec![0 as libc::gid_t; 1024];
    let mut n = groups.len() as libc::c_int;
    // SAFETY: `groups` holds `n` entries; getgrouplist writes at most `n` and sets `n`.
    let rc = unsafe { libc::getgrouplist(cname.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
    if rc < 0 {
        return vec![gid];
    }
    groups.truncate(n.max(0) as usize);
    groups
}

/// The name of group `gid`, from the system's group database.
pub(super) fn group_name(gid: u32) -> Option<String> {
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: as in `group_id`.
    let rc = unsafe { libc::getgrgid_r(gid, &mut group, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: gr_name points into `buf`, NUL-terminated, and `buf` is alive.
    Some(unsafe { std::ffi::CStr::from_ptr(group.gr_name) }.to_string_lossy().into_owned())
}

/// The id of group `name` (or a number), from the system's group database.
pub(super) fn group_id(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Some(gid);
    }
    let cname = std::ffi::CString::new(name).ok()?;
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is to a live local of the right type and size; getgrnam_r writes
    // only into `group` and `buf` and sets `result` to null or to `&group`.
    let rc = unsafe { libc::getgrnam_r(cname.as_ptr(), &mut group, buf.as_mut_ptr(), buf.len(), &mut result) };
    (rc == 0 && !result.is_null()).then_some(group.gr_gid)
}
