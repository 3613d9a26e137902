//! The ftrace entry-site state machine: who traces a site, and which stub its call goes to.
//!
//! A site is the two-word -mprofile-kernel sequence after a function's local
//! entry: `mflr r0` (written once at boot) then either `nop` (not traced),
//! `bl ftrace_caller` (light record), `bl ftrace_regs_caller` (full
//! pt_regs) or `bl TARGET` (a direct call: Linux's `register_ftrace_direct`).
//! Each registered ops that traces a site counts as one user; the stub is the
//! full one when any user asked for SAVE_REGS; at most one user may modify
//! the instruction pointer, and only that user may give the site a direct
//! target. The site branches to the direct target while its owner is its only
//! user; with others it calls a stub again, and the owner's handler sends
//! the call on to the target from there. The kernel's arch hooks
//! (`ftrace_prepare_change` and its kin) write the words.

use core::num::NonZeroUsize;

/// Which stub a site's second word calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// `nop`: the site is off.
    None,
    /// `bl ftrace_caller`: argument registers, TOC, LR and NIP only.
    Light,
    /// `bl ftrace_regs_caller`: a full pt_regs.
    Regs,
    /// `bl TARGET`: a direct call of the owner's target, no stub.
    Direct(u64),
}

/// What an ops asks of a site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demand {
    /// Identifies the ops (for IPMODIFY ownership).
    pub ops: usize,
    pub save_regs: bool,
    pub ipmodify: bool,
}

/// Why a site refused a new user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiteError {
    /// Another ops already modifies the instruction pointer here.
    IpModifyBusy { owner: usize },
    /// This ops already traces the site.
    AlreadyTraced,
    /// This ops does not trace the site.
    NotTraced,
    /// Only the ops that modifies the instruction pointer here (`owner`, or
    /// none) may give the site a direct target.
    NotOwner { owner: Option<usize> },
}

/// The users of one site. 24 bytes: every site's state is copied on every
/// registration (a glob over every site copies them all), so each field is
/// one plain word or less (a `None` owner is the niche of `NonZeroUsize`,
/// not a tag word; ops identifiers are addresses, never 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SiteState {
    pub users: u32,
    pub regs_users: u32,
    pub ipmodify_owner: Option<NonZeroUsize>,
    /// The direct target the IPMODIFY owner gave the site, 0 for none.
    pub direct: u64,
}

impl SiteState {
    /// What the site must call now: a direct target while its owner is its
    /// only user, else the stub its users need.
    #[inline]
    pub fn caller(&self) -> Caller {
        match (self.users, self.regs_users) {
            (0, _) => Caller::None,
            (1, _) if self.direct != 0 => Caller::Direct(self.direct),
            (_, 0) => Caller::Light,
            _ => Caller::Regs,
        }
    }

    /// Gives the site the direct target `target` (or takes it away, `None`)
    /// on behalf of `ops`, which must be its IPMODIFY owner.
    pub fn set_direct(&mut self, ops: usize, target: Option<u64>) -> Result<(), SiteError> {
        if !self.owned_by(ops) {
            return Err(SiteError::NotOwner { owner: self.ipmodify_owner.map(NonZeroUsize::get) });
        }
        self.direct = target.unwrap_or(0);
        Ok(())
    }

    /// Whether `ops` modifies the instruction pointer here.
    #[inline]
    pub fn owned_by(&self, ops: usize) -> bool {
        self.ipmodify_owner.is_some_and(|owner| owner.get() == ops)
    }

    /// Checks that `demand` can be added without changing anything.
    #[inline]
    pub fn check_add(&self, demand: Demand) -> Result<(), SiteError> {
        match self.ipmodify_owner.map(NonZeroUsize::get) {
            Some(owner) if demand.ipmodify && owner != demand.ops => Err(SiteError::IpModifyBusy { owner }),
            Some(owner) if demand.ipmodify && owner == demand.ops => Err(SiteError::AlreadyTraced),
            // An IPMODIFY demand names its ops: 0 is no ops (it could not be recorded as the owner).
            None if demand.ipmodify && demand.ops == 0 => Err(SiteError::NotOwner { owner: None }),
            _ => Ok(()),
        }
    }

