//! Who is running this process, from the kernel (not from `$USER`, which
//! the caller controls).

/// The real user: uid and login name (`uid<n>` when /etc/passwd has no
/// entry for it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The real user ID.
    pub uid: u32,
    /// The login name.
    pub name: String,
}

/// The real user of this process, read from `/proc/self/status` and
/// `/etc/passwd`; `None` when the kernel's answer cannot be read.
pub fn current_user() -> Option<User> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    Some(User {
        uid,
        name: name_of(&passwd, uid).unwrap_or_else(|| format!("uid{uid}")),
    })
}

/// The login name of `uid` in a passwd(5) file.
fn name_of(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let _password = f.next()?;
        (f.next()?.parse::<u32>().ok()? == uid && !name.is_empty()).then(|| name.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_lookup() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n# comment\nbad line\nalice:x:1000:1000::/home/alice:/bin/sh\n";
        assert_eq!(name_of(passwd, 0).as_deref(), Some("root"));
        assert_eq!(name_of(passwd, 1000).as_deref(), Some("alice"));
        assert_eq!(name_of(passwd, 5), None);
        let me = current_user().expect("/proc is readable");
        assert!(!me.name.is_empty());
    }
}
