//! TEMPORARY STUB: replaced by the real classifier (branch `classify`).
#![allow(dead_code, unused_variables)]

use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DenyKind {
    Extension,
    Function,
    Trigger,
    Role,
}

impl DenyKind {
    pub const ALL: [DenyKind; 4] = [
        DenyKind::Extension,
        DenyKind::Function,
        DenyKind::Trigger,
        DenyKind::Role,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            DenyKind::Extension => "extension",
            DenyKind::Function => "function",
            DenyKind::Trigger => "trigger",
            DenyKind::Role => "role",
        }
    }
    pub fn parse(s: &str) -> Option<DenyKind> {
        DenyKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feature {
    pub kind: DenyKind,
    pub name: &'static str,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Classification {
    pub adds_rows: bool,
    pub features: Vec<Feature>,
    pub remeasure: bool,
    pub prepares: Vec<(String, bool)>,
    pub executes: Vec<String>,
    pub deallocates: Vec<Option<String>>,
    pub unparsed: bool,
}

impl Classification {
    pub fn is_plain(&self) -> bool {
        *self == Classification::default()
    }
}

pub fn classify(sql: &str) -> Classification {
    let upper = sql.trim_start().to_ascii_uppercase();
    let mut c = Classification::default();
    if upper.starts_with("INSERT") || upper.starts_with("COPY") && upper.contains(" FROM ") {
        c.adds_rows = true;
    }
    if upper.starts_with("CREATE EXTENSION") {
        c.features.push(Feature {
            kind: DenyKind::Extension,
            name: "CREATE EXTENSION",
        });
    }
    if upper.starts_with("PREPARE") {
        c.prepares.push(("p".into(), upper.contains("INSERT")));
    }
    c
}

pub fn classify_lexical(sql: &str) -> Option<Classification> {
    None
}

#[derive(Debug, Default)]
pub struct Classifier;

impl Classifier {
    pub fn new() -> Self {
        Classifier
    }
    pub fn classify(&self, sql: &str) -> Arc<Classification> {
        Arc::new(classify(sql))
    }
}
