//! User names for uids, from /etc/passwd, read once.

use std::{collections::HashMap, sync::OnceLock};

/// The user name of a uid, or the uid as text when /etc/passwd has none.
pub fn name_of(uid: u32) -> String {
    static USERS: OnceLock<HashMap<u32, String>> = OnceLock::new();
    USERS
        .get_or_init(|| {
            std::fs::read_to_string("/etc/passwd")
                .map(|text| parse_passwd(&text))
                .unwrap_or_default()
        })
        .get(&uid)
        .cloned()
        .unwrap_or_else(|| uid.to_string())
}

fn parse_passwd(text: &str) -> HashMap<u32, String> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let uid = fields.nth(1)?.parse().ok()?;
            Some((uid, name.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_lines() {
        let users =
            parse_passwd("root:x:0:0:root:/root:/bin/bash\nbroken\nnobody:x:65534:65534::/:/x\n");
        assert_eq!(users[&0], "root");
        assert_eq!(users[&65534], "nobody");
        assert_eq!(users.len(), 2);
        assert_eq!(name_of(0), "root");
        assert_eq!(name_of(4_000_000_000), "4000000000");
    }
}
