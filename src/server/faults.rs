//! Test-only network fault hooks (`fault_rules_file`): rules that cut, drop or delay
//! this node's outgoing peer exchanges, so integration tests can partition real nodes
//! without kernel support (no `tc netem` here, and LD_PRELOAD cannot see io_uring).
//!
//! The rules file is plain text, one rule a line, `#` starts a comment:
//!
//! ```text
//! cut   ADDR            # every call to ADDR fails at once, as if it were unreachable
//! drop  ADDR PERCENT    # that share of requests to ADDR is silently not sent
//! delay ADDR MS         # requests to ADDR are held this long before they are sent
//! ```
//!
//! ADDR is a peer's client address as `ringkv status` shows it (`127.0.0.1:17500`) or
//! `*` for every peer; PERCENT is 0–100 (a trailing `%` is allowed); MS takes the
//! config's duration syntax (`250`, `250ms`, `2s`). Several rules may match one address:
//! a cut wins; otherwise the largest matching drop share is rolled, and a request that
//! is not dropped waits the largest matching delay.
//!
//! Each shard re-reads the file when its modification time or length changed, checking
//! at most every [`RELOAD_CHECK_INTERVAL`]; a missing file means no rules. A bad line is
//! logged once (per shard) and ignored; the rest of the file applies.
//!
//! Must never: cost anything when `fault_rules_file` is unset (no clock read, no file
//! access), touch incoming connections (rules shape only what this node sends), or stop
//! a node because the file is wrong.

use crate::cluster::{RngLike, SplitMix64};
use crate::config::Millis;
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

/// How often a shard may look at the rules file's metadata.
pub const RELOAD_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// Distinct bad lines remembered per shard, so each is logged once.
const LOGGED_BAD_LINES_MAX: usize = 256;

/// Which peers a rule applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultTarget {
    /// `*`: every peer.
    Any,
    /// One peer, by its client address.
    Addr(SocketAddr),
}

impl FaultTarget {
    fn matches(&self, client: Option<SocketAddr>) -> bool {
        match self {
            FaultTarget::Any => true,
            FaultTarget::Addr(addr) => client == Some(*addr),
        }
    }
}

/// One line of the rules file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultRule {
    Cut { target: FaultTarget },
    Drop { target: FaultTarget, percent: u8 },
    Delay { target: FaultTarget, delay_ms: u64 },
}

/// What to do with one outgoing peer request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Fail at once as if the peer were unreachable (and close connections to it).
    Cut,
    /// Do not send; the caller times out.
    Drop,
    /// Hold the request this long, then send it.
    Delay(Duration),
}

/// The kinds counted in `ringkv_peer_faults_total{kind=...}`, in label order.
pub const FAULT_KINDS: [&str; 3] = ["cut", "drop", "delay"];

impl Fault {
    /// Index into [`FAULT_KINDS`].
    pub fn kind_index(&self) -> usize {
        match self {
            Fault::Cut => 0,
            Fault::Drop => 1,
            Fault::Delay(_) => 2,
        }
    }
}

/// A line of the rules file that could not be understood.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadLine {
    /// 1-based line number.
    pub line: usize,
    pub text: String,
    pub reason: String,
}

/// A parsed rules file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultRules {
    pub rules: Vec<FaultRule>,
}

impl FaultRules {
    /// Parse a rules file; bad lines are returned beside the rules that parsed.
    pub fn parse(text: &str) -> (FaultRules, Vec<BadLine>) {
        let mut rules = Vec::new();
        let mut bad = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            match parse_rule(line) {
                Ok(rule) => rules.push(rule),
                Err(reason) => bad.push(BadLine {
                    line: index + 1,
                    text: line.to_string(),
                    reason,
                }),
            }
        }
        (FaultRules { rules }, bad)
    }

    /// The fault for a request to the peer whose client address is `client`;
    /// `roll_percent` (0..100) decides drops.
    pub fn decide(&self, client: &str, roll_percent: u8) -> Option<Fault> {
        if self.rules.is_empty() {
            return None;
        }
        let client: Option<SocketAddr> = client.parse().ok();
        let mut drop_percent = 0u8;
        let mut delay_ms = 0u64;
        for rule in &self.rules {
            match *rule {
                FaultRule::Cut { target } if target.matches(client) => return Some(Fault::Cut),
                FaultRule::Drop { target, percent } if target.matches(client) => {
                    drop_percent = drop_percent.max(percent);
                }
                FaultRule::Delay {
                    target,
                    delay_ms: d,
                } if target.matches(client) => {
                    delay_ms = delay_ms.max(d);
                }
                _ => {}
            }
        }
        if roll_percent < drop_percent {
            Some(Fault::Drop)
        } else if delay_ms > 0 {
            Some(Fault::Delay(Duration::from_millis(delay_ms)))
        } else {
            None
        }
    }
}

