//! What is measured against what: the targets (direct, PgBouncer, the
//! pgtier flavours) and the workloads (a)–(f).

use anyhow::{anyhow, bail, Result};

use crate::cli::{RunArgs, ALL_TARGETS, ALL_WORKLOADS};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Target {
    Direct,
    PgBouncer,
    Pgtier,
    PgtierProxy,
    PgtierRules,
}

impl Target {
    const ALL: [Target; 5] = [
        Target::Direct,
        Target::PgBouncer,
        Target::Pgtier,
        Target::PgtierProxy,
        Target::PgtierRules,
    ];

    pub(crate) fn parse(key: &str) -> Result<Target> {
        Target::ALL
            .into_iter()
            .find(|t| t.key() == key.trim())
            .ok_or_else(|| anyhow!("unknown target {key:?}: use {ALL_TARGETS}"))
    }

    /// The name `--targets` takes.
    pub(crate) fn key(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::PgBouncer => "pgbouncer",
            Target::Pgtier => "pgtier",
            Target::PgtierProxy => "pgtier-proxy",
            Target::PgtierRules => "pgtier-rules",
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::PgBouncer => "PgBouncer",
            Target::Pgtier => "pgtier",
            Target::PgtierProxy => "pgtier proxy",
            Target::PgtierRules => "pgtier rules",
        }
    }

    /// Whether this target runs `workload`. Direct has no (f): refusing
    /// logins is the cluster's own business there, and pass-through pgtier
    /// shows what it costs. The rules target runs what issue 7 measures
    /// ((a), (b)) and what the rules could slow ((c), (e)); its logins
    /// ((d)) and refusals ((f)) are pass-through pgtier's.
    pub(crate) fn runs(self, workload: Workload) -> bool {
        !matches!(
            (self, workload),
            (Target::Direct, Workload::Attack(_))
                | (Target::PgtierRules, Workload::Churn | Workload::Attack(_))
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Workload {
    Simple,
    Prepared,
    Fleet,
    Churn,
    Copy,
    /// (a) under attack; the attackers' attempts per second, all together
    /// (0 = as fast as they are answered).
    Attack(u32),
}

impl Workload {
    pub(crate) fn parse(key: &str) -> Result<Workload> {
        Ok(match key.trim() {
            "a" => Workload::Simple,
            "b" => Workload::Prepared,
            "c" => Workload::Fleet,
            "d" => Workload::Churn,
            "e" => Workload::Copy,
            // The rates come from --attack-rates.
            "f" => Workload::Attack(0),
            other => bail!("unknown workload {other:?}: use {ALL_WORKLOADS}"),
        })
    }

    pub(crate) fn key(self) -> &'static str {
        match self {
            Workload::Simple => "a",
            Workload::Prepared => "b",
            Workload::Fleet => "c",
            Workload::Churn => "d",
            Workload::Copy => "e",
            Workload::Attack(_) => "f",
        }
    }

    /// The key, and for (f) at a capped rate the rate: `f`, `f-50`.
    pub(crate) fn label(self) -> String {
        match self {
            Workload::Attack(rate) if rate > 0 => format!("f-{rate}"),
            other => other.key().to_owned(),
        }
    }

    /// Position within a round: (f) right after (a), so that the attacked
    /// run and the unattacked one it is compared with are close in time.
    pub(crate) fn run_rank(self) -> u8 {
        match self {
            Workload::Simple => 0,
            Workload::Attack(_) => 1,
            Workload::Prepared => 2,
            Workload::Fleet => 3,
            Workload::Churn => 4,
            Workload::Copy => 5,
        }
    }

    pub(crate) fn title(self, args: &RunArgs) -> String {
        match self {
            Workload::Simple => format!(
                "(a) select-only, simple protocol, {} clients / {} tenants",
                args.clients, args.std_tenants
            ),
            Workload::Prepared => format!(
                "(b) select-only, `-M prepared`, {} clients / {} tenants",
                args.clients, args.std_tenants
            ),
            Workload::Fleet => format!("(c) free fleet, {} tenants × 2 clients", args.free_tenants),
            Workload::Churn => format!(
                "(d) connection churn `-C`, {} clients / {} tenants",
                args.clients, args.std_tenants
            ),
            Workload::Copy => format!("(e) `COPY … TO STDOUT`, {} MiB", args.copy_mb),
            Workload::Attack(0) => format!(
                "(f) (a) while {} attackers make refused logins as fast as answered",
                args.attackers
            ),
            Workload::Attack(rate) => format!(
                "(f) (a) while {} attackers make refused logins, {rate}/s offered",
                args.attackers
            ),
        }
    }

    pub(crate) fn unit(self) -> &'static str {
        match self {
            Workload::Copy => "MiB/s",
            _ => "TPS",
        }
    }

    /// Where `perf stat` is attached: the select-only workloads whose
    /// per-transaction costs the README's analysis is about.
    pub(crate) fn wants_perf(self) -> bool {
        matches!(self, Workload::Simple | Workload::Prepared)
    }
}
