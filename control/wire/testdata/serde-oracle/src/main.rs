// serde oracle: the original's types (libusnetd src/lib.rs), verbatim shape.
use serde_derive::{Deserialize, Serialize};
use std::io::BufRead;

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub enum ClientMessageIp {
    Ipv4(String),
    Ipv6(String),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum ClientMessage {
    RequestNetmapPipe(String, u64),
    RequestUDS(String, u64),
    DeleteClient,
    AddMatch(WantMsg),
    RemoveMatch(WantMsg),
    QueryUsedPorts,
    QueryUsedPortsAnswer {
        listening: Vec<(u8, ClientMessageIp, u16)>,
        connected: Vec<(u8, ClientMessageIp, u16)>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct WantMsg {
    pub dst_addr: ClientMessageIp,
    pub dst_port: Option<u16>,
    pub src_addr: Option<ClientMessageIp>,
    pub src_port: Option<u16>,
    pub protocol: u8,
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}
fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{:02x}", x)).collect()
}

fn main() {
    // Mode "ip": lines are hex of 16 bytes; print Rust's Display of the Ipv6Addr.
    let ipmode = std::env::args().nth(1).as_deref() == Some("ip");
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let bytes = unhex(line.trim());
        if ipmode {
            let mut a = [0u8; 16];
            a.copy_from_slice(&bytes);
            println!("{}", std::net::Ipv6Addr::from(a));
            continue;
        }
        match std::str::from_utf8(&bytes) {
            Err(_) => println!("ERR broken string"),
            Ok(s) => match serde_json::from_str::<ClientMessage>(s) {
                Ok(m) => println!("OK {}", hex(serde_json::to_string(&m).unwrap().as_bytes())),
                // One line per input: the message may quote input with line breaks.
                Err(e) => println!("ERR {}", e.to_string().escape_debug()),
            },
        }
    }
}
