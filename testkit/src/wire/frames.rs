//! Client messages built by hand, for tests and benches that speak raw
//! frames: any message as tag + length + body, and the extended-protocol
//! messages the tests pipeline.

/// One message: tag, length, body.
pub fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend(((body.len() + 4) as u32).to_be_bytes());
    out.extend(body);
    out
}

/// A simple Query.
pub fn query(sql: &str) -> Vec<u8> {
    frame(b'Q', format!("{sql}\0").as_bytes())
}

/// Parse of `sql` as statement `name`, no parameter types.
pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut body = format!("{name}\0{sql}\0").into_bytes();
    body.extend(0u16.to_be_bytes());
    frame(b'P', &body)
}

/// Bind of `statement` to the unnamed portal, no parameters.
pub fn bind(statement: &str) -> Vec<u8> {
    bind_portal("", statement)
}

/// Bind of `statement` to `portal`, no parameters.
pub fn bind_portal(portal: &str, statement: &str) -> Vec<u8> {
    let mut body = format!("{portal}\0{statement}\0").into_bytes();
    body.extend([0, 0, 0, 0, 0, 0]);
    frame(b'B', &body)
}

/// Execute of the unnamed portal, all rows.
pub fn execute() -> Vec<u8> {
    execute_portal("")
}

/// Execute of `portal`, all rows.
pub fn execute_portal(portal: &str) -> Vec<u8> {
    let mut body = format!("{portal}\0").into_bytes();
    body.extend(0u32.to_be_bytes());
    frame(b'E', &body)
}

/// Close of a statement (`b'S'`) or portal (`b'P'`).
pub fn close(kind: u8, name: &str) -> Vec<u8> {
    let mut body = vec![kind];
    body.extend(format!("{name}\0").as_bytes());
    frame(b'C', &body)
}

pub fn sync() -> Vec<u8> {
    frame(b'S', b"")
}

/// A FunctionCall of `oid` with binary int4 arguments and a binary result.
pub fn function_call(oid: u32, args: &[i32]) -> Vec<u8> {
    let mut body = oid.to_be_bytes().to_vec();
    body.extend(1u16.to_be_bytes());
    body.extend(1u16.to_be_bytes());
    body.extend((args.len() as u16).to_be_bytes());
    for a in args {
        body.extend(4i32.to_be_bytes());
        body.extend(a.to_be_bytes());
    }
    body.extend(1u16.to_be_bytes());
    frame(b'F', &body)
}
