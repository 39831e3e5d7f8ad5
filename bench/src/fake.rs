//! Just enough of a PostgreSQL backend to log a client in and keep it:
//! trust authentication, a BackendKeyData, ReadyForQuery; a Query gets
//! EmptyQueryResponse, a Terminate closes. Used only where a real cluster
//! cannot reach the state measured (10,000 backends on one small machine).

use anyhow::{bail, Result};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use pgtier_testkit::wire::frames;

pub fn serve(port: u16) -> Result<()> {
    crate::process::raise_fd_limit();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let mut pid = 1000i32;
        loop {
            let (socket, _) = listener.accept().await?;
            pid = pid.wrapping_add(1);
            tokio::spawn(async move {
                if let Err(e) = session(socket, pid).await {
                    eprintln!("fake backend session {pid}: {e}");
                }
            });
        }
    })
}

/// Appends one message to `out`.
fn frame(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.extend(frames::frame(tag, body));
}

async fn session(mut socket: TcpStream, pid: i32) -> Result<()> {
    loop {
        let len = socket.read_u32().await? as usize;
        if !(8..=10_000).contains(&len) {
            bail!("bad startup length {len}");
        }
        let mut body = vec![0u8; len - 4];
        socket.read_exact(&mut body).await?;
        let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        if code == 80877103 || code == 80877104 {
            socket.write_all(b"N").await?; // no TLS, no GSS
            continue;
        }
        break;
    }
    let mut out = Vec::new();
    frame(&mut out, b'R', &0u32.to_be_bytes());
    for (k, v) in [
        ("server_version", "15.0 (pgtier-bench fake backend)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
    ] {
        let mut body = Vec::new();
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
        frame(&mut out, b'S', &body);
    }
    let mut key = pid.to_be_bytes().to_vec();
    key.extend_from_slice(&rand::random::<i32>().to_be_bytes());
    frame(&mut out, b'K', &key);
    frame(&mut out, b'Z', b"I");
    socket.write_all(&out).await?;
    drop(out);
    loop {
        let mut head = [0u8; 5];
        if socket.read_exact(&mut head).await.is_err() {
            return Ok(());
        }
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut skip = len.saturating_sub(4) as u64;
        while skip > 0 {
            let mut chunk = [0u8; 512];
            let n = socket.read(&mut chunk[..skip.min(512) as usize]).await?;
            if n == 0 {
                return Ok(());
            }
            skip -= n as u64;
        }
        match head[0] {
            b'X' => return Ok(()),
            b'Q' | b'S' => {
                let mut reply = Vec::new();
                if head[0] == b'Q' {
                    frame(&mut reply, b'I', b"");
                }
                frame(&mut reply, b'Z', b"I");
                socket.write_all(&reply).await?;
            }
            _ => {}
        }
    }
}
