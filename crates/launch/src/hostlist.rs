//! Slurm host lists: `node[01-04,07],gpu-a[1-2]` → `node01 node02 node03 node04 node07
//! gpu-a1 gpu-a2`.
//!
//! Grammar (as `scontrol show hostnames` accepts it): comma-separated entries at the
//! top level; an entry is a prefix followed by any number of bracket groups and text,
//! each bracket group a comma-separated list of numbers or `lo-hi` ranges. A range
//! keeps the width of its zero-padded lower bound (`[08-11]` → `08 09 10 11`).
//! Several bracket groups in one entry expand as a cartesian product, left to right.

/// Why a host list could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad Slurm host list `{list}`: {why}")]
pub struct HostListError {
    /// The list.
    pub list: String,
    /// What is wrong.
    pub why: String,
}

/// Largest number of hosts one list may expand to (a guard against `[0-999999999]`).
pub const MAX_HOSTS: usize = 1 << 20;

/// Expands a Slurm host list into host names, in order.
pub fn expand(list: &str) -> Result<Vec<String>, HostListError> {
    let err = |why: String| HostListError {
        list: list.to_string(),
        why,
    };
    let mut hosts = Vec::new();
    for entry in split_top(list).map_err(&err)? {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let mut names = vec![String::new()];
        let mut rest = entry;
        while !rest.is_empty() {
            match rest.find('[') {
                None => {
                    if rest.contains(']') {
                        return Err(err(format!("unmatched `]` in `{entry}`")));
                    }
                    names.iter_mut().for_each(|n| n.push_str(rest));
                    rest = "";
                }
                Some(open) => {
                    let text = &rest[..open];
                    if text.contains(']') {
                        return Err(err(format!("unmatched `]` in `{entry}`")));
                    }
                    let close = rest[open..]
                        .find(']')
                        .map(|c| open + c)
                        .ok_or_else(|| err(format!("unclosed `[` in `{entry}`")))?;
                    let values = expand_group(&rest[open + 1..close]).map_err(&err)?;
                    let mut next = Vec::with_capacity(names.len() * values.len());
                    for n in &names {
                        for v in &values {
                            next.push(format!("{n}{text}{v}"));
                        }
                    }
                    if hosts.len() + next.len() > MAX_HOSTS {
                        return Err(err(format!("expands to more than {MAX_HOSTS} hosts")));
                    }
                    names = next;
                    rest = &rest[close + 1..];
                }
            }
        }
        hosts.extend(names);
    }
    if hosts.is_empty() {
        return Err(err("no hosts".into()));
    }
    Ok(hosts)
}

/// The first host of a list (rank 0's node under Slurm's block distribution).
pub fn first(list: &str) -> Result<String, HostListError> {
    // Expanding the whole list is cheap and validates it.
    Ok(expand(list)?.swap_remove(0))
}

/// Splits at commas outside brackets.
fn split_top(list: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in list.char_indices() {
        match c {
            '[' if depth > 0 => return Err("nested `[`".into()),
            '[' => depth += 1,
            ']' if depth == 0 => return Err("unmatched `]`".into()),
            ']' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&list[start..i]);
                start = i + 1;
            }
            c if c.is_whitespace() => return Err("white space inside the list".into()),
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unclosed `[`".into());
    }
    out.push(&list[start..]);
    Ok(out)
}

/// `01-04,07` → `01 02 03 04 07`.
fn expand_group(group: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for item in group.split(',') {
        let (lo, hi) = match item.split_once('-') {
            Some((lo, hi)) => (lo, hi),
            None => (item, item),
        };
        let digits =
            |s: &str| !s.is_empty() && s.len() <= 18 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(lo) || !digits(hi) {
            return Err(format!(
                "`[{group}]`: `{item}` is not a number or a lo-hi range"
            ));
        }
        let width = lo.len();
        let (a, b): (u64, u64) = (
            lo.parse().map_err(|_| format!("`{lo}` is not a number"))?,
            hi.parse().map_err(|_| format!("`{hi}` is not a number"))?,
        );
        if a > b {
            return Err(format!("`[{group}]`: range `{item}` runs backwards"));
        }
        if (b - a) as usize >= MAX_HOSTS {
            return Err(format!("`[{group}]`: range `{item}` is too large"));
        }
        out.extend((a..=b).map(|v| format!("{v:0width$}")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(s: &str) -> Vec<String> {
        expand(s).unwrap()
    }

    #[test]
    fn single_and_plain_lists() {
        assert_eq!(ex("vm"), ["vm"]);
        assert_eq!(ex("a,b,c"), ["a", "b", "c"]);
        assert_eq!(ex("node1.cluster.local"), ["node1.cluster.local"]);
    }

    #[test]
    fn ranges_keep_leading_zeros() {
        assert_eq!(
            ex("node[01-04,07]"),
            ["node01", "node02", "node03", "node04", "node07"]
        );
        assert_eq!(ex("n[08-11]"), ["n08", "n09", "n10", "n11"]);
        assert_eq!(ex("n[098-101]"), ["n098", "n099", "n100", "n101"]);
        assert_eq!(ex("n[9-10]"), ["n9", "n10"]);
        assert_eq!(ex("n[5]"), ["n5"]);
    }

    #[test]
    fn several_groups_and_entries() {
        assert_eq!(
            ex("gpu[1-2],cpu[003-004],login"),
            ["gpu1", "gpu2", "cpu003", "cpu004", "login"]
        );
        assert_eq!(
            ex("rack[1-2]-n[01-02]"),
            ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]
        );
        assert_eq!(ex("a[1-2]b"), ["a1b", "a2b"]);
        assert_eq!(first("node[07-09],x").unwrap(), "node07");
    }

    #[test]
    fn malformed_lists_are_errors() {
        for bad in [
            "",
            "node[1-",
            "node1-2]",
            "node[a-b]",
            "node[3-1]",
            "n[[1]]",
            "n[1-2",
            "n[]",
            "n[1,,2]",
            "n[0-99999999999]",
            "a b",
        ] {
            let e = expand(bad).unwrap_err();
            assert!(e.to_string().contains("bad Slurm host list"), "{bad}: {e}");
        }
    }
}
