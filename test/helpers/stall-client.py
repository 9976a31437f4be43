#!/usr/bin/env python3
# A slow reader (Node cannot shrink SO_RCVBUF): connects to 127.0.0.1:PORT with an 8 KiB receive
# buffer, sends one byte, optionally half-closes, reads 100 000 bytes, stops reading for PAUSE
# seconds (the proxy is then blocked, not idle), then reads to the end and prints
# "eof <bytes>" (clean FIN) or "reset <bytes>" (connection reset) on stdout.
# usage: stall-client.py PORT HALF_CLOSE(0|1) PAUSE_SECONDS
import socket, sys, time
port, half, pause = int(sys.argv[1]), sys.argv[2] == "1", float(sys.argv[3])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
s.connect(("127.0.0.1", port))
s.sendall(b"B")
if half:
    s.shutdown(socket.SHUT_WR)
got = 0
while got < 100000:
    d = s.recv(65536)
    if not d:
        break
    got += len(d)
print("stalled", flush=True)
time.sleep(pause)
try:
    while True:
        d = s.recv(1 << 20)
        if not d:
            print("eof %d" % got)
            break
        got += len(d)
except OSError:
    print("reset %d" % got)
