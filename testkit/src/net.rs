//! Peers that misbehave below HTTP, for the gateway's upstream client: a listener whose
//! accept queue is full (a connect to it hangs, as to a blackholed address, without any
//! external network), and one that records the first bytes a client sends (plain HTTP
//! or a TLS ClientHello) and hangs up.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;

/// A loopback address that accepts no connection: its listener has a backlog of 0 and
/// its queue is filled by connections held here, so the kernel drops further SYNs and a
/// connect hangs until the client's own timeout. Dropping it frees the port.
pub struct Blackhole {
    addr: SocketAddr,
    _listener: tokio::net::TcpListener,
    _queued: Vec<TcpStream>,
}

impl Blackhole {
    pub async fn start() -> Self {
        let socket = TcpSocket::new_v4().expect("a socket");
        socket
            .bind("127.0.0.1:0".parse().expect("an address"))
            .expect("bind a loopback port");
        let listener = socket.listen(0).expect("listen");
        let addr = listener.local_addr().expect("bound address");
        let mut queued = Vec::new();
        // Fill the accept queue until a connect no longer completes (the first that
        // hangs shows it is full); the probe's bound only keeps this from hanging.
        for _ in 0..64 {
            match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => queued.push(stream),
                Ok(Err(e)) => panic!("connecting to the blackhole's listener: {e}"),
                Err(_) => {
                    return Self {
                        addr,
                        _listener: listener,
                        _queued: queued,
                    };
                }
            }
        }
        panic!("the accept queue of a backlog-0 listener never filled");
    }

    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.addr)
    }
}

/// A listener that reads the first bytes of every connection, reports them and closes
/// the connection.
pub struct FirstBytes {
    addr: SocketAddr,
    rx: mpsc::UnboundedReceiver<Vec<u8>>,
    task: tokio::task::JoinHandle<()>,
}

impl FirstBytes {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("bound address");
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = [0u8; 8];
                if stream.read_exact(&mut buf).await.is_ok() {
                    drop(tx.send(buf.to_vec()));
                }
            }
        });
        Self { addr, rx, task }
    }

    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.addr)
    }

    /// The first 8 bytes of the next connection that sent that many.
    pub async fn next(&mut self) -> Vec<u8> {
        self.rx.recv().await.expect("the listener runs")
    }
}

impl Drop for FirstBytes {
    fn drop(&mut self) {
        self.task.abort();
    }
}