fn parse_target(word: &str) -> Result<FaultTarget, String> {
    if word == "*" {
        return Ok(FaultTarget::Any);
    }
    word.parse::<SocketAddr>()
        .map(FaultTarget::Addr)
        .map_err(|_| format!("{word:?} is neither HOST:PORT (an IP address) nor *"))
}

fn parse_rule(line: &str) -> Result<FaultRule, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["cut", addr] => Ok(FaultRule::Cut {
            target: parse_target(addr)?,
        }),
        ["drop", addr, percent] => {
            let digits = percent.strip_suffix('%').unwrap_or(percent);
            let percent: u8 = digits
                .parse()
                .ok()
                .filter(|p| *p <= 100)
                .ok_or_else(|| format!("drop share {percent:?} is not a percentage 0-100"))?;
            Ok(FaultRule::Drop {
                target: parse_target(addr)?,
                percent,
            })
        }
        ["delay", addr, delay] => {
            let Millis(delay_ms) = delay.parse::<Millis>()?;
            Ok(FaultRule::Delay {
                target: parse_target(addr)?,
                delay_ms,
            })
        }
        [verb, ..] if matches!(*verb, "cut" | "drop" | "delay") => Err(format!(
            "wrong number of fields for {verb:?}: expected `cut ADDR`, `drop ADDR PERCENT` or `delay ADDR MS`"
        )),
        [verb, ..] => Err(format!(
            "unknown rule {verb:?}: expected cut, drop or delay"
        )),
        [] => Err("empty rule".into()),
    }
}

/// One shard's view of the rules file: reloaded on change, consulted before every
/// outgoing peer request, and the count of requests it faulted.
pub struct FaultHooks {
    path: Option<PathBuf>,
    state: RefCell<HooksState>,
    /// Faulted requests by kind, indexed like [`FAULT_KINDS`].
    counts: [Cell<u64>; 3],
}

struct HooksState {
    rules: Rc<FaultRules>,
    /// When the file's metadata was last looked at.
    checked_at: Option<Instant>,
    /// (modification time, length) of the file last read; None while it is missing.
    stamp: Option<(SystemTime, u64)>,
    logged_bad_lines: ahash::AHashSet<String>,
    rng: SplitMix64,
}

impl FaultHooks {
    /// Hooks reading `path` (None: no rules, ever); `seed` drives the drop rolls.
    pub fn new(path: Option<PathBuf>, seed: u64) -> FaultHooks {
        FaultHooks {
            path,
            state: RefCell::new(HooksState {
                rules: Rc::new(FaultRules::default()),
                checked_at: None,
                stamp: None,
                logged_bad_lines: ahash::AHashSet::new(),
                rng: SplitMix64::new(seed),
            }),
            counts: Default::default(),
        }
    }

    /// The fault to apply to a request for the peer with client address `client`
    /// (counted when there is one).
    pub fn check(&self, client: &str) -> Option<Fault> {
        let path = self.path.as_ref()?;
        let mut state = self.state.borrow_mut();
        let now = Instant::now();
        if state
            .checked_at
            .is_none_or(|at| now.duration_since(at) >= RELOAD_CHECK_INTERVAL)
        {
            state.checked_at = Some(now);
            reload_if_changed(path, &mut state);
        }
        if state.rules.rules.is_empty() {
            return None;
        }
        let roll = (state.rng.next_u64() % 100) as u8;
        let fault = state.rules.decide(client, roll)?;
        let counter = &self.counts[fault.kind_index()];
        counter.set(counter.get() + 1);
        Some(fault)
    }

    /// Faulted requests so far, indexed like [`FAULT_KINDS`].
    pub fn counts(&self) -> [u64; 3] {
        [
            self.counts[0].get(),
            self.counts[1].get(),
            self.counts[2].get(),
        ]
    }
}