    /// Adds a user (after `check_add`).
    #[inline]
    pub fn add(&mut self, demand: Demand) -> Result<(), SiteError> {
        self.check_add(demand)?;
        self.users += 1;
        self.regs_users += demand.save_regs as u32;
        if demand.ipmodify {
            self.ipmodify_owner = NonZeroUsize::new(demand.ops);
        }
        Ok(())
    }

    /// Removes a user added with the same demand.
    #[inline]
    pub fn remove(&mut self, demand: Demand) -> Result<(), SiteError> {
        if self.users == 0 || (demand.save_regs && self.regs_users == 0) {
            return Err(SiteError::NotTraced);
        }
        if demand.ipmodify {
            if !self.owned_by(demand.ops) {
                return Err(SiteError::NotTraced);
            }
            self.ipmodify_owner = None;
            // The owner's direct target leaves with it.
            self.direct = 0;
        }
        self.users -= 1;
        self.regs_users -= demand.save_regs as u32;
        Ok(())
    }
}

/// Matches `name` against a glob with `*` (any run, also empty) and `?`
/// (exactly one byte), the whole name, as Linux's `set_ftrace_filter` does for
/// these two: `foo*`, `*foo`, `*foo*` and `f?o*bar` mean there what they mean
/// here. The kernel's trace filters, `trace sites`, `klp patchable` and
/// `cargo xtask patch targets` all match with this one function. (Linux's
/// filter also knows `[...]` classes and `\` escapes; no Rust path holds
/// those characters, so they are plain characters here.)
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (pattern, name) = (pattern.as_bytes(), name.as_bytes());
    let (mut p, mut n) = (0, 0);
    // Where the last `*` was, and how much of `name` it has swallowed.
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            // A trailing `*` matches whatever is left.
            Some(b'*') if p + 1 == pattern.len() => return true,
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((star_p, star_n)) => {
                    p = star_p + 1;
                    n = star_n + 1;
                    star = Some((star_p, star_n + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIGHT: Demand = Demand { ops: 1, save_regs: false, ipmodify: false };
    const REGS: Demand = Demand { ops: 2, save_regs: true, ipmodify: false };
    const PATCH: Demand = Demand { ops: 3, save_regs: false, ipmodify: true };
    const OTHER_PATCH: Demand = Demand { ops: 4, save_regs: true, ipmodify: true };

    #[test]
    fn caller_follows_users() {
        let mut site = SiteState::default();
        assert_eq!(site.caller(), Caller::None);
        site.add(LIGHT).unwrap();
        assert_eq!(site.caller(), Caller::Light);
        site.add(REGS).unwrap();
        assert_eq!(site.caller(), Caller::Regs);
        site.remove(REGS).unwrap();
        assert_eq!(site.caller(), Caller::Light);
        site.remove(LIGHT).unwrap();
        assert_eq!(site.caller(), Caller::None);
        assert_eq!(site, SiteState::default());
    }

    #[test]
    fn one_ipmodify_user_only() {
        let mut site = SiteState::default();
        site.add(PATCH).unwrap();
        let before = site;
        assert_eq!(site.add(OTHER_PATCH), Err(SiteError::IpModifyBusy { owner: 3 }));
        assert_eq!(site, before, "a refused add changes nothing");
        assert_eq!(site.add(PATCH), Err(SiteError::AlreadyTraced));
        site.add(LIGHT).unwrap();
        assert_eq!(site.remove(OTHER_PATCH), Err(SiteError::NotTraced));
        site.remove(PATCH).unwrap();
        site.add(OTHER_PATCH).unwrap();
        assert_eq!(site.caller(), Caller::Regs);
    }

    #[test]
    fn a_site_state_stays_three_words_and_an_ipmodify_ops_needs_an_identity() {
        // Every registration copies every site's state: no tag word for the owner.
        assert_eq!(core::mem::size_of::<SiteState>(), 24);
        let mut site = SiteState::default();
        let nameless = Demand { ops: 0, save_regs: false, ipmodify: true };
        assert_eq!(site.add(nameless), Err(SiteError::NotOwner { owner: None }));
        assert_eq!(site, SiteState::default(), "a refused demand changes nothing");
        site.add(PATCH).unwrap();
        assert!(site.owned_by(PATCH.ops) && !site.owned_by(LIGHT.ops));
    }

    #[test]
    fn a_direct_site_calls_its_target_only_while_its_owner_is_alone() {
        let mut site = SiteState::default();
        assert_eq!(site.set_direct(PATCH.ops, Some(0x1000)), Err(SiteError::NotOwner { owner: None }));
        site.add(PATCH).unwrap();
        site.set_direct(PATCH.ops, Some(0x1000)).unwrap();
        assert_eq!(site.caller(), Caller::Direct(0x1000));
        // Another ops joins: the stub it needs, the target stays recorded.
        site.add(LIGHT).unwrap();
        assert_eq!(site.caller(), Caller::Light);
        site.add(REGS).unwrap();
        assert_eq!(site.caller(), Caller::Regs);
        site.remove(REGS).unwrap();
        site.remove(LIGHT).unwrap();
        assert_eq!(site.caller(), Caller::Direct(0x1000), "back to direct when the others leave");
        // Only the owner sets it, and the owner's leaving takes it along.
        let before = site;
        assert_eq!(site.set_direct(LIGHT.ops, None), Err(SiteError::NotOwner { owner: Some(PATCH.ops) }));
        assert_eq!(site, before);
        site.set_direct(PATCH.ops, Some(0x2000)).unwrap();
        assert_eq!(site.caller(), Caller::Direct(0x2000));
        site.remove(PATCH).unwrap();
        assert_eq!(site, SiteState::default());
        site.add(PATCH).unwrap();
        site.set_direct(PATCH.ops, None).unwrap();
        assert_eq!(site.caller(), Caller::Light);
    }

    #[test]
    fn removing_what_was_never_added_is_refused() {
        let mut site = SiteState::default();
        assert_eq!(site.remove(LIGHT), Err(SiteError::NotTraced));
        site.add(LIGHT).unwrap();
        assert_eq!(site.remove(REGS), Err(SiteError::NotTraced));
    }

    #[test]
    fn globs() {
        assert!(glob_match("kernel::shell::*", "kernel::shell::execute"));
        assert!(glob_match("*execute", "kernel::shell::execute"));
        assert!(glob_match("*::shell::*e", "kernel::shell::execute"));
        assert!(glob_match("k?rnel*", "kernel::x"));
        assert!(glob_match("*", ""));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
        assert!(!glob_match("*shell", "kernel::shell::execute"));
        assert!(!glob_match("", "a"));
        assert!(glob_match("a*b*c", "aXXbYYbc"));
    }

    /// The forms Linux's `set_ftrace_filter` documents, with its meaning of each.
    #[test]
    fn globs_mean_what_set_ftrace_filter_means() {
        let names = ["schedule", "schedule_tail", "do_schedule", "sched", "preempt_schedule_irq"];
        let matched = |glob: &str| names.iter().filter(|name| glob_match(glob, name)).copied().collect::<Vec<_>>();
        // `foo*`: names that begin with foo.
        assert_eq!(matched("schedule*"), ["schedule", "schedule_tail"]);
        // `*foo`: names that end with foo.
        assert_eq!(matched("*schedule"), ["schedule", "do_schedule"]);
        // `*foo*`: names that hold foo.
        assert_eq!(matched("*schedule*"), ["schedule", "schedule_tail", "do_schedule", "preempt_schedule_irq"]);
        // `foo*bar`: begins with foo, ends with bar.
        assert_eq!(matched("pre*irq"), ["preempt_schedule_irq"]);
        // `?`: exactly one character, never none.
        assert_eq!(matched("sche?"), ["sched"]);
        assert_eq!(matched("sched?"), Vec::<&str>::new());
        assert_eq!(matched("s?????le"), ["schedule"]);
        // No wildcard: the whole name.
        assert_eq!(matched("sched"), ["sched"]);
        // A `*` between two `?` still needs the two characters.
        assert!(!glob_match("?*?", "a"));
        assert!(glob_match("?*?", "ab"));
    }
}
