//! The parser path's judgement: a walk over PostgreSQL's parse tree that
//! says which statements add rows (and whether their tags count them), grow
//! storage, use deny-able features, or prepare, execute, deallocate,
//! declare or fetch by name. The statements a statement holds (a CTE,
//! EXPLAIN ANALYZE's, COPY's query, a DO block's) are judged on their own.

mod do_block;

use pg_query::protobuf::{self, ObjectType};
use pg_query::NodeEnum;

use super::lexer::{word_is, Lexer, Tok};
use super::parse::inner;
use super::row_functions::mentions_row_adding_function;
use super::unparsed::leading_features;
use super::verdict::*;

/// The verdict on a parsed text. `scs`: the reading it was parsed with;
/// `depth`: how many DO blocks deep it was found.
pub(super) fn walk(
    sql: &str,
    tree: &protobuf::ParseResult,
    scs: bool,
    depth: u8,
) -> Classification {
    let mut walker = Walker {
        out: Classification::default(),
        depth,
    };
    for raw in &tree.stmts {
        let text = statement_text(sql, raw);
        if let Some(node) = raw.stmt.as_deref().and_then(|n| n.node.as_ref()) {
            walker.statement(node, text, false);
            if mentions_row_adding_function(text, scs) {
                walker.row_adding_call(node);
            }
        }
    }
    walker.out
}

/// The text of one statement of a multi-statement string (for the word the
/// user wrote in role statements); the whole text if the offsets look wrong.
fn statement_text<'a>(sql: &'a str, raw: &protobuf::RawStmt) -> &'a str {
    let start = usize::try_from(raw.stmt_location).unwrap_or(0);
    let text = match usize::try_from(raw.stmt_len) {
        Ok(len) if len > 0 => sql.get(start..start.saturating_add(len)),
        _ => sql.get(start..),
    };
    text.unwrap_or(sql)
}

/// ROLE, USER or GROUP: the second word of a role statement's text.
fn role_word_of(text: &str) -> RoleWord {
    let mut lexer = Lexer::new(text, true);
    let src = lexer.src;
    let mut words = 0;
    while let Some((tok, start, end)) = lexer.next_token() {
        if tok != Tok::Word {
            break;
        }
        words += 1;
        if words == 2 {
            if word_is(src, start, end, b"user") {
                return RoleWord::User;
            }
            if word_is(src, start, end, b"group") {
                return RoleWord::Group;
            }
            break;
        }
    }
    RoleWord::Role
}

struct Walker {
    out: Classification,
    /// How many DO blocks deep the statements are.
    depth: u8,
}

fn is_extension(object_type: i32) -> bool {
    object_type == ObjectType::ObjectExtension as i32
}

