//! What the attackers achieved between two moments: attempts per outcome
//! (SQLSTATE and message, or a client-side failure) and their CPU time.

use std::collections::BTreeMap;

/// The attackers' outcome counts and CPU time at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub(super) counts: BTreeMap<String, u64>,
    pub(super) cpu: f64,
}

/// What the attackers got in a window.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// Outcomes per second, labelled `KIND: OUTCOME`: the kind of
    /// attacker ([`WRONG_PASSWORD`], [`OVER_CAP`]) and a SQLSTATE for a
    /// refusal, `accepted` for a login that got in, `error: …` for
    /// anything else.
    pub per_second: BTreeMap<String, f64>,
    /// CPU the attackers used, cores (seconds per second).
    pub attacker_cores: f64,
    /// CPU the target's proxy used, cores.
    pub proxy_cores: Option<f64>,
}

impl Figures {
    pub fn between(from: &Snapshot, to: &Snapshot, secs: f64) -> Figures {
        let secs = secs.max(1e-9);
        Figures {
            per_second: to
                .counts
                .iter()
                .map(|(k, v)| {
                    let before = from.counts.get(k).copied().unwrap_or(0);
                    (k.clone(), v.saturating_sub(before) as f64 / secs)
                })
                .filter(|(_, v)| *v > 0.0)
                .collect(),
            attacker_cores: (to.cpu - from.cpu) / secs,
            proxy_cores: None,
        }
    }

    /// Refusals (answers with a SQLSTATE) per second.
    pub fn refused_per_s(&self) -> f64 {
        self.refusals(None).map(|(_, v)| v).sum()
    }

    /// Refusals of attackers of `kind` per second.
    pub fn refused(&self, kind: &str) -> f64 {
        self.refusals(Some(kind)).map(|(_, v)| v).sum()
    }

    /// The SQLSTATEs attackers of `kind` were refused with.
    pub fn codes(&self, kind: &str) -> Vec<String> {
        self.refusals(Some(kind))
            .map(|(c, _)| c.to_owned())
            .collect()
    }

    /// Everything but refusals (`KIND: accepted`, `KIND: error: …`).
    pub fn others(&self) -> impl Iterator<Item = (&String, &f64)> {
        self.per_second.iter().filter(|(k, _)| {
            k.split_once(": ")
                .is_none_or(|(_, outcome)| !is_sqlstate(outcome))
        })
    }

    fn refusals<'a>(&'a self, kind: Option<&'a str>) -> impl Iterator<Item = (&'a str, f64)> {
        self.per_second.iter().filter_map(move |(k, v)| {
            let (of, outcome) = k.split_once(": ")?;
            (is_sqlstate(outcome) && kind.is_none_or(|kind| kind == of)).then_some((outcome, *v))
        })
    }

    /// `wrong password: 28P01 412/s, …`: every outcome seen.
    pub fn outcomes(&self) -> String {
        self.per_second
            .iter()
            .map(|(k, v)| format!("{k} {v:.0}/s"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn is_sqlstate(s: &str) -> bool {
    s.len() == 5 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}