/// Re-read the rules file if its stamp changed. Blocking file I/O on the shard thread
/// is acceptable here: the file is tiny, read at most every 100 ms, and only in tests.
fn reload_if_changed(path: &std::path::Path, state: &mut HooksState) {
    let stamp = std::fs::metadata(path)
        .ok()
        .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
    if stamp == state.stamp {
        return;
    }
    state.stamp = stamp;
    if stamp.is_none() {
        state.rules = Rc::new(FaultRules::default());
        tracing::info!(path = %path.display(), "fault rules file is gone: no fault rules");
        return;
    }
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            // Retried when the stamp changes again; meanwhile no rules apply.
            tracing::warn!(path = %path.display(), error = %e, "cannot read the fault rules file");
            state.rules = Rc::new(FaultRules::default());
            return;
        }
    };
    let (rules, bad_lines) = FaultRules::parse(&text);
    for bad in bad_lines {
        if state.logged_bad_lines.len() < LOGGED_BAD_LINES_MAX
            && state.logged_bad_lines.insert(bad.text.clone())
        {
            tracing::warn!(
                path = %path.display(),
                line = bad.line,
                text = %bad.text,
                reason = %bad.reason,
                "ignoring a bad fault rule"
            );
        }
    }
    tracing::info!(path = %path.display(), rules = rules.rules.len(), "fault rules loaded");
    state.rules = Rc::new(rules);
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "127.0.0.1:17500";
    const B: &str = "127.0.0.1:17510";

    fn addr(s: &str) -> FaultTarget {
        FaultTarget::Addr(s.parse().unwrap())
    }

    #[test]
    fn parses_every_rule_kind_with_comments_and_blank_lines() {
        let text = "# partition C\n\ncut 127.0.0.1:17500\n  drop * 30%  # flaky\n\
                    drop 127.0.0.1:17510 100\ndelay * 250\ndelay 127.0.0.1:17500 2s\n";
        let (rules, bad) = FaultRules::parse(text);
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(
            rules.rules,
            vec![
                FaultRule::Cut { target: addr(A) },
                FaultRule::Drop {
                    target: FaultTarget::Any,
                    percent: 30
                },
                FaultRule::Drop {
                    target: addr(B),
                    percent: 100
                },
                FaultRule::Delay {
                    target: FaultTarget::Any,
                    delay_ms: 250
                },
                FaultRule::Delay {
                    target: addr(A),
                    delay_ms: 2000
                },
            ]
        );
    }

    #[test]
    fn bad_lines_are_reported_with_their_number_and_the_rest_applies() {
        let text = "cut\ncut localhost:1\ndrop * 101\ndrop * x\ndelay * soon\n\
                    sever *\ncut * extra\ncut *\n";
        let (rules, bad) = FaultRules::parse(text);
        assert_eq!(
            rules.rules,
            vec![FaultRule::Cut {
                target: FaultTarget::Any
            }]
        );
        let lines: Vec<usize> = bad.iter().map(|b| b.line).collect();
        assert_eq!(lines, vec![1, 2, 3, 4, 5, 6, 7]);
        assert!(bad[5].reason.contains("unknown rule"), "{:?}", bad[5]);
        assert!(
            bad[0].reason.contains("wrong number of fields"),
            "{:?}",
            bad[0]
        );
    }

    #[test]
    fn empty_file_has_no_rules() {
        let (rules, bad) = FaultRules::parse("\n# nothing\n   \n");
        assert!(rules.rules.is_empty() && bad.is_empty());
        assert_eq!(rules.decide(A, 0), None);
    }

    #[test]
    fn decisions_cut_wins_then_drop_share_then_delay() {
        let (rules, _) =
            FaultRules::parse("delay * 50\ndrop 127.0.0.1:17510 40\ncut 127.0.0.1:17500\n");
        assert_eq!(rules.decide(A, 99), Some(Fault::Cut));
        assert_eq!(rules.decide(B, 39), Some(Fault::Drop));
        assert_eq!(
            rules.decide(B, 40),
            Some(Fault::Delay(Duration::from_millis(50))),
            "not dropped: delayed"
        );
        assert_eq!(
            rules.decide("127.0.0.1:1", 0),
            Some(Fault::Delay(Duration::from_millis(50)))
        );
        let (only_b, _) = FaultRules::parse("cut 127.0.0.1:17510");
        assert_eq!(only_b.decide(A, 0), None, "another peer is untouched");
        assert_eq!(only_b.decide("not an address", 0), None);
        let (all, _) = FaultRules::parse("drop * 100");
        assert!((0..100).all(|roll| all.decide(A, roll) == Some(Fault::Drop)));
        let (none, _) = FaultRules::parse("drop * 0");
        assert!((0..100).all(|roll| none.decide(A, roll).is_none()));
    }

    #[test]
    fn hooks_without_a_file_never_fault() {
        let hooks = FaultHooks::new(None, 1);
        assert_eq!(hooks.check(A), None);
        assert_eq!(hooks.counts(), [0, 0, 0]);
    }

    #[test]
    fn hooks_follow_the_file_and_count_faults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("faults");
        let hooks = FaultHooks::new(Some(path.clone()), 7);
        assert_eq!(hooks.check(A), None, "a missing file means no rules");
        std::fs::write(&path, "cut 127.0.0.1:17500\nbogus line\n").unwrap();
        // The file is looked at no more than every RELOAD_CHECK_INTERVAL: wait for it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while hooks.check(A).is_none() {
            assert!(Instant::now() < deadline, "rules never loaded");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(hooks.check(B), None);
        assert!(hooks.counts()[0] >= 1);
        std::fs::remove_file(&path).unwrap();
        while hooks.check(A).is_some() {
            assert!(Instant::now() < deadline, "removed rules never dropped");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