impl Walker {
    /// One statement that runs now. `nested`: its rows are not counted by the
    /// command tag the client will see (a CTE, EXPLAIN ANALYZE, COPY (…) TO).
    fn statement(&mut self, node: &NodeEnum, text: &str, nested: bool) {
        use NodeEnum as N;
        if !storage_neutral(node) {
            self.out.grows_storage = true;
        }
        match node {
            N::InsertStmt(s) => {
                self.out.add_rows(!nested);
                self.with(s.with_clause.as_ref(), text);
                if let Some(q) = inner(&s.select_stmt) {
                    self.statement(q, text, true);
                }
            }
            N::SelectStmt(s) => self.select(s, text),
            N::UpdateStmt(s) => self.with(s.with_clause.as_ref(), text),
            N::DeleteStmt(s) => self.with(s.with_clause.as_ref(), text),
            N::MergeStmt(s) => {
                let inserts = s.merge_when_clauses.iter().any(|c| {
                    matches!(&c.node, Some(N::MergeWhenClause(w))
                        if w.command_type == protobuf::CmdType::CmdInsert as i32)
                });
                if inserts {
                    self.out.adds_rows = true;
                }
                // The MERGE tag counts inserted, updated and deleted rows together.
                self.out.remeasure = true;
                self.with(s.with_clause.as_ref(), text);
            }
            N::CopyStmt(s) => {
                if s.is_from {
                    self.out.add_rows(true);
                }
                if let Some(q) = inner(&s.query) {
                    self.statement(q, text, true);
                }
            }
            N::CreateTableAsStmt(s) => {
                // CREATE TABLE AS, SELECT INTO (after analysis), CREATE
                // MATERIALIZED VIEW; `WITH NO DATA` creates an empty relation.
                let skip_data = s.into.as_ref().is_some_and(|i| i.skip_data);
                if !skip_data {
                    self.out.add_rows(false);
                }
                self.out.remeasure = true;
                match inner(&s.query) {
                    Some(N::ExecuteStmt(e)) => self.out.executes.push(e.name.clone()),
                    Some(q) => self.statement(q, text, true),
                    None => {}
                }
            }
            N::RefreshMatViewStmt(s) => {
                if !s.skip_data {
                    self.out.add_rows(false);
                }
                self.out.remeasure = true;
            }
            // EXPLAIN without ANALYZE plans the statement and runs nothing.
            N::ExplainStmt(s) if explain_analyzes(&s.options) => {
                if let Some(q) = inner(&s.query) {
                    self.statement(q, text, true);
                }
            }
            N::PrepareStmt(s) => {
                let mut body = Walker {
                    out: Classification::default(),
                    depth: self.depth,
                };
                if let Some(q) = inner(&s.query) {
                    body.statement(q, text, false);
                }
                self.out.prepares.push((s.name.clone(), body.out.writes()));
            }
            N::ExecuteStmt(s) => self.out.executes.push(s.name.clone()),
            N::FetchStmt(s) => self.out.fetches.push(s.portalname.clone()),
            N::DeclareCursorStmt(s) => {
                let mut body = Walker {
                    out: Classification::default(),
                    depth: self.depth,
                };
                if let Some(q) = inner(&s.query) {
                    body.statement(q, text, true);
                }
                self.out.features.extend(body.out.features);
                self.out
                    .cursors
                    .push((s.portalname.clone(), body.out.adds_rows));
            }
            N::DeallocateStmt(s) => {
                let name = (!s.isall).then(|| s.name.clone());
                self.out.deallocates.push(name);
            }
            N::DiscardStmt(s) if s.target == protobuf::DiscardMode::DiscardAll as i32 => {
                self.out.deallocates.push(None)
            }
            N::DoStmt(s) => match do_block::check(s, self.depth) {
                Ok(inner) => {
                    // The statements inside, as if sent one by one, except
                    // that the tag "DO" counts none of their rows.
                    self.out.features.extend(inner.features);
                    self.out.grows_storage |= inner.grows_storage;
                    if inner.adds_rows {
                        self.out.add_rows(false);
                    }
                    self.out.remeasure |= inner.remeasure;
                }
                Err(feature) => {
                    self.out.features.push(feature);
                    self.out.add_rows(false);
                }
            },
            // `x := expr` in PL/pgSQL (a DO block's assignment).
            N::PlassignStmt(s) => {
                if let Some(select) = &s.val {
                    self.select(select, text);
                }
            }
            N::CallStmt(_) => self.out.add_rows(false),
            N::TruncateStmt(_) | N::DropOwnedStmt(_) => self.out.remeasure = true,
            N::DropStmt(s) => {
                let t = s.remove_type;
                if t == ObjectType::ObjectTable as i32
                    || t == ObjectType::ObjectSchema as i32
                    || t == ObjectType::ObjectMatview as i32
                {
                    self.out.remeasure = true;
                } else if is_extension(t) {
                    self.out.features.push(DROP_EXTENSION);
                }
            }
            N::AlterTableStmt(s) => {
                let partitions = s.cmds.iter().any(|c| {
                    matches!(&c.node, Some(N::AlterTableCmd(cmd)) if {
                        use protobuf::AlterTableType as A;
                        cmd.subtype == A::AtAttachPartition as i32
                            || cmd.subtype == A::AtDetachPartition as i32
                            || cmd.subtype == A::AtDetachPartitionFinalize as i32
                    })
                });
                if partitions {
                    self.out.remeasure = true;
                }
            }
            N::CreateExtensionStmt(_) => {
                if leading_features(text, true).first() == Some(&CREATE_LANGUAGE) {
                    self.out.features.push(CREATE_LANGUAGE);
                    self.out.features.push(CREATE_LANGUAGE_EXTENSION);
                } else {
                    self.out.features.push(CREATE_EXTENSION);
                }
            }
            N::AlterExtensionStmt(_) | N::AlterExtensionContentsStmt(_) => {
                self.out.features.push(ALTER_EXTENSION)
            }
            N::AlterObjectSchemaStmt(s) if is_extension(s.object_type) => {
                self.out.features.push(ALTER_EXTENSION)
            }
            N::CreateFunctionStmt(s) => self.out.features.push(if s.is_procedure {
                CREATE_PROCEDURE
            } else {
                CREATE_FUNCTION
            }),
            N::DefineStmt(s) if s.kind == ObjectType::ObjectAggregate as i32 => {
                self.out.features.push(CREATE_AGGREGATE)
            }
            N::CreatePlangStmt(_) => self.out.features.push(CREATE_LANGUAGE),
            N::CreateTrigStmt(_) => self.out.features.push(CREATE_TRIGGER),
            N::CreateEventTrigStmt(_) => self.out.features.push(CREATE_EVENT_TRIGGER),
            N::RuleStmt(_) => self.out.features.push(CREATE_RULE),
            N::CreateRoleStmt(s) => {
                use protobuf::RoleStmtType as R;
                let word = if s.stmt_type == R::RolestmtUser as i32 {
                    RoleWord::User
                } else if s.stmt_type == R::RolestmtGroup as i32 {
                    RoleWord::Group
                } else {
                    RoleWord::Role
                };
                self.out.features.push(role_feature(RoleVerb::Create, word));
            }
            N::AlterRoleStmt(_) | N::AlterRoleSetStmt(_) => {
                let word = role_word_of(text);
                self.out.features.push(role_feature(RoleVerb::Alter, word));
            }
            N::RenameStmt(s) if s.rename_type == ObjectType::ObjectRole as i32 => {
                let word = role_word_of(text);
                self.out.features.push(role_feature(RoleVerb::Alter, word));
            }
            N::DropRoleStmt(_) => {
                let word = role_word_of(text);
                self.out.features.push(role_feature(RoleVerb::Drop, word));
            }
            N::GrantRoleStmt(s) => {
                self.out
                    .features
                    .push(if s.is_grant { GRANT_ROLE } else { REVOKE_ROLE })
            }
            N::CreateSchemaStmt(s) => {
                // CREATE SCHEMA s CREATE TABLE … CREATE TRIGGER …: the
                // elements are statements of their own.
                for element in &s.schema_elts {
                    if let Some(e) = &element.node {
                        self.statement(e, text, nested);
                    }
                }
            }
            _ => {}
        }
    }

