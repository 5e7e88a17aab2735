//! User names for uids through the C library's NSS (getpwuid_r): /etc/passwd,
//! and LDAP, SSSD or systemd's DynamicUser users alike. Cached per uid, misses too.

use std::{
    collections::HashMap,
    ffi::CStr,
    sync::{Mutex, OnceLock},
};

/// The user name of a uid, or the uid as text when NSS knows none.
pub fn name_of(uid: u32) -> String {
    static NAMES: OnceLock<Mutex<HashMap<u32, Option<String>>>> = OnceLock::new();
    let names = NAMES.get_or_init(Default::default);
    let mut names = names
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    names
        .entry(uid)
        .or_insert_with(|| lookup(uid))
        .clone()
        .unwrap_or_else(|| uid.to_string())
}

/// getpwuid_r, growing the buffer while it says ERANGE.
fn lookup(uid: u32) -> Option<String> {
    let mut buffer = vec![0u8; 1024];
    loop {
        let mut entry = std::mem::MaybeUninit::<libc::passwd>::uninit();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; the buffer's length is given.
        let code = unsafe {
            libc::getpwuid_r(
                uid,
                entry.as_mut_ptr(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                &mut result,
            )
        };
        if code == libc::ERANGE && buffer.len() < 1 << 20 {
            buffer.resize(buffer.len() * 2, 0);
            continue;
        }
        if code != 0 || result.is_null() {
            return None;
        }
        // SAFETY: on success `result` points at `entry`, whose pw_name points into
        // `buffer`, a NUL-terminated string.
        let name = unsafe { CStr::from_ptr((*result).pw_name) };
        return Some(name.to_string_lossy().into_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_nss() {
        assert_eq!(name_of(0), "root");
        assert_eq!(name_of(4_000_000_000), "4000000000");
        // Cached: the same answer again.
        assert_eq!(name_of(0), "root");
    }
}
