#!/usr/bin/env node
// Test backend ("the container"): runs inside a network namespace (or on loopback) and serves
//   --echo PORT    TCP echo (FIN answered with FIN after the echo) and UDP echo on PORT
//   --hold PORT    TCP: accepts but does not read until "resume" arrives on stdin, then reads to
//                  EOF and answers "<bytes> <sha256>" and closes (slow reader / lossless check)
//   --whoami PORT  UDP: answers "<address> <port>" of the sender; TCP: writes it and closes
//   --late PORT    UDP echo that starts listening only when "listen" arrives on stdin
//   --http PORT    minimal HTTP/1.1 server answering "ok"
//   --greet PORT   TCP: sends "hello\n" and FIN first, then reads to EOF and prints
//                  "greet-done <bytes> <sha256>" on stdout (upstream-first half-close)
//   --tag PORT     TCP and UDP: answer "port <PORT>" (tells which target port a range mapped to)
//   --rst PORT     TCP: reads a number N and a newline, sends N bytes and resets at once
//   --flood PORT   TCP: on the first byte sends 4 000 000 bytes and FIN, then reads to EOF
//   --digest-echo PORT  TCP: reads to EOF, then answers "<bytes> <sha256>\n", every byte it read,
//                  and FIN (a half-close from the client, answered after it)
//   --serve PORT   TCP: reads "N\n", sends N bytes of pattern(N) and FIN first, then reads to EOF
//                  and prints "serve-done <bytes> <sha256>" on stdout (a half-close from the target)
//   --host ADDR    address to bind (repeatable; default 0.0.0.0 and ::)
// Prints "ready" on stdout once every socket is bound. Exits when stdin closes.
import { createHash } from 'node:crypto';
import { createSocket } from 'node:dgram';
import { createServer } from 'node:net';
import { createInterface } from 'node:readline';
import { pattern } from './testbed.mjs';

const args = process.argv.slice(2);
const opt = (name) => args.flatMap((a, i) => (a === name ? [args[i + 1]] : []));
const hosts = opt('--host').length ? opt('--host') : ['0.0.0.0', '::'];
const pending = [];
const held = [];
const late = [];
const FLOOD = Buffer.alloc(4_000_000, 100);

function tcp(port, host, onConn) {
  const s = createServer({ allowHalfOpen: true }, onConn);
  pending.push(new Promise((res, rej) => s.once('error', rej).listen({ port, host, ipv6Only: host.includes(':') }, res)));
}
function udp(port, host, onMsg) {
  const s = createSocket({ type: host.includes(':') ? 'udp6' : 'udp4', ipv6Only: host.includes(':') });
  s.on('message', (m, r) => onMsg(s, m, r));
  pending.push(new Promise((res, rej) => s.once('error', rej).bind(port, host, res)));
  return s;
}
function digestServer(c) {
  const h = createHash('sha256');
  let n = 0;
  c.on('data', (d) => {
    n += d.length;
    h.update(d);
  });
  c.on('end', () => c.end(`${n} ${h.digest('hex')}`));
  c.on('error', () => {});
}

for (const host of hosts) {
  for (const p of opt('--digest-echo')) {
    tcp(Number(p), host, (c) => {
      c.on('error', () => {});
      const parts = [];
      c.on('data', (d) => parts.push(d));
      c.on('end', () => {
        const all = Buffer.concat(parts);
        c.write(`${all.length} ${createHash('sha256').update(all).digest('hex')}\n`);
        c.end(all);
      });
    });
  }
  for (const p of opt('--serve')) {
    tcp(Number(p), host, (c) => {
      c.on('error', () => {});
      let line = '';
      const h = createHash('sha256');
      let n = 0;
      let sent = false;
      c.on('data', (d) => {
        if (sent) {
          n += d.length;
          h.update(d);
          return;
        }
        line += d.toString('latin1');
        const nl = line.indexOf('\n');
        if (nl < 0) return;
        sent = true;
        const rest = Buffer.from(line.slice(nl + 1), 'latin1');
        n += rest.length;
        h.update(rest);
        c.end(pattern(Number(line.slice(0, nl))));
      });
      c.on('end', () => process.stdout.write(`serve-done ${n} ${h.digest('hex')}\n`));
    });
  }
  for (const p of opt('--echo')) {
    tcp(Number(p), host, (c) => {
      c.on('error', () => {});
      c.pipe(c);
    });
    udp(Number(p), host, (s, m, r) => s.send(m, r.port, r.address));
  }
  for (const p of opt('--hold')) {
    tcp(Number(p), host, (c) => {
      c.pause();
      held.push(c);
    });
  }
  for (const p of opt('--whoami')) {
    tcp(Number(p), host, (c) => {
      c.on('error', () => {});
      c.end(`${c.remoteAddress} ${c.remotePort}`);
    });
    udp(Number(p), host, (s, _m, r) => s.send(`${r.address} ${r.port}`, r.port, r.address));
  }
  for (const p of opt('--greet')) {
    tcp(Number(p), host, (c) => {
      c.on('error', () => {});
      const h = createHash('sha256');
      let n = 0;
      c.on('data', (d) => {
        n += d.length;
        h.update(d);
      });
      c.on('end', () => process.stdout.write(`greet-done ${n} ${h.digest('hex')}\n`));
      c.end('hello\n');
    });
  }
  for (const p of opt('--tag')) {
    tcp(Number(p), host, (c) => {
      c.on('error', () => {});
      c.end(`port ${p}`);
    });
    udp(Number(p), host, (s, _m, r) => s.send(`port ${p}`, r.port, r.address));
  }
  for (const p of opt('--rst')) {
    tcp(Number(p), host, (c) => {
      c.on('error', () => {});
      let line = '';
      c.on('data', (d) => {
        line += d;
        if (!line.includes('\n')) return;
        c.write(Buffer.alloc(Number(line.trim()), 114), () => c.resetAndDestroy());
      });
    });
  }
  for (const p of opt('--flood')) {
    tcp(Number(p), host, (c) => {
      c.on('error', () => {});
      c.once('data', () => c.end(FLOOD));
      c.resume();
    });
  }
  for (const p of opt('--late')) late.push([Number(p), host]);
  for (const p of opt('--http')) {
    tcp(Number(p), host, (c) => {
      c.on('error', () => {});
      let buf = '';
      c.on('data', (d) => {
        buf += d;
        for (let i = buf.indexOf('\r\n\r\n'); i >= 0; i = buf.indexOf('\r\n\r\n')) {
          buf = buf.slice(i + 4);
          c.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok');
        }
      });
      c.on('end', () => c.end());
    });
  }
}

createInterface({ input: process.stdin })
  .on('line', (line) => {
    if (line === 'resume') {
      for (const c of held.splice(0)) {
        digestServer(c);
        c.resume();
      }
    } else if (line === 'listen') {
      for (const [p, host] of late.splice(0)) udp(p, host, (s, m, r) => s.send(m, r.port, r.address));
      Promise.all(pending).then(() => process.stdout.write('listening\n'));
    }
  })
  .on('close', () => process.exit(0));

Promise.all(pending).then(
  () => process.stdout.write('ready\n'),
  (err) => {
    process.stderr.write(`backend: ${err.message}\n`);
    process.exit(1);
  },
);