    /// The statement names a function that adds rows no command tag counts
    /// (see [`ROW_ADDING_FUNCTIONS`](super::ROW_ADDING_FUNCTIONS)).
    /// Statements that run now add rows;
    /// statements that store the call for later (a view, a default, a
    /// check, a policy, an operator, a cursor) hide it from every statement
    /// that later runs it, so storing it is a feature of its own.
    fn row_adding_call(&mut self, node: &NodeEnum) {
        use NodeEnum as N;
        // The gate follows prepared statements by name: this one adds rows
        // when it is executed, not when it is prepared.
        if let N::PrepareStmt(_) = node {
            if let Some(prepared) = self.out.prepares.last_mut() {
                prepared.1 = Writes::ALL;
            }
            return;
        }
        // Likewise a cursor: at its FETCH.
        if let N::DeclareCursorStmt(_) = node {
            if let Some(cursor) = self.out.cursors.last_mut() {
                cursor.1 = true;
            }
        }
        self.out.add_rows(false);
        match node {
            N::SelectStmt(_)
            | N::InsertStmt(_)
            | N::UpdateStmt(_)
            | N::DeleteStmt(_)
            | N::MergeStmt(_)
            | N::CallStmt(_)
            | N::ExplainStmt(_)
            | N::CopyStmt(_)
            | N::CreateTableAsStmt(_)
            | N::RefreshMatViewStmt(_)
            | N::ExecuteStmt(_)
            | N::DoStmt(_)
            | N::PlassignStmt(_)
            | N::VariableSetStmt(_)
            | N::VariableShowStmt(_)
            | N::NotifyStmt(_)
            | N::ListenStmt(_)
            | N::UnlistenStmt(_)
            | N::TransactionStmt(_) => {}
            _ => self.out.features.push(STORED_ROW_FUNCTION),
        }
    }

