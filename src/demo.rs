//! `pgtier demo`: placeholder until the sandbox lands.
pub async fn run(_listen: std::net::SocketAddr) -> anyhow::Result<()> {
    anyhow::bail!("demo not ready")
}
