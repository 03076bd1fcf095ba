//! `sink`: the trivial socket-to-file receiver that `tools/bench-compare` measures every
//! ingestion path against — the practical limit of "read lines from a socket, put them in a
//! file" on the machine at hand.
//!
//! One thread per TCP connection and one for the UDP socket; each gathers what it reads in a
//! 1 MiB buffer and appends whole lines to the shared output file (so lines from different
//! connections never interleave). UDP datagrams get a line feed if they lack one. The UDP
//! socket asks for the same receive buffer as sluice (8 MiB, clamped by `rmem_max`). No
//! parsing, no log, no fsync.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

/// Bytes gathered before a write to the output file.
const FLUSH_BYTES: usize = 1 << 20;

/// Socket-to-file sink for side-by-side benchmarks.
#[derive(Debug, Parser)]
#[command(name = "sink", version, about)]
struct Args {
    /// TCP address to accept line streams on.
    #[arg(long)]
    tcp: Option<SocketAddr>,
    /// UDP address to receive datagrams on.
    #[arg(long)]
    udp: Option<SocketAddr>,
    /// Output file (appended to).
    #[arg(long)]
    out: std::path::PathBuf,
    /// UDP receive buffer asked for, in bytes.
    #[arg(long, default_value_t = 8 << 20)]
    rcvbuf: usize,
}

type Out = Arc<Mutex<File>>;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.out)
        .with_context(|| format!("open {}", args.out.display()))?;
    let out: Out = Arc::new(Mutex::new(file));
    let mut threads = Vec::new();
    if let Some(addr) = args.udp {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        let _ = socket.set_recv_buffer_size(args.rcvbuf);
        socket
            .bind(&addr.into())
            .with_context(|| format!("bind udp {addr}"))?;
        let socket: UdpSocket = socket.into();
        println!("udp={}", socket.local_addr()?);
        let out = out.clone();
        threads.push(std::thread::spawn(move || udp(socket, out)));
    }
    if let Some(addr) = args.tcp {
        let listener = TcpListener::bind(addr).with_context(|| format!("bind tcp {addr}"))?;
        println!("tcp={}", listener.local_addr()?);
        let out = out.clone();
        threads.push(std::thread::spawn(move || tcp(listener, out)));
    }
    std::io::stdout().flush()?;
    for t in threads {
        t.join().expect("sink thread")?;
    }
    Ok(())
}

fn tcp(listener: TcpListener, out: Out) -> anyhow::Result<()> {
    for stream in listener.incoming() {
        let mut stream = stream?;
        let out = out.clone();
        std::thread::spawn(move || -> anyhow::Result<()> {
            let mut buf = vec![0u8; FLUSH_BYTES + (256 << 10)];
            let mut have = 0;
            loop {
                let n = stream.read(&mut buf[have..])?;
                have += n;
                if n == 0 || have >= FLUSH_BYTES {
                    // Whole lines only; the tail waits for its line feed (or the end).
                    let cut = if n == 0 {
                        have
                    } else {
                        memchr::memrchr(b'\n', &buf[..have]).map_or(0, |i| i + 1)
                    };
                    out.lock().expect("out").write_all(&buf[..cut])?;
                    buf.copy_within(cut..have, 0);
                    have -= cut;
                    if have == buf.len() {
                        // A line longer than the buffer: pass it through as it is.
                        out.lock().expect("out").write_all(&buf)?;
                        have = 0;
                    }
                }
                if n == 0 {
                    return Ok(());
                }
            }
        });
    }
    Ok(())
}

fn udp(socket: UdpSocket, out: Out) -> anyhow::Result<()> {
    socket.set_read_timeout(Some(Duration::from_millis(20)))?;
    let mut buf = vec![0u8; FLUSH_BYTES + (64 << 10) + 1];
    let mut have = 0;
    loop {
        match socket.recv(&mut buf[have..have + (64 << 10)]) {
            Ok(n) => {
                have += n;
                if n > 0 && buf[have - 1] != b'\n' {
                    buf[have] = b'\n';
                    have += 1;
                }
                if have < FLUSH_BYTES {
                    continue;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
        if have > 0 {
            out.lock().expect("out").write_all(&buf[..have])?;
            have = 0;
        }
    }
}