    fn select(&mut self, s: &protobuf::SelectStmt, text: &str) {
        if let Some(into) = &s.into_clause {
            // A new table, even WITH NO DATA.
            self.out.grows_storage = true;
            // SELECT … INTO t: a CREATE TABLE AS in disguise.
            if !into.skip_data {
                self.out.add_rows(false);
            }
            self.out.remeasure = true;
        }
        self.with(s.with_clause.as_ref(), text);
        // A set operation carries INTO and WITH on its branches.
        for branch in [&s.larg, &s.rarg].into_iter().flatten() {
            self.select(branch, text);
        }
    }

    /// Data-modifying CTEs run whatever the main statement is, and their rows
    /// are never in its command tag.
    fn with(&mut self, with: Option<&protobuf::WithClause>, text: &str) {
        for cte in with.iter().flat_map(|w| &w.ctes) {
            if let Some(NodeEnum::CommonTableExpr(c)) = &cte.node {
                if let Some(q) = inner(&c.ctequery) {
                    self.statement(q, text, true);
                }
            }
        }
    }
}

/// Statements that grow nothing on disk by themselves: reads, removals,
/// maintenance that frees space, settings, transaction control, and those
/// that only name a statement or portal (judged by what they name). The
/// statements they hold (a CTE, EXPLAIN ANALYZE's, COPY's query, a DO
/// block's) are judged on their own. Everything else grows storage.
fn storage_neutral(node: &NodeEnum) -> bool {
    use NodeEnum as N;
    matches!(
        node,
        N::SelectStmt(_)
            | N::DeleteStmt(_)
            | N::TruncateStmt(_)
            | N::DropStmt(_)
            | N::DropOwnedStmt(_)
            | N::DropdbStmt(_)
            | N::VacuumStmt(_)
            | N::VariableSetStmt(_)
            | N::VariableShowStmt(_)
            | N::ConstraintsSetStmt(_)
            | N::TransactionStmt(_)
            | N::PrepareStmt(_)
            | N::ExecuteStmt(_)
            | N::DeallocateStmt(_)
            | N::DeclareCursorStmt(_)
            | N::FetchStmt(_)
            | N::ClosePortalStmt(_)
            | N::DiscardStmt(_)
            | N::ListenStmt(_)
            | N::UnlistenStmt(_)
            | N::NotifyStmt(_)
            | N::LockStmt(_)
            | N::CheckPointStmt(_)
            | N::ExplainStmt(_)
            | N::PlassignStmt(_)
            | N::DoStmt(_)
            // COPY … FROM adds rows (judged as such); COPY … TO reads.
            | N::CopyStmt(_)
            // Adds rows (judged as such).
            | N::InsertStmt(_)
            | N::CallStmt(_)
    )
}

/// Whether EXPLAIN's options make it run the statement (ANALYZE, unless
/// spelled off): PostgreSQL's defGetBoolean takes no argument, 1, true and on
/// as true and 0, false and off as false.
fn explain_analyzes(options: &[protobuf::Node]) -> bool {
    options.iter().any(|o| match &o.node {
        Some(NodeEnum::DefElem(d)) if d.defname.eq_ignore_ascii_case("analyze") => {
            match inner(&d.arg) {
                Some(NodeEnum::Integer(i)) => i.ival != 0,
                Some(NodeEnum::Boolean(b)) => b.boolval,
                Some(NodeEnum::String(s)) => {
                    !(s.sval.eq_ignore_ascii_case("false") || s.sval.eq_ignore_ascii_case("off"))
                }
                _ => true,
            }
        }
        _ => false,
    })
}
